/* ident.c -- Version ids, digests, and versions rebuilt from headers. */
#include "ident.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack. */
#include <xxhash.h>

#include "../client/safetensors.h"
#include "identity.h"
#include "layout.h"
#include "wbroker.h"
#include "wire.h"

static uint64_t id_base; /* Random, drawn at the first id. */
static uint64_t id_next; /* Ids handed out so far. */

uint64_t wb__ident_new_id(void) {
    if (id_base == 0) {
        if (getrandom(&id_base, sizeof(id_base), 0) != sizeof(id_base)) {
            /* No entropy to be had: time and pid still differ between
             * two starts. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            id_base = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^
                      ((uint64_t)getpid() << 16);
        }
        id_base |= 1;
    }
    uint64_t id;
    do
        id = id_base + 0x9E3779B97F4A7C15ull * ++id_next;
    while (id == 0);
    return id;
}

void wb__ident_render(wb__buf *b, const char *model, uint64_t id, uint32_t uid,
                      uint64_t number, const uint8_t *digest) {
    wb__buf_printf(b, "{\"format\":%d,\"model\":", WB_IDENT_FORMAT);
    wb__buf_json_str(b, model);
    wb__buf_printf(b, ",\"id\":\"%016llx\",\"uid\":%u", (unsigned long long)id,
                   (unsigned)uid);
    if (number) {
        char hex[2 * WB_DIGEST_LEN + 1];
        wb__digest_hex(digest, hex);
        wb__buf_printf(b, ",\"number\":%llu,\"digest\":\"%s\"",
                       (unsigned long long)number, hex);
    }
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* An unsigned JSON integer field of o, or -1. */
static int get_uint(json_t *o, const char *key, uint64_t max, uint64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) > max)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int wb__ident_parse(const char *json, wb__ident *out, char *err,
                    size_t errlen) {
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *o = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    int rc = WB_EFORMAT;
    uint64_t uid = 0;
    json_t *model = json_object_get(o, "model"), *id = json_object_get(o, "id"),
           *order = json_object_get(o, "order");
    const char *hex = json_string_value(id);
    char *end = NULL;
    if (!json_is_object(o)) {
        fail(err, errlen, rc, "%s is not a JSON object", WB_VERSION_KEY);
        goto out;
    }
    if (get_uint(o, "format", UINT64_MAX, &out->format) != 0 ||
        out->format != WB_IDENT_FORMAT) {
        fail(err, errlen, rc, "%s: format is not %d", WB_VERSION_KEY,
             WB_IDENT_FORMAT);
        goto out;
    }
    if (!json_is_string(model) || hex == NULL || strlen(hex) != 16 ||
        get_uint(o, "uid", UINT32_MAX, &uid) != 0 ||
        get_uint(o, "data", UINT64_MAX, &out->data_len) != 0 ||
        !json_is_array(order)) {
        fail(err, errlen, rc, "%s lacks model, id, uid, data or order",
             WB_VERSION_KEY);
        goto out;
    }
    errno = 0;
    out->id = strtoull(hex, &end, 16);
    if (errno || *end || out->id == 0 || hex[0] == '-' || hex[0] == '+') {
        fail(err, errlen, rc, "%s: id '%s' is not 16 hex digits",
             WB_VERSION_KEY, hex);
        goto out;
    }
    out->uid = (uint32_t)uid;
    json_t *num = json_object_get(o, "number"),
           *dig = json_object_get(o, "digest");
    if (num || dig) {
        if (get_uint(o, "number", UINT64_MAX, &out->number) != 0 ||
            out->number == 0 || !json_is_string(dig) ||
            wb__digest_parse(json_string_value(dig), out->digest) != 0) {
            fail(err, errlen, rc, "%s: bad number or digest", WB_VERSION_KEY);
            goto out;
        }
        out->has_digest = 1;
    }
    out->n = json_array_size(order);
    if (out->n > WB_MAX_TENSORS) {
        fail(err, errlen, rc, "%s: order of %zu tensors", WB_VERSION_KEY,
             out->n);
        goto out;
    }
    out->order = calloc(out->n ? out->n : 1, sizeof(size_t));
    uint8_t *seen = calloc(out->n ? out->n : 1, 1);
    out->model = strdup(json_string_value(model));
    if (!out->order || !seen || !out->model) {
        free(seen);
        rc = fail(err, errlen, WB_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < out->n; k++) {
        json_t *e = json_array_get(order, k);
        json_int_t x = json_is_integer(e) ? json_integer_value(e) : -1;
        if (x < 0 || (uint64_t)x >= out->n || seen[x]) {
            free(seen);
            fail(err, errlen, rc, "%s: order is not a permutation",
                 WB_VERSION_KEY);
            goto out;
        }
        seen[x] = 1;
        out->order[k] = (size_t)x;
    }
    free(seen);
    rc = 0;
out:
    json_decref(o);
    if (rc)
        wb__ident_free(out);
    return rc;
}

void wb__ident_free(wb__ident *id) {
    if (id == NULL)
        return;
    free(id->model);
    free(id->order);
    memset(id, 0, sizeof(*id));
}

void wb__digest_hex(const uint8_t *d, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < WB_DIGEST_LEN; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * WB_DIGEST_LEN] = '\0';
}

/* Value of one hex digit, or -1. */
static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int wb__digest_parse(const char *hex, uint8_t *d) {
    if (hex == NULL || strlen(hex) != 2 * WB_DIGEST_LEN)
        return -1;
    for (int i = 0; i < WB_DIGEST_LEN; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        d[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int wb__digest_seg(const wb__segment *s, uint64_t len, uint64_t header_len,
                   uint8_t *out) {
    if (len == 0 || len > s->size || len > SIZE_MAX || header_len > len) {
        errno = EINVAL;
        return WB_ESYS;
    }
    /* The whole segment: hugetlb maps whole 2 MiB pages only. */
    size_t maplen = (size_t)s->size;
    void *p = wb__seg_map_ro(s, 0, maplen, 0);
    if (p == NULL)
        return WB_ESYS;
    madvise(p, (size_t)len, MADV_SEQUENTIAL);
    /* The header with the identity as spaces, then the data: the bytes of
     * the version's export (identity.h), hashed where they lie, with no
     * allocation: a commit's digest runs after the final seal, when a
     * failure could no longer give the segment's pages back. */
    const uint8_t *img = p;
    size_t start = (size_t)header_len, end = (size_t)header_len;
    wb__identity_span(img, (size_t)header_len, &start, &end);
    static const uint8_t spaces[256] = {[0 ... 255] = ' '};
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, img, start);
    for (size_t k = start; k < end; k += sizeof(spaces))
        XXH3_128bits_update(
            &st, spaces, end - k < sizeof(spaces) ? end - k : sizeof(spaces));
    XXH3_128bits_update(&st, img + end, (size_t)(len - end));
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    munmap(p, maplen);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, WB_DIGEST_LEN);
    return 0;
}

int wb__read_header(int fd, uint64_t size, uint8_t **out, size_t *len) {
    *out = NULL;
    *len = 0;
    uint8_t pre[8];
    if (size < 8 || pread(fd, pre, 8, 0) != 8)
        return size < 8 ? WB_EFORMAT : WB_EIO;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)pre[i] << (8 * i);
    if (n > WB_ST_MAX_HEADER || n > size - 8)
        return WB_EFORMAT;
    uint8_t *buf = malloc((size_t)n + 8);
    if (buf == NULL)
        return WB_ENOMEM;
    size_t got = 0;
    while (got < n + 8) {
        ssize_t k = pread(fd, buf + got, (size_t)(n + 8) - got, (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(buf);
            return WB_EIO;
        }
        got += (size_t)k;
    }
    *out = buf;
    *len = (size_t)n + 8;
    return 0;
}

/* The WB_VERSION_KEY value of a header (8 + N bytes), parsed only that
 * far, or NULL (to be freed). */
static char *peek_ident(const uint8_t *buf, size_t len) {
    json_error_t jerr;
    json_t *root =
        len > 8 ? json_loadb((const char *)buf + 8, len - 8, 0, &jerr) : NULL;
    json_t *meta = json_object_get(root, WB_ST_METADATA_KEY);
    const char *s = json_string_value(json_object_get(meta, WB_VERSION_KEY));
    char *out = s ? strdup(s) : NULL;
    json_decref(root);
    return out;
}

/* Lays v out again with identity text ident; 0 if the header equals the
 * len bytes at want (want NULL: only lays out), and the layout in *lay. */
static int relayout(const wb__version *v, const char *ident,
                    const uint8_t *want, size_t len, wb__layout *lay) {
    if (wb__layout_build(v->t, v->n, v->tie, v->mkeys, v->mvals, v->nmeta,
                         ident, lay) != 0)
        return -1;
    if (want && (lay->header_len != len || memcmp(lay->header, want, len)))
        return -1;
    return 0;
}

int wb__rebuild(const uint8_t *buf, size_t len, uint64_t file_size,
                wb__rebuilt *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    wb__st_file f;
    memset(&f, 0, sizeof(f));
    wb__layout lay = {0};
    wb__buf text = {0};
    int rc;
    if (file_size == 0) {
        /* An image: its length is the identity's data length after the
         * header (the segment behind it is longer). */
        char *s = peek_ident(buf, len);
        rc = s ? wb__ident_parse(s, &out->ident, err, errlen) : WB_EFORMAT;
        free(s);
        if (rc == WB_EFORMAT && !s)
            fail(err, errlen, rc, "no %s entry", WB_VERSION_KEY);
        if (rc)
            goto out;
        file_size = len + out->ident.data_len;
        wb__ident_free(&out->ident);
    }
    rc = wb__st_parse_header(buf, len, file_size, &f, err, errlen);
    if (rc)
        goto out;
    rc = WB_EFORMAT;
    if (f.version == NULL) {
        fail(err, errlen, rc, "no %s entry: not written by wbrokerd",
             WB_VERSION_KEY);
        goto out;
    }
    if ((rc = wb__ident_parse(f.version, &out->ident, err, errlen)) != 0)
        goto out;
    rc = WB_EFORMAT;
    wb__ident *id = &out->ident;
    size_t n = f.n + f.n_ties;
    if (id->n != n || id->data_len != f.data_len ||
        wb__check_name(id->model, strlen(id->model))) {
        fail(err, errlen, rc, "%s does not match the tensors", WB_VERSION_KEY);
        goto out;
    }

    /* The tensors as the file lists them (stored ones, then aliases), put
     * back into published order through the image order. */
    wb__version *v = out->v = wb__version_new();
    wb__tinfo *src = calloc(n ? n : 1, sizeof(*src));
    size_t *stie = calloc(n ? n : 1, sizeof(size_t));
    size_t *ix = calloc(n ? n : 1, sizeof(size_t));
    size_t *pub = calloc(n ? n : 1, sizeof(size_t));
    if (v)
        v->t = calloc(n ? n : 1, sizeof(wb__tinfo));
    if (v && f.n_ties)
        v->tie = calloc(n, sizeof(size_t));
    if (!v || !src || !stie || !ix || !pub || !v->t || (f.n_ties && !v->tie)) {
        free(src), free(stie), free(ix), free(pub);
        rc = fail(err, errlen, WB_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const wb__st_tensor *st = &f.t[i < f.n ? i : f.tie_of[i - f.n]];
        src[i].name = i < f.n ? st->name : f.tie_alias[i - f.n];
        src[i].dtype = st->dtype;
        src[i].ndim = st->ndim;
        memcpy(src[i].shape, st->shape, sizeof(st->shape));
        stie[i] = i < f.n ? i : f.tie_of[i - f.n];
        ix[i] = i;
    }
    wb__layout_order(src, n, f.n_ties ? stie : NULL, ix);
    for (size_t k = 0; k < n; k++)
        pub[ix[k]] = id->order[k]; /* File index -> published index. */
    for (size_t i = 0; i < n; i++) {
        wb__tinfo *t = &v->t[pub[i]];
        *t = src[i];
        t->name = strdup(src[i].name);
        if (v->tie)
            v->tie[pub[i]] = pub[stie[i]];
    }
    v->n = n;
    free(src), free(stie), free(ix), free(pub);
    for (size_t i = 0; i < n; i++)
        if (v->t[i].name == NULL) {
            rc = fail(err, errlen, WB_ENOMEM, "out of memory");
            goto out;
        }
    if (f.n_meta) {
        v->mkeys = calloc(f.n_meta, sizeof(char *));
        v->mvals = calloc(f.n_meta, sizeof(char *));
        if (!v->mkeys || !v->mvals) {
            rc = fail(err, errlen, WB_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t m = 0; m < f.n_meta; m++) {
            v->mkeys[m] = f.meta_keys[m];
            v->mvals[m] = f.meta_vals[m];
            f.meta_keys[m] = f.meta_vals[m] = NULL;
            v->nmeta = m + 1;
        }
    }

    /* The source's header must be exactly the daemon's own. */
    wb__ident_render(&text, id->model, id->id, id->uid, id->number, id->digest);
    if (text.oom) {
        rc = fail(err, errlen, WB_ENOMEM, "out of memory");
        goto out;
    }
    if (relayout(v, text.p, buf, len, &lay) != 0) {
        fail(err, errlen, rc, "the header is not the one wbrokerd writes");
        goto out;
    }
    out->data_start = lay.header_len;
    if (id->number) { /* A persisted file: the image lacks number and digest. */
        wb__layout_free(&lay);
        text.len = 0;
        wb__ident_render(&text, id->model, id->id, id->uid, 0, NULL);
        if (text.oom || relayout(v, text.p, NULL, 0, &lay) != 0) {
            rc = fail(err, errlen, WB_ENOMEM, "out of memory");
            goto out;
        }
    }
    v->offset = lay.offset;
    v->nbytes = lay.nbytes;
    lay.offset = lay.nbytes = NULL;
    for (size_t i = 0; i < v->n; i++)
        if (v->tie == NULL || v->tie[i] == i)
            v->data_bytes += v->nbytes[i];
    v->image_len = lay.header_len + lay.data_len;
    v->id = id->id;
    v->charged_to = id->uid;
    out->header = lay.header;
    out->header_len = lay.header_len;
    lay.header = NULL;
    rc = 0;
out:
    wb__layout_free(&lay);
    wb__buf_free(&text);
    if (f.meta_keys)
        for (size_t m = 0; m < f.n_meta; m++) {
            free(f.meta_keys[m]);
            free(f.meta_vals[m]);
        }
    free(f.meta_keys);
    free(f.meta_vals);
    f.meta_keys = f.meta_vals = NULL;
    f.n_meta = 0;
    wb__st_file_free(&f);
    if (rc)
        wb__rebuilt_free(out);
    return rc;
}

void wb__rebuilt_free(wb__rebuilt *r) {
    if (r == NULL)
        return;
    wb__version_unref(r->v);
    wb__ident_free(&r->ident);
    free(r->header);
    memset(r, 0, sizeof(*r));
}
