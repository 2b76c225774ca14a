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
#include "hold.h"
#include "log.h"
#include "msg.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "resolve.h"
#include "stats.h"
#include "wire.h"
#include "worker.h"

/* A session keeps its peer's command name for every hold it starts. */
_Static_assert(sizeof(((wb__session *)0)->comm) == WB_HOLD_COMM_MAX,
               "a session's comm holds a hold's");

/* State of a map request until it is answered. */
typedef struct map_req {
    wb__task task;        /* Resolution on the worker. */
    wb__conv_waiter wait; /* Conversions it waits for. */
    wb__session *s;       /* Requester (referenced). */
    uint64_t id;          /* Request id. */
    wb__version *v;       /* Version mapped (referenced). */
    int plan;             /* Dry run. */
    wb__resolve_out res;  /* Resolved tensors and the report. */
    int resolved;         /* 1 if res is from wb__resolve. */
    wb__derived **conv;   /* Per resolved tensor: converted copy. */
    int answered;         /* 1 once an error reply went out. */
    wb__map_req mq;       /* The decoded request (owns schema and
                             rules). */
    wb__resolve_req rq;   /* What resolution reads. */
    int rc;               /* Resolution's result. */
} map_req;

static void map_req_free(map_req *mr) {
    wb__map_req_free(&mr->mq);
    wb__resolve_out_free(&mr->res);
    free(mr->conv);
    wb__version_unref(mr->v);
    wb__session_unref(mr->s);
    free(mr);
}

/* The report of mr in the form the encoder takes. */
static wb__report_src report_of(const map_req *mr) {
    wb__report_src rep;
    memset(&rep, 0, sizeof(rep));
    if (mr->resolved) {
        const wb__keylist *kl[WB_KEYS_COUNT] = {NULL};
        kl[WB_KEYS_MISSING] = &mr->res.missing;
        kl[WB_KEYS_UNEXPECTED] = &mr->res.unexpected;
        kl[WB_KEYS_MISMATCHED] = &mr->res.mismatched;
        kl[WB_KEYS_CAST] = &mr->res.cast;
        kl[WB_KEYS_ALIASED] = &mr->res.aliased;
        kl[WB_KEYS_UNUSED_RULES] = &mr->res.unused_rules;
        for (int w = 0; w < WB_KEYS_COUNT; w++) {
            rep.keys[w] = kl[w]->v;
            rep.n[w] = kl[w]->n;
        }
    }
    rep.text = mr->resolved && mr->res.error_text ? mr->res.error_text : "";
    return rep;
}

/* What the row callback of the map encoder reads. */
typedef struct map_rows {
    const map_req *mr; /* The request answered. */
    const int *segix;  /* Per row, its segment's index. */
} map_rows;

static void map_row(void *arg, size_t i, wb__map_entry *e) {
    const map_rows *mrs = arg;
    const map_req *mr = mrs->mr;
    const wb__version *v = mr->v;
    size_t si = mr->resolved ? mr->res.v[i].src : i;
    const wb__tinfo *t = &v->t[si];
    const wb__derived *d = mr->conv ? mr->conv[i] : NULL;
    const char *target = mr->resolved ? mr->res.v[i].target : t->name;
    e->target.p = target;
    e->target.n = strlen(target);
    e->source.p = t->name;
    e->source.n = strlen(t->name);
    e->dtype = mr->resolved ? mr->res.v[i].dtype : t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    e->seg = (uint64_t)mrs->segix[i];
    e->offset = d ? d->offset : v->offset[si];
    e->nbytes = d ? d->nbytes : v->nbytes[si];
    e->cast = d != NULL || (mr->resolved && mr->res.v[i].cast);
}

/* What to add to a map's failure for errno e: out of descriptors is the
 * one cause an operator can act on. */
static const char *emfile_hint(int e) {
    return e == EMFILE || e == ENFILE
               ? " (the daemon is out of file descriptors, one per "
                 "mapping held: raise its LimitNOFILE, or unmap)"
               : "";
}

/* Builds v->map_tail, the tail of the reply to a map of the whole version
 * as stored (mr unresolved, no copies): its table, metadata and empty
 * report are the same for every such map, so it is packed once, at the
 * first, and each later map only copies it behind its own head (id, page
 * backend, hold).  Returns 0 or WB_ENOMEM. */
static int plain_tail(map_req *mr, const int *segix) {
    wb__version *v = mr->v;
    assert(!mr->resolved && mr->conv == NULL);
    if (v->map_tail)
        return 0;
    wb__pkbuf t;
    msgpack_packer pk;
    wb__pkbuf_init(&t, &pk);
    map_rows rows = {mr, segix};
    wb__report_src rep = report_of(mr);
    uint64_t size = v->seg.size;
    wb__pack_map_rep_tail(&pk, v->number, &size, 1, v->n, map_row, &rows,
                          v->mkeys, v->mvals, v->nmeta, &rep);
    if (t.failed || t.sb.data == NULL) {
        msgpack_sbuffer_destroy(&t.sb);
        return WB_ENOMEM;
    }
    v->map_tail = t.sb.data;
    v->map_tail_len = t.sb.size;
    return 0;
}

/* Sends the map reply: segments, tensor table, metadata and report, and,
 * when the client asked for one (never for a plan), the write end of a
 * new hold (hold.h) after the segments' descriptors. */
