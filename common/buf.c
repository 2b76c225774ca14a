/* buf.c -- Growable byte buffer. */
#include "buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wb__buf_reserve(wb__buf *b, size_t extra) {
    if (b->oom)
        return -1;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->oom = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : WB_BUF_MIN_CAP;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void wb__buf_put(wb__buf *b, const void *s, size_t n) {
    if (wb__buf_reserve(b, n) != 0)
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void wb__buf_printf(wb__buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || wb__buf_reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void wb__buf_consume(wb__buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = '\0';
}

void wb__buf_shrink(wb__buf *b, size_t keep) {
    if (b->cap <= keep || b->len + 1 > keep)
        return;
    char *p = realloc(b->p, keep);
    if (p != NULL) {
        b->p = p;
        b->cap = keep;
    }
}

void wb__buf_free(wb__buf *b) {
    if (b == NULL)
        return;
    free(b->p);
    memset(b, 0, sizeof(*b));
}
