/* msg.c -- One codec per message of the wire protocol (see msg.h). */
#include "msg.h"

#include <stdlib.h>
#include <string.h>

#include "wire.h"

/* Field names of the report's key lists, in wb_keyset order. */
static const char *const report_names[WB_KEYS_COUNT] = {
    "missing", "unexpected", "mismatched", "cast", "aliased", "unused_rules"};

char *wb__str_dup(wb__str s) {
    char *p = malloc(s.n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s.p, s.n);
    p[s.n] = '\0';
    return p;
}

/* Reads string field key into *out: 0, 1 (absent) or WB_EPROTO. */
static int get_str(const msgpack_object *root, const char *key, wb__str *out) {
    return wb__mp_get_str(root, key, &out->p, &out->n);
}

/* Views a msgpack string object; 0 or WB_EPROTO. */
static int as_str(const msgpack_object *o, wb__str *out) {
    if (o->type != MSGPACK_OBJECT_STR)
        return WB_EPROTO;
    out->p = o->via.str.ptr;
    out->n = o->via.str.size;
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *p, size_t n) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, p, n);
}

static void pack_bool(msgpack_packer *pk, int v) {
    v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

/* Decodes an array of strings into *out (allocated) and *n. */
static int decode_strs(const msgpack_object_array *a, wb__str **out,
                       size_t *n) {
    *out = calloc(a->size ? a->size : 1, sizeof(wb__str));
    if (*out == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < a->size; i++)
        if (as_str(&a->ptr[i], &(*out)[i]))
            return WB_EPROTO;
    *n = a->size;
    return 0;
}

/* Decodes a map of strings into keys and values (allocated). */
static int decode_str_map(const msgpack_object_map *m, wb__str **keys,
                          wb__str **vals, size_t *n) {
    *keys = calloc(m->size ? m->size : 1, sizeof(wb__str));
    *vals = calloc(m->size ? m->size : 1, sizeof(wb__str));
    if (*keys == NULL || *vals == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < m->size; i++)
        if (as_str(&m->ptr[i].key, &(*keys)[i]) ||
            as_str(&m->ptr[i].val, &(*vals)[i]))
            return WB_EPROTO;
    *n = m->size;
    return 0;
}

/* ---------------------------------------------------------------- envelope */

void wb__pack_req_begin(msgpack_packer *pk, const char *op, uint64_t id,
                        size_t nfields) {
    msgpack_pack_map(pk, nfields + 2);
    wb__pack_key(pk, "op");
    wb__pack_cstr(pk, op);
    wb__pack_key(pk, "id");
    msgpack_pack_uint64(pk, id);
}

void wb__pack_rep_begin(msgpack_packer *pk, uint64_t id, int err,
                        size_t nfields) {
    msgpack_pack_map(pk, nfields + 2);
    wb__pack_key(pk, "id");
    msgpack_pack_uint64(pk, id);
    wb__pack_key(pk, "err");
    msgpack_pack_int(pk, err);
}

int wb__decode_rep_envelope(const msgpack_object *root, uint64_t *id, int *err,
                            wb__str *msg, const char **bad) {
    int64_t e = 0;
    const char *at = NULL;
    *id = 0;
    *err = 0;
    msg->p = "";
    msg->n = 0;
    if (wb__mp_get_i64(root, "err", &e) != 0 || e > 0 || e < INT32_MIN)
        at = "err";
    else if (wb__mp_get_u64(root, "id", id) != 0)
        at = "id";
    else if (get_str(root, "msg", msg) < 0)
        at = "msg";
    if (bad)
        *bad = at;
    if (at)
        return WB_EPROTO;
    *err = (int)e;
    return 0;
}

void wb__pack_error_rep(msgpack_packer *pk, uint64_t id, int code,
                        const char *msg, int sys_errno) {
    wb__pack_rep_begin(pk, id, code, 1 + (sys_errno > 0));
    wb__pack_key(pk, "msg");
    wb__pack_cstr(pk, msg);
    if (sys_errno > 0) {
        wb__pack_key(pk, "errno");
        msgpack_pack_int(pk, sys_errno);
    }
}

int wb__decode_rep_errno(const msgpack_object *root) {
    int64_t e = 0;
    if (wb__mp_get_i64(root, "errno", &e) != 0 || e <= 0 || e > 4095)
        return 0;
    return (int)e;
}

/* ---------------------------------------------------------------- output */

void wb__pkbuf_init(wb__pkbuf *b, msgpack_packer *pk) {
    msgpack_sbuffer_init(&b->sb);
    b->failed = 0;
    msgpack_packer_init(pk, b, wb__pkbuf_write);
}

int wb__pkbuf_write(void *data, const char *buf, size_t len) {
    wb__pkbuf *b = data;
    /* Nothing after a failure, and no empty write: msgpack-c's would
     * memcpy into a buffer that was never allocated. */
    if (b->failed || len == 0)
        return b->failed ? -1 : 0;
    if (msgpack_sbuffer_write(&b->sb, buf, len) != 0)
        b->failed = 1;
    return b->failed ? -1 : 0;
}

/* ---------------------------------------------------------------- hello */

void wb__pack_hello_req(msgpack_packer *pk, uint64_t id, uint64_t proto,
                        const char *client_version) {
    wb__pack_req_begin(pk, "hello", id, 2);
    wb__pack_key(pk, "proto");
    msgpack_pack_uint64(pk, proto);
    wb__pack_key(pk, "client");
    wb__pack_cstr(pk, client_version);
}

int wb__decode_hello_req(const msgpack_object *root, wb__hello_req *out) {
    memset(out, 0, sizeof(*out));
    if (wb__mp_get_u64(root, "proto", &out->proto) != 0 ||
        get_str(root, "client", &out->client) < 0)
        return WB_EPROTO;
    return 0;
}

void wb__pack_hello_rep(msgpack_packer *pk, uint64_t id, uint32_t pid,
                        uint64_t proto) {
    wb__pack_rep_begin(pk, id, 0, 3);
    wb__pack_key(pk, "proto");
    msgpack_pack_uint64(pk, proto);
    wb__pack_key(pk, "server");
    wb__pack_cstr(pk, wb_version_string());
    wb__pack_key(pk, "pid");
    msgpack_pack_uint32(pk, pid);
}

int wb__decode_hello_rep(const msgpack_object *root, wb__hello_rep *out) {
    uint64_t pid = 0;
    memset(out, 0, sizeof(*out));
    if (wb__mp_get_u64(root, "proto", &out->proto) != 0 ||
        get_str(root, "server", &out->server) != 0 ||
        wb__mp_get_u64(root, "pid", &pid) != 0 || pid > UINT32_MAX)
        return WB_EPROTO;
    out->pid = (uint32_t)pid;
    return 0;
}

/* ---------------------------------------------------------------- publish */

void wb__pack_publish_req(msgpack_packer *pk, uint64_t id, const char *model,
                          const wb_tensor_spec *t, size_t n, const wb_kv *meta,
                          size_t nmeta, const wb__tie *ties, size_t nties) {
    wb__pack_req_begin(pk, "publish", id, 2 + (nmeta > 0) + (nties > 0));
    wb__pack_key(pk, "model");
    wb__pack_cstr(pk, model);
    wb__pack_key(pk, "tensors");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        wb__pack_tinfo(pk, t[i].name, t[i].dtype, t[i].ndim, t[i].shape);
    if (nmeta) {
        wb__pack_key(pk, "meta");
        msgpack_pack_map(pk, nmeta);
        for (size_t i = 0; i < nmeta; i++) {
            wb__pack_cstr(pk, meta[i].key);
            wb__pack_cstr(pk, meta[i].value);
        }
    }
    if (nties) {
        wb__pack_key(pk, "tied");
        msgpack_pack_array(pk, nties);
        for (size_t k = 0; k < nties; k++) {
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint64(pk, ties[k].alias);
            msgpack_pack_uint64(pk, ties[k].stored);
        }
    }
}

int wb__decode_publish_req(const msgpack_object *root, wb__publish_req *out,
                           size_t *bad) {
    memset(out, 0, sizeof(*out));
    *bad = 0;
    const msgpack_object_array *ta = NULL, *tie = NULL;
    const msgpack_object_map *mm = NULL;
    if (get_str(root, "model", &out->model) != 0 ||
        wb__mp_get_array(root, "tensors", &ta) != 0)
        return WB_EPROTO;
    int rc = wb__mp_get_map(root, "meta", &mm);
    if (rc < 0 || (rc = wb__mp_get_array(root, "tied", &tie)) < 0)
        return WB_EPROTO;
    if (ta->size > WB_MAX_TENSORS || (mm && mm->size > WB_MAX_META))
        return WB_ETOOBIG;
    out->t = calloc(ta->size ? ta->size : 1, sizeof(wb__tinfo));
    if (out->t == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < ta->size; i++) {
        rc = wb__decode_tinfo(&ta->ptr[i], &out->t[i]);
        if (rc) {
            *bad = i;
            return rc;
        }
        out->n = i + 1;
    }
    if (mm &&
        (rc = decode_str_map(mm, &out->mkeys, &out->mvals, &out->nmeta)) != 0)
        return rc;
    if (tie && tie->size > 0) {
        if (tie->size > ta->size)
            return WB_EPROTO;
        if ((out->ties = calloc(tie->size, sizeof(wb__tie))) == NULL)
            return WB_ENOMEM;
        for (uint32_t k = 0; k < tie->size; k++) {
            const msgpack_object *o = &tie->ptr[k];
            if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 ||
                o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                o->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                *bad = k;
                return WB_EPROTO;
            }
            out->ties[k].alias = o->via.array.ptr[0].via.u64;
            out->ties[k].stored = o->via.array.ptr[1].via.u64;
        }
        out->nties = tie->size;
    }
    return 0;
}

