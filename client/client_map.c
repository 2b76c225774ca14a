/* client_map.c -- libwbroker: mapping a version (wb_load, wb_map), the
 * mapping's accessors and its index of names.
 *
 * A map reply's read-only descriptors are checked, all of them, before
 * any is mapped, shared or copy-on-write; every row of its tensor table
 * must lie inside its segment.  The reply's last descriptor, the write
 * end of the daemon's hold pipe, stays open beside the mapping until
 * wb_unmap() has unmapped it (see wbroker.h, "Holds"). */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

#include "client_internal.h"
#include "hash.h"
#include "msg.h"
#include "rules_internal.h"
#include "trust.h"
#include "wire.h"

typedef struct map_entry {
    char *name;                 /* Target key. */
    char *source;               /* Source key. */
    int dtype;                  /* Dtype. */
    int ndim;                   /* Dimensions. */
    int64_t shape[WB_MAX_DIMS]; /* Sizes. */
    uint8_t *data;              /* Mapped bytes or NULL. */
    uint64_t nbytes;            /* Bytes. */
    int cast;                   /* Converted. */
} map_entry;

typedef struct keylist {
    char **v; /* Keys. */
    size_t n; /* Keys in v. */
} keylist;

struct wb_mapping {
    uint64_t version;                 /* Version mapped. */
    map_entry *t;                     /* Tensors. */
    size_t n;                         /* Tensors in t. */
    char *names;                      /* Every name and source of t, one
                                         block: one malloc a mapping, not
                                         two a tensor. */
    size_t *index;                    /* Open-addressing hash of names. */
    size_t index_cap;                 /* Slots in index (power of two). */
    char **mkeys;                     /* Metadata keys. */
    char **mvals;                     /* Metadata values. */
    size_t nmeta;                     /* Metadata entries. */
    keylist keys[WB_KEYS_COUNT];      /* The report. */
    char *text;                       /* PyTorch-format error text. */
    void *segs[WB_MAX_SEGMENTS];      /* Mapped segments. */
    size_t seg_size[WB_MAX_SEGMENTS]; /* Bytes of each. */
    int nsegs;                        /* Segments mapped. */
    int plain;                        /* 1 if mapped whole, without rules. */
    int hold_fd;                      /* Write end of the daemon's hold
                                         pipe (closed after munmap), or
                                         -1. */
    char pages[16];                   /* Page backend, "" if not said. */
    uint64_t huge;                    /* Bytes in 2 MiB pages. */
};

/* Builds the name index of m.  Returns 0 or WB_ENOMEM. */
static int index_build(wb_mapping *m) {
    size_t cap = 16;
    while (cap < m->n * 2)
        cap *= 2;
    m->index = malloc(cap * sizeof(size_t));
    if (m->index == NULL)
        return WB_ENOMEM;
    m->index_cap = cap;
    for (size_t i = 0; i < cap; i++)
        m->index[i] = SIZE_MAX;
    for (size_t i = 0; i < m->n; i++) {
        const char *name = m->t[i].name;
        size_t k = wb__hash_bytes(name, strlen(name)) & (cap - 1);
        while (m->index[k] != SIZE_MAX)
            k = (k + 1) & (cap - 1);
        m->index[k] = i;
    }
    return 0;
}

long wb_map_find(const wb_mapping *m, const char *name) {
    if (m == NULL || name == NULL || m->index == NULL)
        return -1;
    size_t k = wb__hash_bytes(name, strlen(name)) & (m->index_cap - 1);
    while (m->index[k] != SIZE_MAX) {
        if (strcmp(m->t[m->index[k]].name, name) == 0)
            return (long)m->index[k];
        k = (k + 1) & (m->index_cap - 1);
    }
    return -1;
}

void wb_unmap(wb_mapping *m) {
    if (m == NULL)
        return;
    for (int k = 0; k < m->nsegs; k++)
        if (m->segs[k])
            munmap(m->segs[k], m->seg_size[k]);
    /* Only now: the daemon may refund the memory once the hold ends. */
    if (m->hold_fd >= 0)
        close(m->hold_fd);
    for (size_t i = 0; i < m->nmeta; i++) {
        free(m->mkeys[i]);
        free(m->mvals[i]);
    }
    for (int w = 0; w < WB_KEYS_COUNT; w++) {
        for (size_t i = 0; i < m->keys[w].n; i++)
            free(m->keys[w].v[i]);
        free(m->keys[w].v);
    }
    free(m->t);
    free(m->names);
    free(m->index);
    free(m->mkeys);
    free(m->mvals);
    free(m->text);
    free(m);
}

