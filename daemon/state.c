/* state.c -- The state record: encoding, hostile-input-safe decoding, and
 * the record of the registry. */
#include "state.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "hold.h"
#include "registry.h"
#include "wbroker.h"
#include "wire.h"

#define WB_STATE_MAGIC "WBSTATE" /* With its NUL: 8 bytes. */

static void put_u8(wb__buf *b, uint8_t v) {
    wb__buf_put(b, &v, 1);
}

static void put_u16(wb__buf *b, uint16_t v) {
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    wb__buf_put(b, x, 2);
}

static void put_u32(wb__buf *b, uint32_t v) {
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    wb__buf_put(b, x, 4);
}

static void put_u64(wb__buf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    wb__buf_put(b, x, 8);
}

static void put_str(wb__buf *b, const char *s) {
    size_t n = strlen(s);
    if (n > UINT16_MAX) {
        b->oom = 1; /* Names are checked to be far shorter. */
        return;
    }
    put_u16(b, (uint16_t)n);
    wb__buf_put(b, s, n);
}

void wb__state_encode(const wb__state *st, wb__buf *out) {
    size_t start = out->len;
    wb__buf_put(out, WB_STATE_MAGIC, 8);
    put_u32(out, WB_STATE_FORMAT);
    put_u64(out, st->seq);
    put_u32(out, (uint32_t)st->nm);
    for (size_t i = 0; i < st->nm; i++) {
        const wb__state_model *m = &st->m[i];
        put_str(out, m->name);
        put_u64(out, m->last_number);
        put_u32(out, m->owner);
        put_u32(out, (uint32_t)m->nv);
        for (size_t k = 0; k < m->nv; k++) {
            const wb__state_version *v = &m->v[k];
            put_u64(out, v->id);
            put_u64(out, v->number);
            put_u8(out, v->pinned ? 1 : 0);
            put_u32(out, v->charged_to);
            wb__buf_put(out, v->digest, 16);
        }
    }
    put_u32(out, (uint32_t)st->nr);
    for (size_t i = 0; i < st->nr; i++) {
        const wb__state_retired *r = &st->r[i];
        put_u64(out, r->id);
        put_str(out, r->model);
        put_u64(out, r->number);
        put_u64(out, r->bytes);
        put_u32(out, r->uid);
    }
    if (!out->oom)
        put_u64(out, XXH3_64bits(out->p + start, out->len - start));
}

/* A cursor over the bytes being decoded. */
typedef struct rd {
    const uint8_t *p; /* Next byte. */
    size_t left;      /* Bytes left. */
    int bad;          /* 1 once a read ran past the end. */
} rd;

static uint64_t get_n(rd *r, int n) {
    if (r->bad || r->left < (size_t)n) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += n;
    r->left -= (size_t)n;
    return v;
}

/* A model name: a new string, or NULL (r->bad set unless out of memory,
 * *oom then). */
static char *get_name(rd *r, int *oom) {
    size_t n = (size_t)get_n(r, 2);
    if (r->bad || n > r->left || wb__check_name((const char *)r->p, n)) {
        r->bad = 1;
        return NULL;
    }
    char *s = malloc(n + 1);
    if (s == NULL) {
        *oom = 1;
        return NULL;
    }
    memcpy(s, r->p, n);
    s[n] = '\0';
    r->p += n;
    r->left -= n;
    return s;
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

#define WB_STATE_VERSION_BYTES 37 /* Bytes of one version entry. */
#define WB_STATE_MODEL_MIN 19     /* Bytes of a model entry at least. */
#define WB_STATE_RETIRED_MIN 31   /* Bytes of a retired entry at least. */

int wb__state_decode(const uint8_t *p, size_t len, wb__state *out, char *err,
                     size_t errlen) {
    memset(out, 0, sizeof(*out));
    if (len > WB_STATE_MAX_BYTES || len < 8 + 4 + 8 + 4 + 4 + 8)
        return fail(err, errlen, WB_EFORMAT, "state record of %zu bytes", len);
    if (memcmp(p, WB_STATE_MAGIC, 8) != 0)
        return fail(err, errlen, WB_EFORMAT, "not a state record");
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++)
        sum |= (uint64_t)p[len - 8 + i] << (8 * i);
    if (XXH3_64bits(p, len - 8) != sum)
        return fail(err, errlen, WB_EFORMAT, "state record checksum mismatch");
    rd r = {p + 8, len - 16, 0};
    uint32_t format = (uint32_t)get_n(&r, 4);
    if (format != WB_STATE_FORMAT)
        return fail(err, errlen, WB_EFORMAT,
                    "state record format %u (this daemon reads %d)", format,
                    WB_STATE_FORMAT);
    out->seq = get_n(&r, 8);
    uint64_t nm = get_n(&r, 4);
    int oom = 0;
    if (nm > WB_STATE_MAX_MODELS || nm > r.left / WB_STATE_MODEL_MIN) {
        r.bad = 1;
        goto done;
    }
    out->m = calloc(nm ? nm : 1, sizeof(*out->m));
    if (out->m == NULL) {
        oom = 1;
        goto done;
    }
    for (uint64_t i = 0; i < nm && !r.bad && !oom; i++) {
        wb__state_model *m = &out->m[i];
        m->name = get_name(&r, &oom);
        if (m->name == NULL)
            break;
        out->nm = i + 1;
        m->last_number = get_n(&r, 8);
        m->owner = (uint32_t)get_n(&r, 4);
        uint64_t nv = get_n(&r, 4);
        if (r.bad || nv > r.left / WB_STATE_VERSION_BYTES) {
            r.bad = 1;
            break;
        }
        if (nv && (m->v = calloc(nv, sizeof(*m->v))) == NULL) {
            oom = 1;
            break;
        }
        m->nv = nv;
        for (uint64_t k = 0; k < nv; k++) {
            wb__state_version *v = &m->v[k];
            v->id = get_n(&r, 8);
            v->number = get_n(&r, 8);
            uint64_t pin = get_n(&r, 1);
            v->charged_to = (uint32_t)get_n(&r, 4);
            for (int b = 0; b < 16; b++)
                v->digest[b] = (uint8_t)get_n(&r, 1);
            if (pin > 1 || v->number == 0 || v->number > m->last_number ||
                v->id == 0 || (k && v->number <= m->v[k - 1].number))
                r.bad = 1;
            v->pinned = (int)pin;
        }
    }
    if (r.bad || oom)
        goto done;
    uint64_t nr = get_n(&r, 4);
    if (r.bad || nr > r.left / WB_STATE_RETIRED_MIN) {
        r.bad = 1;
        goto done;
    }
    if ((out->r = calloc(nr ? nr : 1, sizeof(*out->r))) == NULL) {
        oom = 1;
        goto done;
    }
    for (uint64_t i = 0; i < nr && !r.bad && !oom; i++) {
        wb__state_retired *e = &out->r[i];
        e->id = get_n(&r, 8);
        e->model = get_name(&r, &oom);
        if (e->model == NULL)
            break;
        out->nr = i + 1;
        e->number = get_n(&r, 8);
        e->bytes = get_n(&r, 8);
        e->uid = (uint32_t)get_n(&r, 4);
        if (e->id == 0 || e->number == 0)
            r.bad = 1;
    }
    if (!r.bad && !oom && r.left != 0)
        r.bad = 1;
done:
    if (r.bad || oom) {
        wb__state_free(out);
        return oom ? fail(err, errlen, WB_ENOMEM, "out of memory")
                   : fail(err, errlen, WB_EFORMAT,
                          "state record malformed or truncated");
    }
    return 0;
}