void wb__publish_req_free(wb__publish_req *r) {
    for (size_t i = 0; r->t && i < r->n; i++)
        free(r->t[i].name);
    free(r->t);
    free(r->mkeys);
    free(r->mvals);
    free(r->ties);
    memset(r, 0, sizeof(*r));
}

void wb__pack_publish_rep(msgpack_packer *pk, uint64_t id, uint64_t pub,
                          uint64_t size, const uint64_t *offs, size_t n) {
    wb__pack_rep_begin(pk, id, 0, 3);
    wb__pack_key(pk, "pub");
    msgpack_pack_uint64(pk, pub);
    wb__pack_key(pk, "size");
    msgpack_pack_uint64(pk, size);
    wb__pack_key(pk, "offs");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint64(pk, offs[i]);
}

/* Decodes an array of unsigned integers (allocated). */
static int decode_u64s(const msgpack_object_array *a, uint64_t **out,
                       size_t *n) {
    *out = calloc(a->size ? a->size : 1, sizeof(uint64_t));
    if (*out == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < a->size; i++) {
        if (a->ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return WB_EPROTO;
        (*out)[i] = a->ptr[i].via.u64;
    }
    *n = a->size;
    return 0;
}

int wb__decode_publish_rep(const msgpack_object *root, wb__publish_rep *out) {
    memset(out, 0, sizeof(*out));
    const msgpack_object_array *a;
    if (wb__mp_get_u64(root, "pub", &out->pub) != 0 ||
        wb__mp_get_u64(root, "size", &out->size) != 0 ||
        wb__mp_get_array(root, "offs", &a) != 0)
        return WB_EPROTO;
    return decode_u64s(a, &out->offs, &out->n);
}

void wb__publish_rep_free(wb__publish_rep *r) {
    free(r->offs);
    memset(r, 0, sizeof(*r));
}

/* ---------------------------------------------------------------- small */

void wb__pack_pub_req(msgpack_packer *pk, const char *op, uint64_t id,
                      uint64_t pub) {
    wb__pack_req_begin(pk, op, id, 1);
    wb__pack_key(pk, "pub");
    msgpack_pack_uint64(pk, pub);
}

int wb__decode_pub_req(const msgpack_object *root, uint64_t *pub) {
    return wb__mp_get_u64(root, "pub", pub) == 0 ? 0 : WB_EPROTO;
}

void wb__pack_u64_rep(msgpack_packer *pk, uint64_t id, const char *key,
                      uint64_t value) {
    wb__pack_rep_begin(pk, id, 0, key != NULL);
    if (key) {
        wb__pack_key(pk, key);
        msgpack_pack_uint64(pk, value);
    }
}

int wb__decode_u64_rep(const msgpack_object *root, const char *key,
                       uint64_t *value) {
    *value = 0;
    if (key == NULL)
        return 0;
    return wb__mp_get_u64(root, key, value) == 0 ? 0 : WB_EPROTO;
}

void wb__pack_drop_req(msgpack_packer *pk, uint64_t id, const char *model,
                       uint64_t version) {
    wb__pack_req_begin(pk, "drop", id, 2);
    wb__pack_key(pk, "model");
    wb__pack_cstr(pk, model);
    wb__pack_key(pk, "version");
    msgpack_pack_uint64(pk, version);
}

int wb__decode_model_req(const msgpack_object *root, wb__model_req *out) {
    memset(out, 0, sizeof(*out));
    int rc = get_str(root, "model", &out->model);
    if (rc)
        return rc == 1 ? WB_EINVAL : rc;
    return wb__mp_get_u64(root, "version", &out->version) < 0 ? WB_EPROTO : 0;
}

void wb__pack_watch_req(msgpack_packer *pk, uint64_t id, const char *model,
                        uint64_t after, int64_t timeout_ms) {
    wb__pack_req_begin(pk, "watch", id, 3);
    wb__pack_key(pk, "model");
    wb__pack_cstr(pk, model);
    wb__pack_key(pk, "after");
    msgpack_pack_uint64(pk, after);
    wb__pack_key(pk, "timeout");
    msgpack_pack_int64(pk, timeout_ms);
}

int wb__decode_watch_req(const msgpack_object *root, wb__watch_req *out) {
    memset(out, 0, sizeof(*out));
    out->timeout_ms = -1;
    int rc = get_str(root, "model", &out->model);
    if (rc)
        return rc == 1 ? WB_EINVAL : rc;
    if (wb__mp_get_u64(root, "after", &out->after) < 0 ||
        wb__mp_get_i64(root, "timeout", &out->timeout_ms) < 0)
        return WB_EPROTO;
    return 0;
}

/* ---------------------------------------------------------------- map */

void wb__pack_map_req(msgpack_packer *pk, uint64_t id, const char *model,
                      uint64_t version, int plan, int strict,
                      int ignore_mismatch, const wb__schema *schema,
                      const wb__ruleset *rules) {
    wb__pack_req_begin(pk, "map", id,
                       5 + !plan + (schema != NULL) + (rules != NULL));
    wb__pack_key(pk, "model");
    wb__pack_cstr(pk, model);
    wb__pack_key(pk, "version");
    msgpack_pack_uint64(pk, version);
    wb__pack_key(pk, "plan");
    pack_bool(pk, plan);
    wb__pack_key(pk, "strict");
    pack_bool(pk, strict);
    wb__pack_key(pk, "ignore_mismatch");
    pack_bool(pk, ignore_mismatch);
    if (!plan) {
        wb__pack_key(pk, "hold");
        pack_bool(pk, 1);
    }
    if (schema) {
        wb__pack_key(pk, "schema");
        msgpack_pack_map(pk, 2);
        wb__pack_key(pk, "target");
        wb__pack_cstr(pk, schema->target ? schema->target : "");
        wb__pack_key(pk, "tensors");
        msgpack_pack_array(pk, schema->n);
        for (size_t i = 0; i < schema->n; i++)
            wb__pack_tinfo(pk, schema->v[i].name, schema->v[i].dtype,
                           schema->v[i].ndim, schema->v[i].shape);
    }
    if (rules) {
        wb__pack_key(pk, "rules");
        wb__pack_rules(pk, rules);
    }
}

int wb__decode_map_req(const msgpack_object *root, wb__map_req *out) {
    memset(out, 0, sizeof(*out));
    out->strict = 1;
    int rc = wb__decode_model_req(root, &out->mv);
    if (rc)
        return rc;
    if (wb__mp_get_bool(root, "plan", &out->plan) < 0 ||
        wb__mp_get_bool(root, "strict", &out->strict) < 0 ||
        wb__mp_get_bool(root, "ignore_mismatch", &out->ignore_mismatch) < 0 ||
        wb__mp_get_bool(root, "hold", &out->hold) < 0)
        return WB_EPROTO;
    const msgpack_object_array *ra = NULL, *sa = NULL;
    const msgpack_object *so = wb__mp_get(root, "schema");
    int hr = wb__mp_get_array(root, "rules", &ra);
    if (hr < 0 || (so && so->type != MSGPACK_OBJECT_NIL &&
                   so->type != MSGPACK_OBJECT_MAP))
        return WB_EPROTO;
    out->has_rules = hr == 0;
    out->has_schema = so && so->type == MSGPACK_OBJECT_MAP;
    if (out->has_rules && (rc = wb__decode_rules(ra, &out->rules)) != 0)
        return rc;
    if (!out->has_schema)
        return 0;
    wb__str tn = {"", 0};
    if (wb__mp_get_array(so, "tensors", &sa) != 0 ||
        get_str(so, "target", &tn) < 0)
        return WB_EPROTO;
    if (sa->size > WB_MAX_TENSORS)
        return WB_ETOOBIG;
    if ((out->schema.target = wb__str_dup(tn)) == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < sa->size; i++) {
        wb__tinfo t;
        rc = wb__decode_tinfo(&sa->ptr[i], &t);
        if (rc == 0)
            rc =
                wb__schema_push(&out->schema, t.name, t.dtype, t.ndim, t.shape);
        free(t.name);
    }
    return rc;
}

void wb__map_req_free(wb__map_req *r) {
    wb__schema_clear(&r->schema);
    wb__ruleset_clear(&r->rules);
}

/* Packs one row: [target, source, dtype, [dims], seg, offset, nbytes,
 * cast]. */
static void pack_map_entry(msgpack_packer *pk, const wb__map_entry *e) {
    msgpack_pack_array(pk, 8);
    pack_str(pk, e->target.p, e->target.n);
    pack_str(pk, e->source.p, e->source.n);
    wb__pack_cstr(pk, wb_dtype_name(e->dtype));
    msgpack_pack_array(pk, (size_t)e->ndim);
    for (int k = 0; k < e->ndim; k++)
        msgpack_pack_uint64(pk, (uint64_t)e->shape[k]);
    msgpack_pack_uint64(pk, e->seg);
    msgpack_pack_uint64(pk, e->offset);
    msgpack_pack_uint64(pk, e->nbytes);
    pack_bool(pk, e->cast);
}

static int decode_map_entry(const msgpack_object *o, wb__map_entry *e) {
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 8)
        return WB_EPROTO;
    const msgpack_object *v = o->via.array.ptr;
    char dt[16];
    if (as_str(&v[0], &e->target) || as_str(&v[1], &e->source) ||
        v[2].type != MSGPACK_OBJECT_STR || v[2].via.str.size >= sizeof(dt) ||
        v[3].type != MSGPACK_OBJECT_ARRAY ||
        v[3].via.array.size > WB_MAX_DIMS ||
        v[4].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        v[5].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        v[6].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        v[7].type != MSGPACK_OBJECT_BOOLEAN)
        return WB_EPROTO;
    memcpy(dt, v[2].via.str.ptr, v[2].via.str.size);
    dt[v[2].via.str.size] = '\0';
    if ((e->dtype = wb_dtype_from_name(dt)) < 0)
        return WB_EPROTO;
    e->ndim = (int)v[3].via.array.size;
    for (int k = 0; k < e->ndim; k++) {
        const msgpack_object *d = &v[3].via.array.ptr[k];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            d->via.u64 > INT64_MAX)
            return WB_EPROTO;
        e->shape[k] = (int64_t)d->via.u64;
    }
    e->seg = v[4].via.u64;
    e->offset = v[5].via.u64;
    e->nbytes = v[6].via.u64;
    e->cast = v[7].via.boolean;
    return 0;
}

