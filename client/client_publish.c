/* client_publish.c -- libwbroker: publishing a version (begin, write
 * through a mapping or pwrite, commit, abort).
 *
 * Publishing maps the daemon's new segment writable only when asked to
 * (wb_publish_data) and unmaps it before the commit: the daemon cannot
 * seal a segment that is still mapped writable.  The segment's descriptor
 * is checked (trust.h) before anything is written through it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#include "client_internal.h"
#include "msg.h"
#include "trust.h"
#include "wire.h"

struct wb_publish {
    wb_client *c;     /* Handle that opened it. */
    uint64_t gen;     /* c's connection it was opened on (client.c). */
    uint64_t pub;     /* Daemon's handle. */
    int fd;           /* The segment, writable, until commit. */
    uint8_t *base;    /* Writable shared mapping, once asked for. */
    size_t size;      /* Bytes of the segment. */
    size_t n;         /* Tensors. */
    uint64_t *offs;   /* Offset of each tensor (declared order). */
    uint64_t *nbytes; /* Bytes of each tensor. */
};

/* Finds the tensor tensors[i] is tied to: an earlier one, itself not tied,
 * of the same dtype and shape.  Stores its index in *to.  Returns 0 or
 * WB_EINVAL (recorded on c). */
static int find_tie(wb_client *c, const wb_tensor_spec *tensors, size_t i,
                    size_t *to) {
    const wb_tensor_spec *t = &tensors[i];
    for (size_t j = i; j-- > 0;) {
        const wb_tensor_spec *r = &tensors[j];
        if (strcmp(r->name, t->tied_to) != 0)
            continue;
        if (r->tied_to)
            return wb__cl_fail(c, WB_EINVAL,
                               "tensor %s: tied to %s, which is "
                               "itself tied (name the stored tensor)",
                               t->name, r->name);
        if (r->dtype != t->dtype || r->ndim != t->ndim ||
            (t->ndim && memcmp(r->shape, t->shape,
                               (size_t)t->ndim * sizeof(int64_t)) != 0))
            return wb__cl_fail(c, WB_EINVAL,
                               "tensor %s: tied to %s, which has "
                               "another dtype or shape",
                               t->name, r->name);
        *to = j;
        return 0;
    }
    return wb__cl_fail(c, WB_EINVAL,
                       "tensor %s: tied to %s, which is not an "
                       "earlier tensor",
                       t->name, t->tied_to);
}

