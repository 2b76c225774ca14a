/* msg_fast.c -- The map reply decoded straight from its bytes (see
 * wb__decode_map_rep_fast() in msg.h).
 *
 * The general path checks the frame (wb__mp_check), unpacks it into
 * msgpack-c objects and then looks every field up by name: for a reply of
 * 300 rows that was 60 % of a client's instructions per map.  This reads
 * the reply once, front to back, with every length bounded by the bytes
 * left.  It takes only the shape wbrokerd sends for a success (unsigned
 * integers in unsigned formats, no nil, no key twice, no unknown key) and
 * hands anything else back to the general path, which then decides,
 * error or not, exactly as before; on what it takes, its result is the
 * general path's. */
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "wire.h"

/* Field names of the report's key lists, in wb_keyset order (msg.c's). */
static const char *const report_keys[WB_KEYS_COUNT] = {
    "missing", "unexpected", "mismatched", "cast", "aliased", "unused_rules"};

/* A position in a reply's bytes. */
typedef struct rd {
    const uint8_t *p; /* Bytes. */
    size_t len;       /* Bytes in p. */
    size_t pos;       /* Next byte to read. */
    size_t objects;   /* Objects read, as wb__mp_check() counts them. */
} rd;

/* Reads an n-byte big-endian integer; 0, or -1 past the end. */
static inline int be(rd *r, int n, uint64_t *v) {
    if ((size_t)n > r->len - r->pos)
        return -1;
    uint64_t x = 0;
    for (int i = 0; i < n; i++)
        x = (x << 8) | r->p[r->pos + i];
    r->pos += (size_t)n;
    *v = x;
    return 0;
}

/* Reads the type byte of the next object; -1 at the end or past the
 * frame's object limit. */
static inline int head(rd *r) {
    if (r->pos >= r->len || ++r->objects > WB_MAX_OBJECTS)
        return -1;
    return r->p[r->pos++];
}

/* An unsigned integer in an unsigned format. */
static inline int rd_u64(rd *r, uint64_t *v) {
    int b = head(r);
    if (b < 0)
        return -1;
    if (b <= 0x7f) {
        *v = (uint64_t)b;
        return 0;
    }
    switch (b) {
    case 0xcc:
        return be(r, 1, v);
    case 0xcd:
        return be(r, 2, v);
    case 0xce:
        return be(r, 4, v);
    case 0xcf:
        return be(r, 8, v);
    default:
        return -1;
    }
}

/* A string (fixstr, str8, str16, str32), viewed in place. */
static inline int rd_str(rd *r, wb__str *s) {
    int b = head(r);
    uint64_t n;
    if (b < 0)
        return -1;
    if (b >= 0xa0 && b <= 0xbf)
        n = (uint64_t)(b & 0x1f);
    else if (b < 0xd9 || b > 0xdb || be(r, 1 << (b - 0xd9), &n))
        return -1;
    if (n > r->len - r->pos)
        return -1;
    s->p = (const char *)r->p + r->pos;
    s->n = (size_t)n;
    r->pos += (size_t)n;
    return 0;
}

static inline int rd_bool(rd *r, int *v) {
    int b = head(r);
    if (b != 0xc2 && b != 0xc3)
        return -1;
    *v = b == 0xc3;
    return 0;
}

/* An array or map header (map: per entries 2 objects); its count, each
 * element at least one byte, must fit in the bytes left. */
static inline int rd_container(rd *r, int map, uint64_t *n) {
    int b = head(r);
    int fix = map ? 0x80 : 0x90, b16 = map ? 0xde : 0xdc;
    if (b < 0)
        return -1;
    if (b >= fix && b <= fix + 0x0f)
        *n = (uint64_t)(b & 0x0f);
    else if (b == b16) {
        if (be(r, 2, n))
            return -1;
    } else if (b == b16 + 1) {
        if (be(r, 4, n))
            return -1;
    } else
        return -1;
    return *n * (map ? 2u : 1u) > r->len - r->pos ? -1 : 0;
}

static int key_is(const wb__str *k, const char *name) {
    size_t n = strlen(name);
    return k->n == n && memcmp(k->p, name, n) == 0;
}

/* Fields of the root, one bit each, to refuse a key seen twice. */
enum {
    F_ID,
    F_ERR,
    F_PAGES,
    F_HUGE,
    F_HOLD,
    F_VERSION,
    F_SEGS,
    F_TENSORS,
    F_META,
    F_REPORT,
    F_TEXT,
    F_COUNT
};
static const char *const root_keys[F_COUNT] = {
    "id",   "err",     "pages", "huge",   "hold", "version",
    "segs", "tensors", "meta",  "report", "text"};

/* One row [target, source, dtype, [dims], seg, offset, nbytes, cast];
 * *last is the previous row's dtype string, looked up again only when
 * it changes. */
static int rd_row(rd *r, wb__map_entry *e, wb__str *last, int *last_dt) {
    uint64_t n, d;
    wb__str dt;
    if (rd_container(r, 0, &n) || n != 8 || rd_str(r, &e->target) ||
        rd_str(r, &e->source) || rd_str(r, &dt) || dt.n >= 16)
        return -1;
    if (*last_dt < 0 || dt.n != last->n || memcmp(dt.p, last->p, dt.n)) {
        char name[16];
        memcpy(name, dt.p, dt.n);
        name[dt.n] = '\0';
        if ((*last_dt = wb_dtype_from_name(name)) < 0)
            return -1;
        *last = dt;
    }
    e->dtype = *last_dt;
    if (rd_container(r, 0, &n) || n > WB_MAX_DIMS)
        return -1;
    e->ndim = (int)n;
    memset(e->shape, 0, sizeof(e->shape));
    for (int k = 0; k < e->ndim; k++) {
        if (rd_u64(r, &d) || d > INT64_MAX)
            return -1;
        e->shape[k] = (int64_t)d;
    }
    return rd_u64(r, &e->seg) || rd_u64(r, &e->offset) ||
                   rd_u64(r, &e->nbytes) || rd_bool(r, &e->cast)
               ? -1
               : 0;
}

