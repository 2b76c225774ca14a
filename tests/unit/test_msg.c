/* test_msg.c -- Unit tests of proto/msg: every message of the protocol
 * packed by its encoder and read back by its decoder with every field
 * compared, and every decoder fed malformed messages (wrong types, wrong
 * array lengths, missing fields, unknown dtypes, too many dimensions,
 * negative and overflowing integers) that it must refuse with its
 * documented code, without crashing or leaking.
 *
 * A malformed message is made from a good one: its decoded tree is copied
 * with one field changed (in a zone of this file's), packed again as a
 * peer would send it, and decoded from those bytes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msg.h"
#include "wire.h"

#define TEST_ID 4242                /* Id of the messages built here. */
#define TEST_ZONE_CHUNK (64 * 1024) /* Chunk of the zone of edited trees. */
#define TEST_PID 31337u             /* A daemon's process id. */
#define MIB (1024u * 1024u)         /* Bytes in a MiB. */

/* The zone edited trees live in, from the group's setup to its teardown. */
static msgpack_zone *zone;

/* ------------------------------------------------------------ helpers */

/* A message being packed. */
typedef struct packed {
    msgpack_sbuffer sb; /* The bytes so far. */
    msgpack_packer pk;  /* Packer writing into sb. */
} packed;

/* Starts an empty message in p and returns its packer. */
static msgpack_packer *pk_start(packed *p) {
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
    return &p->pk;
}

/* Decodes the bytes packed in p into *m with wb__msg_decode(); m owns the
 * bytes from then on (free it with wb__msg_free()). */
static void pk_decode(packed *p, wb__msg *m) {
    assert_int_equal(wb__msg_decode(m, (const uint8_t *)p->sb.data, p->sb.size),
                     0);
    m->owned = msgpack_sbuffer_release(&p->sb);
    msgpack_sbuffer_destroy(&p->sb);
}

static void *zalloc(size_t n) {
    void *p = msgpack_zone_malloc(zone, n ? n : 1);
    assert_non_null(p);
    return p;
}

static msgpack_object o_u64(uint64_t v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER};
    o.via.u64 = v;
    return o;
}

/* A negative integer (v < 0), as the unpacker gives one. */
static msgpack_object o_neg(int64_t v) {
    assert_true(v < 0);
    msgpack_object o = {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER};
    o.via.i64 = v;
    return o;
}

static msgpack_object o_str(const char *s) {
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)strlen(s);
    return o;
}

static msgpack_object o_bool(int v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_BOOLEAN};
    o.via.boolean = v != 0;
    return o;
}

static msgpack_object o_f64(double v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
    o.via.f64 = v;
    return o;
}

static msgpack_object o_nil(void) {
    msgpack_object o = {.type = MSGPACK_OBJECT_NIL};
    return o;
}

/* An array of n copies of v. */
static msgpack_object o_fill(uint32_t n, msgpack_object v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_ARRAY};
    o.via.array.size = n;
    o.via.array.ptr = zalloc(n * sizeof(msgpack_object));
    for (uint32_t i = 0; i < n; i++)
        o.via.array.ptr[i] = v;
    return o;
}

/* A map of n entries, each key k and value v. */
static msgpack_object o_map_fill(uint32_t n, msgpack_object k,
                                 msgpack_object v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_MAP};
    o.via.map.size = n;
    o.via.map.ptr = zalloc(n * sizeof(msgpack_object_kv));
    for (uint32_t i = 0; i < n; i++) {
        o.via.map.ptr[i].key = k;
        o.via.map.ptr[i].val = v;
    }
    return o;
}

/* The value of key in map m, which must hold it. */
static const msgpack_object *at(const msgpack_object *m, const char *key) {
    const msgpack_object *o = wb__mp_get(m, key);
    assert_non_null(o);
    return o;
}

/* A copy of map m with the value of key set to v (added when absent). */
static msgpack_object with(const msgpack_object *m, const char *key,
                           msgpack_object v) {
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    uint32_t n = m->via.map.size;
    msgpack_object o = *m;
    o.via.map.ptr = zalloc((n + 1) * sizeof(msgpack_object_kv));
    memcpy(o.via.map.ptr, m->via.map.ptr, n * sizeof(msgpack_object_kv));
    for (uint32_t i = 0; i < n; i++)
        if (wb__mp_streq(&o.via.map.ptr[i].key, key)) {
            o.via.map.ptr[i].val = v;
            return o;
        }
    o.via.map.ptr[n].key = o_str(key);
    o.via.map.ptr[n].val = v;
    o.via.map.size = n + 1;
    return o;
}

/* A copy of map m without key, which it must hold. */
static msgpack_object without(const msgpack_object *m, const char *key) {
    at(m, key);
    msgpack_object o = *m;
    o.via.map.ptr = zalloc(m->via.map.size * sizeof(msgpack_object_kv));
    o.via.map.size = 0;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (!wb__mp_streq(&m->via.map.ptr[i].key, key))
            o.via.map.ptr[o.via.map.size++] = m->via.map.ptr[i];
    return o;
}

/* A copy of array a with element i set to v. */
static msgpack_object elem(const msgpack_object *a, uint32_t i,
                           msgpack_object v) {
    assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
    assert_true(i < a->via.array.size);
    msgpack_object o = *a;
    o.via.array.ptr = zalloc(a->via.array.size * sizeof(msgpack_object));
    memcpy(o.via.array.ptr, a->via.array.ptr,
           a->via.array.size * sizeof(msgpack_object));
    o.via.array.ptr[i] = v;
    return o;
}

/* A copy of array a cut to n elements, or grown to n with nils. */
static msgpack_object resized(const msgpack_object *a, uint32_t n) {
    assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
    msgpack_object o = o_fill(n, o_nil());
    uint32_t keep = n < a->via.array.size ? n : a->via.array.size;
    memcpy(o.via.array.ptr, a->via.array.ptr, keep * sizeof(msgpack_object));
    return o;
}

/* A copy of map m whose array field key has element row set to v. */
static msgpack_object with_row(const msgpack_object *m, const char *key,
                               uint32_t row, msgpack_object v) {
    return with(m, key, elem(at(m, key), row, v));
}

/* A copy of map m whose array field key has in its element row (an
 * array) the element col set to v. */
static msgpack_object with_cell(const msgpack_object *m, const char *key,
                                uint32_t row, uint32_t col, msgpack_object v) {
    const msgpack_object *a = at(m, key);
    assert_true(row < a->via.array.size);
    return with_row(m, key, row, elem(&a->via.array.ptr[row], col, v));
}

/* A copy of map m whose array field key has its element row resized to
 * n elements. */
static msgpack_object with_row_len(const msgpack_object *m, const char *key,
                                   uint32_t row, uint32_t n) {
    const msgpack_object *a = at(m, key);
    assert_true(row < a->via.array.size);
    return with_row(m, key, row, resized(&a->via.array.ptr[row], n));
}

/* A decoder under test: decodes root, frees what it made, returns the
 * decoder's code. */
typedef int (*decoder)(const msgpack_object *root);

/* Packs o as a peer would send it, decodes those bytes and returns what
 * dec says of them. */
static int run(decoder dec, msgpack_object o) {
    packed p;
    msgpack_pack_object(pk_start(&p), o);
    wb__msg m;
    pk_decode(&p, &m);
    int rc = dec(m.root);
    wb__msg_free(&m);
    return rc;
}

/* Checks that s views the C string want. */
static void assert_str(wb__str s, const char *want) {
    assert_int_equal(s.n, strlen(want));
    assert_memory_equal(s.p, want, s.n);
}

