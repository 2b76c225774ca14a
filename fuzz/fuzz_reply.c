/* fuzz_reply.c -- libFuzzer harness of the client library against a
 * hostile daemon: every reply decoder of msg.h, and the public calls
 * (wb_list, wb_get_status, wb_holders, wb_drop, wb_watch, wb_pin, wb_map,
 * wb_load, wb_publish_begin) reading the reply a fake daemon sends.
 *
 * The input is a few control bytes and a reply body:
 *   byte 0     the call to make (see the switch below);
 *   byte 1     the descriptors that come with the reply: bits 0-2 the
 *              number of memfd segments (at most 4), bit 3 a hold pipe's
 *              write end, bit 4 segments open read-write (as a publish's)
 *              instead of read-only and sealed (as a map's), bit 5 a pipe
 *              where the first segment would be;
 *   bytes 2-3  the size of each segment, in units of 64 bytes;
 *   the rest   the reply's msgpack body (its frame header is added).
 * The client is a real wb_client on one end of a socketpair, already
 * connected (the hello is not replayed); a thread on the other end reads
 * each request and answers the first with the reply, then ends the
 * stream.  Every call must return (an error or a result) without reading
 * past the reply, trusting a count it was not given, or leaking memory, a
 * descriptor or a mapping. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../client/client_internal.h"
#include "msg.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CTRL 4     /* Control bytes before the reply body. */
#define FZ_MAX_SEGS 4 /* Segments one input may send. */

/* The fake daemon's side of one exchange. */
typedef struct fake {
    int sock;                 /* Its end of the socketpair. */
    const uint8_t *body;      /* The reply body. */
    size_t len;               /* Bytes of body. */
    int fds[FZ_MAX_SEGS + 1]; /* Descriptors sent with the reply. */
    int nfds;                 /* Entries in fds. */
} fake;

/* Reads exactly n bytes; 0, or -1 at the end of the stream. */
static int read_full(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = read(fd, p, n);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads one request frame and throws it away; 0, or -1 at the end. */
static int skip_request(int fd) {
    uint8_t hdr[WB_FRAME_HEADER];
    if (read_full(fd, hdr, sizeof(hdr)))
        return -1;
    uint32_t len = wb__frame_length(hdr);
    uint8_t chunk[4096];
    while (len > 0) {
        size_t k = len < sizeof(chunk) ? len : sizeof(chunk);
        if (read_full(fd, chunk, k))
            return -1;
        len -= (uint32_t)k;
    }
    return 0;
}

/* The fake daemon: answers the first request with the reply and its
 * descriptors, then ends the stream at the next request (a publish's
 * commit or abort) or when the client closes. */
static void *fake_daemon(void *arg) {
    fake *f = arg;
    if (skip_request(f->sock) == 0) {
        uint8_t hdr[WB_FRAME_HEADER];
        wb__frame_header(hdr, (uint32_t)f->len);
        struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)f->body, f->len}};
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int) * (FZ_MAX_SEGS + 1))];
        } cm;
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        if (f->nfds > 0) {
            memset(&cm, 0, sizeof(cm));
            mh.msg_control = cm.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)f->nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)f->nfds);
            memcpy(CMSG_DATA(c), f->fds, sizeof(int) * (size_t)f->nfds);
        }
        size_t want = sizeof(hdr) + f->len;
        ssize_t k = sendmsg(f->sock, &mh, MSG_NOSIGNAL);
        /* The rest, if the socket took only part (no more descriptors). */
        size_t done = k > 0 ? (size_t)k : want;
        while (done < want) {
            const uint8_t *p = done < sizeof(hdr)
                                   ? hdr + done
                                   : f->body + (done - sizeof(hdr));
            size_t n = done < sizeof(hdr) ? sizeof(hdr) - done : want - done;
            k = send(f->sock, p, n, MSG_NOSIGNAL);
            if (k <= 0)
                break;
            done += (size_t)k;
        }
    }
    shutdown(f->sock, SHUT_WR);
    while (skip_request(f->sock) == 0)
        ;
    return NULL;
}

/* A memfd of size bytes; read-only and sealed as a map's, or read-write
 * and sealed only against resizing as a new publish's. */
