/* resolve_report.c -- The error text of a load that must not go ahead, byte
 * for byte as torch.nn.Module.load_state_dict words it.
 *
 * resolve.c decides that a load fails and lists its missing, unexpected
 * and size-mismatched keys; this file writes them into PyTorch's message
 * ("Error(s) in loading state_dict for ...") in a growing string, under the
 * same time budget as the rest of the call.  No I/O. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "resolve.h"
#include "resolve_internal.h"

/* ---------------------------------------------------------------- strings */

/* A growing NUL-terminated byte string. */
typedef struct sbuf {
    char *p;    /* Bytes, NUL-terminated (NULL if unused). */
    size_t len; /* Bytes before the NUL. */
    size_t cap; /* Allocated bytes. */
} sbuf;

/* Makes room for extra more bytes plus the NUL. */
static int sb_reserve(sbuf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len)
        return WB_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return WB_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sb_add(sbuf *b, const char *s, size_t len) {
    if (sb_reserve(b, len) != 0)
        return WB_ENOMEM;
    memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
    return 0;
}

static int sb_adds(sbuf *b, const char *s) {
    return sb_add(b, s, strlen(s));
}

static int sb_printf(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_reserve(b, (size_t)n) != 0)
        return WB_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* Appends torch.Size([a, b, ...]) for a shape. */
static int sb_shape(sbuf *b, int ndim, const int64_t *shape) {
    int rc = sb_adds(b, "torch.Size([");
    for (int i = 0; i < ndim && rc == 0; i++)
        rc = sb_printf(b, i ? ", %" PRId64 : "%" PRId64, shape[i]);
    return rc ? rc : sb_adds(b, "])");
}

/* ---------------------------------------------------------------- report */

/* Appends "\"a\", \"b\"" for a key list.  Returns 0, WB_EREGEX when the
 * budget runs out, or WB_ENOMEM. */
static int sb_keys(rstate *st, sbuf *b, const wb__keylist *kl) {
    for (size_t i = 0; i < kl->n; i++) {
        size_t len = b->len;
        if (sb_printf(b, i ? ", \"%s\"" : "\"%s\"", kl->v[i]) != 0)
            return WB_ENOMEM;
        if (budget_charge(&st->budget, b->len - len))
            return wb__over_budget(st, NULL, "writing the load report", "key",
                                   i, kl->n, kl->v[i]);
    }
    return 0;
}

int wb__error_text(rstate *st) {
    const wb__resolve_req *req = st->req;
    const wb__resolve_out *out = st->out;
    const wb__schema *s = req->schema;
    sbuf b = {0};
    int first = 1, rc;
    rc = sb_printf(&b, "Error(s) in loading state_dict for %s:\n\t",
                   s->target ? s->target : "");
    if (rc == 0 && req->strict && out->missing.n > 0) {
        rc = sb_adds(&b, "Missing key(s) in state_dict: ");
        rc = rc ? rc : sb_keys(st, &b, &out->missing);
        rc = rc ? rc : sb_adds(&b, ". ");
        first = 0;
    }
    if (rc == 0 && req->strict && out->unexpected.n > 0) {
        rc = sb_adds(&b, first ? "" : "\n\t");
        rc = rc ? rc : sb_adds(&b, "Unexpected key(s) in state_dict: ");
        rc = rc ? rc : sb_keys(st, &b, &out->unexpected);
        rc = rc ? rc : sb_adds(&b, ". ");
        first = 0;
    }
    for (size_t i = 0; rc == 0 && !req->ignore_mismatch && i < s->n; i++) {
        const wb__tinfo *t = &s->v[i];
        size_t len = strlen(t->name);
        if (budget_charge(&st->budget, len)) {
            rc = wb__over_budget(st, NULL, "writing the load report",
                                 "target key", i, s->n, t->name);
            break;
        }
        wb__hslot *h = wb__ht_find(&st->renamed, t->name, len);
        if (h == NULL)
            continue;
        const wb__tinfo *src = &req->src[st->kept[h->val].src];
        if (shape_eq(src, t))
            continue;
        rc =
            sb_printf(&b, "%ssize mismatch for %s: copying a param with shape ",
                      first ? "" : "\n\t", t->name);
        rc = rc ? rc : sb_shape(&b, src->ndim, src->shape);
        rc = rc ? rc
                : sb_adds(&b, " from checkpoint, the shape in current "
                              "model is ");
        rc = rc ? rc : sb_shape(&b, t->ndim, t->shape);
        rc = rc ? rc : sb_adds(&b, ".");
        first = 0;
    }
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    st->out->error_text = b.p;
    return 0;
}