/* Checks the envelope of a request: op, id, and nfields more fields. */
static void assert_req(const msgpack_object *root, const char *op, uint64_t id,
                       uint32_t nfields) {
    const char *s;
    size_t n;
    uint64_t got;
    assert_int_equal(wb__mp_get_str(root, "op", &s, &n), 0);
    assert_int_equal(n, strlen(op));
    assert_memory_equal(s, op, n);
    assert_int_equal(wb__mp_get_u64(root, "id", &got), 0);
    assert_int_equal(got, id);
    assert_int_equal(root->via.map.size, nfields + 2);
}

/* Checks the envelope of a reply: id and err 0. */
static void assert_ok_rep(const msgpack_object *root) {
    uint64_t id;
    int err = -1;
    wb__str msg;
    const char *bad = "unset";
    assert_int_equal(wb__decode_rep_envelope(root, &id, &err, &msg, &bad), 0);
    assert_int_equal(id, TEST_ID);
    assert_int_equal(err, 0);
    assert_int_equal(msg.n, 0);
    assert_null(bad);
}

/* ------------------------------------------------------------ decoders */

/* The field the envelope decoder named at fault in the last call of
 * dec_envelope(). */
static const char *envelope_bad;

static int dec_envelope(const msgpack_object *root) {
    uint64_t id;
    int err;
    wb__str msg;
    return wb__decode_rep_envelope(root, &id, &err, &msg, &envelope_bad);
}

static int dec_hello_req(const msgpack_object *root) {
    wb__hello_req r;
    return wb__decode_hello_req(root, &r);
}

static int dec_hello_rep(const msgpack_object *root) {
    wb__hello_rep r;
    return wb__decode_hello_rep(root, &r);
}

/* The entry index wb__decode_publish_req() reported in the last call of
 * dec_publish_req(). */
static size_t publish_bad;

static int dec_publish_req(const msgpack_object *root) {
    wb__publish_req r;
    int rc = wb__decode_publish_req(root, &r, &publish_bad);
    wb__publish_req_free(&r);
    return rc;
}

static int dec_publish_rep(const msgpack_object *root) {
    wb__publish_rep r;
    int rc = wb__decode_publish_rep(root, &r);
    wb__publish_rep_free(&r);
    return rc;
}

static int dec_pub_req(const msgpack_object *root) {
    uint64_t pub;
    return wb__decode_pub_req(root, &pub);
}

static int dec_version_rep(const msgpack_object *root) {
    uint64_t v;
    return wb__decode_u64_rep(root, "version", &v);
}

static int dec_model_req(const msgpack_object *root) {
    wb__model_req r;
    return wb__decode_model_req(root, &r);
}

static int dec_watch_req(const msgpack_object *root) {
    wb__watch_req r;
    return wb__decode_watch_req(root, &r);
}

static int dec_map_req(const msgpack_object *root) {
    wb__map_req r;
    int rc = wb__decode_map_req(root, &r);
    wb__map_req_free(&r);
    return rc;
}

static int dec_map_rep(const msgpack_object *root) {
    wb__map_rep r;
    int rc = wb__decode_map_rep(root, 0, &r);
    wb__map_rep_free(&r);
    return rc;
}

static int dec_load_error(const msgpack_object *root) {
    wb__map_rep r;
    int rc = wb__decode_map_rep(root, 1, &r);
    wb__map_rep_free(&r);
    return rc;
}

static int dec_list_rep(const msgpack_object *root) {
    static wb__list_entry sentinel;
    wb__list_entry *v = &sentinel; /* Must come back NULL on failure. */
    size_t n = 99;
    int rc = wb__decode_list_rep(root, &v, &n);
    if (rc) {
        assert_null(v);
        assert_int_equal(n, 0);
    }
    free(v);
    return rc;
}

static int dec_status_rep(const msgpack_object *root) {
    wb__status_rep r;
    int rc = wb__decode_status_rep(root, &r);
    wb__status_rep_free(&r);
    return rc;
}

/* ------------------------------------------------------------ envelope */

/* Replies carry id and err, and msg on failure; requests op and id. */
static void test_msg_envelope(void **state) {
    packed p;
    wb__msg m;
    wb__pack_rep_begin(pk_start(&p), TEST_ID, 0, 0);
    pk_decode(&p, &m);
    assert_int_equal(m.root->via.map.size, 2);
    assert_ok_rep(m.root);
    wb__msg_free(&m);

    msgpack_packer *pk = pk_start(&p);
    wb__pack_rep_begin(pk, 7, WB_ENOMODEL, 1);
    wb__pack_key(pk, "msg");
    wb__pack_cstr(pk, "no model named x");
    pk_decode(&p, &m);
    uint64_t id;
    int err;
    wb__str msg;
    assert_int_equal(wb__decode_rep_envelope(m.root, &id, &err, &msg, NULL), 0);
    assert_int_equal(id, 7);
    assert_int_equal(err, WB_ENOMODEL);
    assert_str(msg, "no model named x");
    wb__msg_free(&m);

    wb__pack_req_begin(pk_start(&p), "list", TEST_ID, 0);
    pk_decode(&p, &m);
    assert_req(m.root, "list", TEST_ID, 0);
    wb__msg_free(&m);
}

/* A WB_ESYS error reply carries the system's errno; other errors do not,
 * and a nonsense errno decodes as none. */
static void test_msg_error_rep_errno(void **state) {
    packed p;
    wb__msg m;
    wb__pack_error_rep(pk_start(&p), 9, WB_ESYS, "cannot reopen", EMFILE);
    pk_decode(&p, &m);
    uint64_t id;
    int err;
    wb__str msg;
    assert_int_equal(wb__decode_rep_envelope(m.root, &id, &err, &msg, NULL), 0);
    assert_int_equal(id, 9);
    assert_int_equal(err, WB_ESYS);
    assert_str(msg, "cannot reopen");
    assert_int_equal(wb__decode_rep_errno(m.root), EMFILE);
    wb__msg_free(&m);

    wb__pack_error_rep(pk_start(&p), 9, WB_ENOMODEL, "no model", 0);
    pk_decode(&p, &m);
    assert_int_equal(m.root->via.map.size, 3);
    assert_int_equal(wb__decode_rep_errno(m.root), 0);
    wb__msg_free(&m);

    msgpack_packer *pk = pk_start(&p);
    wb__pack_rep_begin(pk, 9, WB_ESYS, 2);
    wb__pack_key(pk, "msg");
    wb__pack_cstr(pk, "x");
    wb__pack_key(pk, "errno");
    msgpack_pack_int(pk, -4);
    pk_decode(&p, &m);
    assert_int_equal(wb__decode_rep_errno(m.root), 0);
    wb__msg_free(&m);
}

/* A broken envelope is refused, naming the field: err first, then id,
 * then msg. */
