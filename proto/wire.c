/* wire.c -- Framing, bounded msgpack decoding and typed accessors.
 *
 * Every frame body goes through wb__mp_check() before msgpack-c sees it, so
 * that no declared length can make the unpacker reserve more than the frame
 * could possibly describe. */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* Reads an n-byte big-endian unsigned integer at p[*pos], advancing *pos.
 * Returns 0, or -1 when fewer than n bytes remain. */
static int read_be(const uint8_t *p, size_t len, size_t *pos, int n,
                   uint64_t *v) {
    if ((size_t)n > len - *pos)
        return -1;
    uint64_t x = 0;
    for (int i = 0; i < n; i++)
        x = (x << 8) | p[*pos + i];
    *pos += n;
    *v = x;
    return 0;
}

int wb__mp_check(const uint8_t *p, size_t len) {
    uint64_t left[WB_MAX_DEPTH + 1]; /* Items still to read per level. */
    int depth = 0;
    size_t pos = 0, objects = 0;

    left[0] = 1;
    for (;;) {
        while (depth >= 0 && left[depth] == 0)
            depth--;
        if (depth < 0)
            break;
        left[depth]--;
        if (pos >= len)
            return WB_EPROTO;
        if (++objects > WB_MAX_OBJECTS)
            return WB_ETOOBIG;

        uint8_t b = p[pos++];
        uint64_t skip = 0, count = 0, n = 0;
        int container = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: nothing follows. */
        } else if (b >= 0x80 && b <= 0x8f) {
            container = 1, count = 2 * (uint64_t)(b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            container = 1, count = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4:
            case 0xd9: /* bin8, str8 */
                if (read_be(p, len, &pos, 1, &n))
                    return WB_EPROTO;
                skip = n;
                break;
            case 0xc5:
            case 0xda: /* bin16, str16 */
                if (read_be(p, len, &pos, 2, &n))
                    return WB_EPROTO;
                skip = n;
                break;
            case 0xc6:
            case 0xdb: /* bin32, str32 */
                if (read_be(p, len, &pos, 4, &n))
                    return WB_EPROTO;
                skip = n;
                break;
            case 0xca:
                skip = 4;
                break; /* float32 */
            case 0xcb:
                skip = 8;
                break; /* float64 */
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xdc: /* array16 */
                if (read_be(p, len, &pos, 2, &n))
                    return WB_EPROTO;
                container = 1, count = n;
                break;
            case 0xdd: /* array32 */
                if (read_be(p, len, &pos, 4, &n))
                    return WB_EPROTO;
                container = 1, count = n;
                break;
            case 0xde: /* map16 */
                if (read_be(p, len, &pos, 2, &n))
                    return WB_EPROTO;
                container = 1, count = 2 * n;
                break;
            case 0xdf: /* map32 */
                if (read_be(p, len, &pos, 4, &n))
                    return WB_EPROTO;
                container = 1, count = 2 * n;
                break;
            default: /* ext types and the never-used 0xc1 */
                return WB_EPROTO;
            }
        }
        if (skip > len - pos)
            return WB_EPROTO;
        pos += skip;
        if (container && count > 0) {
            /* Every element takes at least one byte. */
            if (count > len - pos)
                return WB_EPROTO;
            if (depth + 1 > WB_MAX_DEPTH)
                return WB_EPROTO;
            left[++depth] = count;
        }
    }
    return pos == len ? 0 : WB_EPROTO;
}

int wb__msg_decode(wb__msg *m, const uint8_t *body, size_t len) {
    msgpack_unpacked_init(&m->up);
    m->root = NULL;
    m->owned = NULL;
    int rc = wb__mp_check(body, len);
    if (rc)
        return rc;
    size_t off = 0;
    if (msgpack_unpack_next(&m->up, (const char *)body, len, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != len)
        return WB_EPROTO;
    if (m->up.data.type != MSGPACK_OBJECT_MAP)
        return WB_EPROTO;
    m->root = &m->up.data;
    return 0;
}

void wb__msg_free(wb__msg *m) {
    if (m == NULL)
        return;
    msgpack_unpacked_destroy(&m->up);
    m->root = NULL;
    free(m->owned);
    m->owned = NULL;
}

int wb__mp_streq(const msgpack_object *o, const char *s) {
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *wb__mp_get(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (wb__mp_streq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

int wb__mp_get_u64(const msgpack_object *map, const char *key, uint64_t *v) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return WB_EPROTO;
    *v = o->via.u64;
    return 0;
}

int wb__mp_get_i64(const msgpack_object *map, const char *key, int64_t *v) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *v = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             o->via.u64 <= INT64_MAX)
        *v = (int64_t)o->via.u64;
    else
        return WB_EPROTO;
    return 0;
}

int wb__mp_get_bool(const msgpack_object *map, const char *key, int *v) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return WB_EPROTO;
    *v = o->via.boolean;
    return 0;
}