/* Copies the report of a decoded map reply (its key lists and error text)
 * into m.  Returns 0 or WB_ENOMEM. */
static int take_report(wb_mapping *m, const wb__report *r) {
    for (int w = 0; w < WB_KEYS_COUNT; w++) {
        keylist *kl = &m->keys[w];
        if (r->n[w] == 0)
            continue;
        kl->v = calloc(r->n[w], sizeof(char *));
        if (kl->v == NULL)
            return WB_ENOMEM;
        for (size_t i = 0; i < r->n[w]; i++) {
            if ((kl->v[i] = wb__str_dup(r->keys[w][i])) == NULL)
                return WB_ENOMEM;
            kl->n++;
        }
    }
    m->text = wb__str_dup(r->text);
    return m->text ? 0 : WB_ENOMEM;
}

/* Checks that fd, which a map reply says is the write end of its hold
 * pipe, is one: a FIFO open for writing only.  Returns 0 or -1. */
static int check_hold_fd(int fd) {
    struct stat st;
    int fl = fcntl(fd, F_GETFL);
    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && fl >= 0 &&
                   (fl & O_ACCMODE) == O_WRONLY
               ? 0
               : -1;
}

/* Makes every page of [p, p + len) resident and mapped: one call where
 * the kernel has MADV_POPULATE_READ (5.14), else a read of each 4 KiB. */
static void populate(void *p, size_t len) {
    if (madvise(p, len, MADV_POPULATE_READ) == 0)
        return;
    const volatile uint8_t *b = p;
    uint8_t sum = 0;
    for (size_t off = 0; off < len; off += 4096)
        sum ^= b[off];
    (void)sum;
}

/* A copy-on-write view of a hugetlb segment reserves its whole length
 * from the host's pool at mmap (so that no write can ever find the pool
 * empty and SIGBUS; MAP_NORESERVE would allow exactly that).  Where the
 * pool has no room for it (ENOMEM), the view becomes a private copy in
 * ordinary memory instead, read with pread: it costs the segment's size
 * but no write to it can fault.  Returns the copy, or MAP_FAILED with
 * errno set (ENOMEM kept for anything but hugetlb). */
static void *private_copy(int fd, size_t len) {
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0 || sf.f_type != HUGETLBFS_MAGIC) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return MAP_FAILED;
    madvise(p, len, MADV_HUGEPAGE);
    for (size_t off = 0; off < len;) {
        ssize_t n = pread(fd, p + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            munmap(p, len);
            errno = e;
            return MAP_FAILED;
        }
        off += (size_t)n;
    }
    return p;
}

/* Checks the segments a decoded map reply declares against the
 * descriptors it carried (fds, nfds: the segments', then the hold's when
 * the reply says so) and maps them (unless a plan), all checked before
 * any is mapped.  Takes the hold's descriptor into m (fds[nsegs] becomes
 * -1).  Returns 0 or an error recorded on c. */