int wb_publish_begin(wb_client *c, const char *model,
                     const wb_tensor_spec *tensors, size_t n, const wb_kv *meta,
                     size_t n_meta, wb_publish **out) {
    if (out)
        *out = NULL;
    if (c == NULL || out == NULL || model == NULL || (n && tensors == NULL) ||
        (n_meta && meta == NULL))
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    if (wb__check_name(model, strlen(model)))
        return wb__cl_fail(c, WB_ENAME, "invalid model name");
    if (n > WB_MAX_TENSORS || n_meta > WB_MAX_META)
        return wb__cl_fail(c, WB_ETOOBIG,
                           "too many tensors or metadata entries");
    for (size_t i = 0; i < n_meta; i++)
        if (meta[i].key == NULL || meta[i].value == NULL ||
            wb__check_name(meta[i].key, strlen(meta[i].key)))
            return wb__cl_fail(c, WB_EINVAL,
                               "metadata entry %zu: bad key or value", i);
    wb_publish *p = calloc(1, sizeof(*p));
    if (p == NULL || !(p->offs = calloc(n ? n : 1, sizeof(uint64_t))) ||
        !(p->nbytes = calloc(n ? n : 1, sizeof(uint64_t)))) {
        if (p)
            free(p->offs);
        free(p);
        return wb__cl_fail(c, WB_ENOMEM, "out of memory");
    }
    p->c = c;
    p->fd = -1;
    p->n = n;
    int rc = 0;
    size_t nties = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const wb_tensor_spec *t = &tensors[i];
        if (t->name == NULL || wb__check_name(t->name, strlen(t->name)))
            rc = wb__cl_fail(c, WB_ENAME, "tensor %zu: invalid name", i);
        else if (t->ndim < 0 || t->ndim > WB_MAX_DIMS ||
                 (t->ndim && t->shape == NULL))
            rc = wb__cl_fail(c, WB_ESHAPE, "tensor %s: invalid shape", t->name);
        else if (wb__tensor_nbytes(t->dtype, t->ndim, t->shape, &p->nbytes[i]))
            rc = wb__cl_fail(c, wb_dtype_size(t->dtype) ? WB_ESHAPE : WB_EDTYPE,
                             "tensor %s: invalid %s", t->name,
                             wb_dtype_size(t->dtype) ? "shape" : "dtype");
        else if (t->tied_to)
            nties++;
    }
    wb__tie *ties = nties ? calloc(nties, sizeof(*ties)) : NULL;
    if (rc == 0 && nties && ties == NULL)
        rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    for (size_t i = 0, k = 0; i < n && rc == 0; i++)
        if (tensors[i].tied_to) {
            size_t to = 0;
            rc = find_tie(c, tensors, i, &to);
            ties[k].alias = i;
            ties[k].stored = to;
            k++;
        }
    if (rc) {
        free(ties);
        wb_publish_abort(p);
        return rc;
    }
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_publish_req(&r.pk, r.id, model, tensors, n, meta, n_meta, ties,
                         nties);
    free(ties);
    wb__msg m;
    int fd = -1, nfds = 0;
    rc = wb__cl_call_fds(c, &r, &m, &fd, &nfds, 1);
    p->gen = c->gen; /* After the call, which may have reconnected. */
    wb__publish_rep rep;
    memset(&rep, 0, sizeof(rep));
    if (rc == 0 && nfds != 1)
        rc = wb__cl_broken(
            c, wb__cl_fail(c, WB_EPROTO,
                           "publish reply from %s carries %d descriptors, "
                           "not 1",
                           c->path, nfds));
    if (rc == 0) {
        int drc = wb__decode_publish_rep(m.root, &rep);
        p->pub = rep.pub; /* Set when it came: the publish to abort. */
        if (drc == WB_ENOMEM)
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
        else if (drc || rep.n != n)
            rc = wb__cl_fail(c, WB_EPROTO, "malformed publish reply");
    }
    uint64_t size = rep.size;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (rep.offs[i] > size || p->nbytes[i] > size - rep.offs[i])
            rc = wb__cl_fail(c, WB_EPROTO, "publish reply: bad offset");
        else
            p->offs[i] = rep.offs[i];
    }
    wb__publish_rep_free(&rep);
    wb__msg_free(&m);
    char why[WB_TRUST_WHY_MAX];
    if (rc == 0 && wb__trust_segment(fd, size, WB__SEG_WRITE, why, sizeof(why)))
        rc = wb__cl_broken(c, wb__cl_fail(c, WB_EPROTO,
                                          "publish reply from %s: %s", c->path,
                                          why));
    if (rc == 0) {
        p->fd = fd; /* Mapped by the first wb_publish_data(). */
        p->size = size;
        fd = -1;
    }
    if (fd >= 0)
        close(fd);
    if (rc) {
        if (p->pub == 0)
            p->c = NULL; /* Nothing to abort on the daemon. */
        wb_publish_abort(p);
        return rc;
    }
    *out = p;
    return 0;
}

