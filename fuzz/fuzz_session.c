/* fuzz_session.c -- libFuzzer harness of the whole daemon: the bytes a
 * client sends, through the real connection layer, the dispatcher and
 * every request handler, with the worker thread, segments, holds and the
 * registry of a real wbrokerd, all in this process so that the fuzzer
 * sees the handlers' coverage.
 *
 * The daemon's objects (all of daemon/ but main.c) listen on a socket in a
 * temporary directory, with the set-up main.c does.  Each input is one
 * connection: a valid hello first, then the input's bytes.  With the first
 * byte even, the rest is split at each "\xc1\xc1" (0xc1 is never used by
 * msgpack) into frame bodies that get their length prefixes here, so that
 * mutations stay inside messages; those go one at a time, each once the
 * one before is answered (once one has waited FZ_IDLE_MS unanswered, as a
 * watch does, the rest go at once, pipelined behind it), and
 * in each the 8 bytes after "pub" as a uint64 ("\xa3pub\xcf") are set to
 * the handle of the last publish answered, since handles count up over
 * the whole run.  With the first byte odd, the rest is sent as it is,
 * length prefixes and all, pipelined, for the framing layer.  The harness
 * reads the replies (closing the descriptors they bring, which ends their
 * holds and releases their segments) until every request is answered, the
 * daemon hangs up, or nothing happens for FZ_IDLE_MS.  Then
 * it hangs up itself, lets the daemon finish every job of that connection,
 * and checks that the daemon is back where it started: no connection, no
 * bytes charged for open publishes.  Then the registry is emptied for the
 * next input.  WB_FUZZ_VERBOSE=1 says for each input how many frames went
 * and how many replies came. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "../daemon/access.h"
#include "../daemon/conn.h"
#include "../daemon/dispatch.h"
#include "../daemon/hold.h"
#include "../daemon/log.h"
#include "../daemon/ops.h"
#include "../daemon/registry.h"
#include "../daemon/worker.h"
#include "msg.h"
#include "wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_IDLE_MS 5             /* Quiet time after which a wait ends. */
#define FZ_DRAIN_MS 5000         /* Time the daemon gets to settle. */
#define FZ_MEM_LIMIT (64u << 20) /* The daemon's memory limit. */

static uv_loop_t *loop;     /* The daemon's loop. */
static int verbose;         /* WB_FUZZ_VERBOSE: one line per input. */
static char sock_path[108]; /* Where it listens. */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Runs the loop once without blocking for more than ms: waits on its
 * backend descriptor and the client's socket (fd, when >= 0). */