void wb__state_free(wb__state *st) {
    if (st == NULL)
        return;
    for (size_t i = 0; st->m && i < st->nm; i++) {
        free(st->m[i].name);
        free(st->m[i].v);
    }
    free(st->m);
    for (size_t i = 0; st->r && i < st->nr; i++)
        free(st->r[i].model);
    free(st->r);
    memset(st, 0, sizeof(*st));
}

const wb__state_model *wb__state_model_find(const wb__state *st,
                                            const char *name) {
    for (size_t i = 0; st && i < st->nm; i++)
        if (strcmp(st->m[i].name, name) == 0)
            return &st->m[i];
    return NULL;
}

const wb__state_version *wb__state_version_find(const wb__state *st,
                                                uint64_t id,
                                                const wb__state_model **m) {
    for (size_t i = 0; st && i < st->nm; i++)
        for (size_t k = 0; k < st->m[i].nv; k++)
            if (st->m[i].v[k].id == id) {
                if (m)
                    *m = &st->m[i];
                return &st->m[i].v[k];
            }
    return NULL;
}

/* Collects the retired-but-held versions (marking each once). */
typedef struct retired_ctx {
    wb__state *st; /* Record being built. */
    size_t cap;    /* Entries allocated in st->r. */
    int oom;       /* 1 after a failed allocation. */
} retired_ctx;

static void add_retired(void *arg, const wb__hold *h) {
    retired_ctx *c = arg;
    wb__version *v = (wb__version *)wb__hold_version(h);
    if (v->listed || v->mark || c->oom)
        return;
    v->mark = 1;
    if (c->st->nr == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        wb__state_retired *r = realloc(c->st->r, cap * sizeof(*r));
        if (r == NULL) {
            c->oom = 1;
            return;
        }
        c->st->r = r;
        c->cap = cap;
    }
    wb__state_retired *e = &c->st->r[c->st->nr];
    e->id = v->id;
    e->number = v->number;
    e->bytes = wb__version_charged(v);
    e->uid = v->charged_to;
    if ((e->model = strdup(v->model->name)) == NULL) {
        c->oom = 1;
        return;
    }
    c->st->nr++;
}

static void clear_mark(void *arg, const wb__hold *h) {
    ((wb__version *)wb__hold_version(h))->mark = 0;
}

int wb__state_of_registry(uint64_t seq, wb__state *out) {
    memset(out, 0, sizeof(*out));
    out->seq = seq;
    size_t nm = 0;
    for (const wb__model *m = wb__reg.models; m; m = m->next)
        nm++;
    out->m = calloc(nm ? nm : 1, sizeof(*out->m));
    if (out->m == NULL)
        return WB_ENOMEM;
    /* Oldest first, as the registry would have them again. */
    size_t i = nm;
    for (const wb__model *m = wb__reg.models; m; m = m->next) {
        wb__state_model *e = &out->m[--i];
        e->last_number = m->last_number;
        e->owner = m->owner;
        if ((e->name = strdup(m->name)) == NULL ||
            (m->nversions &&
             (e->v = calloc(m->nversions, sizeof(*e->v))) == NULL)) {
            out->nm = nm;
            wb__state_free(out);
            return WB_ENOMEM;
        }
        for (const wb__version *v = m->versions; v; v = v->next) {
            wb__state_version *sv = &e->v[e->nv++];
            sv->id = v->id;
            sv->number = v->number;
            sv->pinned = v->pinned;
            sv->charged_to = v->charged_to;
            memcpy(sv->digest, v->digest, 16);
        }
    }
    out->nm = nm;
    retired_ctx c = {out, 0, 0};
    wb__holds_each(NULL, clear_mark, NULL);
    wb__holds_each(NULL, add_retired, &c);
    if (c.oom) {
        wb__state_free(out);
        return WB_ENOMEM;
    }
    return 0;
}