static void pack_report(msgpack_packer *pk, const wb__report_src *rep) {
    wb__pack_key(pk, "report");
    msgpack_pack_map(pk, WB_KEYS_COUNT);
    for (int w = 0; w < WB_KEYS_COUNT; w++) {
        size_t n = rep && rep->keys[w] ? rep->n[w] : 0;
        wb__pack_key(pk, report_names[w]);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            wb__pack_cstr(pk, rep->keys[w][i]);
    }
    wb__pack_key(pk, "text");
    wb__pack_cstr(pk, rep && rep->text ? rep->text : "");
}

static int decode_report(const msgpack_object *root, wb__report *out) {
    const msgpack_object_map *rm;
    int rc = wb__mp_get_map(root, "report", &rm);
    if (rc < 0)
        return WB_EPROTO;
    const msgpack_object *rep = wb__mp_get(root, "report");
    for (int w = 0; rc == 0 && w < WB_KEYS_COUNT; w++) {
        const msgpack_object_array *a;
        int got = wb__mp_get_array(rep, report_names[w], &a);
        if (got < 0)
            return WB_EPROTO;
        if (got == 0 && (rc = decode_strs(a, &out->keys[w], &out->n[w])))
            return rc;
    }
    out->text.p = "";
    out->text.n = 0;
    return get_str(root, "text", &out->text) < 0 ? WB_EPROTO : 0;
}

