/* convjob.c -- Dtype-converted copies, made once by jobs and shared. */
#include "convjob.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include "convert.h"
#include "layout.h"
#include "log.h"

/* One share of a conversion job: the output bytes [lo, hi) of its
 * segment, written by one thread-pool thread. */
typedef struct conv_part {
    uv_work_t work;         /* libuv request. */
    struct conv_job *j;     /* The job. */
    uint64_t lo, hi;        /* Output bytes, WB_DATA_ALIGN-aligned. */
    int rc;                 /* Result. */
    char err[160];          /* Detail on failure. */
    struct conv_part *next; /* Next part waiting for a thread. */
} conv_part;

/* A conversion of a batch of tensors into one new segment: the segment is
 * made on the thread pool, then written by parts in parallel, then sealed
 * on the loop. */
typedef struct conv_job {
    uv_work_t work;            /* libuv request making the segment. */
    wb__version *v;            /* Source version (referenced). */
    wb__dseg *ds;              /* Destination segment. */
    wb__derived **items;       /* The copies it writes, by offset. */
    size_t nitems;             /* Entries in items. */
    uint64_t out_bytes;        /* Output bytes the items span. */
    conv_part *parts;          /* The parts writing them. */
    unsigned nparts;           /* Entries in parts. */
    unsigned left;             /* Parts still running. */
    char label[64];            /* Name of the memfd. */
    int rc;                    /* Result. */
    char err[256];             /* Detail on failure. */
    struct conv_wait *waiters; /* Map requests waiting for it. */
} conv_job;

/* A waiter of a conversion job. */
typedef struct conv_wait {
    wb__conv_waiter *w;     /* The waiting request. */
    struct conv_wait *next; /* Next waiter. */
} conv_wait;

/* Converts the elements of d's source tensor that land in the output
 * bytes [lo, hi) of the segment, whose bytes from base on are mapped at
 * dst.  The source range is mapped with its page tables filled: faulting fresh
 * shared pages one at a time costs more than the conversion itself. */
static int convert_range(const wb__version *v, const wb__derived *d,
                         uint64_t lo, uint64_t hi, uint8_t *dst, uint64_t base,
                         char *err, size_t errlen) {
    size_t isz = wb_dtype_size(d->dtype_from), osz = wb_dtype_size(d->dtype_to);
    uint64_t from = lo > d->offset ? lo : d->offset;
    uint64_t to = d->offset + d->nbytes < hi ? d->offset + d->nbytes : hi;
    if (from >= to)
        return 0;
    uint64_t first = (from - d->offset) / osz, count = (to - from) / osz;
    uint64_t off = v->offset[d->src] + first * isz;
    uint64_t page = wb__seg_page(&v->seg); /* 2 MiB on hugetlb. */
    uint64_t sbase = off / page * page;
    /* Whole pages: a hugetlb mapping cannot be unmapped in part. */
    size_t slen =
        (size_t)((off - sbase + count * isz + page - 1) / page * page);
    /* Through a read-only descriptor: the source is sealed. */
    uint8_t *src = wb__seg_map_ro(&v->seg, sbase, slen, 1);
    if (src == NULL) {
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
    uint64_t page = wb__seg_page(&j->ds->seg);
    uint64_t base = pt->lo / page * page;
    size_t len = (size_t)((pt->hi - base + page - 1) / page * page);
    uint8_t *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
                        j->ds->seg.fd, (off_t)base);
    if (dst == MAP_FAILED) {
        snprintf(pt->err, sizeof(pt->err), "mapping the copy: %s",
                 strerror(errno));
        pt->rc = WB_ESYS;
        return;
    }
    wb__seg_populate(dst, len, 1);
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

/* Parts waiting for a thread, and parts running: conversions may use at
 * most WB_CONV_MAX_THREADS of libuv's pool, so that the rest of it stays
 * free to back segments for everyone else, whatever clients ask to cast. */
static conv_part *parts_waiting_head, *parts_waiting_tail;
static unsigned parts_running;

static void conv_part_done(uv_work_t *w, int status);

/* Starts pt now if a thread is free for conversions, else queues it. */
static void part_submit(conv_part *pt) {
    if (parts_running >= WB_CONV_MAX_THREADS) {
        pt->next = NULL;
        if (parts_waiting_tail)
            parts_waiting_tail->next = pt;
        else
            parts_waiting_head = pt;
        parts_waiting_tail = pt;
        return;
    }
    parts_running++;
    /* Cannot fail: the loop and both callbacks are valid. */
    uv_queue_work(uv_default_loop(), &pt->work, conv_part_work, conv_part_done);
}

static void conv_part_done(uv_work_t *w, int status) {
    conv_part *pt = w->data;
    conv_job *j = pt->j;
    assert(parts_running > 0);
    parts_running--;
    if (parts_waiting_head) {
        conv_part *next = parts_waiting_head;
        parts_waiting_head = next->next;
        if (parts_waiting_head == NULL)
            parts_waiting_tail = NULL;
        part_submit(next);
    }
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
    if (j->ds->seg.fd >= 0)
        wb__seg_register(&j->ds->seg);
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
        part_submit(pt);
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
    wb__mem_refund(j->ds->accounted);
    wb__usage_refund(j->ds->charged_to, j->ds->accounted);
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
        wb__conv_waiter *w = cw->w;
        if (!ok && !w->failed)
            w->failed = j->rc ? j->rc : WB_ESYS;
        assert(w->waiting > 0);
        free(cw);
        if (--w->waiting == 0)
            w->done(w);
    }
    wb__version_unref(j->v);
    free(j->parts);
    free(j->items);
    free(j);
}

