/* wire.h -- The wbroker wire protocol: framing, limits, safe msgpack
 * decoding and typed accessors.
 *
 * A frame is a 4-byte big-endian body length followed by one msgpack map.
 * Requests carry "op" and "id"; replies carry the same "id" and "err" (0 or
 * a negative WB_E* code) plus "msg" on failure.  docs/protocol.md describes
 * every message.  No I/O lives here: the daemon and the client both feed
 * bytes in and take bytes out. */
#ifndef WB_PROTO_WIRE_H
#define WB_PROTO_WIRE_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "rules.h"
#include "wbroker.h"

/* Exchanged in the hello.  2: list rows carry pins and owners (and a
 * digest when asked).  The daemon still speaks 1 to older clients, which
 * take list rows of six fields only. */
#define WB_PROTO_VERSION 2
#define WB_PROTO_MIN 1    /* Oldest protocol the daemon still speaks. */
#define WB_FRAME_HEADER 4 /* Bytes of the length prefix. */
#define WB_MAX_FRAME (32u * 1024 * 1024)  /* Max body bytes of one frame. */
#define WB_MAX_OBJECTS (2u * 1024 * 1024) /* Max msgpack objects a frame. */
#define WB_MAX_DEPTH 6                    /* Max nesting of containers. */
#define WB_MAX_TENSORS (256u * 1024)      /* Max tensors in one model. */
#define WB_MAX_META 1024                  /* Max metadata entries. */
#define WB_MAX_META_BYTES (1024 * 1024)   /* Max bytes of one metadata value. */
#define WB_MAX_RULES 4096                 /* Max rules in one request. */
#define WB_MAX_SEGMENTS 64                /* Max segments in one map reply. */

/* Checks that buf[0..len) holds exactly one well-formed msgpack object whose
 * declared lengths all fit in the bytes present, with at most
 * WB_MAX_OBJECTS objects and WB_MAX_DEPTH levels of nesting.  Runs before
 * msgpack-c's unpacker, which trusts length headers and would otherwise
 * reserve memory for counts the frame cannot hold.  Returns 0 or
 * WB_EPROTO / WB_ETOOBIG. */
int wb__mp_check(const uint8_t *buf, size_t len);

/* A decoded message: the root map and the zone that owns it. */
typedef struct wb__msg {
    msgpack_unpacked up;        /* Owns the zone. */
    const msgpack_object *root; /* The root map. */
    void *owned;                /* Body bytes freed with the message, or
                                 * NULL: strings point into the body. */
} wb__msg;

/* Validates and unpacks one frame body; the root must be a map.  Strings
 * of the result point into body, which must outlive the message (or be
 * handed over in m->owned).  Returns 0 or WB_EPROTO / WB_ETOOBIG.  Free
 * with wb__msg_free() in every case. */
int wb__msg_decode(wb__msg *m, const uint8_t *body, size_t len);
void wb__msg_free(wb__msg *m);

/* Typed accessors on a map.  Each returns 0 when the key holds a value of
 * the type asked for, 1 when the key is absent or nil (the out value is
 * then untouched), and WB_EPROTO when it holds another type. */
const msgpack_object *wb__mp_get(const msgpack_object *map, const char *key);
int wb__mp_get_u64(const msgpack_object *map, const char *key, uint64_t *v);
int wb__mp_get_i64(const msgpack_object *map, const char *key, int64_t *v);
int wb__mp_get_bool(const msgpack_object *map, const char *key, int *v);
/* Strings come back as pointer + length into the message (not NUL-ended). */
int wb__mp_get_str(const msgpack_object *map, const char *key, const char **s,
                   size_t *n);
int wb__mp_get_array(const msgpack_object *map, const char *key,
                     const msgpack_object_array **a);
int wb__mp_get_map(const msgpack_object *map, const char *key,
                   const msgpack_object_map **m);
/* Copies a msgpack string into a new NUL-terminated buffer (NULL on OOM). */
char *wb__mp_strdup(const msgpack_object *o);
/* 1 if o is a string equal to s. */
int wb__mp_streq(const msgpack_object *o, const char *s);

/* Validates a tensor or model name: 1..WB_MAX_NAME bytes of valid UTF-8
 * without NUL.  Returns 0 or WB_ENAME. */
int wb__check_name(const char *s, size_t n);
/* Validates a text value (a metadata value): any number of bytes, even
 * none, of valid UTF-8 without NUL, judged as wb__check_name() judges a
 * name.  s may be NULL when n is 0.  Returns 0 or WB_EINVAL. */
int wb__check_text(const char *s, size_t n);

/* Decodes a tensor entry [name, dtype-name, [dims...]] into *t (name
 * allocated).  Returns 0, WB_ENAME, WB_EDTYPE, WB_ESHAPE or WB_EPROTO. */
int wb__decode_tinfo(const msgpack_object *o, wb__tinfo *t);
/* Packs a tensor entry as [name, dtype-name, [dims...]]. */
void wb__pack_tinfo(msgpack_packer *pk, const char *name, int dtype, int ndim,
                    const int64_t *shape);
/* Decodes/packs a rule list [[kind, a, b, dtype, line], ...]. */
int wb__decode_rules(const msgpack_object_array *a, wb__ruleset *rs);
void wb__pack_rules(msgpack_packer *pk, const wb__ruleset *rs);

/* Packing helpers. */
void wb__pack_cstr(msgpack_packer *pk, const char *s);
void wb__pack_key(msgpack_packer *pk, const char *key);

/* Product of dims times element size into *nbytes, refusing negative dims
 * and overflow.  Returns 0 or WB_ESHAPE. */
int wb__tensor_nbytes(int dtype, int ndim, const int64_t *shape,
                      uint64_t *nbytes);

/* Writes the 4-byte length prefix for a body of len bytes. */
void wb__frame_header(uint8_t out[WB_FRAME_HEADER], uint32_t len);
uint32_t wb__frame_length(const uint8_t in[WB_FRAME_HEADER]);

#endif
