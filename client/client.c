/* client.c -- libwbroker: a blocking client of wbrokerd.
 *
 * One request at a time per handle: send a frame, read the reply frame and
 * any descriptors that came with it.  Publishing maps the daemon's new
 * segment writable and unmaps it before the commit (the daemon cannot seal
 * a segment that is still mapped writable); mapping opens the read-only
 * descriptors the daemon sends, shared or copy-on-write.
 *
 * Nothing the daemon says is believed unchecked (trust.h): the listener's
 * uid and the socket's directory at connect, every descriptor before it is
 * mapped, and every reply's id.  A reply that breaks the protocol ends the
 * connection. */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fdpass.h"
#include "hash.h"
#include "msg.h"
#include "rules_internal.h"
#include "trust.h"
#include "wire.h"

struct wb_client {
    int fd;                     /* Connected socket, -1 once broken. */
    uint64_t next_id;           /* Id of the next request. */
    char path[108];             /* Socket path, for messages. */
    char errmsg[1024];          /* Detail of the last failure. */
};

struct wb_publish {
    wb_client *c;               /* Connection that opened it. */
    uint64_t pub;               /* Daemon's handle. */
    int fd;                     /* The segment, writable, until commit. */
    uint8_t *base;              /* Writable shared mapping, once asked for. */
    size_t size;                /* Bytes of the segment. */
    size_t n;                   /* Tensors. */
    uint64_t *offs;             /* Offset of each tensor (declared order). */
    uint64_t *nbytes;           /* Bytes of each tensor. */
};

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
    char **v;                   /* Keys. */
    size_t n;                   /* Keys in v. */
} keylist;

struct wb_mapping {
    uint64_t version;           /* Version mapped. */
    map_entry *t;               /* Tensors. */
    size_t n;                   /* Tensors in t. */
    size_t *index;              /* Open-addressing hash of names. */
    size_t index_cap;           /* Slots in index (power of two). */
    char **mkeys;               /* Metadata keys. */
    char **mvals;               /* Metadata values. */
    size_t nmeta;               /* Metadata entries. */
    keylist keys[WB_KEYS_COUNT]; /* The report. */
    char *text;                 /* PyTorch-format error text. */
    void *segs[WB_MAX_SEGMENTS]; /* Mapped segments. */
    size_t seg_size[WB_MAX_SEGMENTS]; /* Bytes of each. */
    int nsegs;                  /* Segments mapped. */
    int plain;                  /* 1 if mapped whole, without rules. */
};