static void map_reply(map_req *mr) {
    wb__session *s = mr->s;
    wb__version *v = mr->v;
    int fds[WB_MAX_SEGMENTS + 1];
    int nfds = 0;
    const wb__segment *segs[WB_MAX_SEGMENTS];
    uint64_t sizes[WB_MAX_SEGMENTS];
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
    int plain = !mr->resolved && mr->conv == NULL;
    if (plain && plain_tail(mr, segix)) {
        free(segix);
        wb__reply_error(s, mr->id, WB_ENOMEM, "out of memory");
        return;
    }
    for (int k = 0; k < nsegs; k++)
        sizes[k] = segs[k]->size;
    for (int k = 0; !mr->plan && k < nsegs; k++) {
        int fd = wb__seg_open_ro(segs[k]);
        if (fd < 0) {
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            free(segix);
            int e = errno;
            wb__reply_error_sys(s, mr->id, e, "cannot reopen a segment: %s%s",
                                strerror(e), emfile_hint(e));
            return;
        }
        fds[nfds++] = fd;
    }
    int hold = !mr->plan && mr->mq.hold;
    if (hold) {
        uint64_t bytes = 0;
        for (int k = 0; k < nsegs; k++)
            bytes += sizes[k];
        int rc = wb__hold_start_comm(v, &s->cred, bytes, s->comm,
                                     &s->comm_known, &fds[nfds]);
        if (rc) {
            int e = errno;
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            free(segix);
            if (rc == WB_ENOMEM)
                wb__reply_error(s, mr->id, rc, "out of memory");
            else if (rc == WB_ETOOBIG)
                wb__reply_error(s, mr->id, rc,
                                "user %u already holds %zu mappings, the "
                                "most the daemon allows one user "
                                "(wbrokerd --max-holds-per-user): unmap "
                                "some first",
                                (unsigned)s->cred.uid, wb__hold_user_max);
            else
                wb__reply_error_sys(s, mr->id, e,
                                    "cannot make the pipe that tracks this "
                                    "mapping: %s%s",
                                    strerror(e), emfile_hint(e));
            return;
        }
        nfds++;
    }
    map_rows rows = {mr, segix};
    wb__report_src rep = report_of(mr);
    wb__reply r;
    wb__reply_init(&r, mr->id);
    uint64_t huge = 0;
    for (int k = 0; k < nsegs; k++)
        huge += segs[k]->huge;
    if (plain) {
        assert(nsegs == 1 && sizes[0] == v->seg.size);
        wb__pack_map_rep_head(&r.pk, mr->id, hold,
                              wb__seg_kind_name(v->seg.kind), huge);
        /* Raw bytes appended, not a string: the tail is whole values. */
        msgpack_pack_str_body(&r.pk, v->map_tail, v->map_tail_len);
    } else {
        wb__pack_map_rep_pages(&r.pk, mr->id, v->number, hold, sizes,
                               (size_t)nsegs, n, map_row, &rows, v->mkeys,
                               v->mvals, v->nmeta, &rep,
                               wb__seg_kind_name(v->seg.kind), huge);
    }
    free(segix);
    wb__reply_send(s, &r, fds, nfds);
}

/* Sends the load-error reply: the report and PyTorch's text, no mapping. */
static void map_reply_load_error(map_req *mr) {
    wb__report_src rep = report_of(mr);
    wb__reply r;
    wb__reply_init(&r, mr->id);
    wb__pack_load_error_rep(&r.pk, mr->id, mr->v->number, &rep);
    wb__stats_error(WB_ELOAD);
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
        if (!(mr->conv =
                  calloc(mr->res.n ? mr->res.n : 1, sizeof(wb__derived *))))
            rc = WB_ENOMEM, snprintf(err, sizeof(err), "out of memory");
        else {
            wb__quota q = wb__access_quota_of(s, mr->v->model->name);
            rc = wb__conv_prepare(mr->v, mr->res.v, mr->res.n, mr->conv,
                                  &mr->wait, &q, err, sizeof(err));
        }
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

void wb__op_map(wb__session *s, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__version *v = wb__req_version(s, id, req, model);
    if (v == NULL)
        return;
    map_req *mr = calloc(1, sizeof(*mr));
    if (mr == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        return;
    }
    mr->s = s;
    mr->id = id;
    mr->v = v;
    wb__session_ref(s);
    wb__version_ref(v);
    int rc = wb__decode_map_req(req, &mr->mq);
    if (rc) {
        wb__reply_error(s, id, rc, "bad %s in map request: %s",
                        rc == WB_ERULE ? "rule" : "schema or rules",
                        wb_strerror(rc));
        map_req_free(mr);
        return;
    }
    mr->plan = mr->mq.plan;
    if (!mr->mq.has_schema && !mr->mq.has_rules) {
        /* The whole version, as stored. */
        map_reply(mr);
        map_req_free(mr);
        return;
    }
    mr->rq =
        (wb__resolve_req){.src = v->t,
                          .nsrc = v->n,
                          .tie = v->tie,
                          .rules = &mr->mq.rules,
                          .schema = mr->mq.has_schema ? &mr->mq.schema : NULL,
                          .strict = mr->mq.strict,
                          .ignore_mismatch = mr->mq.ignore_mismatch,
                          .budget_ms = WB_RULES_BUDGET_MS};
    mr->task.work = resolve_work;
    mr->task.done = resolve_done;
    wb__session_pause(s);
    wb__worker_submit(&mr->task);
}