static void step(int fd, int ms) {
    int t = uv_backend_timeout(loop);
    if (t < 0 || t > ms)
        t = ms;
    struct pollfd p[2] = {{.fd = uv_backend_fd(loop), .events = POLLIN},
                          {.fd = fd, .events = POLLIN}};
    poll(p, fd >= 0 ? 2 : 1, t);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void on_exit_cleanup(void) {
    unlink(sock_path);
    char dir[108];
    snprintf(dir, sizeof(dir), "%s", sock_path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        rmdir(dir);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("WB_FUZZ_VERBOSE") != NULL;
    wb__log_level = WB_LOG_ERROR + 1; /* Quiet: errors are expected. */
    wb__reg.mem_limit = FZ_MEM_LIMIT;
    wb__reg.keep = 2;
    wb__hold_user_max = 256;
    if (wb__access_load(NULL) != 0)
        abort();
    char dir[] = "/tmp/wbfuzz.XXXXXX";
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(sock_path, sizeof(sock_path), "%s/s", dir);
    atexit(on_exit_cleanup);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(lfd, 64) != 0)
        abort();
    loop = uv_default_loop();
    wb__started = (double)uv_hrtime() / 1e9;
    if (wb__worker_start(loop) != 0 ||
        wb__conn_listen(loop, lfd, &wb__dispatch_ops, 0) != 0)
        abort();
    return 0;
}

#define FZ_MAX_FRAMES 256       /* Frames of one input, past that: one. */
#define FZ_MAX_REPLY (1u << 20) /* Reply bodies kept for decoding. */

/* The client's side: bytes to send, frame by frame, and replies read. */
typedef struct client {
    int fd;                       /* Connected socket. */
    uint8_t *out;                 /* Bytes to send. */
    size_t nout;                  /* Bytes in out. */
    size_t frame[FZ_MAX_FRAMES];  /* Offset in out of each frame. */
    size_t nframes;               /* Frames in out. */
    size_t sent;                  /* Bytes of out sent so far. */
    size_t limit;                 /* Bytes of out that may be sent now. */
    uint8_t hdr[WB_FRAME_HEADER]; /* Header of the reply being read. */
    size_t nhdr;                  /* Bytes of it read. */
    uint8_t *body;                /* Its body (NULL when too long). */
    uint32_t nbody;               /* Its length. */
    uint32_t got;                 /* Bytes of it read. */
    size_t replies;               /* Whole replies read. */
    uint64_t last_pub;            /* Handle of the last publish answered. */
    int closed;                   /* 1 once the daemon hung up. */
} client;

static void out_add(client *c, const void *p, size_t n) {
    uint8_t *q = realloc(c->out, c->nout + n + 1);
    if (q == NULL)
        abort();
    memcpy(q + c->nout, p, n);
    c->out = q;
    c->nout += n;
}

/* Appends a frame around body; past FZ_MAX_FRAMES frames, the bytes go
 * with the last one. */
static void out_frame(client *c, const void *body, size_t n) {
    if (c->nframes < FZ_MAX_FRAMES)
        c->frame[c->nframes++] = c->nout;
    uint8_t hdr[WB_FRAME_HEADER];
    wb__frame_header(hdr, (uint32_t)n);
    out_add(c, hdr, sizeof(hdr));
    out_add(c, body, n);
}

/* A whole reply: remembers a publish's handle. */
static void reply_done(client *c) {
    c->replies++;
    if (c->body == NULL)
        return;
    wb__msg m;
    uint64_t pub;
    int rc = wb__msg_decode(&m, c->body, c->nbody);
    if (rc == 0 && wb__mp_get_u64(m.root, "pub", &pub) == 0)
        c->last_pub = pub;
    if (verbose) {
        int64_t err = 1;
        const char *msg = "";
        size_t nmsg = 0;
        if (rc == 0) {
            (void)wb__mp_get_i64(m.root, "err", &err);
            (void)wb__mp_get_str(m.root, "msg", &msg, &nmsg);
        }
        fprintf(stderr, "fuzz_session: reply %zu: err %lld %.*s\n", c->replies,
                (long long)err, (int)nmsg, msg);
    }
    wb__msg_free(&m);
    free(c->body);
    c->body = NULL;
}

/* Reads what the daemon sent, closing every descriptor that came.
 * Returns 1 if anything happened. */
static int client_read(client *c) {
    int progress = 0;
    for (;;) {
        uint8_t buf[65536];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int) * 80)];
        } cm;
        struct iovec iov = {buf, sizeof(buf)};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = cm.b,
                            .msg_controllen = sizeof(cm.b)};
        ssize_t k = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return progress;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h))
            if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
                int *fds = (int *)(void *)CMSG_DATA(h);
                size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++)
                    close(fds[i]);
            }
        if (k == 0) {
            c->closed = 1;
            return 1;
        }
        progress = 1;
        for (size_t at = 0; at < (size_t)k;) {
            if (c->nhdr < WB_FRAME_HEADER) {
                c->hdr[c->nhdr++] = buf[at++];
                if (c->nhdr < WB_FRAME_HEADER)
                    continue;
                c->nbody = wb__frame_length(c->hdr);
                c->got = 0;
                c->body = c->nbody <= FZ_MAX_REPLY
                              ? malloc(c->nbody ? c->nbody : 1)
                              : NULL;
            } else {
                size_t n = (size_t)k - at;
                if (n > c->nbody - c->got)
                    n = c->nbody - c->got;
                if (c->body)
                    memcpy(c->body + c->got, buf + at, n);
                c->got += (uint32_t)n;
                at += n;
            }
            if (c->got == c->nbody) {
                reply_done(c);
                c->nhdr = 0;
            }
        }
    }
}

/* Sends what the socket takes now, up to c->limit.  Returns 1 if
 * anything went. */
