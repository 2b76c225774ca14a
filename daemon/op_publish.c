/* op_publish.c -- publish, commit, abort and drop: writing versions and
 * removing them.
 *
 * A publish lays the declared tensors out as a safetensors image, charges
 * its size against the memory limit, backs a segment on the thread pool
 * and hands the publisher a writable descriptor of its own.  A commit
 * forbids writes first and then checks what the publisher could have got
 * wrong (the header, BOOL bytes), so that nothing checked can change after
 * the check, then seals the segment for good.  An abandoned publish
 * (abort, a failed commit, a client that left) is truncated to nothing and
 * sealed, so that a descriptor or mapping the client kept pins no memory,
 * and its charge is refunded at once. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "convert.h"
#include "ident.h"
#include "layout.h"
#include "log.h"
#include "msg.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "restart.h"
#include "wire.h"

#define WB_REPLY_SLACK 4096 /* Bytes of a map reply besides its tables. */

/* A publish between "publish" and "commit"/"abort". */
typedef struct wb__pending {
    uint64_t id;              /* Handle the client names it by. */
    char *model;              /* Model it will become a version of. */
    wb__version *v;           /* The version being written (owned). */
    uint8_t *header;          /* Header bytes the daemon wrote. */
    uint64_t header_len;      /* Bytes in header. */
    struct wb__pending *next; /* Next of the session's publishes. */
} wb__pending;

/* Backs a new segment off the loop (libuv's pool: trusted work only). */
typedef struct seg_job {
    uv_work_t work;  /* libuv request. */
    wb__session *s;  /* Publisher (referenced). */
    wb__pending *p;  /* Publish it serves (owned until done). */
    uint64_t req_id; /* Request to answer. */
    int rc;          /* Result of the work. */
    int sys_errno;   /* errno behind a WB_ESYS result, or 0. */
    char err[256];   /* Detail on failure. */
} seg_job;

static uint64_t next_pub_id; /* Handle of the next publish. */

/* Frees p and gives its segment up (abandoned, see the file comment). */
static void pending_free(wb__pending *p) {
    if (p == NULL)
        return;
    wb__version *v = p->v;
    if (v) {
        wb__usage_refund(v->charged_to, v->accounted);
        wb__seg_abandon(&v->seg, v->accounted);
        v->accounted = 0;
        wb__version_unref(v);
    }
    free(p->model);
    free(p->header);
    free(p);
}

/* Unlinks p from s's list. */
static void pending_unlink(wb__session *s, wb__pending *p) {
    for (wb__pending **pp = &s->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            assert(s->npending > 0);
            s->npending--;
            return;
        }
    assert(0 && "publish not on its session");
}

void wb__publish_session_closed(wb__session *s) {
    while (s->pending) {
        wb__pending *p = s->pending;
        wb__debug("client %llu left: aborting publish of %s",
                  (unsigned long long)s->id, p->model);
        pending_unlink(s, p);
        pending_free(p);
    }
}

static void seg_job_work(uv_work_t *w) {
    seg_job *j = w->data;
    wb__version *v = j->p->v;
    char label[64];
    snprintf(label, sizeof(label), "wbroker:%.40s", j->p->model);
    j->rc =
        wb__seg_create(label, v->accounted, &v->seg, j->err, sizeof(j->err));
    if (j->rc == WB_ESYS)
        j->sys_errno = errno;
    if (j->rc == 0 &&
        wb__seg_write(&v->seg, 0, j->p->header, j->p->header_len) != 0) {
        j->sys_errno = errno;
        snprintf(j->err, sizeof(j->err), "writing the header: %s",
                 strerror(j->sys_errno));
        j->rc = WB_ESYS;
    }
}

