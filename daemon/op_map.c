/* op_map.c -- map: resolving a request against a version, converting
 * what it asks to be cast, and answering with the tensor table, the load
 * report and read-only descriptors.
 *
 * A map without a schema or rules is answered on the loop at once.  Any
 * other is resolved on the worker thread (worker.h) under a time budget,
 * since its cost is the client's to choose; casts then wait for
 * conversion jobs (convjob.h).  The request holds its session and version
 * until it is answered, so neither a client that leaves nor a drop of the
 * model frees anything it still uses. */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convjob.h"
#include "log.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "resolve.h"
#include "wire.h"
#include "worker.h"

/* State of a map request until it is answered. */
typedef struct map_req {
    wb__task task;              /* Resolution on the worker. */
    wb__conv_waiter wait;       /* Conversions it waits for. */
    wb__session *s;             /* Requester (referenced). */
    uint64_t id;                /* Request id. */
    wb__version *v;             /* Version mapped (referenced). */
    int plan;                   /* Dry run. */
    wb__resolve_out res;        /* Resolved tensors and the report. */
    int resolved;               /* 1 if res is from wb__resolve. */
    wb__derived **conv;         /* Per resolved tensor: converted copy. */
    int answered;               /* 1 once an error reply went out. */
    wb__ruleset rs;             /* Decoded rules (owned). */
    wb__schema sc;              /* Decoded target schema (owned). */
    wb__resolve_req rq;         /* What resolution reads. */
    int rc;                     /* Resolution's result. */
} map_req;

static void map_req_free(map_req *mr) {
    wb__ruleset_clear(&mr->rs);
    wb__schema_clear(&mr->sc);
    wb__resolve_out_free(&mr->res);
    free(mr->conv);
    wb__version_unref(mr->v);
    wb__session_unref(mr->s);
    free(mr);
}

static void pack_keylist(msgpack_packer *pk, const char *key,
                         const wb__keylist *kl) {
    wb__pack_key(pk, key);
    msgpack_pack_array(pk, kl ? kl->n : 0);
    for (size_t i = 0; kl && i < kl->n; i++)
        wb__pack_cstr(pk, kl->v[i]);
}

static void pack_meta(msgpack_packer *pk, const wb__version *v) {
    wb__pack_key(pk, "meta");
    msgpack_pack_map(pk, v->nmeta);
    for (size_t i = 0; i < v->nmeta; i++) {
        wb__pack_cstr(pk, v->mkeys[i]);
        wb__pack_cstr(pk, v->mvals[i]);
    }
}