void wb__pack_map_rep(msgpack_packer *pk, uint64_t id, uint64_t version,
                      int hold, const uint64_t *segs, size_t nsegs, size_t n,
                      void (*row)(void *arg, size_t i, wb__map_entry *e),
                      void *arg, char *const *mkeys, char *const *mvals,
                      size_t nmeta, const wb__report_src *report) {
    wb__pack_map_rep_pages(pk, id, version, hold, segs, nsegs, n, row, arg,
                           mkeys, mvals, nmeta, report, NULL, 0);
}

void wb__pack_map_rep_pages(msgpack_packer *pk, uint64_t id, uint64_t version,
                            int hold, const uint64_t *segs, size_t nsegs,
                            size_t n,
                            void (*row)(void *arg, size_t i, wb__map_entry *e),
                            void *arg, char *const *mkeys, char *const *mvals,
                            size_t nmeta, const wb__report_src *report,
                            const char *pages, uint64_t huge) {
    wb__pack_map_rep_head(pk, id, hold, pages, huge);
    wb__pack_map_rep_tail(pk, version, segs, nsegs, n, row, arg, mkeys, mvals,
                          nmeta, report);
}

void wb__pack_map_rep_head(msgpack_packer *pk, uint64_t id, int hold,
                           const char *pages, uint64_t huge) {
    wb__pack_rep_begin(pk, id, 0, 6 + (hold != 0) + (pages ? 2 : 0));
    if (pages) {
        wb__pack_key(pk, "pages");
        wb__pack_cstr(pk, pages);
        wb__pack_key(pk, "huge");
        msgpack_pack_uint64(pk, huge);
    }
    if (hold) {
        wb__pack_key(pk, "hold");
        pack_bool(pk, 1);
    }
}