static int map_segments(wb_client *c, const wb__map_rep *rep, wb_mapping *m,
                        int *fds, int nfds, int flags) {
    int plan = (flags & WB_MAP_PLAN) != 0;
    assert(rep->nsegs <= WB_MAX_SEGMENTS); /* The decoder's limit. */
    size_t want = plan ? 0 : rep->nsegs + (rep->hold != 0);
    if (!plan && want != (size_t)nfds)
        return wb__cl_broken(
            c, wb__cl_fail(c, WB_EPROTO,
                           "map reply from %s declares %zu segments%s but "
                           "carries %d descriptors",
                           c->path, rep->nsegs, rep->hold ? " and a hold" : "",
                           nfds));
    if (!plan && rep->hold) {
        if (check_hold_fd(fds[rep->nsegs]))
            return wb__cl_broken(
                c, wb__cl_fail(c, WB_EPROTO,
                               "map reply from %s: its hold descriptor is "
                               "not the write end of a pipe",
                               c->path));
        m->hold_fd = fds[rep->nsegs];
        fds[rep->nsegs] = -1;
    }
    m->nsegs = (int)rep->nsegs;
    for (int k = 0; k < m->nsegs; k++) {
        if (rep->segs[k] > SIZE_MAX)
            return wb__cl_fail(c, WB_EPROTO, "malformed segment size");
        m->seg_size[k] = (size_t)rep->segs[k];
    }
    if (plan)
        return 0;
    char why[WB_TRUST_WHY_MAX];
    for (int k = 0; k < m->nsegs; k++) /* All, before mapping any. */
        if (wb__trust_segment(fds[k], m->seg_size[k], WB__SEG_READ, why,
                              sizeof(why)))
            return wb__cl_broken(
                c,
                wb__cl_fail(c, WB_EPROTO, "map reply from %s: segment %d: %s",
                            c->path, k, why));
    int shared = (flags & WB_MAP_SHARED) != 0;
    for (int k = 0; k < m->nsegs; k++) {
        void *p = mmap(NULL, m->seg_size[k],
                       shared ? PROT_READ : PROT_READ | PROT_WRITE,
                       shared ? MAP_SHARED : MAP_PRIVATE, fds[k], 0);
        if (p == MAP_FAILED && errno == ENOMEM && !shared)
            p = private_copy(fds[k], m->seg_size[k]);
        if (p == MAP_FAILED)
            return wb__cl_fail(c, WB_ESYS, "mapping segment %d: %s", k,
                               strerror(errno));
        m->segs[k] = p;
        madvise(p, m->seg_size[k], MADV_HUGEPAGE);
        if (flags & WB_MAP_POPULATE)
            populate(p, m->seg_size[k]);
    }
    return 0;
}

/* Checks row i of a decoded tensor table against the mapped segments of
 * m: a valid target name, a shape whose bytes can be counted, and bytes
 * that lie inside their segment.  Returns 0 or WB_EPROTO (recorded). */
static int check_row(wb_client *c, const wb_mapping *m, const wb__map_entry *e,
                     size_t i) {
    uint64_t nb;
    if (wb__check_name(e->target.p, e->target.n) ||
        wb__tensor_nbytes(e->dtype, e->ndim, e->shape, &nb) ||
        e->seg >= (uint64_t)m->nsegs || e->offset > m->seg_size[e->seg] ||
        e->nbytes > m->seg_size[e->seg] - e->offset)
        return wb__cl_fail(c, WB_EPROTO, "malformed tensor entry %zu", i);
    return 0;
}

/* Fills m from a decoded map reply: version, report, segments (mapped
 * unless a plan), tensor table, metadata and the name index.  Returns 0
 * or an error recorded on c. */