/* Makes w wait for job j (once, however many of its copies w uses). */
static int conv_join(conv_job *j, wb__conv_waiter *w) {
    for (conv_wait *cw = j->waiters; cw; cw = cw->next)
        if (cw->w == w)
            return 0;
    conv_wait *cw = calloc(1, sizeof(*cw));
    if (cw == NULL)
        return WB_ENOMEM;
    cw->w = w;
    cw->next = j->waiters;
    j->waiters = cw;
    w->waiting++;
    return 0;
}

/* Starts one job converting every copy that res needs and nobody has made
 * or started yet (the cast entries whose conv[i] is still NULL, nmissing
 * of them) into one segment.  Returns 0 or an error code (err filled). */
static int conv_start(wb__version *v, const wb__resolved *res, size_t nres,
                      wb__derived **conv, size_t nmissing, wb__conv_waiter *w,
                      const wb__quota *q, char *err, size_t errlen) {
    conv_job *j = calloc(1, sizeof(*j));
    wb__dseg *ds = calloc(1, sizeof(*ds));
    wb__derived **items = calloc(nmissing, sizeof(*items));
    size_t n = 0;
    uint64_t pos = 0;
    for (size_t i = 0; j && ds && items && i < nres; i++) {
        const wb__resolved *e = &res[i];
        if (!e->cast || conv[i])
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
    if (rc)
        snprintf(err, errlen, "out of memory");
    uint64_t used = wb__usage_of(q->uid);
    if (rc == 0 && (size > q->limit || used > q->limit - size)) {
        char who[96];
        rc = WB_ELIMIT;
        snprintf(err, errlen,
                 "converting %zu tensors (%llu bytes) would exceed the quota "
                 "of user %s (%llu bytes, policy line %d; %llu in use)",
                 nmissing, (unsigned long long)size,
                 wb__user_label(q->uid, who, sizeof(who)),
                 (unsigned long long)q->limit, q->line,
                 (unsigned long long)used);
        wb__info("audit: refused a cast of %s for uid %u: %s", v->model->name,
                 (unsigned)q->uid, err);
    }
    if (rc == 0 && wb__mem_charge(size)) {
        rc = WB_ELIMIT;
        snprintf(err, errlen,
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
    ds->charged_to = q->uid;
    wb__usage_charge(q->uid, size);
    wb__seg_init(&ds->seg);
    ds->seg.size = size;
    ds->job = j;
    ds->next = v->dsegs;
    v->dsegs = ds;
    n = 0;
    for (size_t i = 0; i < nres; i++)
        if (res[i].cast && !conv[i]) {
            wb__derived *d = conv[i] = items[n++];
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
    if (conv_join(j, w) != 0) {
        for (size_t i = 0; i < nres; i++)
            if (conv[i] && conv[i]->ds == ds)
                conv[i] = NULL;
        conv_discard(j);
        wb__version_unref(v);
        free(items);
        free(j);
        snprintf(err, errlen, "out of memory");
        return WB_ENOMEM;
    }
    /* Cannot fail: the loop and both callbacks are valid. */
    uv_queue_work(uv_default_loop(), &j->work, conv_create_work, conv_created);
    return 0;
}

int wb__conv_prepare(wb__version *v, const wb__resolved *res, size_t n,
                     wb__derived **conv, wb__conv_waiter *w, const wb__quota *q,
                     char *err, size_t errlen) {
    size_t nmissing = 0;
    for (size_t i = 0; i < n; i++) {
        const wb__resolved *e = &res[i];
        if (!e->cast)
            continue;
        if (!v->by_src && !(v->by_src = calloc(v->n, sizeof(wb__derived *)))) {
            snprintf(err, errlen, "out of memory");
            return WB_ENOMEM;
        }
        const wb__tinfo *t = &v->t[e->src];
        wb__derived *d = v->by_src[e->src];
        while (d && d->dtype_to != e->dtype)
            d = d->next_src;
        if (d == NULL) {
            if (!wb__convert_supported(t->dtype, e->dtype)) {
                snprintf(err, errlen, "cannot convert %s from %s to %s",
                         t->name, wb_dtype_name(t->dtype),
                         wb_dtype_name(e->dtype));
                return WB_EDTYPE;
            }
            nmissing++;
            continue;
        }
        conv[i] = d;
        if (!d->ds->ready && conv_join(d->ds->job, w) != 0) {
            snprintf(err, errlen, "out of memory");
            return WB_ENOMEM;
        }
    }
    return nmissing ? conv_start(v, res, n, conv, nmissing, w, q, err, errlen)
                    : 0;
}