void wb__pack_map_rep_tail(msgpack_packer *pk, uint64_t version,
                           const uint64_t *segs, size_t nsegs, size_t n,
                           void (*row)(void *arg, size_t i, wb__map_entry *e),
                           void *arg, char *const *mkeys, char *const *mvals,
                           size_t nmeta, const wb__report_src *report) {
    wb__pack_key(pk, "version");
    msgpack_pack_uint64(pk, version);
    wb__pack_key(pk, "segs");
    msgpack_pack_array(pk, nsegs);
    for (size_t k = 0; k < nsegs; k++)
        msgpack_pack_uint64(pk, segs[k]);
    wb__pack_key(pk, "tensors");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        wb__map_entry e;
        memset(&e, 0, sizeof(e));
        row(arg, i, &e);
        pack_map_entry(pk, &e);
    }
    wb__pack_key(pk, "meta");
    msgpack_pack_map(pk, nmeta);
    for (size_t i = 0; i < nmeta; i++) {
        wb__pack_cstr(pk, mkeys[i]);
        wb__pack_cstr(pk, mvals[i]);
    }
    pack_report(pk, report);
}

void wb__pack_load_error_rep(msgpack_packer *pk, uint64_t id, uint64_t version,
                             const wb__report_src *report) {
    wb__pack_rep_begin(pk, id, WB_ELOAD, 4);
    wb__pack_key(pk, "msg");
    wb__pack_cstr(pk, report->text ? report->text : "");
    wb__pack_key(pk, "version");
    msgpack_pack_uint64(pk, version);
    pack_report(pk, report);
}