static int take_mapping(wb_client *c, const wb__map_rep *rep, wb_mapping *m,
                        int *fds, int nfds, int flags) {
    m->version = rep->version;
    memcpy(m->pages, rep->pages, sizeof(m->pages));
    m->huge = rep->huge;
    int rc = map_segments(c, rep, m, fds, nfds, flags);
    if (rc)
        return rc;
    if (take_report(m, &rep->report))
        return wb__cl_fail(c, WB_ENOMEM, "out of memory");
    /* Every row checked, and the bytes of its names counted, before any
     * is copied. */
    size_t nb = 0;
    for (size_t i = 0; i < rep->n; i++) {
        const wb__map_entry *r = &rep->t[i];
        if ((rc = check_row(c, m, r, i)) != 0)
            return rc;
        nb += r->target.n + r->source.n + 2; /* Bounded by the frame. */
    }
    m->t = malloc((rep->n ? rep->n : 1) * sizeof(map_entry));
    m->names = malloc(nb ? nb : 1);
    if (m->t == NULL || m->names == NULL)
        return wb__cl_fail(c, WB_ENOMEM, "out of memory");
    int plan = (flags & WB_MAP_PLAN) != 0;
    char *q = m->names;
    for (size_t i = 0; i < rep->n; i++) {
        const wb__map_entry *r = &rep->t[i];
        map_entry *e = &m->t[i];
        e->name = q;
        memcpy(q, r->target.p, r->target.n);
        q += r->target.n;
        *q++ = '\0';
        e->source = q;
        memcpy(q, r->source.p, r->source.n);
        q += r->source.n;
        *q++ = '\0';
        e->dtype = r->dtype;
        e->ndim = r->ndim;
        memcpy(e->shape, r->shape, sizeof(e->shape));
        e->nbytes = r->nbytes;
        e->cast = r->cast;
        e->data = plan ? NULL : (uint8_t *)m->segs[r->seg] + r->offset;
    }
    assert(q == m->names + nb);
    m->n = rep->n;
    if (rep->nmeta) {
        m->mkeys = calloc(rep->nmeta, sizeof(char *));
        m->mvals = calloc(rep->nmeta, sizeof(char *));
        if (!m->mkeys || !m->mvals)
            return wb__cl_fail(c, WB_ENOMEM, "out of memory");
        for (size_t i = 0; i < rep->nmeta; i++) {
            m->mkeys[i] = wb__str_dup(rep->mkeys[i]);
            m->mvals[i] = wb__str_dup(rep->mvals[i]);
            m->nmeta = i + 1;
            if (!m->mkeys[i] || !m->mvals[i])
                return wb__cl_fail(c, WB_ENOMEM, "out of memory");
        }
    }
    return index_build(m) ? wb__cl_fail(c, WB_ENOMEM, "out of memory") : 0;
}

/* Decodes the reply m to a map request (err 0 or WB_ELOAD, as rc) into
 * mp: the whole mapping, or only the version and report of a load error.
 * Returns rc, or an error recorded on c. */
static int read_reply(wb_client *c, const wb__msg *m, int rc, wb_mapping *mp,
                      int *fds, int nfds, int flags) {
    int load_error = rc == WB_ELOAD;
    wb__map_rep rep;
    int drc = wb__decode_map_rep(m->root, load_error, &rep);
    if (drc == WB_ENOMEM)
        rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    else if (drc)
        rc = wb__cl_fail(c, WB_EPROTO, "%s",
                         load_error ? "malformed load report"
                                    : "malformed map reply");
    else if (load_error) {
        mp->version = rep.version;
        if (take_report(mp, &rep.report))
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    } else {
        rc = take_mapping(c, &rep, mp, fds, nfds, flags);
    }
    wb__map_rep_free(&rep);
    return rc;
}

/* What fast_map() leaves for wb_load(). */
typedef struct fast_rep {
    wb__map_rep rep; /* The decoded reply. */
    int taken;       /* 1 if fast_map() decoded it. */
} fast_rep;

/* Decodes a successful map reply straight from its bytes (msg.h,
 * wb__decode_map_rep_fast); anything else is left to the general path. */
static int fast_map(void *arg, const uint8_t *body, size_t len, uint64_t id) {
    fast_rep *f = arg;
    uint64_t rid;
    if (wb__decode_map_rep_fast(body, len, &rid, &f->rep) != 0)
        return 1;
    if (rid != id) {
        wb__map_rep_free(&f->rep);
        return 1;
    }
    f->taken = 1;
    return 0;
}

