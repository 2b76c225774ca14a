/* layout.c -- safetensors layout of a version: order, offsets, header. */
#include "layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wbroker.h"
#include "wire.h"

void wb__buf_json_str(wb__buf *b, const char *s) {
    wb__buf_put(b, "\"", 1);
    const char *run = s;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        wb__buf_put(b, run, (size_t)(p - run));
        if (c == '"')
            wb__buf_put(b, "\\\"", 2);
        else if (c == '\\')
            wb__buf_put(b, "\\\\", 2);
        else
            wb__buf_printf(b, "\\u%04x", c);
        run = p + 1;
    }
    wb__buf_put(b, run, strlen(run));
    wb__buf_put(b, "\"", 1);
}

typedef struct order_ctx {
    const wb__tinfo *t; /* Tensors. */
    const size_t *tie;  /* NULL, or what each is tied to. */
} order_ctx;

/* qsort_r comparator: stored tensors before tied ones, larger elements
 * first, then by name. */
static int cmp_stored(const void *x, const void *y, void *arg) {
    const order_ctx *o = arg;
    size_t ix = *(const size_t *)x, iy = *(const size_t *)y;
    if (o->tie) {
        int tx = o->tie[ix] != ix, ty = o->tie[iy] != iy;
        if (tx != ty)
            return tx - ty;
    }
    const wb__tinfo *a = &o->t[ix], *b = &o->t[iy];
    size_t sa = wb_dtype_size(a->dtype), sb = wb_dtype_size(b->dtype);
    if (sa != sb)
        return sa > sb ? -1 : 1;
    return strcmp(a->name, b->name);
}

void wb__layout_order(const wb__tinfo *t, size_t n, const size_t *tie,
                      size_t *ix) {
    order_ctx ctx = {t, tie};
    qsort_r(ix, n, sizeof(size_t), cmp_stored, &ctx);
}

/* qsort_r comparator on names alone. */
static int cmp_name(const void *x, const void *y, void *arg) {
    const wb__tinfo *t = arg;
    return strcmp(t[*(const size_t *)x].name, t[*(const size_t *)y].name);
}