int wb__decode_map_rep(const msgpack_object *root, int load_error,
                       wb__map_rep *out) {
    memset(out, 0, sizeof(*out));
    if (wb__mp_get_u64(root, "version", &out->version) != 0)
        return WB_EPROTO;
    int rc = decode_report(root, &out->report);
    if (rc || load_error)
        return rc;
    const msgpack_object_array *segs, *ta;
    const msgpack_object_map *meta = NULL;
    if (wb__mp_get_array(root, "segs", &segs) != 0 ||
        wb__mp_get_array(root, "tensors", &ta) != 0 ||
        wb__mp_get_map(root, "meta", &meta) < 0 ||
        wb__mp_get_bool(root, "hold", &out->hold) < 0 ||
        segs->size > WB_MAX_SEGMENTS)
        return WB_EPROTO;
    if ((rc = decode_u64s(segs, &out->segs, &out->nsegs)) != 0)
        return rc;
    /* Page backend and 2 MiB bytes: optional (older daemons send none). */
    const char *pages;
    size_t plen;
    int pr = wb__mp_get_str(root, "pages", &pages, &plen);
    if (pr == 0) {
        if (plen >= sizeof(out->pages) ||
            wb__mp_get_u64(root, "huge", &out->huge) != 0)
            return WB_EPROTO;
        memcpy(out->pages, pages, plen);
        out->pages[plen] = '\0';
    } else if (pr != 1)
        return WB_EPROTO;
    if ((out->t = calloc(ta->size ? ta->size : 1, sizeof(wb__map_entry))) ==
        NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < ta->size; i++) {
        if ((rc = decode_map_entry(&ta->ptr[i], &out->t[i])) != 0)
            return rc;
        out->n = i + 1;
    }
    if (meta)
        rc = decode_str_map(meta, &out->mkeys, &out->mvals, &out->nmeta);
    return rc;
}

void wb__map_rep_free(wb__map_rep *r) {
    free(r->segs);
    free(r->t);
    free(r->mkeys);
    free(r->mvals);
    for (int w = 0; w < WB_KEYS_COUNT; w++)
        free(r->report.keys[w]);
    memset(r, 0, sizeof(*r));
}

/* ---------------------------------------------------------------- list */

void wb__pack_list_req(msgpack_packer *pk, uint64_t id) {
    wb__pack_req_begin(pk, "list", id, 1);
    wb__pack_key(pk, "digest");
    msgpack_pack_true(pk);
}

int wb__decode_list_req(const msgpack_object *root) {
    int digest = 0;
    return wb__mp_get_bool(root, "digest", &digest) == 0 && digest;
}