int wb_load(wb_client *c, const char *model, uint64_t version,
            const wb_schema *schema, const wb_rules *rules, int flags,
            wb_mapping **out) {
    if (out)
        *out = NULL;
    if (c == NULL || model == NULL || out == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    if (wb__check_name(model, strlen(model)))
        return wb__cl_fail(c, WB_ENAME, "invalid model name");
    int strict = !(flags & WB_MAP_NONSTRICT);
    int ignore = (flags & WB_MAP_IGNORE_MISMATCH) != 0;
    if (rules && rules->has_strict)
        strict = strict && rules->strict;
    if (rules && rules->has_ignore)
        ignore = ignore || rules->ignore;

    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_map_req(&r.pk, r.id, model, version, (flags & WB_MAP_PLAN) != 0,
                     strict, ignore, schema ? &schema->s : NULL,
                     rules ? &rules->rs : NULL);
    wb__msg m;
    int fds[WB_MAX_SEGMENTS + 1], nfds = 0; /* Segments, then the hold. */
    fast_rep f = {.taken = 0};
    int rc = wb__cl_call_fast(c, &r, &m, fds, &nfds, WB_MAX_SEGMENTS + 1,
                              fast_map, &f);
    wb_mapping *mp = NULL;
    if (rc == 0 || rc == WB_ELOAD) {
        mp = calloc(1, sizeof(*mp));
        if (mp == NULL) {
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
        } else {
            mp->hold_fd = -1;
            int got = rc;
            if (f.taken) {
                rc = take_mapping(c, &f.rep, mp, fds, nfds, flags);
                wb__map_rep_free(&f.rep);
            } else {
                rc = read_reply(c, &m, rc, mp, fds, nfds, flags);
            }
            mp->plain = got == 0 && schema == NULL && rules == NULL &&
                        !(flags & WB_MAP_PLAN);
        }
    }
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (f.taken && mp == NULL)
        wb__map_rep_free(&f.rep); /* calloc failed: not taken above. */
    wb__cl_msg_done(c, &m);
    if (rc && rc != WB_ELOAD) {
        wb_unmap(mp);
        mp = NULL;
    }
    *out = mp;
    return rc;
}

int wb_map(wb_client *c, const char *model, uint64_t version, int flags,
           wb_mapping **out) {
    return wb_load(c, model, version, NULL, NULL, flags, out);
}

int wb_map_image(const wb_mapping *m, const void **data, size_t *len) {
    if (m == NULL || data == NULL || len == NULL)
        return WB_EINVAL;
    if (!m->plain || m->nsegs < 1 || m->seg_size[0] < 8)
        return WB_ESTATE;
    const uint8_t *base = m->segs[0];
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen > m->seg_size[0] - 8)
        return WB_ECORRUPT;
    size_t end = 8 + (size_t)hlen;
    for (size_t i = 0; i < m->n; i++) {
        size_t e = (size_t)(m->t[i].data - base) + m->t[i].nbytes;
        if (e > end)
            end = e;
    }
    *data = base;
    *len = end;
    return 0;
}

uint64_t wb_map_version(const wb_mapping *m) {
    return m ? m->version : 0;
}
const char *wb_map_pages(const wb_mapping *m, uint64_t *huge_bytes) {
    if (huge_bytes)
        *huge_bytes = m ? m->huge : 0;
    return m ? m->pages : "";
}
size_t wb_map_count(const wb_mapping *m) {
    return m ? m->n : 0;
}

int wb_map_tensor(const wb_mapping *m, size_t i, wb_tensor *t) {
    if (m == NULL || t == NULL || i >= m->n)
        return WB_EINVAL;
    const map_entry *e = &m->t[i];
    t->name = e->name;
    t->source = e->source;
    t->dtype = e->dtype;
    t->ndim = e->ndim;
    memcpy(t->shape, e->shape, sizeof(t->shape));
    t->data = e->data;
    t->nbytes = (size_t)e->nbytes;
    t->cast = e->cast;
    return 0;
}

const char *wb_map_meta(const wb_mapping *m, const char *key) {
    for (size_t i = 0; m && key && i < m->nmeta; i++)
        if (strcmp(m->mkeys[i], key) == 0)
            return m->mvals[i];
    return NULL;
}

size_t wb_map_meta_count(const wb_mapping *m) {
    return m ? m->nmeta : 0;
}

int wb_map_meta_at(const wb_mapping *m, size_t i, const char **key,
                   const char **value) {
    if (m == NULL || i >= m->nmeta)
        return WB_EINVAL;
    if (key)
        *key = m->mkeys[i];
    if (value)
        *value = m->mvals[i];
    return 0;
}

size_t wb_map_keys_count(const wb_mapping *m, int which) {
    if (m == NULL || which < 0 || which >= WB_KEYS_COUNT)
        return 0;
    return m->keys[which].n;
}

const char *wb_map_key(const wb_mapping *m, int which, size_t i) {
    if (m == NULL || which < 0 || which >= WB_KEYS_COUNT ||
        i >= m->keys[which].n)
        return NULL;
    return m->keys[which].v[i];
}

const char *wb_map_error_text(const wb_mapping *m) {
    return m && m->text ? m->text : "";
}