/* The report map: each key one of report_keys, at most once, each value
 * an array of strings (allocated into out). */
static int rd_report(rd *r, wb__report *out) {
    uint64_t n, k;
    unsigned seen = 0;
    if (rd_container(r, 1, &n))
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        wb__str key;
        int w = 0;
        if (rd_str(r, &key))
            return -1;
        while (w < WB_KEYS_COUNT && !key_is(&key, report_keys[w]))
            w++;
        if (w == WB_KEYS_COUNT || (seen & (1u << w)) || rd_container(r, 0, &k))
            return -1;
        seen |= 1u << w;
        if (k == 0)
            continue;
        if ((out->keys[w] = malloc((size_t)k * sizeof(wb__str))) == NULL)
            return WB_ENOMEM;
        for (uint64_t j = 0; j < k; j++)
            if (rd_str(r, &out->keys[w][j]))
                return -1;
        out->n[w] = (size_t)k;
    }
    return 0;
}

/* Reads the value of root field f into out.  0, -1 (not the subset) or
 * WB_ENOMEM. */
static int rd_field(rd *r, int f, uint64_t *id, wb__str *pages,
                    wb__map_rep *out, int *have_tensors) {
    uint64_t n;
    switch (f) {
    case F_ID:
        return rd_u64(r, id);
    case F_ERR:
        return head(r) == 0x00 ? 0 : -1; /* A success: err 0. */
    case F_PAGES:
        return rd_str(r, pages);
    case F_HUGE:
        return rd_u64(r, &out->huge);
    case F_HOLD:
        return rd_bool(r, &out->hold);
    case F_VERSION:
        return rd_u64(r, &out->version);
    case F_SEGS:
        if (rd_container(r, 0, &n) || n > WB_MAX_SEGMENTS)
            return -1;
        if ((out->segs = malloc((n ? n : 1) * sizeof(uint64_t))) == NULL)
            return WB_ENOMEM;
        for (uint64_t k = 0; k < n; k++)
            if (rd_u64(r, &out->segs[k]))
                return -1;
        out->nsegs = (size_t)n;
        return 0;
    case F_TENSORS: {
        if (rd_container(r, 0, &n))
            return -1;
        /* Bounded: each row is at least 9 bytes of the frame. */
        if ((out->t = malloc((n ? n : 1) * sizeof(wb__map_entry))) == NULL)
            return WB_ENOMEM;
        wb__str last = {"", 0};
        int last_dt = -1;
        for (uint64_t i = 0; i < n; i++) {
            if (rd_row(r, &out->t[i], &last, &last_dt))
                return -1;
            out->n = (size_t)i + 1;
        }
        *have_tensors = 1;
        return 0;
    }
    case F_META:
        if (rd_container(r, 1, &n))
            return -1;
        if (n == 0)
            return 0;
        out->mkeys = malloc((size_t)n * sizeof(wb__str));
        out->mvals = malloc((size_t)n * sizeof(wb__str));
        if (out->mkeys == NULL || out->mvals == NULL)
            return WB_ENOMEM;
        for (uint64_t i = 0; i < n; i++)
            if (rd_str(r, &out->mkeys[i]) || rd_str(r, &out->mvals[i]))
                return -1;
        out->nmeta = (size_t)n;
        return 0;
    case F_REPORT:
        return rd_report(r, &out->report);
    case F_TEXT:
        return rd_str(r, &out->report.text);
    default:
        return -1;
    }
}

int wb__decode_map_rep_fast(const uint8_t *body, size_t len, uint64_t *id,
                            wb__map_rep *out) {
    memset(out, 0, sizeof(*out));
    out->report.text.p = "";
    rd r = {body, len, 0, 0};
    uint64_t n;
    unsigned seen = 0;
    wb__str pages = {NULL, 0};
    int have_tensors = 0, rc = 0;
    *id = 0;
    if (rd_container(&r, 1, &n))
        return 1;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        wb__str key;
        int f = 0;
        if (rd_str(&r, &key)) {
            rc = -1;
            break;
        }
        while (f < F_COUNT && !key_is(&key, root_keys[f]))
            f++;
        if (f == F_COUNT || (seen & (1u << f))) {
            rc = -1;
            break;
        }
        seen |= 1u << f;
        rc = rd_field(&r, f, id, &pages, out, &have_tensors);
    }
    /* What the general path requires of a success: id, err, version,
     * segs and tensors; huge with pages; the page name short. */
    unsigned need = 1u << F_ID | 1u << F_ERR | 1u << F_VERSION | 1u << F_SEGS;
    if (rc == 0 &&
        (r.pos != len || (seen & need) != need || !have_tensors || *id == 0))
        rc = -1;
    if (rc == 0 && (seen & (1u << F_PAGES))) {
        if (!(seen & (1u << F_HUGE)) || pages.n >= sizeof(out->pages))
            rc = -1;
        else
            memcpy(out->pages, pages.p, pages.n);
    } else if (rc == 0)
        out->huge = 0; /* Read only beside pages, as the general path. */
    if (rc == 0)
        return 0;
    wb__map_rep_free(out);
    *id = 0;
    return rc == WB_ENOMEM ? WB_ENOMEM : 1;
}