int wb__mp_get_str(const msgpack_object *map, const char *key, const char **s,
                   size_t *n) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type != MSGPACK_OBJECT_STR)
        return WB_EPROTO;
    *s = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

int wb__mp_get_array(const msgpack_object *map, const char *key,
                     const msgpack_object_array **a) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return WB_EPROTO;
    *a = &o->via.array;
    return 0;
}

int wb__mp_get_map(const msgpack_object *map, const char *key,
                   const msgpack_object_map **m) {
    const msgpack_object *o = wb__mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 1;
    if (o->type != MSGPACK_OBJECT_MAP)
        return WB_EPROTO;
    *m = &o->via.map;
    return 0;
}

char *wb__mp_strdup(const msgpack_object *o) {
    if (o->type != MSGPACK_OBJECT_STR)
        return NULL;
    char *s = malloc(o->via.str.size + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    return s;
}

/* Returns 1 if p[0..n) is valid UTF-8 (no overlong form, no surrogate,
 * nothing above U+10FFFF, no cut sequence) without a NUL byte, else 0.
 * Runs of ASCII go eight bytes at a time. */
static int utf8_valid(const unsigned char *p, size_t n) {
    const uint64_t ones = UINT64_C(0x0101010101010101);
    const uint64_t highs = UINT64_C(0x8080808080808080);
    size_t i = 0;
    while (i < n) {
        if (n - i >= sizeof(uint64_t)) {
            uint64_t w;
            memcpy(&w, p + i, sizeof w);
            /* No byte >= 0x80 and no zero byte: eight ASCII characters. */
            if (((w | ((w - ones) & ~w)) & highs) == 0) {
                i += sizeof w;
                continue;
            }
        }
        unsigned c = p[i];
        size_t extra;
        uint32_t cp, min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (extra > n - i - 1)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += extra + 1;
    }
    return 1;
}

int wb__check_name(const char *s, size_t n) {
    if (n == 0 || n > WB_MAX_NAME || s == NULL)
        return WB_ENAME;
    return utf8_valid((const unsigned char *)s, n) ? 0 : WB_ENAME;
}

int wb__check_text(const char *s, size_t n) {
    if (n == 0)
        return 0;
    if (s == NULL)
        return WB_EINVAL;
    return utf8_valid((const unsigned char *)s, n) ? 0 : WB_EINVAL;
}

int wb__tensor_nbytes(int dtype, int ndim, const int64_t *shape,
                      uint64_t *nbytes) {
    uint64_t n = wb_dtype_size(dtype);
    if (n == 0)
        return WB_EDTYPE;
    if (ndim < 0 || ndim > WB_MAX_DIMS)
        return WB_ESHAPE;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return WB_ESHAPE;
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return WB_ESHAPE;
    }
    if (n > (UINT64_C(1) << 48)) /* 256 TiB: nothing real is larger. */
        return WB_ESHAPE;
    *nbytes = n;
    return 0;
}