/* Records a failure on c and returns code. */
static int fail(wb_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(wb_client *c, int code, const char *fmt, ...) {
    if (c) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *wb_errmsg(const wb_client *c) { return c ? c->errmsg : ""; }

/* ------------------------------------------------------------ transport */

/* Sends all of buf.  Returns 0 or WB_ECLOSED. */
static int send_all(wb_client *c, const uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return fail(c, WB_ECLOSED, "sending to %s: %s", c->path,
                        n < 0 ? strerror(errno) : "closed");
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Receives exactly len bytes, collecting passed descriptors into fds
 * (closing those beyond maxfds). */
static int recv_all(wb_client *c, uint8_t *buf, size_t len, int *fds,
                    int *nfds, int maxfds) {
    while (len > 0) {
        int got = 0, ctrunc = 0;
        int room = fds ? maxfds - *nfds : 0;
        ssize_t n = wb__fd_recv(c->fd, buf, len, fds ? fds + *nfds : NULL,
                                room, &got, &ctrunc, 0);
        if (n > 0 && fds)
            *nfds += got;
        if (n > 0 && ctrunc)
            return fail(c, WB_EPROTO,
                        "a reply from %s carried more descriptors than the "
                        "%d one reply may hold, and the kernel truncated them",
                        c->path, WB_FDPASS_MAX);
        if (n <= 0)
            return fail(c, WB_ECLOSED, "daemon at %s closed the connection%s%s",
                        c->path, n < 0 ? ": " : "",
                        n < 0 ? strerror(errno) : "");
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Marks the connection unusable after a transport or framing failure. */
static int broken(wb_client *c, int rc) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    return rc;
}

/* Records why the envelope of a reply was refused: bad names the field
 * at fault, as wb__decode_rep_envelope() told.  Returns WB_EPROTO. */
static int envelope_error(wb_client *c, const char *bad) {
    if (bad && strcmp(bad, "err") == 0)
        return fail(c, WB_EPROTO,
                    "reply from %s has no err, or one that is not 0 or a "
                    "negative code",
                    c->path);
    if (bad && strcmp(bad, "id") == 0)
        return fail(c, WB_EPROTO,
                    "reply from %s has no id, or one that is not an "
                    "unsigned integer",
                    c->path);
    return fail(c, WB_EPROTO, "reply from %s has a msg that is not a string",
                c->path);
}

/* Sends the request in sb (a map whose "id" is id) and reads the reply into
 * *m, with its descriptors in fds.  Returns the reply's "err" (with
 * c->errmsg set from "msg"), or a transport error. */
static int roundtrip(wb_client *c, msgpack_sbuffer *sb, uint64_t id,
                     wb__msg *m, int *fds, int *nfds, int maxfds) {
    msgpack_unpacked_init(&m->up);
    m->root = NULL;
    m->owned = NULL;
    if (nfds)
        *nfds = 0;
    if (c->fd < 0)
        return fail(c, WB_ECLOSED, "connection to %s is closed", c->path);
    if (sb->size > WB_MAX_FRAME)
        return fail(c, WB_ETOOBIG, "request of %zu bytes exceeds the %u-byte "
                    "frame limit", sb->size, WB_MAX_FRAME);
    uint8_t hdr[WB_FRAME_HEADER];
    wb__frame_header(hdr, (uint32_t)sb->size);
    int rc = send_all(c, hdr, sizeof(hdr));
    if (rc == 0)
        rc = send_all(c, (const uint8_t *)sb->data, sb->size);
    if (rc == 0)
        rc = recv_all(c, hdr, sizeof(hdr), fds, nfds, maxfds);
    if (rc)
        return broken(c, rc);
    uint32_t len = wb__frame_length(hdr);
    if (len > WB_MAX_FRAME)
        return broken(c, fail(c, WB_EPROTO, "reply of %u bytes", len));
    uint8_t *body = malloc(len ? len : 1);
    if (body == NULL)
        return broken(c, fail(c, WB_ENOMEM, "out of memory"));
    rc = recv_all(c, body, len, fds, nfds, maxfds);
    if (rc == 0)
        rc = wb__msg_decode(m, body, len);
    m->owned = body;
    if (rc)
        return broken(c, rc == WB_ECLOSED ? rc
                                          : fail(c, rc, "malformed reply"));
    uint64_t rid = 0;
    int err = 0;
    wb__str msg;
    const char *bad = NULL;
    if (wb__decode_rep_envelope(m->root, &rid, &err, &msg, &bad))
        return broken(c, envelope_error(c, bad));
    if (rid == 0 && err == 0)
        return broken(c, fail(c, WB_EPROTO,
                              "reply from %s has id 0 without an error (id 0 "
                              "is only the daemon's last word on a protocol "
                              "error)",
                              c->path));
    if (rid != 0 && rid != id)
        return broken(c, fail(c, WB_EPROTO,
                              "reply from %s out of sequence: id %llu "
                              "answers request %llu",
                              c->path, (unsigned long long)rid,
                              (unsigned long long)id));
    if (err != 0) {
        fail(c, err, "%.*s", (int)msg.n, msg.p);
        if (rid == 0) /* The daemon gave up on this connection. */
            broken(c, 0);
        return err;
    }
    c->errmsg[0] = '\0';
    return 0;
}

/* Starts an empty request buffer for c's next request and returns the
 * id that request is to carry. */
static uint64_t req_begin(wb_client *c, msgpack_sbuffer *sb,
                          msgpack_packer *pk) {
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    return ++c->next_id;
}

/* Runs a request without descriptors and frees the request buffer. */
static int call(wb_client *c, msgpack_sbuffer *sb, uint64_t id, wb__msg *m) {
    int rc = roundtrip(c, sb, id, m, NULL, NULL, 0);
    msgpack_sbuffer_destroy(sb);
    return rc;
}

/* ------------------------------------------------------------ connect */

int wb_connect(const char *socket_path, wb_client **out) {
    if (out == NULL)
        return WB_EINVAL;
    *out = NULL;
    wb_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return WB_ENOMEM;
    c->fd = -1;
    *out = c;
    if (wb_socket_path(socket_path, c->path, sizeof(c->path)) < 0)
        return fail(c, WB_EINVAL, "socket path too long");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail(c, WB_ESYS, "socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        return fail(c, e == EACCES || e == EPERM ? WB_EPERM : WB_ECONNECT,
                    "cannot connect to wbrokerd at %s: %s", c->path,
                    strerror(e));
    }
    char why[WB_TRUST_WHY_MAX];
    int trc = wb__trust_peer(c->fd, c->path, why, sizeof(why));
    if (trc) /* Not a byte sent to whoever this is. */
        return broken(c, fail(c, trc, "%s", why));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_hello_req(&pk, id, wb_version_string());
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    wb__hello_rep hr;
    if (rc == 0 && wb__decode_hello_rep(m.root, &hr))
        rc = fail(c, WB_EPROTO, "malformed hello reply from %s", c->path);
    wb__msg_free(&m);
    return rc;
}

void wb_close(wb_client *c) {
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

/* ------------------------------------------------------------ publish */

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
            return fail(c, WB_EINVAL,
                        "tensor %s: tied to %s, which is "
                        "itself tied (name the stored tensor)",
                        t->name, r->name);
        if (r->dtype != t->dtype || r->ndim != t->ndim ||
            (t->ndim && memcmp(r->shape, t->shape,
                               (size_t)t->ndim * sizeof(int64_t)) != 0))
            return fail(c, WB_EINVAL,
                        "tensor %s: tied to %s, which has "
                        "another dtype or shape",
                        t->name, r->name);
        *to = j;
        return 0;
    }
    return fail(c, WB_EINVAL,
                "tensor %s: tied to %s, which is not an "
                "earlier tensor",
                t->name, t->tied_to);
}

int wb_publish_begin(wb_client *c, const char *model,
                     const wb_tensor_spec *tensors, size_t n,
                     const wb_kv *meta, size_t n_meta, wb_publish **out) {
    if (out)
        *out = NULL;
    if (c == NULL || out == NULL || model == NULL || (n && tensors == NULL) ||
        (n_meta && meta == NULL))
        return fail(c, WB_EINVAL, "missing argument");
    if (wb__check_name(model, strlen(model)))
        return fail(c, WB_ENAME, "invalid model name");
    if (n > WB_MAX_TENSORS || n_meta > WB_MAX_META)
        return fail(c, WB_ETOOBIG, "too many tensors or metadata entries");
    for (size_t i = 0; i < n_meta; i++)
        if (meta[i].key == NULL || meta[i].value == NULL ||
            wb__check_name(meta[i].key, strlen(meta[i].key)))
            return fail(c, WB_EINVAL, "metadata entry %zu: bad key or value",
                        i);
    wb_publish *p = calloc(1, sizeof(*p));
    if (p == NULL || !(p->offs = calloc(n ? n : 1, sizeof(uint64_t))) ||
        !(p->nbytes = calloc(n ? n : 1, sizeof(uint64_t)))) {
        if (p)
            free(p->offs);
        free(p);
        return fail(c, WB_ENOMEM, "out of memory");
    }
    p->c = c;
    p->fd = -1;
    p->n = n;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc = 0;
    size_t nties = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const wb_tensor_spec *t = &tensors[i];
        if (t->name == NULL || wb__check_name(t->name, strlen(t->name)))
            rc = fail(c, WB_ENAME, "tensor %zu: invalid name", i);
        else if (t->ndim < 0 || t->ndim > WB_MAX_DIMS ||
                 (t->ndim && t->shape == NULL))
            rc = fail(c, WB_ESHAPE, "tensor %s: invalid shape", t->name);
        else if (wb__tensor_nbytes(t->dtype, t->ndim, t->shape,
                                   &p->nbytes[i]))
            rc = fail(c, wb_dtype_size(t->dtype) ? WB_ESHAPE : WB_EDTYPE,
                      "tensor %s: invalid %s", t->name,
                      wb_dtype_size(t->dtype) ? "shape" : "dtype");
        else if (t->tied_to)
            nties++;
    }
    wb__tie *ties = nties ? calloc(nties, sizeof(*ties)) : NULL;
    if (rc == 0 && nties && ties == NULL)
        rc = fail(c, WB_ENOMEM, "out of memory");
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
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_publish_req(&pk, id, model, tensors, n, meta, n_meta, ties,
                         nties);
    free(ties);
    wb__msg m;
    int fd = -1, nfds = 0;
    rc = roundtrip(c, &sb, id, &m, &fd, &nfds, 1);
    msgpack_sbuffer_destroy(&sb);
    wb__publish_rep rep;
    memset(&rep, 0, sizeof(rep));
    if (rc == 0 && nfds != 1)
        rc = broken(c, fail(c, WB_EPROTO,
                            "publish reply from %s carries %d descriptors, "
                            "not 1",
                            c->path, nfds));
    if (rc == 0) {
        int drc = wb__decode_publish_rep(m.root, &rep);
        p->pub = rep.pub; /* Set when it came: the publish to abort. */
        if (drc == WB_ENOMEM)
            rc = fail(c, WB_ENOMEM, "out of memory");
        else if (drc || rep.n != n)
            rc = fail(c, WB_EPROTO, "malformed publish reply");
    }
    uint64_t size = rep.size;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (rep.offs[i] > size || p->nbytes[i] > size - rep.offs[i])
            rc = fail(c, WB_EPROTO, "publish reply: bad offset");
        else
            p->offs[i] = rep.offs[i];
    }
    wb__publish_rep_free(&rep);
    wb__msg_free(&m);
    char why[WB_TRUST_WHY_MAX];
    if (rc == 0 && wb__trust_segment(fd, size, WB__SEG_WRITE, why,
                                     sizeof(why)))
        rc = broken(c, fail(c, WB_EPROTO, "publish reply from %s: %s",
                            c->path, why));
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
        void *b = mmap(NULL, p->size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, p->fd, 0);
        if (b == MAP_FAILED) {
            fail(p->c, WB_ESYS, "mapping the new segment: %s",
                 strerror(errno));
            return NULL;
        }
        madvise(b, p->size, MADV_HUGEPAGE);
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
        return p ? fail(p->c, WB_EINVAL, "tensor %zu: bytes [%zu, +%zu) out "
                                         "of range",
                        i, off, len)
                 : WB_EINVAL;
    const uint8_t *s = src;
    uint64_t at = p->offs[i] + off;
    while (len > 0) {
        ssize_t w = pwrite(p->fd, s, len, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return fail(p->c, WB_ESYS, "writing tensor %zu: %s", i,
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

int wb_publish_commit(wb_publish *p, uint64_t *version) {
    if (p == NULL)
        return WB_EINVAL;
    wb_client *c = p->c;
    if (p->base) {
        munmap(p->base, p->size);
        p->base = NULL;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_pub_req(&pk, "commit", id, p->pub);
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    uint64_t v = 0;
    if (rc == 0 && wb__decode_u64_rep(m.root, "version", &v))
        rc = fail(c, WB_EPROTO, "malformed commit reply");
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
    if (p->c && p->pub && p->c->fd >= 0) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        uint64_t id = req_begin(p->c, &sb, &pk);
        wb__pack_pub_req(&pk, "abort", id, p->pub);
        wb__msg m;
        char keep[sizeof(p->c->errmsg)];
        memcpy(keep, p->c->errmsg, sizeof(keep));
        uint64_t none;
        if (call(p->c, &sb, id, &m) == 0) /* Nothing to read, or to do. */
            wb__decode_u64_rep(m.root, NULL, &none);
        wb__msg_free(&m);
        memcpy(p->c->errmsg, keep, sizeof(keep)); /* Keep the first cause. */
    }
    publish_free(p);
}

/* ------------------------------------------------------------ map */

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
        size_t k = wb__hash_bytes(m->t[i].name, strlen(m->t[i].name)) & (cap - 1);
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
    for (size_t i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].source);
    }
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

/* Checks the segments a decoded map reply declares against the
 * descriptors it carried (fds, nfds) and maps them (unless a plan), all
 * checked before any is mapped.  Returns 0 or an error recorded on c. */
static int map_segments(wb_client *c, const wb__map_rep *rep, wb_mapping *m,
                        const int *fds, int nfds, int flags) {
    int plan = (flags & WB_MAP_PLAN) != 0;
    assert(rep->nsegs <= WB_MAX_SEGMENTS); /* The decoder's limit. */
    if (!plan && rep->nsegs != (size_t)nfds)
        return broken(c, fail(c, WB_EPROTO,
                              "map reply from %s declares %zu segments but "
                              "carries %d descriptors",
                              c->path, rep->nsegs, nfds));
    m->nsegs = (int)rep->nsegs;
    for (int k = 0; k < m->nsegs; k++) {
        if (rep->segs[k] > SIZE_MAX)
            return fail(c, WB_EPROTO, "malformed segment size");
        m->seg_size[k] = (size_t)rep->segs[k];
    }
    if (plan)
        return 0;
    char why[WB_TRUST_WHY_MAX];
    for (int k = 0; k < m->nsegs; k++) /* All, before mapping any. */
        if (wb__trust_segment(fds[k], m->seg_size[k], WB__SEG_READ, why,
                              sizeof(why)))
            return broken(c, fail(c, WB_EPROTO,
                                  "map reply from %s: segment %d: %s",
                                  c->path, k, why));
    int shared = (flags & WB_MAP_SHARED) != 0;
    for (int k = 0; k < m->nsegs; k++) {
        void *p = mmap(NULL, m->seg_size[k],
                       shared ? PROT_READ : PROT_READ | PROT_WRITE,
                       shared ? MAP_SHARED : MAP_PRIVATE, fds[k], 0);
        if (p == MAP_FAILED)
            return fail(c, WB_ESYS, "mapping segment %d: %s", k,
                        strerror(errno));
        m->segs[k] = p;
        madvise(p, m->seg_size[k], MADV_HUGEPAGE);
    }
    return 0;
}

/* Checks row i of a decoded tensor table against the mapped segments of
 * m: a valid target name, a shape whose bytes can be counted, and bytes
 * that lie inside their segment.  Returns 0 or WB_EPROTO (recorded). */
static int check_row(wb_client *c, const wb_mapping *m,
                     const wb__map_entry *e, size_t i) {
    uint64_t nb;
    if (wb__check_name(e->target.p, e->target.n) ||
        wb__tensor_nbytes(e->dtype, e->ndim, e->shape, &nb) ||
        e->seg >= (uint64_t)m->nsegs || e->offset > m->seg_size[e->seg] ||
        e->nbytes > m->seg_size[e->seg] - e->offset)
        return fail(c, WB_EPROTO, "malformed tensor entry %zu", i);
    return 0;
}

/* Fills m from a decoded map reply: version, report, segments (mapped
 * unless a plan), tensor table, metadata and the name index.  Returns 0
 * or an error recorded on c. */
static int take_mapping(wb_client *c, const wb__map_rep *rep, wb_mapping *m,
                        const int *fds, int nfds, int flags) {
    m->version = rep->version;
    int rc = map_segments(c, rep, m, fds, nfds, flags);
    if (rc)
        return rc;
    if (take_report(m, &rep->report))
        return fail(c, WB_ENOMEM, "out of memory");
    m->t = calloc(rep->n ? rep->n : 1, sizeof(map_entry));
    if (m->t == NULL)
        return fail(c, WB_ENOMEM, "out of memory");
    int plan = (flags & WB_MAP_PLAN) != 0;
    for (size_t i = 0; i < rep->n; i++) {
        const wb__map_entry *r = &rep->t[i];
        map_entry *e = &m->t[i];
        if ((rc = check_row(c, m, r, i)) != 0)
            return rc;
        e->name = wb__str_dup(r->target);
        e->source = wb__str_dup(r->source);
        m->n = i + 1;
        if (e->name == NULL || e->source == NULL)
            return fail(c, WB_ENOMEM, "out of memory");
        e->dtype = r->dtype;
        e->ndim = r->ndim;
        memcpy(e->shape, r->shape, sizeof(e->shape));
        e->nbytes = r->nbytes;
        e->cast = r->cast;
        e->data = plan ? NULL : (uint8_t *)m->segs[r->seg] + r->offset;
    }
    if (rep->nmeta) {
        m->mkeys = calloc(rep->nmeta, sizeof(char *));
        m->mvals = calloc(rep->nmeta, sizeof(char *));
        if (!m->mkeys || !m->mvals)
            return fail(c, WB_ENOMEM, "out of memory");
        for (size_t i = 0; i < rep->nmeta; i++) {
            m->mkeys[i] = wb__str_dup(rep->mkeys[i]);
            m->mvals[i] = wb__str_dup(rep->mvals[i]);
            m->nmeta = i + 1;
            if (!m->mkeys[i] || !m->mvals[i])
                return fail(c, WB_ENOMEM, "out of memory");
        }
    }
    return index_build(m) ? fail(c, WB_ENOMEM, "out of memory") : 0;
}

/* Decodes the reply m to a map request (err 0 or WB_ELOAD, as rc) into
 * mp: the whole mapping, or only the version and report of a load error.
 * Returns rc, or an error recorded on c. */
static int read_reply(wb_client *c, const wb__msg *m, int rc, wb_mapping *mp,
                      const int *fds, int nfds, int flags) {
    int load_error = rc == WB_ELOAD;
    wb__map_rep rep;
    int drc = wb__decode_map_rep(m->root, load_error, &rep);
    if (drc == WB_ENOMEM)
        rc = fail(c, WB_ENOMEM, "out of memory");
    else if (drc)
        rc = fail(c, WB_EPROTO, load_error ? "malformed load report"
                                           : "malformed map reply");
    else if (load_error) {
        mp->version = rep.version;
        if (take_report(mp, &rep.report))
            rc = fail(c, WB_ENOMEM, "out of memory");
    } else {
        rc = take_mapping(c, &rep, mp, fds, nfds, flags);
    }
    wb__map_rep_free(&rep);
    return rc;
}

int wb_load(wb_client *c, const char *model, uint64_t version,
            const wb_schema *schema, const wb_rules *rules, int flags,
            wb_mapping **out) {
    if (out)
        *out = NULL;
    if (c == NULL || model == NULL || out == NULL)
        return fail(c, WB_EINVAL, "missing argument");
    if (wb__check_name(model, strlen(model)))
        return fail(c, WB_ENAME, "invalid model name");
    int strict = !(flags & WB_MAP_NONSTRICT);
    int ignore = (flags & WB_MAP_IGNORE_MISMATCH) != 0;
    if (rules && rules->has_strict)
        strict = strict && rules->strict;
    if (rules && rules->has_ignore)
        ignore = ignore || rules->ignore;

    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_map_req(&pk, id, model, version, (flags & WB_MAP_PLAN) != 0,
                     strict, ignore, schema ? &schema->s : NULL,
                     rules ? &rules->rs : NULL);
    wb__msg m;
    int fds[WB_MAX_SEGMENTS], nfds = 0;
    int rc = roundtrip(c, &sb, id, &m, fds, &nfds, WB_MAX_SEGMENTS);
    msgpack_sbuffer_destroy(&sb);
    wb_mapping *mp = NULL;
    if (rc == 0 || rc == WB_ELOAD) {
        mp = calloc(1, sizeof(*mp));
        if (mp == NULL) {
            rc = fail(c, WB_ENOMEM, "out of memory");
        } else {
            int got = rc;
            rc = read_reply(c, &m, rc, mp, fds, nfds, flags);
            mp->plain = got == 0 && schema == NULL && rules == NULL &&
                        !(flags & WB_MAP_PLAN);
        }
    }
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    wb__msg_free(&m);
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

uint64_t wb_map_version(const wb_mapping *m) { return m ? m->version : 0; }
size_t wb_map_count(const wb_mapping *m) { return m ? m->n : 0; }

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

size_t wb_map_meta_count(const wb_mapping *m) { return m ? m->nmeta : 0; }

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

/* ------------------------------------------------------------ inspect */

int wb_list(wb_client *c, wb_model_info **out, size_t *n) {
    if (c == NULL || out == NULL || n == NULL)
        return fail(c, WB_EINVAL, "missing argument");
    *out = NULL;
    *n = 0;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_list_req(&pk, id);
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    wb__list_entry *e = NULL;
    size_t ne = 0;
    int drc = rc ? 0 : wb__decode_list_rep(m.root, &e, &ne);
    if (drc)
        rc = fail(c, drc, drc == WB_ENOMEM ? "out of memory"
                                           : "malformed list reply");
    wb_model_info *v = NULL;
    if (rc == 0 && !(v = calloc(ne ? ne : 1, sizeof(*v))))
        rc = fail(c, WB_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < ne; i++) {
        v[i].latest = e[i].latest;
        v[i].nversions = e[i].versions;
        v[i].tensors = e[i].tensors;
        v[i].bytes = e[i].bytes;
        v[i].readers = e[i].readers;
        *n = i + 1;
        if ((v[i].name = wb__str_dup(e[i].name)) == NULL)
            rc = fail(c, WB_ENOMEM, "out of memory");
    }
    free(e);
    wb__msg_free(&m);
    if (rc) {
        wb_model_info_free(v, *n);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

void wb_model_info_free(wb_model_info *v, size_t n) {
    for (size_t i = 0; v && i < n; i++)
        free(v[i].name);
    free(v);
}

int wb_get_status(wb_client *c, wb_status *out) {
    if (c == NULL || out == NULL)
        return fail(c, WB_EINVAL, "missing argument");
    memset(out, 0, sizeof(*out));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_status_req(&pk, id);
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    wb__status_rep st;
    if (rc == 0 && wb__decode_status_rep(m.root, &st))
        rc = fail(c, WB_EPROTO, "malformed status reply");
    if (rc == 0) {
        snprintf(out->version, sizeof(out->version), "%.*s",
                 (int)st.server.n, st.server.p);
        out->uptime = st.uptime;
        out->memory_used = st.used;
        out->memory_limit = st.limit;
        out->models = st.models;
        out->versions = st.versions;
        out->clients = st.clients;
        out->pid = st.pid;
    }
    wb__msg_free(&m);
    return rc;
}

int wb_drop(wb_client *c, const char *model, uint64_t version) {
    if (c == NULL || model == NULL)
        return fail(c, WB_EINVAL, "missing argument");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_drop_req(&pk, id, model, version);
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    uint64_t dropped;
    if (rc == 0 && wb__decode_u64_rep(m.root, "dropped", &dropped))
        rc = fail(c, WB_EPROTO, "malformed drop reply");
    wb__msg_free(&m);
    return rc;
}

int wb_watch(wb_client *c, const char *model, uint64_t after, int timeout_ms,
             uint64_t *version) {
    if (c == NULL || model == NULL || version == NULL)
        return fail(c, WB_EINVAL, "missing argument");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t id = req_begin(c, &sb, &pk);
    wb__pack_watch_req(&pk, id, model, after, timeout_ms < 0 ? -1 : timeout_ms);
    wb__msg m;
    int rc = call(c, &sb, id, &m);
    uint64_t v = 0;
    if (rc == 0 && wb__decode_u64_rep(m.root, "version", &v))
        rc = fail(c, WB_EPROTO, "malformed watch reply");
    if (rc == 0)
        *version = v;
    wb__msg_free(&m);
    return rc;
}