static int client_write(client *c) {
    if (c->sent >= c->limit || c->closed)
        return 0;
    ssize_t k = send(c->fd, c->out + c->sent, c->limit - c->sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (k < 0) {
        c->sent = c->limit = c->nout; /* Hung up: nothing more goes. */
        return 1;
    }
    c->sent += (size_t)k;
    return 1;
}

/* Lets frame i go: sets its "pub" to the last handle, moves the limit. */
static void release_frame(client *c, size_t i) {
    size_t end = i + 1 < c->nframes ? c->frame[i + 1] : c->nout;
    static const uint8_t key[] = {0xa3, 'p', 'u', 'b', 0xcf};
    for (size_t at = c->frame[i] + WB_FRAME_HEADER; at + sizeof(key) + 8 <= end;
         at++)
        if (memcmp(c->out + at, key, sizeof(key)) == 0)
            for (int b = 0; b < 8; b++)
                c->out[at + sizeof(key) + b] =
                    (uint8_t)(c->last_pub >> (56 - 8 * b));
    c->limit = end;
}

static volatile int barrier_done; /* Set by the barrier's completion. */
static void barrier_work(wb__task *t) {
    (void)t;
}
static void barrier_finish(wb__task *t) {
    (void)t;
    barrier_done = 1;
}

/* Runs the loop until every task queued on the worker before now has
 * run and completed. */
static void worker_barrier(void) {
    static wb__task t = {barrier_work, barrier_finish, NULL};
    barrier_done = 0;
    wb__worker_submit(&t);
    double until = now_ms() + FZ_DRAIN_MS;
    while (!barrier_done) {
        if (now_ms() > until)
            abort(); /* A job that never ends. */
        step(-1, 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1u << 20)
        return -1;
    client c = {.fd = -1};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wb__pack_hello_req(&pk, 1, WB_PROTO_VERSION, "fuzz");
    out_frame(&c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    int raw = size > 0 && (data[0] & 1);
    const uint8_t *p = size > 0 ? data + 1 : data;
    size_t n = size > 0 ? size - 1 : 0;
    /* Replies to wait for: one per request, unless a raw input ends in
     * the middle of a frame (the daemon then waits for the rest). */
    size_t expect = 1;
    if (raw) {
        out_add(&c, p, n); /* Goes with the hello: one "frame" of bytes. */
        size_t at = 0;
        while (at + WB_FRAME_HEADER <= n) {
            uint64_t len = wb__frame_length(p + at);
            if (len > n - at - WB_FRAME_HEADER)
                break;
            at += WB_FRAME_HEADER + (size_t)len;
            expect++;
        }
        if (at != n)
            expect = SIZE_MAX;
    } else {
        size_t start = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (p[i] == 0xc1 && p[i + 1] == 0xc1) {
                out_frame(&c, p + start, i - start);
                start = i + 2;
                i++;
            }
        if (start < n)
            out_frame(&c, p + start, n - start);
        expect = c.nframes;
    }

    c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (c.fd < 0 || connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        abort();
    size_t released = 0; /* Frames allowed out. */
    int stalled = 0;     /* 1 once a request went unanswered. */
    double quiet_since = now_ms();
    while (!c.closed) {
        int idle = now_ms() - quiet_since > FZ_IDLE_MS;
        if (c.sent == c.limit && released < c.nframes &&
            (c.replies >= released || idle || stalled)) {
            /* A request left waiting (a watch) holds up the ones behind
             * it: from then on the rest go without waiting. */
            stalled |= idle;
            release_frame(&c, released++);
            quiet_since = now_ms();
            idle = 0;
        }
        if (idle)
            break; /* All sent; the rest of the answers are not coming. */
        if (released == c.nframes && c.sent == c.nout && c.replies >= expect)
            break;
        int moved = client_write(&c);
        step(c.fd, 1);
        moved |= client_read(&c);
        if (moved)
            quiet_since = now_ms();
    }
    if (verbose)
        fprintf(stderr, "fuzz_session: %zu frames, %zu replies%s\n", c.nframes,
                c.replies, c.closed ? ", closed by the daemon" : "");
    close(c.fd);
    free(c.out);
    free(c.body);

    /* The daemon sees the hang-up, ends the session and every job of it. */
    double until = now_ms() + FZ_DRAIN_MS;
    while (wb__conn_count() > 0) {
        if (now_ms() > until)
            abort(); /* A connection that never goes. */
        step(-1, 1);
    }
    /* Jobs of the worker thread and of libuv's pool (the conversions'
     * parts) may go on after their session: all of them end first. */
    for (int round = 0; round < 3; round++) {
        while (loop->active_reqs.count > 0) {
            if (now_ms() > until)
                abort(); /* A job that never ends. */
            step(-1, 1);
        }
        worker_barrier(); /* Completions may queue more: three rounds. */
    }
    for (int i = 0; i < 3; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    wb__holds_clear();
    wb__registry_clear();
    if (wb__reg.mem_used != wb__reg.mem_pinned) {
        /* Bytes still charged with nothing left to hold them. */
        fprintf(stderr, "fuzz_session: %llu bytes charged, %llu pinned\n",
                (unsigned long long)wb__reg.mem_used,
                (unsigned long long)wb__reg.mem_pinned);
        abort();
    }
    return 0;
}