void wb__pack_list_rep(msgpack_packer *pk, uint64_t id, size_t n,
                       void (*row)(void *arg, size_t i, wb__list_entry *e),
                       void *arg, uint64_t proto) {
    wb__pack_rep_begin(pk, id, 0, 1);
    wb__pack_key(pk, "models");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        wb__list_entry e;
        memset(&e, 0, sizeof(e));
        row(arg, i, &e);
        int legacy = proto < 2;
        msgpack_pack_array(pk, legacy ? 6 : e.digest.p ? 9 : 8);
        pack_str(pk, e.name.p, e.name.n);
        msgpack_pack_uint64(pk, e.latest);
        msgpack_pack_uint64(pk, e.versions);
        msgpack_pack_uint64(pk, e.tensors);
        msgpack_pack_uint64(pk, e.bytes);
        msgpack_pack_uint64(pk, e.readers);
        if (legacy)
            continue;
        msgpack_pack_uint64(pk, e.pinned);
        msgpack_pack_uint64(pk, e.owner);
        if (e.digest.p)
            pack_str(pk, e.digest.p, e.digest.n);
    }
}

int wb__decode_list_rep(const msgpack_object *root, wb__list_entry **out,
                        size_t *n) {
    *out = NULL;
    *n = 0;
    const msgpack_object_array *a;
    if (wb__mp_get_array(root, "models", &a) != 0)
        return WB_EPROTO;
    wb__list_entry *v = calloc(a->size ? a->size : 1, sizeof(*v));
    if (v == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *o = &a->ptr[i];
        /* Six fields from a daemon older than pins, seven since, eight
         * since owners, nine (the digest) when asked for since digests. */
        v[i].owner = WB_NO_OWNER;
        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 6 ||
            o->via.array.size > 9 || as_str(&o->via.array.ptr[0], &v[i].name) ||
            (o->via.array.size == 9 &&
             (as_str(&o->via.array.ptr[8], &v[i].digest) ||
              v[i].digest.n != 32))) {
            free(v);
            return WB_EPROTO;
        }
        uint64_t *dst[7] = {&v[i].latest, &v[i].versions, &v[i].tensors,
                            &v[i].bytes,  &v[i].readers,  &v[i].pinned,
                            &v[i].owner};
        int nint = (int)o->via.array.size - 1 - (o->via.array.size == 9);
        for (int k = 0; k < nint; k++) {
            const msgpack_object *f = &o->via.array.ptr[k + 1];
            if (f->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                free(v);
                return WB_EPROTO;
            }
            *dst[k] = f->via.u64;
        }
    }
    *out = v;
    *n = a->size;
    return 0;
}

/* ---------------------------------------------------------------- status */

void wb__pack_status_req(msgpack_packer *pk, uint64_t id) {
    wb__pack_req_begin(pk, "status", id, 0);
}

void wb__pack_status_rep(msgpack_packer *pk, uint64_t id,
                         const wb__status_rep *st,
                         void (*counter)(void *arg, size_t i, wb__str *name,
                                         uint64_t *value),
                         void *arg) {
    wb__pack_rep_begin(pk, id, 0, 10);
    wb__pack_key(pk, "counters");
    msgpack_pack_map(pk, counter ? st->ncounters : 0);
    for (size_t i = 0; counter && i < st->ncounters; i++) {
        wb__str name = {"", 0};
        uint64_t value = 0;
        counter(arg, i, &name, &value);
        pack_str(pk, name.p, name.n);
        msgpack_pack_uint64(pk, value);
    }
    wb__pack_key(pk, "server");
    pack_str(pk, st->server.p, st->server.n);
    wb__pack_key(pk, "uptime");
    msgpack_pack_double(pk, st->uptime);
    wb__pack_key(pk, "used");
    msgpack_pack_uint64(pk, st->used);
    wb__pack_key(pk, "limit");
    msgpack_pack_uint64(pk, st->limit);
    wb__pack_key(pk, "shmem");
    msgpack_pack_uint64(pk, st->shmem);
    wb__pack_key(pk, "models");
    msgpack_pack_uint64(pk, st->models);
    wb__pack_key(pk, "versions");
    msgpack_pack_uint64(pk, st->versions);
    wb__pack_key(pk, "clients");
    msgpack_pack_uint64(pk, st->clients);
    wb__pack_key(pk, "pid");
    msgpack_pack_uint32(pk, st->pid);
}

