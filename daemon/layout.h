/* layout.h -- Lays a version out as a safetensors image.
 *
 * A segment holds: 8-byte little-endian header length N, N bytes of JSON
 * header (space-padded so tensor data starts on a WB_DATA_ALIGN boundary),
 * then the tensors back to back in safetensors order (larger elements first,
 * then by name).  Any safetensors reader can read a segment, and an export
 * is a single write of its first data_start + data_len bytes. */
#ifndef WB_DAEMON_LAYOUT_H
#define WB_DAEMON_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/rules.h"
#include "buf.h"

#define WB_DATA_ALIGN 64 /* Alignment of the data section, in bytes. */

typedef struct wb__layout {
    size_t *order;       /* order[k] = declared index stored k-th;
                            tied tensors come last. */
    uint64_t *offset;    /* Per declared tensor: absolute offset. */
    uint64_t *nbytes;    /* Per declared tensor: bytes. */
    uint8_t *header;     /* 8 + N header bytes. */
    uint64_t header_len; /* Bytes in header (= data start). */
    uint64_t data_len;   /* Bytes of tensor data. */
} wb__layout;

/* Computes the layout of n tensors with metadata.  tie is NULL or gives
 * for each tensor the index of the one whose bytes it shares (its own
 * index if none): a tied tensor takes no bytes and no header entry, and the
 * header's metadata records it under WB_TIED_KEY.  ident is NULL or the
 * start of the version's identity (an unclosed JSON object, ident.h): the
 * header's metadata then records it under WB_VERSION_KEY, closed with
 * "data" (the data length) and "order" (order[], so that the published
 * order can be rebuilt from the image).  The header depends on nothing
 * else, so that the same arguments give the same bytes.  Returns 0,
 * WB_EEXIST for a duplicate name, WB_ETOOBIG, or WB_ENOMEM. */
int wb__layout_build(const wb__tinfo *t, size_t n, const size_t *tie,
                     char *const *mkeys, char *const *mvals, size_t nmeta,
                     const char *ident, wb__layout *out);
/* The order of tensors in an image (stored ones, larger elements first,
 * then by name; tied ones last, the same way): sorts ix[0..n) of t (tie
 * as for wb__layout_build). */
void wb__layout_order(const wb__tinfo *t, size_t n, const size_t *tie,
                      size_t *ix);
void wb__layout_free(wb__layout *l);

/* Appends s as a JSON string (quoted, escaped). */
void wb__buf_json_str(wb__buf *b, const char *s);

#endif
