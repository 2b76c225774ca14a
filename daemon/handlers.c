/* handlers.c -- What wbrokerd does with each request.
 *
 * One function per operation.  Each validates its arguments first and
 * answers with an error reply carrying a stable code; nothing here aborts
 * or closes another client's state.  Slow work (backing a new segment with
 * memory, converting dtypes) runs on libuv's thread pool and answers later. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broker.h"
#include "convert.h"
#include "log.h"
#include "resolve.h"

/* A reply being built: a msgpack map whose size is known up front. */
typedef struct reply {
    msgpack_sbuffer sb;         /* Bytes. */
    msgpack_packer pk;          /* Packer writing into sb. */
} reply;

/* Starts a success reply with nfields fields besides "id" and "err". */
static void reply_begin(reply *r, uint64_t id, size_t nfields) {
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&r->pk, nfields + 2);
    wb__pack_key(&r->pk, "id");
    msgpack_pack_uint64(&r->pk, id);
    wb__pack_key(&r->pk, "err");
    msgpack_pack_int(&r->pk, 0);
}

/* Queues the reply on c with optional descriptors (ownership passes). */
static void reply_send(wb__conn *c, reply *r, const int *fds, int nfds) {
    size_t len = r->sb.size;
    uint8_t *body = (uint8_t *)msgpack_sbuffer_release(&r->sb);
    if (body == NULL) { /* Empty sbuffer: cannot happen with a map. */
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return;
    }
    wb__conn_send(c, body, len, fds, nfds);
}