/* 1 if two tensors share a name (or on OOM, which then fails later). */
static int has_duplicate(const wb__tinfo *t, size_t n) {
    size_t *ix = malloc((n ? n : 1) * sizeof(size_t));
    if (ix == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        ix[i] = i;
    qsort_r(ix, n, sizeof(size_t), cmp_name, (void *)t);
    int dup = 0;
    for (size_t k = 1; k < n && !dup; k++)
        dup = strcmp(t[ix[k - 1]].name, t[ix[k]].name) == 0;
    free(ix);
    return dup;
}

/* Appends the metadata entry key: the JSON text in obj (freed) as a JSON
 * string, after a comma unless it is the first entry. */
static void put_entry(wb__buf *b, const char *key, wb__buf *obj, int first) {
    if (!first)
        wb__buf_put(b, ",", 1);
    wb__buf_json_str(b, key);
    wb__buf_put(b, ":", 1);
    if (obj->oom)
        b->oom = 1;
    else
        wb__buf_json_str(b, obj->p);
    free(obj->p);
}

/* Appends the WB_TIED_KEY metadata entry: a JSON object {alias: stored}
 * as a JSON string. */
static void put_ties(wb__buf *b, const wb__tinfo *t, const size_t *tie,
                     const size_t *tied, size_t ntied, size_t nmeta) {
    wb__buf obj = {0};
    wb__buf_put(&obj, "{", 1);
    for (size_t k = 0; k < ntied; k++) {
        if (k)
            wb__buf_put(&obj, ",", 1);
        wb__buf_json_str(&obj, t[tied[k]].name);
        wb__buf_put(&obj, ":", 1);
        wb__buf_json_str(&obj, t[tie[tied[k]]].name);
    }
    wb__buf_put(&obj, "}", 1);
    put_entry(b, WB_TIED_KEY, &obj, nmeta == 0);
}

/* Appends the WB_VERSION_KEY metadata entry: ident (an open JSON object,
 * ident.h) closed with the data length and the published order, as a JSON
 * string. */
static void put_ident(wb__buf *b, const char *ident, uint64_t data_len,
                      const size_t *order, size_t n, int first) {
    wb__buf obj = {0};
    wb__buf_put(&obj, ident, strlen(ident));
    wb__buf_printf(&obj, ",\"data\":%llu,\"order\":[",
                   (unsigned long long)data_len);
    for (size_t k = 0; k < n; k++)
        wb__buf_printf(&obj, "%s%zu", k ? "," : "", order[k]);
    wb__buf_put(&obj, "]}", 2);
    put_entry(b, WB_VERSION_KEY, &obj, first);
}

int wb__layout_build(const wb__tinfo *t, size_t n, const size_t *tie,
                     char *const *mkeys, char *const *mvals, size_t nmeta,
                     const char *ident, wb__layout *out) {
    memset(out, 0, sizeof(*out));
    out->order = malloc((n ? n : 1) * sizeof(size_t));
    out->offset = malloc((n ? n : 1) * sizeof(uint64_t));
    out->nbytes = malloc((n ? n : 1) * sizeof(uint64_t));
    if (!out->order || !out->offset || !out->nbytes)
        goto oom;
    for (size_t i = 0; i < n; i++)
        out->order[i] = i;
    wb__layout_order(t, n, tie, out->order);
    size_t nstored = n;
    while (tie && nstored > 0 &&
           tie[out->order[nstored - 1]] != out->order[nstored - 1])
        nstored--;
    if (has_duplicate(t, n)) {
        wb__layout_free(out);
        return WB_EEXIST;
    }

    /* Data offsets relative to the data section. */
    uint64_t pos = 0, *rel = out->offset;
    for (size_t k = 0; k < nstored; k++) {
        size_t i = out->order[k];
        uint64_t nb;
        if (wb__tensor_nbytes(t[i].dtype, t[i].ndim, t[i].shape, &nb))
            goto toobig;
        rel[i] = pos;
        out->nbytes[i] = nb;
        if (__builtin_add_overflow(pos, nb, &pos))
            goto toobig;
    }
    out->data_len = pos;
    for (size_t k = nstored; k < n; k++) {
        size_t i = out->order[k];
        rel[i] = rel[tie[i]];
        out->nbytes[i] = out->nbytes[tie[i]];
    }

    wb__buf b = {0};
    wb__buf_put(&b, "{", 1);
    if (nmeta > 0 || nstored < n || ident) {
        wb__buf_put(&b, "\"__metadata__\":{", 16);
        for (size_t m = 0; m < nmeta; m++) {
            if (m)
                wb__buf_put(&b, ",", 1);
            wb__buf_json_str(&b, mkeys[m]);
            wb__buf_put(&b, ":", 1);
            wb__buf_json_str(&b, mvals[m]);
        }
        if (nstored < n)
            put_ties(&b, t, tie, out->order + nstored, n - nstored, nmeta);
        if (ident)
            put_ident(&b, ident, out->data_len, out->order, n,
                      nmeta == 0 && nstored == n);
        wb__buf_put(&b, "}", 1);
    }
    for (size_t k = 0; k < nstored; k++) {
        size_t i = out->order[k];
        if (k || nmeta || nstored < n || ident)
            wb__buf_put(&b, ",", 1);
        wb__buf_json_str(&b, t[i].name);
        wb__buf_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[",
                       wb_dtype_name(t[i].dtype));
        for (int d = 0; d < t[i].ndim; d++)
            wb__buf_printf(&b, "%s%lld", d ? "," : "",
                           (long long)t[i].shape[d]);
        wb__buf_printf(&b, "],\"data_offsets\":[%llu,%llu]}",
                       (unsigned long long)rel[i],
                       (unsigned long long)(rel[i] + out->nbytes[i]));
    }
    wb__buf_put(&b, "}", 1);
    while (!b.oom && (8 + b.len) % WB_DATA_ALIGN != 0)
        wb__buf_put(&b, " ", 1);
    if (b.oom) {
        free(b.p);
        goto oom;
    }
    out->header_len = 8 + b.len;
    out->header = malloc(out->header_len);
    if (out->header == NULL) {
        free(b.p);
        goto oom;
    }
    for (int i = 0; i < 8; i++)
        out->header[i] = (uint8_t)((uint64_t)b.len >> (8 * i));
    memcpy(out->header + 8, b.p, b.len);
    free(b.p);
    for (size_t i = 0; i < n; i++)
        out->offset[i] += out->header_len;
    return 0;
toobig:
    wb__layout_free(out);
    return WB_ETOOBIG;
oom:
    wb__layout_free(out);
    return WB_ENOMEM;
}

void wb__layout_free(wb__layout *l) {
    if (l == NULL)
        return;
    free(l->order);
    free(l->offset);
    free(l->nbytes);
    free(l->header);
    memset(l, 0, sizeof(*l));
}