/* Sends the map reply: segments, tensor table, metadata and report. */
static void map_reply(map_req *mr) {
    wb__session *s = mr->s;
    wb__version *v = mr->v;
    int fds[WB_MAX_SEGMENTS];
    int nfds = 0;
    wb__segment *segs[WB_MAX_SEGMENTS];
    int nsegs = 1;
    segs[0] = &v->seg;

    size_t n = mr->resolved ? mr->res.n : v->n;
    int *segix = calloc(n ? n : 1, sizeof(int));
    if (segix == NULL) {
        wb__reply_error(s, mr->id, WB_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        wb__derived *d = mr->conv ? mr->conv[i] : NULL;
        if (d == NULL)
            continue;
        int k = 1;
        while (k < nsegs && segs[k] != &d->ds->seg)
            k++;
        if (k == nsegs) {
            if (nsegs == WB_MAX_SEGMENTS) {
                free(segix);
                wb__reply_error(s, mr->id, WB_ETOOBIG,
                                "copies in more than %d segments in one map",
                                WB_MAX_SEGMENTS - 1);
                return;
            }
            segs[nsegs++] = &d->ds->seg;
        }
        segix[i] = k;
    }
    if (!mr->plan) {
        for (int k = 0; k < nsegs; k++) {
            int fd = wb__seg_open_ro(segs[k]);
            if (fd < 0) {
                for (int i = 0; i < nfds; i++)
                    close(fds[i]);
                free(segix);
                wb__reply_error(s, mr->id, WB_ESYS,
                                "cannot reopen a segment: %s",
                                strerror(errno));
                return;
            }
            fds[nfds++] = fd;
        }
    }

    wb__reply r;
    wb__reply_begin(&r, mr->id, 6);
    wb__pack_key(&r.pk, "version");
    msgpack_pack_uint64(&r.pk, v->number);
    wb__pack_key(&r.pk, "segs");
    msgpack_pack_array(&r.pk, (size_t)nsegs);
    for (int k = 0; k < nsegs; k++)
        msgpack_pack_uint64(&r.pk, segs[k]->size);
    wb__pack_key(&r.pk, "tensors");
    msgpack_pack_array(&r.pk, n);
    for (size_t i = 0; i < n; i++) {
        size_t si = mr->resolved ? mr->res.v[i].src : i;
        const wb__tinfo *t = &v->t[si];
        wb__derived *d = mr->conv ? mr->conv[i] : NULL;
        int dtype = mr->resolved ? mr->res.v[i].dtype : t->dtype;
        msgpack_pack_array(&r.pk, 8);
        wb__pack_cstr(&r.pk, mr->resolved ? mr->res.v[i].target : t->name);
        wb__pack_cstr(&r.pk, t->name);
        wb__pack_cstr(&r.pk, wb_dtype_name(dtype));
        msgpack_pack_array(&r.pk, (size_t)t->ndim);
        for (int k = 0; k < t->ndim; k++)
            msgpack_pack_uint64(&r.pk, (uint64_t)t->shape[k]);
        msgpack_pack_uint32(&r.pk, (uint32_t)segix[i]);
        msgpack_pack_uint64(&r.pk, d ? d->offset : v->offset[si]);
        msgpack_pack_uint64(&r.pk, d ? d->nbytes : v->nbytes[si]);
        if (d || (mr->resolved && mr->res.v[i].cast))
            msgpack_pack_true(&r.pk);
        else
            msgpack_pack_false(&r.pk);
    }
    pack_meta(&r.pk, v);
    wb__pack_key(&r.pk, "report");
    msgpack_pack_map(&r.pk, 5);
    pack_keylist(&r.pk, "missing", mr->resolved ? &mr->res.missing : NULL);
    pack_keylist(&r.pk, "unexpected",
                 mr->resolved ? &mr->res.unexpected : NULL);
    pack_keylist(&r.pk, "mismatched",
                 mr->resolved ? &mr->res.mismatched : NULL);
    pack_keylist(&r.pk, "cast", mr->resolved ? &mr->res.cast : NULL);
    pack_keylist(&r.pk, "aliased", mr->resolved ? &mr->res.aliased : NULL);
    wb__pack_key(&r.pk, "text");
    wb__pack_cstr(&r.pk, "");
    free(segix);
    wb__reply_send(s, &r, fds, nfds);
    if (!mr->plan)
        wb__session_note_mapped(s, v->model->name);
}

/* Sends the load-error reply: the report and PyTorch's text, no mapping. */
static void map_reply_load_error(map_req *mr) {
    wb__reply r;
    wb__reply_begin_error(&r, mr->id, WB_ELOAD, mr->res.error_text, 3);
    wb__pack_key(&r.pk, "version");
    msgpack_pack_uint64(&r.pk, mr->v->number);
    wb__pack_key(&r.pk, "report");
    msgpack_pack_map(&r.pk, 5);
    pack_keylist(&r.pk, "missing", &mr->res.missing);
    pack_keylist(&r.pk, "unexpected", &mr->res.unexpected);
    pack_keylist(&r.pk, "mismatched", &mr->res.mismatched);
    pack_keylist(&r.pk, "cast", &mr->res.cast);
    pack_keylist(&r.pk, "aliased", &mr->res.aliased);
    wb__pack_key(&r.pk, "text");
    wb__pack_cstr(&r.pk, mr->res.error_text);
    wb__reply_send(mr->s, &r, NULL, 0);
}

/* Ends a request that was parked: frees it and lets its session go on. */
static void map_req_end(map_req *mr) {
    wb__session *s = mr->s;
    wb__session_ref(s);
    map_req_free(mr);
    wb__session_resume(s);
    wb__session_unref(s);
}

/* The conversions mr waited for are done (or failed). */
static void map_converted(wb__conv_waiter *w) {
    map_req *mr = (map_req *)((char *)w - offsetof(map_req, wait));
    if (wb__session_live(mr->s) && !mr->answered) {
        if (mr->wait.failed)
            wb__reply_error(mr->s, mr->id, mr->wait.failed,
                            "dtype conversion failed: %s",
                            wb_strerror(mr->wait.failed));
        else
            map_reply(mr);
    }
    map_req_end(mr);
}

/* Answers mr once resolved (mr->rc, mr->res): with the load error or
 * another error, or with the mapping once its conversions are ready.
 * Returns 1 if mr waits for conversions (map_converted() completes it),
 * else 0 with mr answered (not freed). */
static int map_resolved(map_req *mr) {
    wb__session *s = mr->s;
    mr->resolved = 1;
    if (mr->rc == WB_ELOAD) {
        map_reply_load_error(mr);
        return 0;
    }
    if (mr->rc) {
        wb__reply_error(s, mr->id, mr->rc, "%s",
                        mr->res.errmsg[0] ? mr->res.errmsg
                                          : wb_strerror(mr->rc));
        return 0;
    }
    if (!mr->plan) {
        char err[WB_MAX_NAME + 128];
        mr->wait.done = map_converted;
        int rc = 0;
        if (!(mr->conv = calloc(mr->res.n ? mr->res.n : 1,
                                sizeof(wb__derived *))))
            rc = WB_ENOMEM, snprintf(err, sizeof(err), "out of memory");
        else
            rc = wb__conv_prepare(mr->v, mr->res.v, mr->res.n, mr->conv,
                                  &mr->wait, err, sizeof(err));
        if (rc) {
            wb__reply_error(s, mr->id, rc, "%s", err);
            mr->answered = 1;
        }
        if (mr->wait.waiting > 0)
            return 1; /* Joined jobs finish it, answered or not. */
        if (rc)
            return 0;
    }
    map_reply(mr);
    return 0;
}

static void resolve_work(wb__task *t) {
    map_req *mr = (map_req *)t;
    mr->rc = wb__resolve(&mr->rq, &mr->res);
}

/* Back on the loop: answers the request unless its client went away. */
static void resolve_done(wb__task *t) {
    map_req *mr = (map_req *)t;
    if (!wb__session_live(mr->s) || map_resolved(mr) == 0)
        map_req_end(mr);
}

/* Decodes the optional schema and rules of a map request into mr.
 * Returns 0 or an error code. */
static int decode_target(map_req *mr, const msgpack_object *req,
                         int *has_schema, int *has_rules) {
    const msgpack_object_array *ra = NULL, *sa = NULL;
    const msgpack_object *so = wb__mp_get(req, "schema");
    int hr = wb__mp_get_array(req, "rules", &ra);
    if (hr < 0 || (so && so->type != MSGPACK_OBJECT_NIL &&
                   so->type != MSGPACK_OBJECT_MAP))
        return WB_EPROTO;
    *has_rules = hr == 0;
    *has_schema = so && so->type == MSGPACK_OBJECT_MAP;
    int rc = 0;
    if (*has_rules)
        rc = wb__decode_rules(ra, &mr->rs);
    if (rc == 0 && *has_schema) {
        const char *tn = "";
        size_t tl = 0;
        if (wb__mp_get_array(so, "tensors", &sa) != 0 ||
            wb__mp_get_str(so, "target", &tn, &tl) < 0)
            return WB_EPROTO;
        if (sa->size > WB_MAX_TENSORS)
            return WB_ETOOBIG;
        if ((mr->sc.target = strndup(tn, tl)) == NULL)
            return WB_ENOMEM;
        for (uint32_t i = 0; rc == 0 && i < sa->size; i++) {
            wb__tinfo t;
            rc = wb__decode_tinfo(&sa->ptr[i], &t);
            if (rc == 0)
                rc = wb__schema_push(&mr->sc, t.name, t.dtype, t.ndim,
                                     t.shape);
            free(t.name);
        }
    }
    return rc;
}

void wb__op_map(wb__session *s, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__version *v = wb__req_version(s, id, req, model);
    if (v == NULL)
        return;
    int plan = 0, strict = 1, ignore = 0;
    if (wb__mp_get_bool(req, "plan", &plan) < 0 ||
        wb__mp_get_bool(req, "strict", &strict) < 0 ||
        wb__mp_get_bool(req, "ignore_mismatch", &ignore) < 0) {
        wb__reply_error(s, id, WB_EPROTO,
                        "plan, strict and ignore_mismatch must be booleans");
        return;
    }
    map_req *mr = calloc(1, sizeof(*mr));
    if (mr == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        return;
    }
    mr->s = s;
    mr->id = id;
    mr->v = v;
    mr->plan = plan;
    wb__session_ref(s);
    wb__version_ref(v);
    int has_schema = 0, has_rules = 0;
    int rc = decode_target(mr, req, &has_schema, &has_rules);
    if (rc) {
        wb__reply_error(s, id, rc, "bad %s in map request: %s",
                        rc == WB_ERULE ? "rule" : "schema or rules",
                        wb_strerror(rc));
        map_req_free(mr);
        return;
    }
    if (!has_schema && !has_rules) {
        /* The whole version, as stored. */
        map_reply(mr);
        map_req_free(mr);
        return;
    }
    mr->rq = (wb__resolve_req){.src = v->t,
                               .nsrc = v->n,
                               .tie = v->tie,
                               .rules = &mr->rs,
                               .schema = has_schema ? &mr->sc : NULL,
                               .strict = strict,
                               .ignore_mismatch = ignore,
                               .budget_ms = WB_RULES_BUDGET_MS};
    mr->task.work = resolve_work;
    mr->task.done = resolve_done;
    wb__session_pause(s);
    wb__worker_submit(&mr->task);
}