void *wb_publish_data(wb_publish *p, size_t i, size_t *nbytes) {
    if (p == NULL || i >= p->n || p->fd < 0)
        return NULL;
    if (p->base == NULL) {
        void *b =
            mmap(NULL, p->size, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
        if (b == MAP_FAILED) {
            wb__cl_fail(p->c, WB_ESYS, "mapping the new segment: %s",
                        strerror(errno));
            return NULL;
        }
        /* Huge pages asked for before the page tables are filled: with
         * MAP_POPULATE they would be filled first, a 4 KiB entry at a time
         * even over 2 MiB folios (5x slower at 64 MiB here). */
        madvise(b, p->size, MADV_HUGEPAGE);
        madvise(b, p->size, MADV_POPULATE_WRITE);
        p->base = b;
    }
    if (nbytes)
        *nbytes = p->nbytes[i];
    return p->base + p->offs[i];
}

int wb_publish_write(wb_publish *p, size_t i, const void *src, size_t len,
                     size_t off) {
    if (p == NULL || i >= p->n || p->fd < 0 || (len && src == NULL) ||
        off > p->nbytes[i] || len > p->nbytes[i] - off)
        return p ? wb__cl_fail(p->c, WB_EINVAL,
                               "tensor %zu: bytes [%zu, +%zu) out "
                               "of range",
                               i, off, len)
                 : WB_EINVAL;
    const uint8_t *s = src;
    uint64_t at = p->offs[i] + off;
    while (len > 0) {
        /* Mapped already (wb_publish_data, or a hugetlb segment that has
         * no write(2)): the bytes go in through the mapping.  Checked
         * before pwrite, never from errno, which may hold any earlier
         * call's EINTR. */
        if (p->base) {
            memcpy(p->base + at, s, len);
            return 0;
        }
        ssize_t w = pwrite(p->fd, s, len, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL) {
            /* A hugetlb segment has no write(2): its bytes go in through
             * the (huge) shared mapping, as fast as write would be. */
            if (wb_publish_data(p, i, NULL) == NULL)
                return WB_ESYS;
            continue;
        }
        if (w <= 0)
            return wb__cl_fail(p->c, WB_ESYS, "writing tensor %zu: %s", i,
                               w < 0 ? strerror(errno) : "no progress");
        s += w;
        at += (uint64_t)w;
        len -= (size_t)w;
    }
    return 0;
}

/* Unmaps and frees p without talking to the daemon. */
static void publish_free(wb_publish *p) {
    if (p->base)
        munmap(p->base, p->size);
    if (p->fd >= 0)
        close(p->fd);
    free(p->offs);
    free(p->nbytes);
    free(p);
}

/* 1 when the connection p was opened on is still c's open one: the daemon
 * aborted p's publish when that connection ended. */
static int publish_conn_live(wb_publish *p) {
    return wb__cl_live(p->c) && p->c->gen == p->gen;
}

int wb_publish_commit(wb_publish *p, uint64_t *version) {
    if (p == NULL)
        return WB_EINVAL;
    wb_client *c = p->c;
    if (p->base) {
        munmap(p->base, p->size);
        p->base = NULL;
    }
    if (!publish_conn_live(p)) {
        int rc = wb__cl_fail(c, WB_ECLOSED,
                             "the connection to %s that began this publish "
                             "was lost before its commit (the daemon "
                             "restarted or closed it), and the daemon "
                             "discarded the publish: publish it again",
                             c->path);
        publish_free(p);
        return rc;
    }
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_pub_req(&r.pk, "commit", r.id, p->pub);
    wb__msg m;
    int rc = wb__cl_call(c, &r, &m);
    uint64_t v = 0;
    if (rc == 0 && wb__decode_u64_rep(m.root, "version", &v))
        rc = wb__cl_fail(c, WB_EPROTO, "malformed commit reply");
    wb__msg_free(&m);
    if (rc == 0 && version)
        *version = v;
    publish_free(p);
    return rc;
}

void wb_publish_abort(wb_publish *p) {
    if (p == NULL)
        return;
    if (p->base) {
        munmap(p->base, p->size);
        p->base = NULL;
    }
    if (p->c && p->pub && publish_conn_live(p)) {
        wb__cl_req r;
        wb__cl_req_begin(p->c, &r);
        wb__pack_pub_req(&r.pk, "abort", r.id, p->pub);
        wb__msg m;
        char keep[sizeof(p->c->errmsg)];
        memcpy(keep, p->c->errmsg, sizeof(keep));
        uint64_t none;
        if (wb__cl_call(p->c, &r, &m) == 0) /* Nothing to read, or to do. */
            wb__decode_u64_rep(m.root, NULL, &none);
        wb__msg_free(&m);
        memcpy(p->c->errmsg, keep, sizeof(keep)); /* Keep the first cause. */
    }
    publish_free(p);
}