static int make_segment(size_t size, int writable) {
    int fd = memfd_create("fuzz-seg", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        abort();
    if (ftruncate(fd, (off_t)size) != 0)
        abort();
    if (writable) {
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
        return fd;
    }
    fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int ro = open(path, O_RDONLY | O_CLOEXEC);
    close(fd);
    if (ro < 0)
        abort();
    return ro;
}

/* Open descriptors of this process. */
static int fd_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        abort();
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* Mappings of memfds in this process (the segments a call mapped): lines
 * of /proc/self/maps naming one.  Other mappings come and go with the
 * allocator. */
static int map_count(void) {
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        abort();
    int n = 0;
    char line[512];
    while (fgets(line, sizeof(line), f))
        n += strstr(line, "/memfd:") != NULL;
    fclose(f);
    return n;
}

/* Runs every reply decoder on the body, whatever the call. */
static void decode_all(const uint8_t *body, size_t len) {
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return;
    memcpy(copy, body, len);
    wb__msg m;
    if (wb__msg_decode(&m, copy, len) == 0) {
        uint64_t id, v;
        int err;
        wb__str msg;
        const char *bad;
        (void)wb__decode_rep_envelope(m.root, &id, &err, &msg, &bad);
        (void)wb__decode_rep_errno(m.root);
        wb__hello_rep h;
        (void)wb__decode_hello_rep(m.root, &h);
        wb__publish_rep pr;
        (void)wb__decode_publish_rep(m.root, &pr);
        wb__publish_rep_free(&pr);
        (void)wb__decode_u64_rep(m.root, "version", &v);
        (void)wb__decode_u64_rep(m.root, NULL, &v);
        for (int le = 0; le < 2; le++) {
            wb__map_rep mr;
            (void)wb__decode_map_rep(m.root, le, &mr);
            wb__map_rep_free(&mr);
        }
        wb__list_entry *le;
        size_t n;
        if (wb__decode_list_rep(m.root, &le, &n) == 0)
            free(le);
        wb__status_rep st;
        (void)wb__decode_status_rep(m.root, &st);
        wb__status_rep_free(&st);
        wb__holder_entry *he;
        if (wb__decode_holders_rep(m.root, &he, &n) == 0)
            free(he);
    }
    wb__msg_free(&m);
    free(copy);
}

/* Reads every tensor, key and metadata entry of a mapping, as a caller
 * would, touching the first and last byte of each tensor. */
static void read_mapping(wb_mapping *mp) {
    if (mp == NULL)
        return;
    volatile uint8_t sink = 0;
    size_t n = wb_map_count(mp);
    for (size_t i = 0; i < n; i++) {
        wb_tensor t;
        if (wb_map_tensor(mp, i, &t) == 0 && t.data && t.nbytes) {
            sink ^= ((const uint8_t *)t.data)[0];
            sink ^= ((const uint8_t *)t.data)[t.nbytes - 1];
        }
        if (t.name)
            (void)wb_map_find(mp, t.name);
    }
    for (int w = 0; w < WB_KEYS_COUNT; w++)
        for (size_t i = 0; i < wb_map_keys_count(mp, w); i++)
            (void)wb_map_key(mp, w, i);
    (void)wb_map_error_text(mp);
    for (size_t i = 0; i < wb_map_meta_count(mp); i++) {
        const char *k, *v;
        (void)wb_map_meta_at(mp, i, &k, &v);
    }
    const void *img;
    size_t ilen;
    (void)wb_map_image(mp, &img, &ilen);
    (void)sink;
    wb_unmap(mp);
}

/* Makes call op on c, with whatever arguments it takes. */
static void call(wb_client *c, unsigned op) {
    switch (op) {
    case 0: {
        wb_model_info *v;
        size_t n;
        if (wb_list(c, &v, &n) == 0)
            wb_model_info_free(v, n);
        break;
    }
    case 1: {
        wb_status st;
        (void)wb_get_status(c, &st);
        break;
    }
    case 2: {
        wb_counter *v;
        size_t n;
        if (wb_get_counters(c, &v, &n) == 0)
            wb_counters_free(v, n);
        break;
    }
    case 3: {
        wb_holder *v;
        size_t n;
        if (wb_holders(c, NULL, &v, &n) == 0)
            wb_holders_free(v, n);
        break;
    }
    case 4:
        (void)wb_drop(c, "m", 0);
        break;
    case 5: {
        uint64_t v;
        (void)wb_watch(c, "m", 0, 1000, &v);
        break;
    }
    case 6:
        (void)wb_pin(c, "m", 0);
        break;
    case 7:
    case 8: {
        wb_mapping *mp = NULL;
        (void)wb_map(c, "m", 0, op == 7 ? WB_MAP_SHARED : WB_MAP_PLAN, &mp);
        read_mapping(mp);
        break;
    }
    case 9: {
        wb_schema *s = wb_schema_new("Net");
        wb_rules *r = wb_rules_new();
        int64_t shp[2] = {2, 2};
        if (s == NULL || r == NULL ||
            wb_schema_add(s, "w", WB_F32, 2, shp) != 0 ||
            wb_rules_rename_prefix(r, "module.", "") != 0)
            abort();
        wb_mapping *mp = NULL;
        (void)wb_load(c, "m", 0, s, r, 0, &mp);
        read_mapping(mp);
        wb_schema_free(s);
        wb_rules_free(r);
        break;
    }
    default: {
        int64_t shp[2] = {4, 4};
        wb_tensor_spec t[2] = {{"a", WB_F32, 2, shp, NULL},
                               {"b", WB_F32, 2, shp, "a"}};
        wb_kv meta = {"format", "pt"};
        wb_publish *p = NULL;
        if (wb_publish_begin(c, "m", t, 2, &meta, 1, &p) == 0) {
            float buf[16] = {0};
            (void)wb_publish_write(p, 0, buf, sizeof(buf), 0);
            size_t nb;
            (void)wb_publish_data(p, 1, &nb);
            uint64_t v;
            if (op & 1)
                (void)wb_publish_commit(p, &v);
            else
                wb_publish_abort(p);
        }
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < FZ_CTRL || size > 1u << 20)
        return -1;
    const uint8_t *body = data + FZ_CTRL;
    size_t len = size - FZ_CTRL;
    decode_all(body, len);
    int fds0 = fd_count(), maps0 = map_count();

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    wb_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->fd = sv[0];
    c->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->gen = 1;
    snprintf(c->path, sizeof(c->path), "fuzz-daemon");

    fake f = {.sock = sv[1], .body = body, .len = len};
    unsigned nsegs = data[1] & 7;
    if (nsegs > FZ_MAX_SEGS)
        nsegs = FZ_MAX_SEGS;
    size_t seg_size = ((size_t)data[2] | (size_t)data[3] << 8) * 64;
    for (unsigned k = 0; k < nsegs; k++) {
        if (k == 0 && (data[1] & 0x20)) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) != 0)
                abort();
            close(p[1]);
            f.fds[f.nfds++] = p[0];
        } else {
            f.fds[f.nfds++] = make_segment(seg_size, (data[1] & 0x10) != 0);
        }
    }
    int hold[2] = {-1, -1};
    if (data[1] & 8) {
        if (pipe2(hold, O_CLOEXEC) != 0)
            abort();
        f.fds[f.nfds++] = hold[1];
    }
    pthread_t th;
    if (pthread_create(&th, NULL, fake_daemon, &f) != 0)
        abort();
    call(c, data[0] % 12);
    wb_close(c);
    pthread_join(th, NULL);
    close(sv[1]);
    for (int k = 0; k < f.nfds; k++)
        close(f.fds[k]);
    if (hold[0] >= 0)
        close(hold[0]);
    /* Whatever the reply, the call leaves no descriptor or mapping. */
    int fds1 = fd_count(), maps1 = map_count();
    if (fds1 != fds0 || maps1 != maps0) {
        fprintf(stderr,
                "fuzz_reply: %d descriptors (%d before), %d memfd "
                "mappings (%d before)\n",
                fds1, fds0, maps1, maps0);
        abort();
    }
    return 0;
}