static void seg_job_done(uv_work_t *w, int status) {
    seg_job *j = w->data;
    wb__session *s = j->s;
    wb__pending *p = j->p;
    if (p->v->seg.fd >= 0)
        wb__seg_register(&p->v->seg);
    if (status != 0 && j->rc == 0)
        j->rc = WB_ESYS, snprintf(j->err, sizeof(j->err), "cancelled");
    int fd = -1;
    if (j->rc == 0 && wb__session_live(s) &&
        (fd = wb__seg_open_rw(&p->v->seg)) < 0) {
        j->rc = WB_ESYS;
        j->sys_errno = errno;
        snprintf(j->err, sizeof(j->err), "reopening the segment: %s",
                 strerror(j->sys_errno));
    }
    if (!wb__session_live(s)) {
        pending_free(p); /* The publisher left while we worked. */
    } else if (j->rc) {
        wb__warn("client %llu: publish of %s failed: %s",
                 (unsigned long long)s->id, p->model, j->err);
        if (j->rc == WB_ESYS)
            wb__reply_error_sys(s, j->req_id, j->sys_errno, "%s", j->err);
        else
            wb__reply_error(s, j->req_id, j->rc, "%s", j->err);
        pending_free(p);
    } else {
        p->next = s->pending;
        s->pending = p;
        s->npending++;
        wb__reply r;
        wb__reply_init(&r, j->req_id);
        wb__pack_publish_rep(&r.pk, j->req_id, p->id, p->v->seg.size,
                             p->v->offset, p->v->n);
        wb__reply_send(s, &r, &fd, 1);
    }
    wb__session_resume(s);
    wb__session_unref(s);
    free(j);
}

/* Copies the metadata of a publish into v after checking it.  Returns 0,
 * or -1 after answering. */