void wb__reply_error(wb__conn *c, uint64_t id, int code, const char *fmt,
                     ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    wb__pack_key(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    wb__pack_key(&pk, "err");
    msgpack_pack_int(&pk, code);
    wb__pack_key(&pk, "msg");
    wb__pack_cstr(&pk, msg);
    size_t len = sb.size;
    wb__conn_send(c, (uint8_t *)msgpack_sbuffer_release(&sb), len, NULL, 0);
    wb__debug("client %llu: error %s: %s", (unsigned long long)c->id,
              wb_err_name(code), msg);
}

/* Reads the required string field key as a valid name into buf. */
static int get_name(const msgpack_object *req, const char *key, char *buf) {
    const char *s;
    size_t n;
    int rc = wb__mp_get_str(req, key, &s, &n);
    if (rc == 1)
        return WB_EINVAL;
    if (rc)
        return rc;
    if (wb__check_name(s, n))
        return WB_ENAME;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* ------------------------------------------------------------ hello */

static int op_hello(wb__conn *c, uint64_t id, const msgpack_object *req) {
    uint64_t proto = 0;
    if (wb__mp_get_u64(req, "proto", &proto) != 0 ||
        proto != WB_PROTO_VERSION) {
        wb__reply_error(c, id, WB_EVERSION,
                        "client speaks protocol %llu, daemon speaks %d",
                        (unsigned long long)proto, WB_PROTO_VERSION);
        c->closing = 1;
        return 0;
    }
    c->hello = 1;
    reply r;
    reply_begin(&r, id, 3);
    wb__pack_key(&r.pk, "proto");
    msgpack_pack_int(&r.pk, WB_PROTO_VERSION);
    wb__pack_key(&r.pk, "server");
    wb__pack_cstr(&r.pk, wb_version_string());
    wb__pack_key(&r.pk, "pid");
    msgpack_pack_uint32(&r.pk, (uint32_t)getpid());
    reply_send(c, &r, NULL, 0);
    return 0;
}

/* ------------------------------------------------------------ publish */

/* Work item that backs a new segment off the loop. */
typedef struct seg_job {
    uv_work_t work;             /* libuv request. */
    wb__pending *p;             /* Publish it serves. */
    uint64_t req_id;            /* Request to answer. */
    int rc;                     /* Result of the work. */
    char err[256];              /* Detail on failure. */
} seg_job;

static void pending_free(wb__pending *p) {
    if (p == NULL)
        return;
    if (p->v) {
        p->v->refs = 1;
        wb__version_unref(p->v); /* Closes the segment, refunds memory. */
    }
    free(p->model);
    free(p->header);
    free(p);
}

/* Unlinks p from its connection's list. */
static void pending_unlink(wb__conn *c, wb__pending *p) {
    for (wb__pending **pp = &c->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            return;
        }
}

static void seg_job_work(uv_work_t *w) {
    seg_job *j = w->data;
    wb__version *v = j->p->v;
    char label[64];
    snprintf(label, sizeof(label), "wbroker:%.40s", j->p->model);
    j->rc = wb__seg_create(label, v->accounted, &v->seg, j->err,
                           sizeof(j->err));
    if (j->rc)
        return;
    size_t done = 0;
    while (done < j->p->header_len) {
        ssize_t n = pwrite(v->seg.fd, j->p->header + done,
                           j->p->header_len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(j->err, sizeof(j->err), "writing the header: %s",
                     strerror(errno));
            j->rc = WB_ESYS;
            return;
        }
        done += (size_t)n;
    }
}

static void seg_job_done(uv_work_t *w, int status) {
    seg_job *j = w->data;
    wb__pending *p = j->p;
    wb__conn *c = p->conn;
    if (c == NULL || c->closed) {
        /* The publisher left while we worked: leave nothing behind. */
        pending_free(p);
        if (c)
            wb__conn_unref(c);
        free(j);
        return;
    }
    if (status != 0 && j->rc == 0)
        j->rc = WB_ESYS, snprintf(j->err, sizeof(j->err), "cancelled");
    if (j->rc) {
        wb__warn("client %llu: publish of %s failed: %s",
                 (unsigned long long)c->id, p->model, j->err);
        wb__reply_error(c, j->req_id, j->rc, "%s", j->err);
        pending_unlink(c, p);
        pending_free(p);
    } else {
        int fd = dup(p->v->seg.fd);
        if (fd < 0) {
            wb__reply_error(c, j->req_id, WB_ESYS, "dup: %s", strerror(errno));
            pending_unlink(c, p);
            pending_free(p);
        } else {
            p->ready = 1;
            reply r;
            reply_begin(&r, j->req_id, 3);
            wb__pack_key(&r.pk, "pub");
            msgpack_pack_uint64(&r.pk, p->id);
            wb__pack_key(&r.pk, "size");
            msgpack_pack_uint64(&r.pk, p->v->seg.size);
            wb__pack_key(&r.pk, "offs");
            msgpack_pack_array(&r.pk, p->v->n);
            for (size_t i = 0; i < p->v->n; i++)
                msgpack_pack_uint64(&r.pk, p->v->offset[i]);
            reply_send(c, &r, &fd, 1);
        }
    }
    free(j);
    wb__conn_resume(c);
    wb__conn_unref(c);
}

/* Reads the metadata map of a publish into v. */
static int read_meta(wb__conn *c, uint64_t id, const msgpack_object *req,
                     wb__version *v) {
    const msgpack_object_map *mm = NULL;
    int rc = wb__mp_get_map(req, "meta", &mm);
    if (rc == 1)
        return 0;
    if (rc || mm->size > WB_MAX_META) {
        wb__reply_error(c, id, rc ? rc : WB_ETOOBIG,
                        "metadata must be a map of at most %d strings",
                        WB_MAX_META);
        return -1;
    }
    v->mkeys = calloc(mm->size ? mm->size : 1, sizeof(char *));
    v->mvals = calloc(mm->size ? mm->size : 1, sizeof(char *));
    if (!v->mkeys || !v->mvals) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < mm->size; i++) {
        const msgpack_object *k = &mm->ptr[i].key, *val = &mm->ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || val->type != MSGPACK_OBJECT_STR ||
            wb__check_name(k->via.str.ptr, k->via.str.size) ||
            val->via.str.size > WB_MAX_META_BYTES ||
            memchr(val->via.str.ptr, 0, val->via.str.size) ||
            (k->via.str.size == 12 &&
             memcmp(k->via.str.ptr, "__metadata__", 12) == 0)) {
            wb__reply_error(c, id, WB_EINVAL,
                            "metadata entry %u: keys and values must be "
                            "strings without NUL (values up to %d bytes)",
                            i, WB_MAX_META_BYTES);
            return -1;
        }
        if (k->via.str.size == strlen(WB_TIED_KEY) &&
            memcmp(k->via.str.ptr, WB_TIED_KEY, k->via.str.size) == 0) {
            wb__reply_error(c, id, WB_EINVAL,
                            "metadata key \"%s\" is reserved: tie tensors "
                            "with tied_to",
                            WB_TIED_KEY);
            return -1;
        }
        v->mkeys[i] = wb__mp_strdup(k);
        v->mvals[i] = wb__mp_strdup(val);
        v->nmeta = i + 1;
        if (!v->mkeys[i] || !v->mvals[i]) {
            wb__reply_error(c, id, WB_ENOMEM, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* Reads the optional "tied" list of [alias, stored] index pairs of a
 * publish into v->tie.  Each alias follows its stored tensor, has its dtype
 * and shape, and is tied once; a stored tensor is not itself tied.  Returns
 * 0, or -1 after answering. */
static int read_ties(wb__conn *c, uint64_t id, const msgpack_object *req,
                     const wb__tinfo *t, size_t n, wb__version *v) {
    const msgpack_object_array *ta = NULL;
    int rc = wb__mp_get_array(req, "tied", &ta);
    if (rc == 1 || (rc == 0 && ta->size == 0))
        return 0;
    if (rc || ta->size > n) {
        wb__reply_error(c, id, WB_EPROTO,
                        "tied must be a list of at most "
                        "one pair per tensor");
        return -1;
    }
    v->tie = malloc((n ? n : 1) * sizeof(size_t));
    if (v->tie == NULL) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        v->tie[i] = i;
    for (uint32_t k = 0; k < ta->size; k++) {
        const msgpack_object *o = &ta->ptr[k];
        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 ||
            o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            o->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            wb__reply_error(c, id, WB_EPROTO, "tie %u: not a pair of indices",
                            k);
            return -1;
        }
        uint64_t a = o->via.array.ptr[0].via.u64;
        uint64_t s = o->via.array.ptr[1].via.u64;
        const char *why = NULL;
        if (a >= n || s >= a)
            why = "the stored tensor must come before its alias";
        else if (v->tie[a] != a)
            why = "the alias is tied twice";
        else if (v->tie[s] != s)
            why = "the stored tensor is itself tied";
        else if (t[a].dtype != t[s].dtype || t[a].ndim != t[s].ndim ||
                 memcmp(t[a].shape, t[s].shape,
                        (size_t)t[a].ndim * sizeof(int64_t)) != 0)
            why = "dtypes or shapes differ";
        if (why) {
            wb__reply_error(c, id, WB_EINVAL, "tie %u (%llu to %llu): %s", k,
                            (unsigned long long)a, (unsigned long long)s, why);
            return -1;
        }
        v->tie[a] = (size_t)s;
    }
    return 0;
}

static int op_publish(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    char model[WB_MAX_NAME + 1];
    int rc = get_name(req, "model", model);
    if (rc) {
        wb__reply_error(c, id, rc, "publish needs a valid model name");
        return 0;
    }
    const msgpack_object_array *ta;
    if (wb__mp_get_array(req, "tensors", &ta) != 0) {
        wb__reply_error(c, id, WB_EPROTO, "publish needs a tensor list");
        return 0;
    }
    if (ta->size > WB_MAX_TENSORS) {
        wb__reply_error(c, id, WB_ETOOBIG, "%u tensors: at most %u allowed",
                        ta->size, WB_MAX_TENSORS);
        return 0;
    }
    size_t npend = 0;
    for (wb__pending *p = c->pending; p; p = p->next)
        npend++;
    if (npend >= WB_MAX_PENDING) {
        wb__reply_error(c, id, WB_ETOOBIG,
                        "at most %d publishes may be open per connection",
                        WB_MAX_PENDING);
        return 0;
    }

    wb__version *v = calloc(1, sizeof(*v));
    wb__pending *p = calloc(1, sizeof(*p));
    wb__tinfo *decl = calloc(ta->size ? ta->size : 1, sizeof(wb__tinfo));
    wb__layout lay = {0};
    if (v) {
        v->refs = 1;
        v->seg.fd = -1;
    }
    if (p)
        p->v = v; /* From here pending_free(p) frees v as well. */
    if (!v || !p || !decl || !(p->model = strdup(model))) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < ta->size; i++) {
        rc = wb__decode_tinfo(&ta->ptr[i], &decl[i]);
        if (rc) {
            wb__reply_error(c, id, rc, "tensor %u: %s", i, wb_strerror(rc));
            goto fail;
        }
    }
    if (read_meta(c, id, req, v) || read_ties(c, id, req, decl, ta->size, v))
        goto fail;
    rc = wb__layout_build(decl, ta->size, v->tie, v->mkeys, v->mvals, v->nmeta,
                          &lay);
    if (rc) {
        wb__reply_error(c, id, rc, rc == WB_EEXIST
                                       ? "two tensors share a name"
                                       : "cannot lay the tensors out: %s",
                        wb_strerror(rc));
        goto fail;
    }

    /* The version keeps its tensors in published order (the order PyTorch
     * reports keys in); only the bytes are laid out in safetensors order. */
    v->n = ta->size;
    v->t = decl;
    decl = NULL;
    v->offset = lay.offset;
    v->nbytes = lay.nbytes;
    lay.offset = lay.nbytes = NULL;
    for (size_t i = 0; i < v->n; i++)
        if (v->tie == NULL || v->tie[i] == i)
            v->data_bytes += v->nbytes[i];
    uint64_t total = lay.header_len + lay.data_len;
    uint64_t size = wb__seg_round(total);
    if (total < lay.data_len || size < total) {
        wb__reply_error(c, id, WB_ETOOBIG, "model too large");
        goto fail;
    }
    rc = wb__mem_charge(b, size);
    if (rc) {
        wb__reply_error(c, id, WB_ELIMIT,
                        "publishing %llu bytes would exceed the memory limit "
                        "(%llu of %llu bytes in use)",
                        (unsigned long long)size,
                        (unsigned long long)b->mem_used,
                        (unsigned long long)b->mem_limit);
        goto fail;
    }
    v->accounted = size;
    p->header = lay.header;
    p->header_len = lay.header_len;
    lay.header = NULL;

    seg_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        goto fail;
    }
    j->work.data = j;
    j->p = p;
    j->req_id = id;
    p->id = ++b->next_pub_id;
    p->conn = c;
    p->next = c->pending;
    c->pending = p;
    c->refs++;
    if (uv_queue_work(b->loop, &j->work, seg_job_work, seg_job_done) != 0) {
        c->refs--;
        c->pending = p->next;
        free(j);
        wb__reply_error(c, id, WB_ESYS, "cannot queue work");
        goto fail;
    }
    wb__layout_free(&lay);
    return 1;

fail:
    for (size_t i = 0; decl && i < ta->size; i++)
        free(decl[i].name);
    free(decl);
    wb__layout_free(&lay);
    if (p)
        pending_free(p);
    else
        wb__version_unref(v);
    return 0;
}

/* Finds the connection's open publish named by the request's "pub". */
static wb__pending *find_pending(wb__conn *c, uint64_t id,
                                 const msgpack_object *req) {
    uint64_t pub = 0;
    if (wb__mp_get_u64(req, "pub", &pub) != 0) {
        wb__reply_error(c, id, WB_EPROTO, "missing publish handle");
        return NULL;
    }
    for (wb__pending *p = c->pending; p; p = p->next)
        if (p->id == pub && p->ready)
            return p;
    wb__reply_error(c, id, WB_ESTATE, "no open publish %llu on this connection",
                    (unsigned long long)pub);
    return NULL;
}

/* Answers the watchers of m that wait for a version newer than theirs. */
static void notify_watchers(wb__model *m);

static int op_commit(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    wb__pending *p = find_pending(c, id, req);
    if (p == NULL)
        return 0;
    wb__version *v = p->v;
    /* The header must still be the daemon's own. */
    uint8_t *check = malloc(p->header_len);
    int rc = 0;
    if (check == NULL) {
        rc = WB_ENOMEM;
    } else {
        ssize_t n = pread(v->seg.fd, check, p->header_len, 0);
        if (n != (ssize_t)p->header_len ||
            memcmp(check, p->header, p->header_len) != 0)
            rc = WB_ECORRUPT;
    }
    free(check);
    if (rc == 0)
        rc = wb__seg_seal(&v->seg);
    if (rc) {
        wb__reply_error(c, id, rc,
                        rc == WB_EBUSY
                            ? "cannot seal %s: a writable mapping still "
                              "exists; unmap before committing"
                        : rc == WB_ECORRUPT
                            ? "cannot commit %s: its header, seals or size "
                              "were altered"
                            : "cannot commit %s",
                        p->model);
        pending_unlink(c, p);
        pending_free(p);
        return 0;
    }
    wb__model *m = wb__model_get(b, p->model);
    if (m == NULL) {
        wb__reply_error(c, id, WB_ETOOBIG, "at most %d models", WB_MAX_MODELS);
        pending_unlink(c, p);
        pending_free(p);
        return 0;
    }
    pending_unlink(c, p);
    p->v = NULL;
    v->number = ++m->last_number;
    v->model = m;
    wb__version **pp = &m->versions;
    while (*pp)
        pp = &(*pp)->next;
    *pp = v;
    m->nversions++;
    b->versions++;
    wb__info("committed %s@%llu: %zu tensors, %llu bytes, segment %llu bytes "
             "(client %llu pid %d)",
             m->name, (unsigned long long)v->number, v->n,
             (unsigned long long)v->data_bytes,
             (unsigned long long)v->seg.size, (unsigned long long)c->id,
             (int)c->cred.pid);
    pending_free(p);

    reply r;
    reply_begin(&r, id, 1);
    wb__pack_key(&r.pk, "version");
    msgpack_pack_uint64(&r.pk, v->number);
    reply_send(c, &r, NULL, 0);
    notify_watchers(m);
    return 0;
}

static int op_abort(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__pending *p = find_pending(c, id, req);
    if (p == NULL)
        return 0;
    pending_unlink(c, p);
    pending_free(p);
    reply r;
    reply_begin(&r, id, 0);
    reply_send(c, &r, NULL, 0);
    return 0;
}

/* ------------------------------------------------------------ map */

/* Looks up model@version for a request, answering the error itself. */
static wb__version *lookup(wb__conn *c, uint64_t id, const msgpack_object *req,
                           char *model) {
    int rc = get_name(req, "model", model);
    if (rc) {
        wb__reply_error(c, id, rc, "a valid model name is required");
        return NULL;
    }
    uint64_t ver = 0;
    if (wb__mp_get_u64(req, "version", &ver) < 0) {
        wb__reply_error(c, id, WB_EPROTO, "version must be an integer");
        return NULL;
    }
    wb__model *m = wb__model_find(wb__g, model);
    if (m == NULL || m->versions == NULL) {
        wb__reply_error(c, id, WB_ENOMODEL, "no model named '%s'", model);
        return NULL;
    }
    wb__version *v = wb__version_find(m, ver);
    if (v == NULL) {
        wb__reply_error(c, id, WB_ENOVERSION,
                        "model '%s' has no version %llu (latest is %llu)",
                        model, (unsigned long long)ver,
                        (unsigned long long)wb__version_latest(m)->number);
        return NULL;
    }
    return v;
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

/* Remembers that c maps model, for the readers count. */
static void note_mapped(wb__conn *c, const char *model) {
    for (size_t i = 0; i < c->nmapped; i++)
        if (strcmp(c->mapped[i], model) == 0)
            return;
    char **m = realloc(c->mapped, (c->nmapped + 1) * sizeof(char *));
    if (m == NULL)
        return;
    c->mapped = m;
    if ((m[c->nmapped] = strdup(model)) != NULL)
        c->nmapped++;
}

/* State of a map request: what to send once conversions are ready. */
typedef struct map_req {
    wb__conn *c;                /* Requester. */
    uint64_t id;                /* Request id. */
    wb__version *v;             /* Version mapped (referenced). */
    int plan;                   /* Dry run. */
    wb__resolve_out res;        /* Resolved tensors and the report. */
    int resolved;               /* 1 if res is from wb__resolve. */
    wb__derived **conv;         /* Per resolved tensor: converted copy. */
    int waiting;                /* Conversions still running. */
    int failed;                 /* First conversion error, or 0. */
    int answered;               /* 1 once the error reply went out. */
    wb__ruleset rs;             /* Decoded rules (owned). */
    wb__schema sc;              /* Decoded target schema (owned). */
    wb__resolve_req rq;         /* What resolution reads. */
    int rc;                     /* Resolution's result. */
    uv_work_t work;             /* Resolution on the thread pool. */
} map_req;

static void map_req_free(map_req *mr) {
    wb__ruleset_clear(&mr->rs);
    wb__schema_clear(&mr->sc);
    wb__resolve_out_free(&mr->res);
    free(mr->conv);
    wb__version_unref(mr->v);
    free(mr);
}

/* Sends the map reply: segments, tensor table, metadata and report. */
static void map_reply(map_req *mr) {
    wb__conn *c = mr->c;
    wb__version *v = mr->v;
    int fds[WB_MAX_SEGMENTS];
    int nfds = 0;
    wb__segment *segs[WB_MAX_SEGMENTS];
    int nsegs = 1;
    segs[0] = &v->seg;

    size_t n = mr->resolved ? mr->res.n : v->n;
    int *segix = calloc(n ? n : 1, sizeof(int));
    if (segix == NULL) {
        wb__reply_error(c, mr->id, WB_ENOMEM, "out of memory");
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
                wb__reply_error(c, mr->id, WB_ETOOBIG,
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
                wb__reply_error(c, mr->id, WB_ESYS,
                                "cannot reopen a segment: %s",
                                strerror(errno));
                return;
            }
            fds[nfds++] = fd;
        }
    }

    reply r;
    reply_begin(&r, mr->id, 6);
    wb__pack_key(&r.pk, "version");
    msgpack_pack_uint64(&r.pk, v->number);
    wb__pack_key(&r.pk, "segs");
    msgpack_pack_array(&r.pk, (size_t)nsegs);
    for (int k = 0; k < nsegs; k++)
        msgpack_pack_uint64(&r.pk, segs[k]->size);
    wb__pack_key(&r.pk, "tensors");
    msgpack_pack_array(&r.pk, n);
    for (size_t i = 0; i < n; i++) {
        size_t s = mr->resolved ? mr->res.v[i].src : i;
        const wb__tinfo *t = &v->t[s];
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
        msgpack_pack_uint64(&r.pk, d ? d->offset : v->offset[s]);
        msgpack_pack_uint64(&r.pk, d ? d->nbytes : v->nbytes[s]);
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
    reply_send(c, &r, fds, nfds);
    if (!mr->plan)
        note_mapped(c, v->model->name);
}

/* Sends the load-error reply: the report and PyTorch's text, no mapping. */
static void map_reply_load_error(map_req *mr) {
    reply r;
    msgpack_sbuffer_init(&r.sb);
    msgpack_packer_init(&r.pk, &r.sb, msgpack_sbuffer_write);
    msgpack_pack_map(&r.pk, 6);
    wb__pack_key(&r.pk, "id");
    msgpack_pack_uint64(&r.pk, mr->id);
    wb__pack_key(&r.pk, "err");
    msgpack_pack_int(&r.pk, WB_ELOAD);
    wb__pack_key(&r.pk, "msg");
    wb__pack_cstr(&r.pk, mr->res.error_text);
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
    reply_send(mr->c, &r, NULL, 0);
}

#define WB_CONV_PART_MIN (16u << 20) /* Fewest output bytes worth a thread. */

/* One share of a conversion job: the output bytes [lo, hi) of its
 * segment, written by one thread-pool thread. */
typedef struct conv_part {
    uv_work_t work;             /* libuv request. */
    struct conv_job *j;         /* The job. */
    uint64_t lo, hi;            /* Output bytes, WB_DATA_ALIGN-aligned. */
    int rc;                     /* Result. */
    char err[160];              /* Detail on failure. */
} conv_part;

/* A conversion of a batch of tensors into one new segment: the segment is
 * made on the thread pool, then written by parts in parallel, then sealed
 * on the loop. */
typedef struct conv_job {
    uv_work_t work;             /* libuv request making the segment. */
    wb__version *v;             /* Source version (referenced). */
    wb__dseg *ds;               /* Destination segment. */
    wb__derived **items;        /* The copies it writes, by offset. */
    size_t nitems;              /* Entries in items. */
    uint64_t out_bytes;         /* Output bytes the items span. */
    conv_part *parts;           /* The parts writing them. */
    unsigned nparts;            /* Entries in parts. */
    unsigned left;              /* Parts still running. */
    char label[64];             /* Name of the memfd. */
    int rc;                     /* Result. */
    char err[256];              /* Detail on failure. */
    struct conv_wait *waiters;  /* Map requests waiting for it. */
} conv_job;

/* A map request waiting for a conversion. */
typedef struct conv_wait {
    map_req *mr;                /* The waiting request. */
    struct conv_wait *next;     /* Next waiter. */
} conv_wait;

static void map_req_finish(map_req *mr) {
    wb__conn *c = mr->c;
    if (!c->closed) {
        if (mr->failed && !mr->answered)
            wb__reply_error(c, mr->id, mr->failed, "dtype conversion failed");
        else if (!mr->failed)
            map_reply(mr);
        wb__conn_resume(c);
    }
    wb__conn_unref(c);
    map_req_free(mr);
}

/* Converts the elements of d's source tensor that land in the output
 * bytes [lo, hi) of the segment, whose bytes from base on are mapped at
 * dst.  The source range is mapped with MAP_POPULATE: faulting fresh
 * shared pages one at a time costs more than the conversion itself. */
static int convert_range(const wb__version *v, const wb__derived *d,
                         uint64_t lo, uint64_t hi, uint8_t *dst,
                         uint64_t base, char *err, size_t errlen) {
    size_t isz = wb_dtype_size(d->dtype_from), osz = wb_dtype_size(d->dtype_to);
    uint64_t from = lo > d->offset ? lo : d->offset;
    uint64_t to = d->offset + d->nbytes < hi ? d->offset + d->nbytes : hi;
    if (from >= to)
        return 0;
    uint64_t first = (from - d->offset) / osz, count = (to - from) / osz;
    uint64_t off = v->offset[d->src] + first * isz;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t sbase = off / page * page;
    size_t slen = (size_t)(off - sbase + count * isz);
    uint8_t *src = mmap(NULL, slen, PROT_READ, MAP_SHARED | MAP_POPULATE,
                        v->seg.fd, (off_t)sbase);
    if (src == MAP_FAILED) {
        snprintf(err, errlen, "mapping the source: %s", strerror(errno));
        return WB_ESYS;
    }
    int rc = wb__convert(d->dtype_from, d->dtype_to, src + (off - sbase),
                         dst + (from - base), (size_t)count);
    munmap(src, slen);
    if (rc)
        snprintf(err, errlen, "unsupported conversion");
    return rc;
}

/* Writes part's share of the output through a populated mapping of it. */
static void conv_part_work(uv_work_t *w) {
    conv_part *pt = w->data;
    conv_job *j = pt->j;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t base = pt->lo / page * page;
    size_t len = (size_t)(pt->hi - base);
    uint8_t *dst = mmap(NULL, len, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_POPULATE, j->ds->seg.fd, (off_t)base);
    if (dst == MAP_FAILED) {
        snprintf(pt->err, sizeof(pt->err), "mapping the copy: %s",
                 strerror(errno));
        pt->rc = WB_ESYS;
        return;
    }
    for (size_t i = 0; i < j->nitems && pt->rc == 0; i++)
        pt->rc = convert_range(j->v, j->items[i], pt->lo, pt->hi, dst, base,
                               pt->err, sizeof(pt->err));
    munmap(dst, len);
}

static void conv_create_work(uv_work_t *w) {
    conv_job *j = w->data;
    j->rc = wb__seg_create(j->label, j->ds->seg.size, &j->ds->seg, j->err,
                           sizeof(j->err));
}

static void conv_finish(conv_job *j);

static void conv_part_done(uv_work_t *w, int status) {
    conv_part *pt = w->data;
    conv_job *j = pt->j;
    if ((pt->rc || status) && j->rc == 0) {
        j->rc = pt->rc ? pt->rc : WB_ESYS;
        snprintf(j->err, sizeof(j->err), "%s", pt->err);
    }
    if (--j->left > 0)
        return;
    if (j->rc == 0)
        j->rc = wb__seg_seal(&j->ds->seg);
    conv_finish(j);
}

/* The segment exists: splits the output into up to one part per thread of
 * parallelism, at least WB_CONV_PART_MIN bytes each, and starts them. */
static void conv_created(uv_work_t *w, int status) {
    conv_job *j = w->data;
    if (status && j->rc == 0)
        j->rc = WB_ESYS;
    uint64_t n = (j->out_bytes + WB_CONV_PART_MIN - 1) / WB_CONV_PART_MIN;
    unsigned cpus = uv_available_parallelism();
    j->nparts = (unsigned)(n < cpus ? n : cpus);
    if (j->rc == 0 && j->nparts > 0 &&
        !(j->parts = calloc(j->nparts, sizeof(conv_part))))
        j->rc = WB_ENOMEM;
    if (j->rc || j->nparts == 0) {
        if (j->rc == 0)
            j->rc = wb__seg_seal(&j->ds->seg);
        conv_finish(j);
        return;
    }
    uint64_t share = (j->out_bytes / j->nparts + WB_DATA_ALIGN - 1) /
                     WB_DATA_ALIGN * WB_DATA_ALIGN;
    j->left = j->nparts;
    for (unsigned k = 0; k < j->nparts; k++) {
        conv_part *pt = &j->parts[k];
        pt->work.data = pt;
        pt->j = j;
        pt->lo = k * share < j->out_bytes ? k * share : j->out_bytes;
        pt->hi = k + 1 == j->nparts || (k + 1) * share > j->out_bytes
                     ? j->out_bytes
                     : (k + 1) * share;
        /* Cannot fail: the loop and both callbacks are valid. */
        uv_queue_work(wb__g->loop, &pt->work, conv_part_work, conv_part_done);
    }
}

/* Forgets the copies of a failed job, so that a later request tries
 * again, and gives their memory back. */
static void conv_discard(conv_job *j) {
    wb__version *v = j->v;
    for (size_t k = 0; k < j->nitems; k++) {
        wb__derived *d = j->items[k];
        for (wb__derived **pp = &v->by_src[d->src]; *pp; pp = &(*pp)->next_src)
            if (*pp == d) {
                *pp = d->next_src;
                break;
            }
        free(d);
    }
    for (wb__dseg **pp = &v->dsegs; *pp; pp = &(*pp)->next)
        if (*pp == j->ds) {
            *pp = j->ds->next;
            break;
        }
    wb__seg_close(&j->ds->seg);
    wb__mem_refund(wb__g, j->ds->accounted);
    free(j->ds);
}

/* Ends job j: marks its copies ready or discards them, and completes the
 * requests that waited for it. */
static void conv_finish(conv_job *j) {
    int ok = j->rc == 0;
    j->ds->job = NULL;
    if (ok) {
        j->ds->ready = 1;
    } else {
        wb__warn("converting %zu tensors of %s to %s failed: %s", j->nitems,
                 j->label, wb_dtype_name(j->items[0]->dtype_to), j->err);
        conv_discard(j);
    }
    for (conv_wait *cw = j->waiters, *next; cw; cw = next) {
        next = cw->next;
        map_req *mr = cw->mr;
        if (!ok && !mr->failed)
            mr->failed = j->rc ? j->rc : WB_ESYS;
        if (--mr->waiting == 0)
            map_req_finish(mr);
        free(cw);
    }
    wb__version_unref(j->v);
    free(j->parts);
    free(j->items);
    free(j);
}

/* Makes mr wait for job j (once, however many of its copies mr uses). */
static int conv_join(conv_job *j, map_req *mr) {
    for (conv_wait *cw = j->waiters; cw; cw = cw->next)
        if (cw->mr == mr)
            return 0;
    conv_wait *cw = calloc(1, sizeof(*cw));
    if (cw == NULL)
        return WB_ENOMEM;
    cw->mr = mr;
    cw->next = j->waiters;
    j->waiters = cw;
    mr->waiting++;
    return 0;
}

/* Starts one job converting every copy mr needs that nobody has made or
 * started yet (the cast entries of mr->conv still NULL, nmissing of them)
 * into one segment, so that a map reply carries few descriptors however
 * many tensors are cast.  Returns 0 or an error code (WB_ELIMIT already
 * answered). */
static int conv_start(map_req *mr, size_t nmissing) {
    wb__version *v = mr->v;
    conv_job *j = calloc(1, sizeof(*j));
    wb__dseg *ds = calloc(1, sizeof(*ds));
    wb__derived **items = calloc(nmissing, sizeof(*items));
    size_t n = 0;
    uint64_t pos = 0;
    for (size_t i = 0; j && ds && items && i < mr->res.n; i++) {
        const wb__resolved *e = &mr->res.v[i];
        if (!e->cast || mr->conv[i])
            continue;
        wb__derived *d = calloc(1, sizeof(*d));
        if (d == NULL)
            break;
        const wb__tinfo *t = &v->t[e->src];
        d->dtype_from = t->dtype;
        d->dtype_to = e->dtype;
        d->src = e->src;
        d->ds = ds;
        d->offset = pos;
        d->nbytes = v->nbytes[e->src] / wb_dtype_size(t->dtype) *
                    wb_dtype_size(e->dtype);
        pos += (d->nbytes + WB_DATA_ALIGN - 1) / WB_DATA_ALIGN * WB_DATA_ALIGN;
        items[n++] = d;
    }
    if (j)
        j->out_bytes = pos;
    uint64_t size = wb__seg_round(pos);
    int rc = n < nmissing ? WB_ENOMEM : 0;
    if (rc == 0 && wb__mem_charge(wb__g, size)) {
        rc = WB_ELIMIT;
        wb__reply_error(mr->c, mr->id, WB_ELIMIT,
                        "converting %zu tensors (%llu bytes) would exceed the "
                        "memory limit",
                        nmissing, (unsigned long long)size);
    }
    if (rc) {
        for (size_t k = 0; k < n; k++)
            free(items[k]);
        free(items), free(j), free(ds);
        return rc;
    }
    ds->accounted = size;
    ds->seg.fd = -1;
    ds->seg.size = size;
    ds->job = j;
    ds->next = v->dsegs;
    v->dsegs = ds;
    n = 0;
    for (size_t i = 0; i < mr->res.n; i++)
        if (mr->res.v[i].cast && !mr->conv[i]) {
            wb__derived *d = mr->conv[i] = items[n++];
            d->next_src = v->by_src[d->src];
            v->by_src[d->src] = d;
        }
    j->work.data = j;
    j->v = v;
    j->ds = ds;
    j->items = items;
    j->nitems = n;
    snprintf(j->label, sizeof(j->label), "wbroker:%.30s:cast", v->model->name);
    wb__version_ref(v);
    if (conv_join(j, mr) != 0) {
        conv_discard(j);
        wb__version_unref(v);
        free(items);
        free(j);
        return WB_ENOMEM;
    }
    /* Cannot fail: the loop and both callbacks are valid. */
    uv_queue_work(wb__g->loop, &j->work, conv_create_work, conv_created);
    return 0;
}

/* Arranges for every cast entry of mr to have its converted copy: reuses a
 * ready one, joins one in flight, or starts one job for all the others.
 * Returns 0 (mr->waiting says how many jobs are outstanding) or an error
 * code (already answered). */
static int map_prepare_casts(map_req *mr) {
    wb__version *v = mr->v;
    size_t nmissing = 0;
    for (size_t i = 0; i < mr->res.n; i++) {
        wb__resolved *e = &mr->res.v[i];
        if (!e->cast)
            continue;
        if (!mr->conv &&
            !(mr->conv = calloc(mr->res.n, sizeof(wb__derived *))))
            return WB_ENOMEM;
        if (!v->by_src && !(v->by_src = calloc(v->n, sizeof(wb__derived *))))
            return WB_ENOMEM;
        const wb__tinfo *t = &v->t[e->src];
        wb__derived *d = v->by_src[e->src];
        while (d && d->dtype_to != e->dtype)
            d = d->next_src;
        if (d == NULL) {
            if (!wb__convert_supported(t->dtype, e->dtype)) {
                wb__reply_error(mr->c, mr->id, WB_EDTYPE,
                                "cannot convert %s from %s to %s", t->name,
                                wb_dtype_name(t->dtype),
                                wb_dtype_name(e->dtype));
                return WB_EDTYPE;
            }
            nmissing++;
            continue;
        }
        mr->conv[i] = d;
        if (!d->ds->ready && conv_join(d->ds->job, mr) != 0)
            return WB_ENOMEM;
    }
    return nmissing ? conv_start(mr, nmissing) : 0;
}

/* Answers mr once resolved (mr->rc, mr->res): with the load error or
 * another error, or with the mapping once its conversions are ready.
 * Returns 1 if mr waits for conversions (the connection is paused and
 * referenced, and map_req_finish() completes it), else 0 with mr answered
 * and freed. */
static int map_resolved(map_req *mr) {
    wb__conn *c = mr->c;
    mr->resolved = 1;
    if (mr->rc == WB_ELOAD) {
        map_reply_load_error(mr);
        map_req_free(mr);
        return 0;
    }
    if (mr->rc) {
        wb__reply_error(c, mr->id, mr->rc, "%s",
                        mr->res.errmsg[0] ? mr->res.errmsg
                                          : wb_strerror(mr->rc));
        map_req_free(mr);
        return 0;
    }
    if (!mr->plan) {
        int rc = map_prepare_casts(mr);
        if (rc) {
            if (rc == WB_ENOMEM)
                wb__reply_error(c, mr->id, rc, "out of memory");
            if (mr->waiting == 0) {
                map_req_free(mr);
                return 0;
            }
            /* Some conversions already wait on mr: it is answered, but
             * freed when they finish. */
            mr->failed = rc;
            mr->answered = 1;
            c->refs++;
            return 1;
        }
        if (mr->waiting > 0) {
            c->refs++;
            return 1;
        }
    }
    map_reply(mr);
    map_req_free(mr);
    return 0;
}

static void resolve_work(uv_work_t *w) {
    map_req *mr = w->data;
    mr->rc = wb__resolve(&mr->rq, &mr->res);
}

/* Back on the loop: answers the request unless its client went away. */
static void resolve_done(uv_work_t *w, int status) {
    map_req *mr = w->data;
    wb__conn *c = mr->c;
    if (status != 0 && mr->rc == 0) {
        wb__resolve_out_free(&mr->res);
        mr->rc = WB_ESYS;
    }
    if (c->closed)
        map_req_free(mr);
    else if (map_resolved(mr) == 0)
        wb__conn_resume(c);
    wb__conn_unref(c);
}

static int op_map(wb__conn *c, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__version *v = lookup(c, id, req, model);
    if (v == NULL)
        return 0;
    int plan = 0, strict = 1, ignore = 0;
    if (wb__mp_get_bool(req, "plan", &plan) < 0 ||
        wb__mp_get_bool(req, "strict", &strict) < 0 ||
        wb__mp_get_bool(req, "ignore_mismatch", &ignore) < 0) {
        wb__reply_error(c, id, WB_EPROTO, "plan, strict and ignore_mismatch "
                                          "must be booleans");
        return 0;
    }
    map_req *mr = calloc(1, sizeof(*mr));
    if (mr == NULL) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        return 0;
    }
    mr->c = c;
    mr->id = id;
    mr->v = v;
    mr->plan = plan;
    wb__version_ref(v);

    const msgpack_object_array *ra = NULL, *sa = NULL;
    const msgpack_object *so = wb__mp_get(req, "schema");
    int has_rules = wb__mp_get_array(req, "rules", &ra);
    if (has_rules < 0 || (so && so->type != MSGPACK_OBJECT_NIL &&
                          so->type != MSGPACK_OBJECT_MAP)) {
        wb__reply_error(c, id, WB_EPROTO, "rules must be a list and schema a "
                                          "map");
        map_req_free(mr);
        return 0;
    }
    int has_schema = so && so->type == MSGPACK_OBJECT_MAP;
    if (has_rules != 0 && !has_schema) {
        map_reply(mr);
        map_req_free(mr);
        return 0;
    }
    int rc = 0;
    if (has_rules == 0)
        rc = wb__decode_rules(ra, &mr->rs);
    if (rc == 0 && has_schema) {
        const char *tn = "";
        size_t tl = 0;
        if (wb__mp_get_array(so, "tensors", &sa) != 0 ||
            wb__mp_get_str(so, "target", &tn, &tl) < 0)
            rc = WB_EPROTO;
        else if (sa->size > WB_MAX_TENSORS)
            rc = WB_ETOOBIG;
        mr->sc.target = strndup(tn, tl);
        for (uint32_t i = 0; rc == 0 && i < sa->size; i++) {
            wb__tinfo t;
            rc = wb__decode_tinfo(&sa->ptr[i], &t);
            if (rc == 0)
                rc = wb__schema_push(&mr->sc, t.name, t.dtype, t.ndim,
                                     t.shape);
            free(t.name);
        }
    }
    if (rc) {
        wb__reply_error(c, id, rc, "bad %s in map request: %s",
                        rc == WB_ERULE ? "rule" : "schema or rules",
                        wb_strerror(rc));
        map_req_free(mr);
        return 0;
    }
    mr->rq = (wb__resolve_req){.src = v->t,
                               .nsrc = v->n,
                               .tie = v->tie,
                               .rules = &mr->rs,
                               .schema = has_schema ? &mr->sc : NULL,
                               .strict = strict,
                               .ignore_mismatch = ignore,
                               .budget_ms = WB_RULES_BUDGET_MS};
    /* Rules may take up to their budget: they run off the loop so that
     * other clients are served meanwhile.  A schema alone costs a few hash
     * lookups per key and is resolved here. */
    if (mr->rs.n > 0) {
        mr->work.data = mr;
        if (uv_queue_work(wb__g->loop, &mr->work, resolve_work,
                          resolve_done) == 0) {
            c->refs++;
            return 1;
        }
    }
    mr->rc = wb__resolve(&mr->rq, &mr->res);
    return map_resolved(mr);
}

/* ------------------------------------------------------------ inspect */

/* Models that hold at least one committed version. */
static size_t held_models(const wb__broker *b) {
    size_t n = 0;
    for (const wb__model *m = b->models; m; m = m->next)
        n += m->versions != NULL;
    return n;
}

static int op_list(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    size_t n = held_models(b);
    reply r;
    reply_begin(&r, id, 1);
    wb__pack_key(&r.pk, "models");
    msgpack_pack_array(&r.pk, n);
    for (wb__model *m = b->models; m; m = m->next) {
        wb__version *v = wb__version_latest(m);
        if (v == NULL)
            continue;
        msgpack_pack_array(&r.pk, 6);
        wb__pack_cstr(&r.pk, m->name);
        msgpack_pack_uint64(&r.pk, v->number);
        msgpack_pack_uint64(&r.pk, m->nversions);
        msgpack_pack_uint64(&r.pk, v->n);
        msgpack_pack_uint64(&r.pk, v->data_bytes);
        msgpack_pack_uint64(&r.pk, wb__model_readers(b, m->name));
    }
    reply_send(c, &r, NULL, 0);
    return 0;
}

static int op_status(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    size_t nmodels = held_models(b);
    reply r;
    reply_begin(&r, id, 8);
    wb__pack_key(&r.pk, "server");
    wb__pack_cstr(&r.pk, wb_version_string());
    wb__pack_key(&r.pk, "uptime");
    msgpack_pack_double(&r.pk, (double)uv_hrtime() / 1e9 - b->started);
    wb__pack_key(&r.pk, "used");
    msgpack_pack_uint64(&r.pk, b->mem_used);
    wb__pack_key(&r.pk, "limit");
    msgpack_pack_uint64(&r.pk, b->mem_limit);
    wb__pack_key(&r.pk, "models");
    msgpack_pack_uint64(&r.pk, nmodels);
    wb__pack_key(&r.pk, "versions");
    msgpack_pack_uint64(&r.pk, b->versions);
    wb__pack_key(&r.pk, "clients");
    msgpack_pack_uint64(&r.pk, b->nconns);
    wb__pack_key(&r.pk, "pid");
    msgpack_pack_uint32(&r.pk, (uint32_t)getpid());
    reply_send(c, &r, NULL, 0);
    return 0;
}

static int op_drop(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    char model[WB_MAX_NAME + 1];
    uint64_t ver = 0;
    if (wb__mp_get_u64(req, "version", &ver) < 0) {
        wb__reply_error(c, id, WB_EPROTO, "version must be an integer");
        return 0;
    }
    uint64_t dropped = 0;
    if (ver == 0) {
        int rc = get_name(req, "model", model);
        wb__model *m = rc ? NULL : wb__model_find(b, model);
        if (rc || m == NULL || m->versions == NULL) {
            wb__reply_error(c, id, rc ? rc : WB_ENOMODEL,
                            "no model named '%s'", rc ? "" : model);
            return 0;
        }
        while (m->versions) {
            wb__version_drop(b, m->versions);
            dropped++;
        }
        wb__model_gc(b, m);
    } else {
        wb__version *v = lookup(c, id, req, model);
        if (v == NULL)
            return 0;
        wb__model *m = v->model;
        wb__version_drop(b, v);
        dropped = 1;
        wb__model_gc(b, m);
    }
    reply r;
    reply_begin(&r, id, 1);
    wb__pack_key(&r.pk, "dropped");
    msgpack_pack_uint64(&r.pk, dropped);
    reply_send(c, &r, NULL, 0);
    return 0;
}

/* ------------------------------------------------------------ watch */

static void watch_closed(uv_handle_t *h) { free(h->data); }

/* Removes w from its model and frees it (after its timer closes). */
static void watch_free(wb__watch *w) {
    wb__model *m = w->model;
    for (wb__watch **pp = &m->watchers; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    if (w->has_timer) {
        uv_timer_stop(&w->timer);
        w->timer.data = w;
        uv_close((uv_handle_t *)&w->timer, watch_closed);
    } else {
        free(w);
    }
    wb__model_gc(wb__g, m);
}

/* Answers w with version and resumes its connection. */
static void watch_answer(wb__watch *w, uint64_t version) {
    wb__conn *c = w->conn;
    reply r;
    reply_begin(&r, w->req_id, 1);
    wb__pack_key(&r.pk, "version");
    msgpack_pack_uint64(&r.pk, version);
    reply_send(c, &r, NULL, 0);
    watch_free(w);
    wb__conn_resume(c);
}

static void on_watch_timeout(uv_timer_t *t) {
    wb__watch *w = t->data;
    watch_answer(w, w->after);
}

static void notify_watchers(wb__model *m) {
    wb__version *latest = wb__version_latest(m);
    if (latest == NULL)
        return;
    wb__watch *w = m->watchers;
    while (w) {
        wb__watch *next = w->next;
        if (latest->number > w->after)
            watch_answer(w, latest->number);
        w = next;
    }
}

static int op_watch(wb__conn *c, uint64_t id, const msgpack_object *req) {
    wb__broker *b = wb__g;
    char model[WB_MAX_NAME + 1];
    int rc = get_name(req, "model", model);
    uint64_t after = 0;
    int64_t timeout = -1;
    if (rc || wb__mp_get_u64(req, "after", &after) < 0 ||
        wb__mp_get_i64(req, "timeout", &timeout) < 0) {
        wb__reply_error(c, id, rc ? rc : WB_EPROTO,
                        "watch needs a model name, after and timeout");
        return 0;
    }
    wb__model *m = wb__model_get(b, model);
    if (m == NULL) {
        wb__reply_error(c, id, WB_ETOOBIG, "at most %d models", WB_MAX_MODELS);
        return 0;
    }
    wb__version *latest = wb__version_latest(m);
    if ((latest && latest->number > after) || timeout == 0) {
        reply r;
        reply_begin(&r, id, 1);
        wb__pack_key(&r.pk, "version");
        msgpack_pack_uint64(&r.pk, latest && latest->number > after
                                       ? latest->number
                                       : after);
        reply_send(c, &r, NULL, 0);
        wb__model_gc(b, m);
        return 0;
    }
    wb__watch *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        wb__reply_error(c, id, WB_ENOMEM, "out of memory");
        wb__model_gc(b, m);
        return 0;
    }
    w->conn = c;
    w->req_id = id;
    w->after = after;
    w->model = m;
    w->next = m->watchers;
    m->watchers = w;
    if (timeout > 0) {
        uv_timer_init(b->loop, &w->timer);
        w->timer.data = w;
        w->has_timer = 1;
        uv_timer_start(&w->timer, on_watch_timeout, (uint64_t)timeout, 0);
    }
    return 1;
}

/* ------------------------------------------------------------ dispatch */

void wb__conn_cleanup(wb__conn *c) {
    while (c->pending) {
        wb__pending *p = c->pending;
        c->pending = p->next;
        if (p->ready) {
            wb__debug("client %llu left: aborting publish of %s",
                      (unsigned long long)c->id, p->model);
            pending_free(p);
        } else {
            p->conn = c; /* The segment job frees it; it sees c->closed. */
            p->next = NULL;
        }
    }
    for (wb__model *m = wb__g->models, *next; m; m = next) {
        next = m->next;
        for (wb__watch *w = m->watchers, *wn; w; w = wn) {
            wn = w->next;
            if (w->conn == c)
                watch_free(w);
        }
    }
    for (size_t i = 0; i < c->nmapped; i++)
        free(c->mapped[i]);
    free(c->mapped);
    c->mapped = NULL;
    c->nmapped = 0;
}

typedef int (*op_fn)(wb__conn *, uint64_t, const msgpack_object *);

static const struct {
    const char *name;           /* Value of "op". */
    op_fn fn;                   /* Handler. */
} ops[] = {
    {"hello", op_hello},   {"publish", op_publish}, {"commit", op_commit},
    {"abort", op_abort},   {"map", op_map},         {"list", op_list},
    {"status", op_status}, {"drop", op_drop},       {"watch", op_watch},
};

int wb__handle(wb__conn *c, const msgpack_object *req) {
    uint64_t id = 0;
    const msgpack_object *op = wb__mp_get(req, "op");
    if (wb__mp_get_u64(req, "id", &id) != 0 || op == NULL ||
        op->type != MSGPACK_OBJECT_STR) {
        wb__reply_error(c, id, WB_EPROTO, "a request needs an op and an id");
        c->closing = 1;
        return 0;
    }
    if (!c->hello && !wb__mp_streq(op, "hello")) {
        wb__reply_error(c, id, WB_EPROTO, "hello first");
        c->closing = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (wb__mp_streq(op, ops[i].name))
            return ops[i].fn(c, id, req);
    wb__reply_error(c, id, WB_EPROTO, "unknown op '%.*s'",
                    (int)(op->via.str.size > 64 ? 64 : op->via.str.size),
                    op->via.str.ptr);
    return 0;
}