int wb__decode_status_rep(const msgpack_object *root, wb__status_rep *out) {
    memset(out, 0, sizeof(*out));
    uint64_t pid = 0;
    const msgpack_object *up = wb__mp_get(root, "uptime");
    if (get_str(root, "server", &out->server) != 0 || up == NULL ||
        up->type != MSGPACK_OBJECT_FLOAT64 ||
        wb__mp_get_u64(root, "used", &out->used) != 0 ||
        wb__mp_get_u64(root, "limit", &out->limit) != 0 ||
        wb__mp_get_u64(root, "shmem", &out->shmem) < 0 ||
        wb__mp_get_u64(root, "models", &out->models) != 0 ||
        wb__mp_get_u64(root, "versions", &out->versions) != 0 ||
        wb__mp_get_u64(root, "clients", &out->clients) != 0 ||
        wb__mp_get_u64(root, "pid", &pid) != 0 || pid > UINT32_MAX)
        return WB_EPROTO;
    out->uptime = up->via.f64;
    out->pid = (uint32_t)pid;
    const msgpack_object_map *cm = NULL;
    int rc = wb__mp_get_map(root, "counters", &cm);
    if (rc < 0)
        return WB_EPROTO;
    if (rc == 1 || cm->size == 0)
        return 0;
    out->cnames = calloc(cm->size, sizeof(wb__str));
    out->cvalues = calloc(cm->size, sizeof(uint64_t));
    if (out->cnames == NULL || out->cvalues == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < cm->size; i++) {
        if (as_str(&cm->ptr[i].key, &out->cnames[i]) ||
            cm->ptr[i].val.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return WB_EPROTO;
        out->cvalues[i] = cm->ptr[i].val.via.u64;
        out->ncounters = i + 1;
    }
    return 0;
}

void wb__status_rep_free(wb__status_rep *st) {
    free(st->cnames);
    free(st->cvalues);
    st->cnames = NULL;
    st->cvalues = NULL;
    st->ncounters = 0;
}

/* ---------------------------------------------------------------- pin */

void wb__pack_pin_req(msgpack_packer *pk, uint64_t id, const char *model,
                      uint64_t version, int pin) {
    wb__pack_req_begin(pk, "pin", id, 3);
    wb__pack_key(pk, "model");
    wb__pack_cstr(pk, model);
    wb__pack_key(pk, "version");
    msgpack_pack_uint64(pk, version);
    wb__pack_key(pk, "pin");
    pack_bool(pk, pin);
}

int wb__decode_pin_req(const msgpack_object *root, wb__pin_req *out) {
    memset(out, 0, sizeof(*out));
    int rc = wb__decode_model_req(root, &out->mv);
    if (rc)
        return rc;
    return wb__mp_get_bool(root, "pin", &out->pin) == 0 ? 0 : WB_EPROTO;
}

/* ---------------------------------------------------------------- holders */

void wb__pack_holders_req(msgpack_packer *pk, uint64_t id, const char *model) {
    wb__pack_req_begin(pk, "holders", id, model != NULL);
    if (model) {
        wb__pack_key(pk, "model");
        wb__pack_cstr(pk, model);
    }
}

int wb__decode_holders_req(const msgpack_object *root, wb__str *model,
                           int *has_model) {
    model->p = "";
    model->n = 0;
    int rc = get_str(root, "model", model);
    if (rc < 0)
        return WB_EPROTO;
    *has_model = rc == 0;
    return 0;
}

void wb__pack_holders_rep(msgpack_packer *pk, uint64_t id, size_t n,
                          void (*row)(void *arg, size_t i, wb__holder_entry *e),
                          void *arg) {
    wb__pack_rep_begin(pk, id, 0, 1);
    wb__pack_key(pk, "holders");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        wb__holder_entry e;
        memset(&e, 0, sizeof(e));
        row(arg, i, &e);
        msgpack_pack_array(pk, 7);
        msgpack_pack_uint32(pk, e.pid);
        msgpack_pack_uint32(pk, e.uid);
        pack_str(pk, e.comm.p, e.comm.n);
        pack_str(pk, e.model.p, e.model.n);
        msgpack_pack_uint64(pk, e.version);
        msgpack_pack_uint64(pk, e.bytes);
        msgpack_pack_uint64(pk, e.since);
    }
}

int wb__decode_holders_rep(const msgpack_object *root, wb__holder_entry **out,
                           size_t *n) {
    *out = NULL;
    *n = 0;
    const msgpack_object_array *a;
    if (wb__mp_get_array(root, "holders", &a) != 0)
        return WB_EPROTO;
    wb__holder_entry *v = calloc(a->size ? a->size : 1, sizeof(*v));
    if (v == NULL)
        return WB_ENOMEM;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *o = &a->ptr[i];
        const msgpack_object *f = o->via.array.ptr;
        int ok = o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 7 &&
                 as_str(&f[2], &v[i].comm) == 0 &&
                 as_str(&f[3], &v[i].model) == 0;
        for (int k = 0; ok && k < 7; k++)
            ok = k == 2 || k == 3 ||
                 f[k].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        if (!ok || f[0].via.u64 > UINT32_MAX || f[1].via.u64 > UINT32_MAX) {
            free(v);
            return WB_EPROTO;
        }
        v[i].pid = (uint32_t)f[0].via.u64;
        v[i].uid = (uint32_t)f[1].via.u64;
        v[i].version = f[4].via.u64;
        v[i].bytes = f[5].via.u64;
        v[i].since = f[6].via.u64;
    }
    *out = v;
    *n = a->size;
    return 0;
}