static int read_meta(wb__session *s, uint64_t id, const wb__publish_req *pr,
                     wb__version *v) {
    if (pr->nmeta == 0)
        return 0;
    v->mkeys = calloc(pr->nmeta, sizeof(char *));
    v->mvals = calloc(pr->nmeta, sizeof(char *));
    if (!v->mkeys || !v->mvals) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < pr->nmeta; i++) {
        wb__str k = pr->mkeys[i], val = pr->mvals[i];
        if (wb__check_name(k.p, k.n) || val.n > WB_MAX_META_BYTES ||
            wb__check_text(val.p, val.n) ||
            (k.n == 12 && memcmp(k.p, "__metadata__", 12) == 0)) {
            wb__reply_error(s, id, WB_EINVAL,
                            "metadata entry %zu: keys and values must be "
                            "UTF-8 strings without NUL (values up to %d "
                            "bytes)",
                            i, WB_MAX_META_BYTES);
            return -1;
        }
        if (k.n == strlen(WB_TIED_KEY) && memcmp(k.p, WB_TIED_KEY, k.n) == 0) {
            wb__reply_error(s, id, WB_EINVAL,
                            "metadata key \"%s\" is reserved: tie tensors "
                            "with tied_to",
                            WB_TIED_KEY);
            return -1;
        }
        if (k.n == strlen(WB_VERSION_KEY) &&
            memcmp(k.p, WB_VERSION_KEY, k.n) == 0) {
            wb__reply_error(s, id, WB_EINVAL,
                            "metadata key \"%s\" is reserved: the daemon "
                            "records the version's identity under it",
                            WB_VERSION_KEY);
            return -1;
        }
        v->mkeys[i] = wb__str_dup(k);
        v->mvals[i] = wb__str_dup(val);
        v->nmeta = i + 1;
        if (!v->mkeys[i] || !v->mvals[i]) {
            wb__reply_error(s, id, WB_ENOMEM, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* Turns the declared ties of a publish into v->tie after checking them:
 * each alias follows its stored tensor, has its dtype and shape, and is
 * tied once; a stored tensor is not itself tied.  Returns 0, or -1 after
 * answering. */
static int read_ties(wb__session *s, uint64_t id, const wb__publish_req *pr,
                     wb__version *v) {
    const wb__tinfo *t = pr->t;
    size_t n = pr->n;
    if (pr->nties == 0)
        return 0;
    v->tie = malloc((n ? n : 1) * sizeof(size_t));
    if (v->tie == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        v->tie[i] = i;
    for (size_t k = 0; k < pr->nties; k++) {
        uint64_t a = pr->ties[k].alias, st = pr->ties[k].stored;
        const char *why = NULL;
        if (a >= n || st >= a)
            why = "the stored tensor must come before its alias";
        else if (v->tie[a] != a)
            why = "the alias is tied twice";
        else if (v->tie[st] != st)
            why = "the stored tensor is itself tied";
        else if (t[a].dtype != t[st].dtype || t[a].ndim != t[st].ndim ||
                 memcmp(t[a].shape, t[st].shape,
                        (size_t)t[a].ndim * sizeof(int64_t)) != 0)
            why = "dtypes or shapes differ";
        if (why) {
            wb__reply_error(s, id, WB_EINVAL, "tie %zu (%llu to %llu): %s", k,
                            (unsigned long long)a, (unsigned long long)st, why);
            return -1;
        }
        v->tie[a] = (size_t)st;
    }
    return 0;
}

/* Bytes and msgpack objects a plain map reply of v takes at most, so that
 * a version that could never be mapped is refused at publish. */
static void map_reply_bound(const wb__version *v, uint64_t *bytes,
                            uint64_t *objects) {
    uint64_t n = WB_REPLY_SLACK, o = 64;
    for (size_t i = 0; i < v->n; i++) {
        n += 2 * (strlen(v->t[i].name) + 5) + 48 + 9 * (uint64_t)v->t[i].ndim;
        o += 9 + (uint64_t)v->t[i].ndim;
    }
    for (size_t i = 0; i < v->nmeta; i++) {
        n += strlen(v->mkeys[i]) + strlen(v->mvals[i]) + 10;
        o += 2;
    }
    *bytes = n;
    *objects = o;
}

void wb__op_publish(wb__session *s, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__publish_req pr;
    size_t bad = 0;
    int rc = wb__decode_publish_req(req, &pr, &bad);
    int bad_model = 0;
    if (rc == 0 && (rc = wb__req_name(pr.model, model)) != 0)
        bad_model = 1;
    if (rc) {
        if (rc == WB_ETOOBIG)
            wb__reply_error(s, id, rc,
                            "at most %u tensors and %d metadata entries",
                            WB_MAX_TENSORS, WB_MAX_META);
        else if (bad_model)
            wb__reply_error(s, id, rc, "publish needs a valid model name");
        else if (rc == WB_EPROTO)
            wb__reply_error(s, id, rc,
                            "publish needs a model name and a tensor list "
                            "(entry %zu is malformed)",
                            bad);
        else
            wb__reply_error(s, id, rc, "tensor %zu: %s", bad, wb_strerror(rc));
        wb__publish_req_free(&pr);
        return;
    }
    if (s->npending >= WB_MAX_PENDING) {
        wb__reply_error(s, id, WB_ETOOBIG,
                        "at most %d publishes may be open per connection",
                        WB_MAX_PENDING);
        wb__publish_req_free(&pr);
        return;
    }

    wb__version *v = wb__version_new();
    wb__pending *p = calloc(1, sizeof(*p));
    wb__layout lay = {0};
    seg_job *j = NULL;
    if (p)
        p->v = v; /* From here pending_free(p) frees v as well. */
    if (!v || !p || !(p->model = strdup(model))) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        goto fail;
    }
    if (read_meta(s, id, &pr, v) || read_ties(s, id, &pr, v))
        goto fail;
    /* The identity goes into the header now: it is fixed from here on. */
    v->id = wb__ident_new_id();
    wb__buf ident = {0};
    wb__ident_render(&ident, model, v->id, (uint32_t)s->cred.uid, 0, NULL);
    rc = ident.oom ? WB_ENOMEM
                   : wb__layout_build(pr.t, pr.n, v->tie, v->mkeys, v->mvals,
                                      v->nmeta, ident.p, &lay);
    wb__buf_free(&ident);
    if (rc) {
        wb__reply_error(s, id, rc,
                        rc == WB_EEXIST ? "two tensors share a name"
                                        : "cannot lay the tensors out: %s",
                        wb_strerror(rc));
        goto fail;
    }

    /* The version keeps its tensors in published order (the order PyTorch
     * reports keys in); only the bytes are laid out in safetensors order. */
    v->n = pr.n;
    v->t = pr.t; /* Takes over the names. */
    pr.t = NULL;
    pr.n = 0;
    v->offset = lay.offset;
    v->nbytes = lay.nbytes;
    lay.offset = lay.nbytes = NULL;
    for (size_t i = 0; i < v->n; i++)
        if (v->tie == NULL || v->tie[i] == i)
            v->data_bytes += v->nbytes[i];
    uint64_t total = lay.header_len + lay.data_len;
    uint64_t size = wb__seg_round(total);
    if (total < lay.data_len || size < total) {
        wb__reply_error(s, id, WB_ETOOBIG, "model too large");
        goto fail;
    }
    uint64_t bound, objects;
    map_reply_bound(v, &bound, &objects);
    if (bound > WB_MAX_FRAME || objects > WB_MAX_OBJECTS) {
        wb__reply_error(s, id, WB_ETOOBIG,
                        "its tensor table would take about %llu bytes and "
                        "%llu objects in a map reply, more than a frame "
                        "holds (%u bytes, %u objects)",
                        (unsigned long long)bound, (unsigned long long)objects,
                        WB_MAX_FRAME, WB_MAX_OBJECTS);
        goto fail;
    }
    if (wb__access_quota(s, id, model, size, "publishing") != 0)
        goto fail;
    if (wb__mem_charge(size)) {
        wb__reply_error(s, id, WB_ELIMIT,
                        "publishing %llu bytes would exceed the memory limit "
                        "(%llu of %llu bytes in use)",
                        (unsigned long long)size,
                        (unsigned long long)wb__reg.mem_used,
                        (unsigned long long)wb__reg.mem_limit);
        goto fail;
    }
    v->accounted = size;
    v->charged_to = (uint32_t)s->cred.uid;
    wb__usage_charge(v->charged_to, size);
    v->image_len = total;
    p->header = lay.header;
    p->header_len = lay.header_len;
    lay.header = NULL;
    if ((j = calloc(1, sizeof(*j))) == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        goto fail;
    }
    j->work.data = j;
    j->s = s;
    j->p = p;
    j->req_id = id;
    p->id = ++next_pub_id;
    if (uv_queue_work(uv_default_loop(), &j->work, seg_job_work,
                      seg_job_done) != 0) {
        free(j);
        wb__reply_error_sys(s, id, EAGAIN, "cannot queue work");
        goto fail;
    }
    wb__session_ref(s);
    wb__session_pause(s);
    wb__layout_free(&lay);
    wb__publish_req_free(&pr);
    return;

fail:
    wb__publish_req_free(&pr);
    wb__layout_free(&lay);
    if (p)
        pending_free(p);
    else
        wb__version_unref(v);
}

/* Finds the session's open publish named by the request's "pub". */
static wb__pending *find_pending(wb__session *s, uint64_t id,
                                 const msgpack_object *req) {
    uint64_t pub = 0;
    if (wb__decode_pub_req(req, &pub) != 0) {
        wb__reply_error(s, id, WB_EPROTO, "missing publish handle");
        return NULL;
    }
    for (wb__pending *p = s->pending; p; p = p->next)
        if (p->id == pub)
            return p;
    wb__reply_error(s, id, WB_ESTATE, "no open publish %llu on this connection",
                    (unsigned long long)pub);
    return NULL;
}

#define WB_CHECK_CHUNK (1u << 20) /* Bytes read at a time by a check. */

/* Checks what the publisher wrote into v's write-sealed segment and could
 * have got wrong: the header must be the daemon's own, BOOL bytes 0 or 1.
 * Reads with pread, so that a segment truncated under it is an error, not
 * a SIGBUS.  Returns 0, or an error code with why filled in. */
static int check_sealed(const wb__pending *p, char *why, size_t n) {
    const wb__version *v = p->v;
    uint8_t *buf = malloc(WB_CHECK_CHUNK);
    if (buf == NULL) {
        snprintf(why, n, "out of memory");
        return WB_ENOMEM;
    }
    int rc = 0;
    for (uint64_t off = 0; rc == 0 && off < p->header_len;
         off += WB_CHECK_CHUNK) {
        size_t k =
            (size_t)(p->header_len - off < WB_CHECK_CHUNK ? p->header_len - off
                                                          : WB_CHECK_CHUNK);
        if (wb__seg_read(&v->seg, off, buf, k) != 0 ||
            memcmp(buf, p->header + off, k) != 0) {
            snprintf(why, n, "its header was altered");
            rc = WB_ECORRUPT;
        }
    }
    for (size_t i = 0; rc == 0 && i < v->n; i++) {
        if (v->t[i].dtype != WB_BOOL || (v->tie && v->tie[i] != i))
            continue;
        for (uint64_t off = 0; rc == 0 && off < v->nbytes[i];
             off += WB_CHECK_CHUNK) {
            size_t k = (size_t)(v->nbytes[i] - off < WB_CHECK_CHUNK
                                    ? v->nbytes[i] - off
                                    : WB_CHECK_CHUNK);
            if (wb__seg_read(&v->seg, v->offset[i] + off, buf, k) != 0) {
                snprintf(why, n, "its size was altered");
                rc = WB_ECORRUPT;
            } else if (!wb__bool_valid(buf, k)) {
                snprintf(why, n,
                         "BOOL tensor %s holds bytes other than 0 and 1",
                         v->t[i].name);
                rc = WB_EINVAL;
            }
        }
    }
    free(buf);
    return rc;
}

/* Digests a sealed version off the loop before it is listed. */
typedef struct digest_job {
    uv_work_t work;  /* libuv request. */
    wb__session *s;  /* Publisher (referenced). */
    wb__pending *p;  /* Publish it ends (owned until done). */
    wb__model *m;    /* Model it joins (referenced). */
    uint64_t req_id; /* Request to answer. */
    uint32_t uid;    /* Publisher's uid (the session may be gone). */
    pid_t pid;       /* Publisher's pid, for the audit line. */
    int rc;          /* Result of the work. */
    int sys_errno;   /* errno behind a WB_ESYS result. */
} digest_job;

static void digest_job_work(uv_work_t *w) {
    digest_job *j = w->data;
    wb__version *v = j->p->v;
    j->rc = wb__digest_seg(&v->seg, v->image_len, j->p->header_len, v->digest);
    if (j->rc)
        j->sys_errno = errno;
}

static void digest_job_done(uv_work_t *w, int status) {
    digest_job *j = w->data;
    wb__session *s = j->s;
    wb__pending *p = j->p;
    wb__model *m = j->m;
    int live = wb__session_live(s);
    if (status != 0 && j->rc == 0)
        j->rc = WB_ESYS, j->sys_errno = ECANCELED;
    if (j->rc) {
        wb__warn("commit of %s: digest failed: %s", p->model,
                 strerror(j->sys_errno));
        if (live)
            wb__reply_error_sys(s, j->req_id, j->sys_errno,
                                "cannot commit %s: digesting it failed",
                                p->model);
        pending_free(p);
    } else {
        /* Listed even when the publisher left meanwhile: it asked for the
         * commit, and the version is sealed and whole. */
        wb__version *v = p->v;
        p->v = NULL;
        wb__version_commit(m, v);
        wb__restart_committed(v);
        /* The oldest versions beyond --keep are retired with this commit. */
        wb__retention_apply(m);
        char hex[2 * WB_DIGEST_LEN + 1];
        wb__digest_hex(v->digest, hex);
        wb__info("audit: committed %s@%llu: %zu tensors, %llu bytes, segment "
                 "%llu bytes, digest %s (client %llu uid %u pid %d)",
                 m->name, (unsigned long long)v->number, v->n,
                 (unsigned long long)v->data_bytes,
                 (unsigned long long)v->seg.size, hex,
                 (unsigned long long)s->id, (unsigned)j->uid, (int)j->pid);
        pending_free(p);
        if (live) {
            wb__reply r;
            wb__reply_init(&r, j->req_id);
            wb__pack_u64_rep(&r.pk, j->req_id, "version", v->number);
            wb__reply_send(s, &r, NULL, 0);
        }
        wb__watch_notify(m);
    }
    wb__model_unref(m);
    wb__session_resume(s);
    wb__session_unref(s);
    free(j);
}

void wb__op_commit(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__pending *p = find_pending(s, id, req);
    if (p == NULL)
        return;
    pending_unlink(s, p);
    /* Another user may have committed the name first since the publish
     * opened, or the policy changed. */
    if (wb__access_model(s, id, WB_ROLE_PUBLISH, "commit to", p->model) != 0) {
        pending_free(p);
        return;
    }
    wb__version *v = p->v;
    char why[WB_MAX_NAME + 128] = "";
    /* Forbid writes, then check, then seal for good: nothing checked can
     * change after the check, and a failed check can still give every page
     * back (the segment can be truncated until the final seal).  So what
     * may fail for want of resources comes before the final seal too. */
    int rc = wb__seg_seal_write(&v->seg);
    if (rc == 0)
        rc = check_sealed(p, why, sizeof(why));
    wb__model *m = NULL;
    if (rc == 0 && (m = wb__model_acquire(p->model)) == NULL) {
        rc = WB_ETOOBIG;
        snprintf(why, sizeof(why), "at most %d models", WB_MAX_MODELS);
    }
    digest_job *j = NULL;
    if (rc == 0 && (j = calloc(1, sizeof(*j))) == NULL) {
        rc = WB_ENOMEM;
        snprintf(why, sizeof(why), "out of memory");
    }
    if (rc == 0)
        rc = wb__seg_seal(&v->seg);
    if (rc) {
        free(j);
        wb__model_unref(m);
        wb__reply_error(s, id, rc, "cannot commit %s: %s", p->model,
                        rc == WB_EBUSY
                            ? "a writable mapping still exists; unmap before "
                              "committing"
                        : why[0] ? why
                                 : "its seals or size were altered");
        pending_free(p);
        return;
    }
    /* The name is claimed now, not once digested: a second publisher's
     * commit that arrives meanwhile is refused as if this one were done. */
    if (m->owner == WB_NO_OWNER)
        m->owner = (uint32_t)s->cred.uid;
    /* The digest is computed before the version is listed or answered, on
     * the pool: a GiB takes about 0.1 s. */
    j->work.data = j;
    j->s = s;
    j->p = p;
    j->m = m;
    j->req_id = id;
    j->uid = (uint32_t)s->cred.uid;
    j->pid = s->cred.pid;
    if (uv_queue_work(uv_default_loop(), &j->work, digest_job_work,
                      digest_job_done) != 0) {
        free(j);
        wb__model_unref(m);
        wb__reply_error_sys(s, id, EAGAIN, "cannot queue work");
        pending_free(p);
        return;
    }
    wb__session_ref(s);
    wb__session_pause(s);
}

void wb__op_abort(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__pending *p = find_pending(s, id, req);
    if (p == NULL)
        return;
    pending_unlink(s, p);
    pending_free(p);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_u64_rep(&r.pk, id, NULL, 0);
    wb__reply_send(s, &r, NULL, 0);
}

void wb__op_drop(wb__session *s, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__model_req dr;
    uint64_t dropped = 0;
    int rc = wb__decode_model_req(req, &dr);
    if (rc == WB_EPROTO) {
        wb__reply_error(s, id, rc,
                        "model must be a string and version an "
                        "integer");
        return;
    }
    if (dr.version == 0) {
        if (rc == 0)
            rc = wb__req_name(dr.model, model);
        wb__model *m = rc ? NULL : wb__model_find(model);
        if (rc || m == NULL || m->versions == NULL) {
            wb__reply_error(s, id, rc ? rc : WB_ENOMODEL, "no model named '%s'",
                            rc ? "" : model);
            return;
        }
        wb__model_ref(m);
        while (m->versions) {
            wb__version_drop(m->versions);
            dropped++;
        }
        wb__model_unref(m);
    } else {
        wb__version *v = wb__req_version(s, id, req, model);
        if (v == NULL)
            return;
        wb__version_drop(v);
        dropped = 1;
    }
    wb__info("audit: dropped %llu versions of %s (client %llu uid %u pid %d)",
             (unsigned long long)dropped, model, (unsigned long long)s->id,
             (unsigned)s->cred.uid, (int)s->cred.pid);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_u64_rep(&r.pk, id, "dropped", dropped);
    wb__reply_send(s, &r, NULL, 0);
}