int wb__decode_tinfo(const msgpack_object *o, wb__tinfo *t) {
    memset(t, 0, sizeof(*t));
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
        return WB_EPROTO;
    const msgpack_object *v = o->via.array.ptr;
    if (v[0].type != MSGPACK_OBJECT_STR || v[1].type != MSGPACK_OBJECT_STR ||
        v[2].type != MSGPACK_OBJECT_ARRAY)
        return WB_EPROTO;
    if (wb__check_name(v[0].via.str.ptr, v[0].via.str.size))
        return WB_ENAME;
    char dt[16];
    if (v[1].via.str.size >= sizeof(dt))
        return WB_EDTYPE;
    memcpy(dt, v[1].via.str.ptr, v[1].via.str.size);
    dt[v[1].via.str.size] = '\0';
    t->dtype = wb_dtype_from_name(dt);
    if (t->dtype < 0)
        return WB_EDTYPE;
    if (v[2].via.array.size > WB_MAX_DIMS)
        return WB_ESHAPE;
    t->ndim = (int)v[2].via.array.size;
    for (int i = 0; i < t->ndim; i++) {
        const msgpack_object *d = &v[2].via.array.ptr[i];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            d->via.u64 > INT64_MAX)
            return WB_ESHAPE;
        t->shape[i] = (int64_t)d->via.u64;
    }
    uint64_t nb;
    if (wb__tensor_nbytes(t->dtype, t->ndim, t->shape, &nb))
        return WB_ESHAPE;
    t->name = wb__mp_strdup(&v[0]);
    return t->name ? 0 : WB_ENOMEM;
}

void wb__pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = s ? strlen(s) : 0;
    msgpack_pack_str_with_body(pk, s ? s : "", n);
}

void wb__pack_key(msgpack_packer *pk, const char *key) {
    wb__pack_cstr(pk, key);
}

void wb__pack_tinfo(msgpack_packer *pk, const char *name, int dtype, int ndim,
                    const int64_t *shape) {
    msgpack_pack_array(pk, 3);
    wb__pack_cstr(pk, name);
    wb__pack_cstr(pk, wb_dtype_name(dtype));
    msgpack_pack_array(pk, (size_t)ndim);
    for (int i = 0; i < ndim; i++)
        msgpack_pack_uint64(pk, (uint64_t)shape[i]);
}

void wb__pack_rules(msgpack_packer *pk, const wb__ruleset *rs) {
    msgpack_pack_array(pk, rs ? rs->n : 0);
    for (size_t i = 0; rs && i < rs->n; i++) {
        const wb__rule *r = &rs->v[i];
        msgpack_pack_array(pk, 5);
        msgpack_pack_int(pk, r->kind);
        wb__pack_cstr(pk, r->a);
        wb__pack_cstr(pk, r->b);
        msgpack_pack_int(pk, r->dtype);
        msgpack_pack_int(pk, r->line);
    }
}

int wb__decode_rules(const msgpack_object_array *a, wb__ruleset *rs) {
    if (a->size > WB_MAX_RULES)
        return WB_ETOOBIG;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *o = &a->ptr[i];
        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5)
            return WB_EPROTO;
        const msgpack_object *v = o->via.array.ptr;
        if (v[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            v[0].via.u64 < WB__RULE_INCLUDE || v[0].via.u64 > WB__RULE_CAST)
            return WB_ERULE;
        if (v[1].type != MSGPACK_OBJECT_STR || v[2].type != MSGPACK_OBJECT_STR)
            return WB_EPROTO;
        int64_t dtype, line;
        if (v[3].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            dtype = v[3].via.i64;
        else if (v[3].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                 v[3].via.u64 < WB_DTYPE_COUNT)
            dtype = (int64_t)v[3].via.u64;
        else
            return WB_ERULE;
        if (v[4].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            v[4].via.u64 > INT32_MAX)
            return WB_EPROTO;
        line = (int64_t)v[4].via.u64;
        if ((int)v[0].via.u64 == WB__RULE_CAST &&
            (dtype < 0 || dtype >= WB_DTYPE_COUNT))
            return WB_ERULE;
        char *x = wb__mp_strdup(&v[1]), *y = wb__mp_strdup(&v[2]);
        if (x == NULL || y == NULL || strlen(x) != v[1].via.str.size ||
            strlen(y) != v[2].via.str.size) {
            int rc = (x && y) ? WB_ERULE : WB_ENOMEM;
            free(x);
            free(y);
            return rc;
        }
        int rc =
            wb__ruleset_add(rs, (int)v[0].via.u64, x, y, (int)dtype, (int)line);
        free(x);
        free(y);
        if (rc)
            return rc;
    }
    return 0;
}

void wb__frame_header(uint8_t out[WB_FRAME_HEADER], uint32_t len) {
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

uint32_t wb__frame_length(const uint8_t in[WB_FRAME_HEADER]) {
    return ((uint32_t)in[0] << 24) | ((uint32_t)in[1] << 16) |
           ((uint32_t)in[2] << 8) | in[3];
}