static void test_msg_envelope_malformed(void **state) {
    packed p;
    wb__msg m;
    msgpack_packer *pk = pk_start(&p);
    wb__pack_rep_begin(pk, TEST_ID, WB_EINVAL, 1);
    wb__pack_key(pk, "msg");
    wb__pack_cstr(pk, "bad");
    pk_decode(&p, &m);
    const msgpack_object *r = m.root;
    assert_int_equal(run(dec_envelope, *r), 0);
    assert_null(envelope_bad);
    /* err and id are required, msg is not. */
    assert_int_equal(run(dec_envelope, without(r, "err")), WB_EPROTO);
    assert_string_equal(envelope_bad, "err");
    assert_int_equal(run(dec_envelope, without(r, "id")), WB_EPROTO);
    assert_string_equal(envelope_bad, "id");
    assert_int_equal(run(dec_envelope, without(r, "msg")), 0);
    msgpack_object bad_err[] = {
        o_str("-1"),       o_u64(1), o_f64(-1.0), o_neg((int64_t)INT32_MIN - 1),
        o_u64(UINT64_MAX), o_bool(0)};
    for (size_t i = 0; i < sizeof(bad_err) / sizeof(bad_err[0]); i++) {
        assert_int_equal(run(dec_envelope, with(r, "err", bad_err[i])),
                         WB_EPROTO);
        assert_string_equal(envelope_bad, "err");
    }
    assert_int_equal(run(dec_envelope, with(r, "err", o_neg(INT32_MIN))), 0);
    msgpack_object bad_id[] = {o_neg(-1), o_str("1"), o_f64(1.0)};
    for (size_t i = 0; i < sizeof(bad_id) / sizeof(bad_id[0]); i++) {
        assert_int_equal(run(dec_envelope, with(r, "id", bad_id[i])),
                         WB_EPROTO);
        assert_string_equal(envelope_bad, "id");
    }
    /* err is looked at before id. */
    msgpack_object both = with(r, "id", o_neg(-1));
    assert_int_equal(run(dec_envelope, with(&both, "err", o_u64(3))),
                     WB_EPROTO);
    assert_string_equal(envelope_bad, "err");
    assert_int_equal(run(dec_envelope, with(r, "msg", o_u64(5))), WB_EPROTO);
    assert_string_equal(envelope_bad, "msg");
    assert_int_equal(run(dec_envelope, with(r, "msg", o_nil())), 0);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ hello */

static void test_msg_hello(void **state) {
    packed p;
    wb__msg m;
    wb__pack_hello_req(pk_start(&p), TEST_ID, WB_PROTO_VERSION, "9.8.7");
    pk_decode(&p, &m);
    assert_req(m.root, "hello", TEST_ID, 2);
    wb__hello_req q;
    assert_int_equal(wb__decode_hello_req(m.root, &q), 0);
    assert_int_equal(q.proto, WB_PROTO_VERSION);
    assert_str(q.client, "9.8.7");
    /* The client's version is optional; the protocol's is not. */
    assert_int_equal(run(dec_hello_req, without(m.root, "client")), 0);
    assert_int_equal(run(dec_hello_req, without(m.root, "proto")), WB_EPROTO);
    assert_int_equal(run(dec_hello_req, with(m.root, "proto", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_hello_req, with(m.root, "proto", o_str("1"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_hello_req, with(m.root, "client", o_u64(1))),
                     WB_EPROTO);
    wb__msg_free(&m);

    wb__pack_hello_rep(pk_start(&p), TEST_ID, TEST_PID, WB_PROTO_VERSION);
    pk_decode(&p, &m);
    assert_ok_rep(m.root);
    wb__hello_rep h;
    assert_int_equal(wb__decode_hello_rep(m.root, &h), 0);
    assert_int_equal(h.proto, WB_PROTO_VERSION);
    assert_str(h.server, wb_version_string());
    assert_int_equal(h.pid, TEST_PID);
    static const char *const need[] = {"proto", "server", "pid"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        assert_int_equal(run(dec_hello_rep, without(m.root, need[i])),
                         WB_EPROTO);
    assert_int_equal(run(dec_hello_rep, with(m.root, "pid", o_u64(UINT32_MAX))),
                     0);
    assert_int_equal(run(dec_hello_rep,
                         with(m.root, "pid", o_u64((uint64_t)UINT32_MAX + 1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_hello_rep, with(m.root, "pid", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_hello_rep, with(m.root, "server", o_u64(1))),
                     WB_EPROTO);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ publish */

static int64_t mat[2] = {3, 4}; /* Shape of the tied pair. */
static int64_t empty[1] = {0};  /* A tensor of no elements. */
static int64_t ones[WB_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 1,
                                    1, 1, 1, 1, 1, 1, 1, 1};

/* The tensors of the publish below: the last is tied to the first. */
static const wb_tensor_spec specs[] = {
    {"a.weight", WB_F32, 2, mat, NULL},
    {"scalar", WB_BF16, 0, NULL, NULL},
    {"none", WB_I64, 1, empty, NULL},
    {"deep", WB_U8, WB_MAX_DIMS, ones, NULL},
    {"a.tied", WB_F32, 2, mat, "a.weight"},
};
#define NSPECS (sizeof(specs) / sizeof(specs[0]))
static const wb_kv kvs[] = {
    {"format", "pt"}, {"note", "h\xc3\xa9llo"}, {"empty", ""}};
#define NKVS (sizeof(kvs) / sizeof(kvs[0]))
static const wb__tie tie[] = {{4, 0}};

/* Packs the publish request above and decodes it into *m. */
static void good_publish_req(wb__msg *m) {
    packed p;
    wb__pack_publish_req(pk_start(&p), TEST_ID, "resnet", specs, NSPECS, kvs,
                         NKVS, tie, 1);
    pk_decode(&p, m);
}

static void test_msg_publish_req(void **state) {
    wb__msg m;
    good_publish_req(&m);
    assert_req(m.root, "publish", TEST_ID, 4);
    wb__publish_req r;
    size_t bad = 99;
    assert_int_equal(wb__decode_publish_req(m.root, &r, &bad), 0);
    assert_str(r.model, "resnet");
    assert_int_equal(r.n, NSPECS);
    for (size_t i = 0; i < NSPECS; i++) {
        assert_string_equal(r.t[i].name, specs[i].name);
        assert_int_equal(r.t[i].dtype, specs[i].dtype);
        assert_int_equal(r.t[i].ndim, specs[i].ndim);
        for (int k = 0; k < specs[i].ndim; k++)
            assert_int_equal(r.t[i].shape[k], specs[i].shape[k]);
    }
    assert_int_equal(r.nmeta, NKVS);
    for (size_t i = 0; i < NKVS; i++) {
        assert_str(r.mkeys[i], kvs[i].key);
        assert_str(r.mvals[i], kvs[i].value);
    }
    assert_int_equal(r.nties, 1);
    assert_int_equal(r.ties[0].alias, 4);
    assert_int_equal(r.ties[0].stored, 0);
    wb__publish_req_free(&r);
    wb__msg_free(&m);

    /* Without metadata or ties, neither field is sent. */
    packed p;
    wb__pack_publish_req(pk_start(&p), TEST_ID, "m", NULL, 0, NULL, 0, NULL, 0);
    pk_decode(&p, &m);
    assert_req(m.root, "publish", TEST_ID, 2);
    assert_int_equal(wb__decode_publish_req(m.root, &r, &bad), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.nmeta, 0);
    assert_int_equal(r.nties, 0);
    wb__publish_req_free(&r);
    wb__msg_free(&m);
}

/* Runs dec_publish_req on o and checks its code and the entry it blamed
 * (bad < 0: not checked). */
static void expect_publish(msgpack_object o, int rc, long bad) {
    assert_int_equal(run(dec_publish_req, o), rc);
    if (bad >= 0)
        assert_int_equal(publish_bad, (size_t)bad);
}

static void test_msg_publish_req_malformed(void **state) {
    wb__msg m;
    good_publish_req(&m);
    const msgpack_object *r = m.root;
    expect_publish(*r, 0, -1);
    expect_publish(without(r, "model"), WB_EPROTO, -1);
    expect_publish(with(r, "model", o_u64(1)), WB_EPROTO, -1);
    expect_publish(without(r, "tensors"), WB_EPROTO, -1);
    expect_publish(with(r, "tensors", o_map_fill(0, o_nil(), o_nil())),
                   WB_EPROTO, -1);
    /* A tensor entry is [name, dtype, [dims]]: nothing more or less. */
    expect_publish(with_row_len(r, "tensors", 1, 2), WB_EPROTO, 1);
    expect_publish(with_row_len(r, "tensors", 2, 4), WB_EPROTO, 2);
    expect_publish(with_row(r, "tensors", 1, o_str("scalar")), WB_EPROTO, 1);
    expect_publish(with_cell(r, "tensors", 1, 0, o_str("")), WB_ENAME, 1);
    expect_publish(with_cell(r, "tensors", 1, 0, o_str("a\xff")), WB_ENAME, 1);
    expect_publish(with_cell(r, "tensors", 1, 0, o_u64(1)), WB_EPROTO, 1);
    expect_publish(with_cell(r, "tensors", 3, 1, o_str("F33")), WB_EDTYPE, 3);
    expect_publish(with_cell(r, "tensors", 3, 1, o_str("F32F32F32F32F32")),
                   WB_EDTYPE, 3);
    expect_publish(with_cell(r, "tensors", 3, 1, o_u64(WB_F32)), WB_EPROTO, 3);
    /* Dimensions: at most WB_MAX_DIMS, none negative or overflowing. */
    expect_publish(
        with_cell(r, "tensors", 3, 2, o_fill(WB_MAX_DIMS + 1, o_u64(1))),
        WB_ESHAPE, 3);
    const msgpack_object *dims =
        &at(r, "tensors")->via.array.ptr[0].via.array.ptr[2];
    expect_publish(with_cell(r, "tensors", 0, 2, elem(dims, 0, o_neg(-1))),
                   WB_ESHAPE, 0);
    expect_publish(
        with_cell(r, "tensors", 0, 2, elem(dims, 0, o_u64(UINT64_MAX))),
        WB_ESHAPE, 0);
    expect_publish(with_cell(r, "tensors", 0, 2, o_fill(2, o_u64(1ull << 40))),
                   WB_ESHAPE, 0);
    expect_publish(with_cell(r, "tensors", 0, 2, o_str("3x4")), WB_EPROTO, 0);
    /* Metadata: a map of strings. */
    expect_publish(with(r, "meta", o_fill(1, o_str("x"))), WB_EPROTO, -1);
    expect_publish(with(r, "meta", o_map_fill(1, o_str("k"), o_u64(1))),
                   WB_EPROTO, -1);
    expect_publish(with(r, "meta", o_map_fill(1, o_u64(1), o_str("v"))),
                   WB_EPROTO, -1);
    expect_publish(without(r, "meta"), 0, -1);
    /* Ties: pairs of unsigned indices, no more than tensors. */
    expect_publish(without(r, "tied"), 0, -1);
    expect_publish(with(r, "tied", o_map_fill(0, o_nil(), o_nil())), WB_EPROTO,
                   -1);
    expect_publish(with_row_len(r, "tied", 0, 3), WB_EPROTO, 0);
    expect_publish(with_row_len(r, "tied", 0, 1), WB_EPROTO, 0);
    expect_publish(with_cell(r, "tied", 0, 0, o_neg(-1)), WB_EPROTO, 0);
    expect_publish(with_cell(r, "tied", 0, 1, o_str("0")), WB_EPROTO, 0);
    expect_publish(with(r, "tied", o_fill(NSPECS + 1, o_fill(2, o_u64(0)))),
                   WB_EPROTO, -1);
    /* Limits. */
    expect_publish(with(r, "tensors", o_fill(WB_MAX_TENSORS + 1, o_nil())),
                   WB_ETOOBIG, -1);
    expect_publish(
        with(r, "meta", o_map_fill(WB_MAX_META + 1, o_str("k"), o_str("v"))),
        WB_ETOOBIG, -1);
    wb__msg_free(&m);
}

static void test_msg_publish_rep(void **state) {
    static const uint64_t offs[] = {64, 128, 4096};
    packed p;
    wb__msg m;
    wb__pack_publish_rep(pk_start(&p), TEST_ID, 7, 2 * MIB, offs, 3);
    pk_decode(&p, &m);
    assert_ok_rep(m.root);
    wb__publish_rep r;
    assert_int_equal(wb__decode_publish_rep(m.root, &r), 0);
    assert_int_equal(r.pub, 7);
    assert_int_equal(r.size, 2 * MIB);
    assert_int_equal(r.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(r.offs[i], offs[i]);
    wb__publish_rep_free(&r);

    const msgpack_object *o = m.root;
    static const char *const need[] = {"pub", "size", "offs"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        assert_int_equal(run(dec_publish_rep, without(o, need[i])), WB_EPROTO);
    assert_int_equal(run(dec_publish_rep, with(o, "pub", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_publish_rep, with(o, "size", o_str("2M"))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_publish_rep, with(o, "offs", o_map_fill(0, o_nil(), o_nil()))),
        WB_EPROTO);
    assert_int_equal(run(dec_publish_rep, with_row(o, "offs", 1, o_neg(-5))),
                     WB_EPROTO);
    assert_int_equal(run(dec_publish_rep, with_row(o, "offs", 1, o_str("8"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_publish_rep, with_row(o, "offs", 2, o_f64(1.5))),
                     WB_EPROTO);
    wb__msg_free(&m);

    wb__pack_publish_rep(pk_start(&p), TEST_ID, 1, 0, NULL, 0);
    pk_decode(&p, &m);
    assert_int_equal(wb__decode_publish_rep(m.root, &r), 0);
    assert_int_equal(r.n, 0);
    wb__publish_rep_free(&r);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ small */

/* commit, abort, drop and watch requests, and one-number replies. */
static void test_msg_small(void **state) {
    packed p;
    wb__msg m;
    static const char *const ops[] = {"commit", "abort"};
    for (size_t i = 0; i < 2; i++) {
        wb__pack_pub_req(pk_start(&p), ops[i], TEST_ID, 11 + i);
        pk_decode(&p, &m);
        assert_req(m.root, ops[i], TEST_ID, 1);
        uint64_t pub = 0;
        assert_int_equal(wb__decode_pub_req(m.root, &pub), 0);
        assert_int_equal(pub, 11 + i);
        wb__msg_free(&m);
    }

    wb__pack_u64_rep(pk_start(&p), TEST_ID, "version", 5);
    pk_decode(&p, &m);
    assert_ok_rep(m.root);
    uint64_t v = 0;
    assert_int_equal(wb__decode_u64_rep(m.root, "version", &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(wb__decode_u64_rep(m.root, NULL, &v), 0);
    assert_int_equal(v, 0);
    wb__msg_free(&m);
    wb__pack_u64_rep(pk_start(&p), TEST_ID, NULL, 99); /* abort's reply */
    pk_decode(&p, &m);
    assert_int_equal(m.root->via.map.size, 2);
    assert_ok_rep(m.root);
    v = 1;
    assert_int_equal(wb__decode_u64_rep(m.root, NULL, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(wb__decode_u64_rep(m.root, "dropped", &v), WB_EPROTO);
    wb__msg_free(&m);

    wb__pack_drop_req(pk_start(&p), TEST_ID, "net", 3);
    pk_decode(&p, &m);
    assert_req(m.root, "drop", TEST_ID, 2);
    wb__model_req d;
    assert_int_equal(wb__decode_model_req(m.root, &d), 0);
    assert_str(d.model, "net");
    assert_int_equal(d.version, 3);
    wb__msg_free(&m);

    static const int64_t timeouts[] = {-1, 0, 1500, INT64_MAX};
    for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
        wb__pack_watch_req(pk_start(&p), TEST_ID, "net", 2 + i, timeouts[i]);
        pk_decode(&p, &m);
        assert_req(m.root, "watch", TEST_ID, 3);
        wb__watch_req w;
        assert_int_equal(wb__decode_watch_req(m.root, &w), 0);
        assert_str(w.model, "net");
        assert_int_equal(w.after, 2 + i);
        assert_int_equal(w.timeout_ms, timeouts[i]);
        wb__msg_free(&m);
    }
}

static void test_msg_small_malformed(void **state) {
    packed p;
    wb__msg m;
    wb__pack_pub_req(pk_start(&p), "commit", TEST_ID, 3);
    pk_decode(&p, &m);
    assert_int_equal(run(dec_pub_req, without(m.root, "pub")), WB_EPROTO);
    assert_int_equal(run(dec_pub_req, with(m.root, "pub", o_neg(-3))),
                     WB_EPROTO);
    assert_int_equal(run(dec_pub_req, with(m.root, "pub", o_str("3"))),
                     WB_EPROTO);
    wb__msg_free(&m);

    wb__pack_u64_rep(pk_start(&p), TEST_ID, "version", 5);
    pk_decode(&p, &m);
    msgpack_object bad[] = {o_neg(-5), o_str("5"), o_f64(5.0), o_bool(1)};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(run(dec_version_rep, with(m.root, "version", bad[i])),
                         WB_EPROTO);
    assert_int_equal(run(dec_version_rep, without(m.root, "version")),
                     WB_EPROTO);
    wb__msg_free(&m);

    /* drop (and map): a model is required, a version is not. */
    wb__pack_drop_req(pk_start(&p), TEST_ID, "net", 3);
    pk_decode(&p, &m);
    assert_int_equal(run(dec_model_req, without(m.root, "model")), WB_EINVAL);
    assert_int_equal(run(dec_model_req, with(m.root, "model", o_u64(1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_model_req, with(m.root, "version", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_model_req, with(m.root, "version", o_str("1"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_model_req, without(m.root, "version")), 0);
    wb__msg_free(&m);

    wb__pack_watch_req(pk_start(&p), TEST_ID, "net", 2, 100);
    pk_decode(&p, &m);
    const msgpack_object *w = m.root;
    assert_int_equal(run(dec_watch_req, without(w, "model")), WB_EINVAL);
    assert_int_equal(run(dec_watch_req, with(w, "model", o_bool(1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_watch_req, with(w, "after", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_watch_req, with(w, "timeout", o_str("1s"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_watch_req, with(w, "timeout", o_u64(UINT64_MAX))),
                     WB_EPROTO);
    assert_int_equal(run(dec_watch_req, with(w, "timeout", o_f64(1.0))),
                     WB_EPROTO);
    assert_int_equal(run(dec_watch_req, with(w, "timeout", o_neg(INT64_MIN))),
                     0);
    assert_int_equal(run(dec_watch_req, without(w, "after")), 0);
    /* Without a timeout the watch waits forever. */
    msgpack_object forever = without(w, "timeout");
    packed q;
    msgpack_pack_object(pk_start(&q), forever);
    wb__msg m2;
    pk_decode(&q, &m2);
    wb__watch_req wr;
    assert_int_equal(wb__decode_watch_req(m2.root, &wr), 0);
    assert_int_equal(wr.timeout_ms, -1);
    wb__msg_free(&m2);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ map request */

/* Packs a map request with a schema of three tensors and three rules. */
static void good_map_req(wb__msg *m) {
    wb__schema s;
    memset(&s, 0, sizeof(s));
    s.target = strdup("Net");
    assert_non_null(s.target);
    int64_t w[2] = {8, 4}, b[1] = {8};
    assert_int_equal(wb__schema_push(&s, "fc.weight", WB_F32, 2, w), 0);
    assert_int_equal(wb__schema_push(&s, "fc.bias", WB_F16, 1, b), 0);
    assert_int_equal(wb__schema_push(&s, "step", WB_I64, 0, NULL), 0);
    wb__ruleset rs;
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(
        wb__ruleset_add(&rs, WB__RULE_INCLUDE, "fc.*", NULL, -1, 0), 0);
    assert_int_equal(
        wb__ruleset_add(&rs, WB__RULE_REGEX, "module\\.(.*)", "\\1", -1, 2), 0);
    assert_int_equal(
        wb__ruleset_add(&rs, WB__RULE_CAST, "*.bias", NULL, WB_F16, 3), 0);
    packed p;
    wb__pack_map_req(pk_start(&p), TEST_ID, "net", 5, 1, 0, 1, &s, &rs);
    pk_decode(&p, m);
    wb__schema_clear(&s);
    wb__ruleset_clear(&rs);
}

static void test_msg_map_req(void **state) {
    wb__msg m;
    good_map_req(&m);
    assert_req(m.root, "map", TEST_ID, 7);
    wb__map_req r;
    assert_int_equal(wb__decode_map_req(m.root, &r), 0);
    assert_str(r.mv.model, "net");
    assert_int_equal(r.mv.version, 5);
    assert_int_equal(r.plan, 1);
    assert_int_equal(r.hold, 0);
    assert_int_equal(r.strict, 0);
    assert_int_equal(r.ignore_mismatch, 1);
    assert_int_equal(r.has_schema, 1);
    assert_string_equal(r.schema.target, "Net");
    assert_int_equal(r.schema.n, 3);
    assert_string_equal(r.schema.v[0].name, "fc.weight");
    assert_int_equal(r.schema.v[0].dtype, WB_F32);
    assert_int_equal(r.schema.v[0].ndim, 2);
    assert_int_equal(r.schema.v[0].shape[0], 8);
    assert_int_equal(r.schema.v[0].shape[1], 4);
    assert_string_equal(r.schema.v[1].name, "fc.bias");
    assert_int_equal(r.schema.v[1].dtype, WB_F16);
    assert_int_equal(r.schema.v[1].ndim, 1);
    assert_int_equal(r.schema.v[1].shape[0], 8);
    assert_string_equal(r.schema.v[2].name, "step");
    assert_int_equal(r.schema.v[2].ndim, 0);
    assert_int_equal(r.has_rules, 1);
    assert_int_equal(r.rules.n, 3);
    assert_int_equal(r.rules.v[0].kind, WB__RULE_INCLUDE);
    assert_string_equal(r.rules.v[0].a, "fc.*");
    assert_string_equal(r.rules.v[0].b, "");
    assert_int_equal(r.rules.v[0].dtype, -1);
    assert_int_equal(r.rules.v[0].line, 0);
    assert_int_equal(r.rules.v[1].kind, WB__RULE_REGEX);
    assert_string_equal(r.rules.v[1].a, "module\\.(.*)");
    assert_string_equal(r.rules.v[1].b, "\\1");
    assert_int_equal(r.rules.v[1].line, 2);
    assert_int_equal(r.rules.v[2].kind, WB__RULE_CAST);
    assert_int_equal(r.rules.v[2].dtype, WB_F16);
    assert_int_equal(r.rules.v[2].line, 3);
    wb__map_req_free(&r);
    wb__msg_free(&m);

    /* A plain map: no schema, no rules, the default flags. */
    packed p;
    wb__pack_map_req(pk_start(&p), TEST_ID, "net", 0, 0, 1, 0, NULL, NULL);
    pk_decode(&p, &m);
    assert_req(m.root, "map", TEST_ID, 6);
    assert_int_equal(wb__decode_map_req(m.root, &r), 0);
    assert_int_equal(r.mv.version, 0);
    assert_int_equal(r.plan, 0);
    assert_int_equal(r.hold, 1); /* Asked for unless a plan. */
    assert_int_equal(r.strict, 1);
    assert_int_equal(r.ignore_mismatch, 0);
    assert_int_equal(r.has_schema, 0);
    assert_int_equal(r.has_rules, 0);
    wb__map_req_free(&r);
    /* strict is on unless the request says otherwise. */
    msgpack_object bare = without(m.root, "strict");
    wb__msg m2;
    msgpack_pack_object(pk_start(&p), bare);
    pk_decode(&p, &m2);
    assert_int_equal(wb__decode_map_req(m2.root, &r), 0);
    assert_int_equal(r.strict, 1);
    wb__map_req_free(&r);
    wb__msg_free(&m2);
    wb__msg_free(&m);
}

/* A copy of the map request r whose schema has its field key set to v. */
static msgpack_object schema_with(const msgpack_object *r, const char *key,
                                  msgpack_object v) {
    return with(r, "schema", with(at(r, "schema"), key, v));
}

/* A copy of the map request r whose schema tensor row has element col
 * set to v. */
static msgpack_object schema_cell(const msgpack_object *r, uint32_t row,
                                  uint32_t col, msgpack_object v) {
    return with(r, "schema",
                with_cell(at(r, "schema"), "tensors", row, col, v));
}

static void test_msg_map_req_malformed(void **state) {
    wb__msg m;
    good_map_req(&m);
    const msgpack_object *r = m.root;
    assert_int_equal(run(dec_map_req, *r), 0);
    assert_int_equal(run(dec_map_req, without(r, "model")), WB_EINVAL);
    assert_int_equal(run(dec_map_req, with(r, "model", o_u64(7))), WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "version", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "plan", o_u64(1))), WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "strict", o_str("yes"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "ignore_mismatch", o_nil())), 0);
    /* The schema: a map of target and tensors, each a tensor entry. */
    assert_int_equal(run(dec_map_req, with(r, "schema", o_fill(0, o_nil()))),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "schema", o_nil())), 0);
    assert_int_equal(
        run(dec_map_req,
            with(r, "schema", without(at(r, "schema"), "tensors"))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_req, with(r, "schema", without(at(r, "schema"), "target"))),
        0);
    assert_int_equal(run(dec_map_req, schema_with(r, "target", o_u64(5))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_req,
            schema_with(r, "tensors", o_map_fill(0, o_nil(), o_nil()))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_req,
            with(r, "schema", with_row_len(at(r, "schema"), "tensors", 0, 2))),
        WB_EPROTO);
    assert_int_equal(run(dec_map_req, schema_cell(r, 1, 1, o_str("F33"))),
                     WB_EDTYPE);
    assert_int_equal(run(dec_map_req, schema_cell(r, 1, 0, o_str(""))),
                     WB_ENAME);
    assert_int_equal(
        run(dec_map_req,
            schema_cell(r, 0, 2, o_fill(WB_MAX_DIMS + 1, o_u64(1)))),
        WB_ESHAPE);
    assert_int_equal(
        run(dec_map_req, schema_cell(r, 0, 2, o_fill(1, o_neg(-8)))),
        WB_ESHAPE);
    assert_int_equal(
        run(dec_map_req,
            schema_with(r, "tensors", o_fill(WB_MAX_TENSORS + 1, o_nil()))),
        WB_ETOOBIG);
    /* The rules: [kind, a, b, dtype, line] each. */
    assert_int_equal(
        run(dec_map_req, with(r, "rules", o_map_fill(0, o_nil(), o_nil()))),
        WB_EPROTO);
    assert_int_equal(run(dec_map_req, with(r, "rules", o_nil())), 0);
    assert_int_equal(run(dec_map_req, with_row_len(r, "rules", 0, 4)),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_req, with_row(r, "rules", 0, o_u64(1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_req, with_cell(r, "rules", 0, 0, o_u64(9))),
                     WB_ERULE);
    assert_int_equal(run(dec_map_req, with_cell(r, "rules", 0, 0, o_neg(-1))),
                     WB_ERULE);
    assert_int_equal(run(dec_map_req, with_cell(r, "rules", 0, 1, o_u64(5))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_req, with_cell(r, "rules", 2, 3, o_u64(WB_DTYPE_COUNT))),
        WB_ERULE);
    assert_int_equal(run(dec_map_req, with_cell(r, "rules", 1, 4, o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_req,
            with_cell(r, "rules", 1, 4, o_u64((uint64_t)INT32_MAX + 1))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_req, with(r, "rules", o_fill(WB_MAX_RULES + 1, o_nil()))),
        WB_ETOOBIG);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ map reply */

/* The rows of the map reply below. */
static const wb__map_entry rows[] = {
    {.target = {"fc.weight", 9},
     .source = {"module.fc.weight", 16},
     .dtype = WB_F32,
     .ndim = 2,
     .shape = {4, 8},
     .offset = 64,
     .nbytes = 128},
    {.target = {"fc.half", 7},
     .source = {"fc.w", 4},
     .dtype = WB_F16,
     .ndim = 2,
     .shape = {4, 8},
     .seg = 1,
     .nbytes = 64,
     .cast = 1},
    {.target = {"step", 4},
     .source = {"step", 4},
     .dtype = WB_I64,
     .offset = 192,
     .nbytes = 8},
    {.target = {"deep", 4},
     .source = {"deep", 4},
     .dtype = WB_U8,
     .ndim = WB_MAX_DIMS,
     .shape = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2},
     .offset = 256,
     .nbytes = 2},
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static void row_of(void *arg, size_t i, wb__map_entry *e) {
    assert_ptr_equal(arg, rows);
    *e = rows[i];
}

static char *const missing[] = {"a", "b.c"};
static char *const unexpected[] = {"x"};
static char *const cast[] = {"fc.half"};
static char *const meta_keys[] = {"format", "wbroker.note"};
static char *const meta_vals[] = {"pt", ""};
static const uint64_t seg_sizes[] = {2 * MIB, 4 * MIB};

/* The report of the map reply below (mismatched: none, aliased: empty). */
static const wb__report_src report = {
    {missing, unexpected, NULL, cast, missing},
    {2, 1, 0, 1, 0},
    "Error(s) in loading state_dict for Net"};

/* Packs a map reply of the rows, segments, metadata and report above. */
static void good_map_rep(wb__msg *m) {
    packed p;
    wb__pack_map_rep(pk_start(&p), TEST_ID, 3, 1, seg_sizes, 2, NROWS, row_of,
                     (void *)rows, meta_keys, meta_vals, 2, &report);
    pk_decode(&p, m);
}

/* Checks the report r against the one above. */
static void assert_report(const wb__report *r) {
    assert_int_equal(r->n[WB_KEYS_MISSING], 2);
    assert_str(r->keys[WB_KEYS_MISSING][0], "a");
    assert_str(r->keys[WB_KEYS_MISSING][1], "b.c");
    assert_int_equal(r->n[WB_KEYS_UNEXPECTED], 1);
    assert_str(r->keys[WB_KEYS_UNEXPECTED][0], "x");
    assert_int_equal(r->n[WB_KEYS_MISMATCHED], 0);
    assert_int_equal(r->n[WB_KEYS_CAST], 1);
    assert_str(r->keys[WB_KEYS_CAST][0], "fc.half");
    assert_int_equal(r->n[WB_KEYS_ALIASED], 0);
    assert_str(r->text, report.text);
}

static void test_msg_map_rep(void **state) {
    wb__msg m;
    good_map_rep(&m);
    assert_ok_rep(m.root);
    wb__map_rep r;
    assert_int_equal(wb__decode_map_rep(m.root, 0, &r), 0);
    assert_int_equal(r.version, 3);
    assert_int_equal(r.nsegs, 2);
    assert_int_equal(r.segs[0], 2 * MIB);
    assert_int_equal(r.segs[1], 4 * MIB);
    assert_int_equal(r.n, NROWS);
    for (size_t i = 0; i < NROWS; i++) {
        const wb__map_entry *e = &r.t[i], *w = &rows[i];
        assert_str(e->target, w->target.p);
        assert_str(e->source, w->source.p);
        assert_int_equal(e->dtype, w->dtype);
        assert_int_equal(e->ndim, w->ndim);
        for (int k = 0; k < w->ndim; k++)
            assert_int_equal(e->shape[k], w->shape[k]);
        assert_int_equal(e->seg, w->seg);
        assert_int_equal(e->offset, w->offset);
        assert_int_equal(e->nbytes, w->nbytes);
        assert_int_equal(e->cast, w->cast);
    }
    assert_int_equal(r.nmeta, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_str(r.mkeys[i], meta_keys[i]);
        assert_str(r.mvals[i], meta_vals[i]);
    }
    assert_report(&r.report);
    wb__map_rep_free(&r);
    wb__msg_free(&m);

    /* No report at all packs as empty lists and no text. */
    packed p;
    wb__pack_map_rep(pk_start(&p), TEST_ID, 1, 0, seg_sizes, 1, 0, row_of,
                     (void *)rows, NULL, NULL, 0, NULL);
    pk_decode(&p, &m);
    assert_int_equal(wb__decode_map_rep(m.root, 0, &r), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.nmeta, 0);
    for (int w = 0; w < WB_KEYS_COUNT; w++)
        assert_int_equal(r.report.n[w], 0);
    assert_int_equal(r.report.text.n, 0);
    wb__map_rep_free(&r);
    wb__msg_free(&m);
}

/* Head and tail, packed apart (as the daemon does with a kept tail), are
 * byte for byte the whole reply, with and without a hold. */
static void test_msg_map_rep_split(void **state) {
    for (int hold = 0; hold <= 1; hold++) {
        packed whole, head, tail;
        wb__pack_map_rep_pages(pk_start(&whole), TEST_ID, 3, hold, seg_sizes, 2,
                               NROWS, row_of, (void *)rows, meta_keys,
                               meta_vals, 2, &report, "thp", 2 * MIB);
        wb__pack_map_rep_head(pk_start(&head), TEST_ID, hold, "thp", 2 * MIB);
        wb__pack_map_rep_tail(pk_start(&tail), 3, seg_sizes, 2, NROWS, row_of,
                              (void *)rows, meta_keys, meta_vals, 2, &report);
        assert_int_equal(head.sb.size + tail.sb.size, whole.sb.size);
        assert_memory_equal(whole.sb.data, head.sb.data, head.sb.size);
        assert_memory_equal(whole.sb.data + head.sb.size, tail.sb.data,
                            tail.sb.size);
        msgpack_sbuffer_destroy(&whole.sb);
        msgpack_sbuffer_destroy(&head.sb);
        msgpack_sbuffer_destroy(&tail.sb);
    }
}

/* A strict load that failed: WB_ELOAD, the text as msg, the report. */
static void test_msg_load_error(void **state) {
    packed p;
    wb__msg m;
    wb__pack_load_error_rep(pk_start(&p), TEST_ID, 4, &report);
    pk_decode(&p, &m);
    uint64_t id;
    int err;
    wb__str msg;
    assert_int_equal(wb__decode_rep_envelope(m.root, &id, &err, &msg, NULL), 0);
    assert_int_equal(id, TEST_ID);
    assert_int_equal(err, WB_ELOAD);
    assert_str(msg, report.text);
    wb__map_rep r;
    assert_int_equal(wb__decode_map_rep(m.root, 1, &r), 0);
    assert_int_equal(r.version, 4);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.nsegs, 0);
    assert_report(&r.report);
    wb__map_rep_free(&r);
    /* Only the version and the report are read. */
    const msgpack_object *o = m.root;
    assert_int_equal(run(dec_load_error, with(o, "tensors", o_u64(5))), 0);
    assert_int_equal(run(dec_load_error, without(o, "version")), WB_EPROTO);
    assert_int_equal(run(dec_load_error, with(o, "version", o_neg(-4))),
                     WB_EPROTO);
    msgpack_object rep = *at(o, "report");
    assert_int_equal(
        run(dec_load_error,
            with(o, "report", with_row(&rep, "missing", 0, o_u64(1)))),
        WB_EPROTO);
    assert_int_equal(run(dec_load_error, with(o, "text", o_u64(1))), WB_EPROTO);
    wb__msg_free(&m);
}

/* Runs dec_map_rep on the reply r with cell (row, col) of its tensor
 * table set to v and checks that it is refused. */
static void expect_bad_cell(const msgpack_object *r, uint32_t row, uint32_t col,
                            msgpack_object v) {
    assert_int_equal(run(dec_map_rep, with_cell(r, "tensors", row, col, v)),
                     WB_EPROTO);
}

static void test_msg_map_rep_malformed(void **state) {
    wb__msg m;
    good_map_rep(&m);
    const msgpack_object *r = m.root;
    assert_int_equal(run(dec_map_rep, *r), 0);
    /* A row is [target, source, dtype, [dims], seg, offset, nbytes, cast]:
     * 7 or 9 elements, or no array, is refused. */
    assert_int_equal(run(dec_map_rep, with_row_len(r, "tensors", 0, 7)),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with_row_len(r, "tensors", 1, 9)),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with_row_len(r, "tensors", 2, 0)),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with_row(r, "tensors", 0, o_str("t"))),
                     WB_EPROTO);
    expect_bad_cell(r, 0, 0, o_u64(1));
    expect_bad_cell(r, 0, 1, o_nil());
    expect_bad_cell(r, 1, 2, o_str("F33"));
    expect_bad_cell(r, 1, 2, o_str(""));
    expect_bad_cell(r, 1, 2, o_str("F32F32F32F32F32F32"));
    expect_bad_cell(r, 1, 2, o_u64(WB_F32));
    expect_bad_cell(r, 3, 3, o_fill(WB_MAX_DIMS + 1, o_u64(1)));
    expect_bad_cell(r, 0, 3, o_str("[4, 8]"));
    expect_bad_cell(r, 0, 3, o_fill(2, o_neg(-4)));
    expect_bad_cell(r, 0, 3, o_fill(2, o_u64((uint64_t)INT64_MAX + 1)));
    expect_bad_cell(r, 0, 3, o_fill(2, o_f64(4.0)));
    expect_bad_cell(r, 0, 4, o_neg(-1));
    expect_bad_cell(r, 0, 5, o_str("0"));
    expect_bad_cell(r, 0, 6, o_f64(128.0));
    expect_bad_cell(r, 0, 6, o_neg(INT64_MIN));
    expect_bad_cell(r, 0, 7, o_u64(1));
    /* Required fields and their types. */
    static const char *const need[] = {"version", "segs", "tensors"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        assert_int_equal(run(dec_map_rep, without(r, need[i])), WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with(r, "version", o_str("3"))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "tensors", o_map_fill(0, o_nil(), o_nil()))),
        WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with_row(r, "segs", 0, o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_map_rep, with_row(r, "segs", 1, o_str("4M"))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "segs", o_fill(WB_MAX_SEGMENTS, o_u64(1)))),
        0);
    assert_int_equal(
        run(dec_map_rep,
            with(r, "segs", o_fill(WB_MAX_SEGMENTS + 1, o_u64(1)))),
        WB_EPROTO);
    /* Optional fields, when present, have their types. */
    assert_int_equal(run(dec_map_rep, without(r, "meta")), 0);
    assert_int_equal(run(dec_map_rep, without(r, "report")), 0);
    assert_int_equal(run(dec_map_rep, without(r, "text")), 0);
    assert_int_equal(run(dec_map_rep, with(r, "meta", o_fill(1, o_str("x")))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "meta", o_map_fill(2, o_str("k"), o_u64(1)))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "meta", o_map_fill(1, o_nil(), o_str("v")))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "report", o_fill(1, o_str("missing")))),
        WB_EPROTO);
    msgpack_object rep = *at(r, "report");
    assert_int_equal(
        run(dec_map_rep, with(r, "report", with(&rep, "missing", o_str("a")))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep,
            with(r, "report", with_row(&rep, "cast", 0, o_u64(1)))),
        WB_EPROTO);
    assert_int_equal(
        run(dec_map_rep, with(r, "report", without(&rep, "unexpected"))), 0);
    assert_int_equal(run(dec_map_rep, with(r, "text", o_u64(1))), WB_EPROTO);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ list */

static const wb__list_entry models[] = {
    {{"resnet", 6},
     3,
     2,
     320,
     97 * MIB,
     1,
     1,
     0,
     {"0123456789abcdef0123456789abcdef", 32}},
    {{"llama", 5}, 1, 1, 243, UINT64_MAX, 0, 0, 65534, {NULL, 0}},
};

static void model_of(void *arg, size_t i, wb__list_entry *e) {
    assert_ptr_equal(arg, models);
    *e = models[i];
}

static void test_msg_list(void **state) {
    packed p;
    wb__msg m;
    wb__pack_list_req(pk_start(&p), TEST_ID);
    pk_decode(&p, &m);
    assert_req(m.root, "list", TEST_ID, 1);
    assert_int_equal(wb__decode_list_req(m.root), 1);
    wb__msg_free(&m);

    wb__pack_list_rep(pk_start(&p), TEST_ID, 2, model_of, (void *)models,
                      WB_PROTO_VERSION);
    pk_decode(&p, &m);
    assert_ok_rep(m.root);
    wb__list_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(wb__decode_list_rep(m.root, &v, &n), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        assert_str(v[i].name, models[i].name.p);
        assert_int_equal(v[i].latest, models[i].latest);
        assert_int_equal(v[i].versions, models[i].versions);
        assert_int_equal(v[i].tensors, models[i].tensors);
        assert_int_equal(v[i].bytes, models[i].bytes);
        assert_int_equal(v[i].readers, models[i].readers);
        assert_int_equal(v[i].pinned, models[i].pinned);
        assert_int_equal(v[i].owner, models[i].owner);
        assert_int_equal(v[i].digest.n, models[i].digest.n);
        if (models[i].digest.p)
            assert_str(v[i].digest, models[i].digest.p);
    }
    free(v);

    const msgpack_object *o = m.root;
    assert_int_equal(run(dec_list_rep, without(o, "models")), WB_EPROTO);
    assert_int_equal(
        run(dec_list_rep, with(o, "models", o_map_fill(0, o_nil(), o_nil()))),
        WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_row_len(o, "models", 1, 5)),
                     WB_EPROTO);
    /* Six fields (a daemon older than pins) and seven (older than owners)
     * still decode, the owner unknown; a ninth must be a digest, and ten
     * do not decode. */
    assert_int_equal(run(dec_list_rep, with_row_len(o, "models", 1, 6)), 0);
    assert_int_equal(run(dec_list_rep, with_row_len(o, "models", 1, 7)), 0);
    assert_int_equal(run(dec_list_rep, with_row_len(o, "models", 1, 9)),
                     WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_row_len(o, "models", 0, 10)),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_list_rep, with_cell(o, "models", 0, 8, o_str("00"))),
        WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_row(o, "models", 0, o_str("m"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_cell(o, "models", 1, 0, o_u64(1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_cell(o, "models", 1, 1, o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_list_rep, with_cell(o, "models", 1, 3, o_bool(1))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_list_rep, with_cell(o, "models", 0, 5, o_str("0"))), WB_EPROTO);
    wb__msg_free(&m);

    wb__pack_list_rep(pk_start(&p), TEST_ID, 0, model_of, (void *)models,
                      WB_PROTO_VERSION);
    pk_decode(&p, &m);
    assert_int_equal(wb__decode_list_rep(m.root, &v, &n), 0);
    assert_int_equal(n, 0);
    free(v);
    wb__msg_free(&m);
}

/* Two counters for the status encoder. */
static void status_counter(void *arg, size_t i, wb__str *name,
                           uint64_t *value) {
    static const char *const names[] = {"requests.map", "errors.ENOMODEL"};
    name->p = names[i];
    name->n = strlen(names[i]);
    *value = i == 0 ? 7 : 1;
}

/* ------------------------------------------------------------ status */

static void test_msg_status(void **state) {
    packed p;
    wb__msg m;
    wb__pack_status_req(pk_start(&p), TEST_ID);
    pk_decode(&p, &m);
    assert_req(m.root, "status", TEST_ID, 0);
    wb__msg_free(&m);

    const wb__status_rep st = {.server = {"0.1.0", 5},
                               .uptime = 12.625,
                               .used = 6 * MIB,
                               .limit = 64 * MIB,
                               .shmem = 6 * MIB + 4096,
                               .models = 2,
                               .versions = 3,
                               .clients = 4,
                               .pid = TEST_PID,
                               .ncounters = 2};
    wb__pack_status_rep(pk_start(&p), TEST_ID, &st, status_counter, NULL);
    pk_decode(&p, &m);
    assert_ok_rep(m.root);
    wb__status_rep r;
    assert_int_equal(wb__decode_status_rep(m.root, &r), 0);
    assert_str(r.server, "0.1.0");
    assert_true(r.uptime == st.uptime);
    assert_int_equal(r.used, st.used);
    assert_int_equal(r.limit, st.limit);
    assert_int_equal(r.shmem, st.shmem);
    assert_int_equal(r.models, st.models);
    assert_int_equal(r.versions, st.versions);
    assert_int_equal(r.clients, st.clients);
    assert_int_equal(r.pid, st.pid);
    assert_int_equal(r.ncounters, 2);
    assert_str(r.cnames[0], "requests.map");
    assert_int_equal(r.cvalues[0], 7);
    assert_str(r.cnames[1], "errors.ENOMODEL");
    assert_int_equal(r.cvalues[1], 1);
    wb__status_rep_free(&r);

    const msgpack_object *o = m.root;
    static const char *const need[] = {"server", "uptime",   "used",    "limit",
                                       "models", "versions", "clients", "pid"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        assert_int_equal(run(dec_status_rep, without(o, need[i])), WB_EPROTO);
    /* A daemon that does not say shmem has none to tell. */
    msgpack_object old = without(o, "shmem");
    wb__msg m2;
    msgpack_pack_object(pk_start(&p), old);
    pk_decode(&p, &m2);
    assert_int_equal(wb__decode_status_rep(m2.root, &r), 0);
    assert_int_equal(r.shmem, 0);
    wb__status_rep_free(&r);
    wb__msg_free(&m2);
    assert_int_equal(run(dec_status_rep, with(o, "counters", o_str("x"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "shmem", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "shmem", o_str("6M"))),
                     WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "uptime", o_u64(12))),
                     WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "server", o_u64(1))),
                     WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "used", o_neg(-1))),
                     WB_EPROTO);
    assert_int_equal(
        run(dec_status_rep, with(o, "pid", o_u64((uint64_t)UINT32_MAX + 1))),
        WB_EPROTO);
    assert_int_equal(run(dec_status_rep, with(o, "pid", o_neg(-1))), WB_EPROTO);
    wb__msg_free(&m);
}

/* ------------------------------------------------------------ main */

static int zone_up(void **state) {
    zone = msgpack_zone_new(TEST_ZONE_CHUNK);
    return zone ? 0 : -1;
}

static int zone_down(void **state) {
    msgpack_zone_free(zone);
    zone = NULL;
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_envelope),
        cmocka_unit_test(test_msg_envelope_malformed),
        cmocka_unit_test(test_msg_error_rep_errno),
        cmocka_unit_test(test_msg_hello),
        cmocka_unit_test(test_msg_publish_req),
        cmocka_unit_test(test_msg_publish_req_malformed),
        cmocka_unit_test(test_msg_publish_rep),
        cmocka_unit_test(test_msg_small),
        cmocka_unit_test(test_msg_small_malformed),
        cmocka_unit_test(test_msg_map_req),
        cmocka_unit_test(test_msg_map_req_malformed),
        cmocka_unit_test(test_msg_map_rep),
        cmocka_unit_test(test_msg_map_rep_split),
        cmocka_unit_test(test_msg_load_error),
        cmocka_unit_test(test_msg_map_rep_malformed),
        cmocka_unit_test(test_msg_list),
        cmocka_unit_test(test_msg_status),
    };
    return cmocka_run_group_tests(tests, zone_up, zone_down);
}
