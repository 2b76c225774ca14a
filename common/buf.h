/* buf.h -- A growable byte buffer, the one used by the daemon and the
 * client library for text and binary data alike.
 *
 * Appending never fails loudly: a failed allocation sets oom, later appends
 * do nothing, and the owner checks oom once at the end.  While oom is 0 the
 * bytes are followed by a NUL (not counted in len), so text can be used as
 * a C string. */
#ifndef WB_COMMON_BUF_H
#define WB_COMMON_BUF_H

#include <stddef.h>

#define WB_BUF_MIN_CAP 256 /* First allocation, in bytes. */

typedef struct wb__buf {
    char *p;    /* Bytes (NUL-terminated when ok). */
    size_t len; /* Bytes used. */
    size_t cap; /* Bytes allocated. */
    int oom;    /* 1 after a failed allocation. */
} wb__buf;

/* Makes room for extra more bytes (plus the NUL).  Returns 0, or -1 with
 * oom set. */
int wb__buf_reserve(wb__buf *b, size_t extra);
/* Appends n bytes of s. */
void wb__buf_put(wb__buf *b, const void *s, size_t n);
/* Appends formatted text (any length). */
void wb__buf_printf(wb__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len), keeping the rest. */
void wb__buf_consume(wb__buf *b, size_t n);
/* Gives back memory beyond keep bytes of capacity when the contents fit. */
void wb__buf_shrink(wb__buf *b, size_t keep);
/* Frees the bytes and zeroes the buffer.  Accepts NULL. */
void wb__buf_free(wb__buf *b);

#endif
