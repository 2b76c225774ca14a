/* conn.c -- Client connections: accepting, framing, output queues, and
 * closing and resuming at safe points.
 *
 * A connection is acted on only from three places, each a safe point: its
 * own poll callback, the idle callback that runs scheduled connections, and
 * the sweep timer that enforces the client timeout.  Handlers and jobs
 * only set flags and schedule (see conn.h). */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fdpass.h"
#include "log.h"
#include "wire.h"

enum { CLOSE_NONE, CLOSE_AFTER_FLUSH, CLOSE_NOW };

/* One frame waiting to be sent. */
typedef struct out_frame {
    uint8_t *data;          /* Header and body. */
    size_t len;             /* Bytes in data. */
    size_t off;             /* Bytes already sent. */
    int fds[WB_FDPASS_MAX]; /* Descriptors sent with the first byte. */
    int nfds;               /* Entries in fds still owned here. */
    struct out_frame *next; /* Next in the queue. */
} out_frame;

struct wb__conn {
    uv_poll_t poll;            /* Readiness of fd. */
    int fd;                    /* Connected socket. */
    uint64_t id;               /* Serial number, for logs. */
    struct ucred cred;         /* Peer's pid, uid, gid (SO_PEERCRED). */
    gid_t groups[64];          /* Its supplementary groups (SO_PEERGROUPS). */
    int ngroups;               /* Entries in groups. */
    void *state;               /* The layer above's state. */
    wb__buf in;                /* Received bytes not yet handed up. */
    out_frame *out_head;       /* Queue of frames to send. */
    out_frame *out_tail;       /* Last frame queued. */
    size_t out_bytes;          /* Unsent bytes in the queue. */
    int out_fds;               /* Descriptors in the queue. */
    int paused;                /* 1 while a request awaits its answer. */
    int closing;               /* CLOSE_NONE, _AFTER_FLUSH or _NOW. */
    int closed;                /* 1 once torn down (uv_close called). */
    int hello;                 /* 1 once the peer said hello. */
    int scheduled;             /* 1 while on the run list. */
    int events;                /* Events polled for now. */
    int refs;                  /* The loop's + jobs' + run list's. */
    uint64_t accepted_ms;      /* uv_now() at accept. */
    uint64_t frame_since_ms;   /* When a partial frame began to wait for
                                  its rest, or 0. */
    uint64_t out_since_ms;     /* When queued output last made progress
                                  (or was queued), or 0 when none. */
    struct wb__conn *prev;     /* Previous connection. */
    struct wb__conn *next;     /* Next connection. */
    struct wb__conn *run_next; /* Next on the run list. */
};

/* The connection layer's state (one listening socket per daemon). */
static struct {
    uv_loop_t *loop;           /* The event loop. */
    const wb__conn_ops *ops;   /* Callbacks of the layer above. */
    int listen_fd;             /* Listening socket, -1 when stopped. */
    uv_poll_t listen_poll;     /* Readiness of listen_fd. */
    int accepting;             /* 1 while listen_poll is started. */
    uv_timer_t accept_timer;   /* Restarts accepting after EMFILE. */
    uv_idle_t idle;            /* Runs scheduled connections. */
    uv_timer_t sweep;          /* Enforces the client timeout. */
    unsigned timeout_ms;       /* Client timeout, 0 for none. */
    wb__conn *conns;           /* All open connections. */
    size_t nconns;             /* Entries in conns. */
    uint64_t next_id;          /* Serial of the next connection. */
    wb__conn *run_head;        /* Scheduled connections. */
    wb__conn *run_tail;        /* Last scheduled. */
    wb__conn *current;         /* Connection whose event is running. */
    uint64_t emfile_logged_ms; /* Last EMFILE warning. */
    unsigned emfile_quiet;     /* EMFILEs since, not logged. */
} S = {.listen_fd = -1};

static void conn_settle(wb__conn *c);

/* ------------------------------------------------------------ lifetime */

static void out_free(out_frame *o) {
    for (int i = 0; i < o->nfds; i++)
        close(o->fds[i]);
    free(o->data);
    free(o);
}

/* Keeps c's memory valid while the run list or an event holds it. */
static void conn_ref(wb__conn *c) {
    assert(c->refs > 0);
    c->refs++;
}

static void conn_unref(wb__conn *c) {
    assert(c->refs > 0);
    if (--c->refs > 0)
        return;
    assert(c->closed);
    while (c->out_head) {
        out_frame *o = c->out_head;
        c->out_head = o->next;
        out_free(o);
    }
    if (c->fd >= 0)
        close(c->fd);
    wb__buf_free(&c->in);
    free(c);
}

static void on_poll_closed(uv_handle_t *h) {
    conn_unref(h->data);
}

static void accept_start(void);

/* Tears c down at a safe point: the layer above forgets it, then libuv
 * lets go of its handle and the memory follows the last reference. */
static void conn_teardown(wb__conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    c->closing = CLOSE_NOW;
    S.ops->closed(c->state);
    c->state = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        S.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    assert(S.nconns > 0);
    S.nconns--;
    wb__debug("client %llu: closed", (unsigned long long)c->id);
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_poll_closed);
    if (!S.accepting && S.listen_fd >= 0)
        accept_start(); /* A descriptor came free. */
}

/* ------------------------------------------------------------ scheduling */

static void on_idle(uv_idle_t *h);

/* Puts c on the run list (once). */
static void conn_schedule(wb__conn *c) {
    if (c->scheduled || c->closed || c == S.current)
        return;
    c->scheduled = 1;
    conn_ref(c);
    c->run_next = NULL;
    if (S.run_tail)
        S.run_tail->run_next = c;
    else
        S.run_head = c;
    S.run_tail = c;
    uv_idle_start(&S.idle, on_idle);
}

void wb__conn_pause(wb__conn *c) {
    c->paused = 1;
}

void wb__conn_resume(wb__conn *c) {
    if (c->closed)
        return;
    c->paused = 0;
    conn_schedule(c);
}

void wb__conn_close_later(wb__conn *c, int now) {
    if (c->closed)
        return;
    int want = now ? CLOSE_NOW : CLOSE_AFTER_FLUSH;
    if (c->closing < want)
        c->closing = want;
    conn_schedule(c);
}

void wb__conn_hello_done(wb__conn *c) {
    c->hello = 1;
}
int wb__conn_closing(const wb__conn *c) {
    return c->closing != CLOSE_NONE;
}
uint64_t wb__conn_id(const wb__conn *c) {
    return c->id;
}
/* Reads the peer's supplementary groups into c.  A peer in more groups
 * than c keeps is matched on the first ones only: a rule for a later group
 * does not apply to it. */
static void peer_groups(wb__conn *c) {
    socklen_t sl = sizeof(c->groups);
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, c->groups, &sl) == 0) {
        c->ngroups = (int)(sl / sizeof(gid_t));
        return;
    }
    gid_t *all = errno == ERANGE ? malloc(sl) : NULL;
    if (all && getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, all, &sl) == 0) {
        size_t n = sl / sizeof(gid_t);
        c->ngroups = (int)(n < 64 ? n : 64);
        memcpy(c->groups, all, (size_t)c->ngroups * sizeof(gid_t));
    }
    free(all);
}

int wb__conn_groups(const wb__conn *c, gid_t *groups, int max) {
    int n = c->ngroups < max ? c->ngroups : max;
    memcpy(groups, c->groups, (size_t)n * sizeof(gid_t));
    return n;
}

const struct ucred *wb__conn_cred(const wb__conn *c) {
    return &c->cred;
}
size_t wb__conn_count(void) {
    return S.nconns;
}

/* ------------------------------------------------------------ output */

void wb__conn_send(wb__conn *c, const void *body, size_t len, const int *fds,
                   int nfds) {
    assert(nfds >= 0 && nfds <= WB_FDPASS_MAX);
    assert(len <= WB_MAX_FRAME);
    out_frame *o = NULL;
    if (!c->closing && (o = calloc(1, sizeof(*o))) != NULL &&
        (o->data = malloc(WB_FRAME_HEADER + len)) == NULL) {
        free(o);
        o = NULL;
    }
    if (o == NULL) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (!c->closing) {
            wb__warn("client %llu: out of memory queueing a reply",
                     (unsigned long long)c->id);
            wb__conn_close_later(c, 1);
        }
        return;
    }
    wb__frame_header(o->data, (uint32_t)len);
    memcpy(o->data + WB_FRAME_HEADER, body, len);
    o->len = WB_FRAME_HEADER + len;
    o->nfds = nfds;
    if (nfds > 0)
        memcpy(o->fds, fds, sizeof(int) * (size_t)nfds);
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_bytes += o->len;
    c->out_fds += nfds;
    if (c->out_since_ms == 0)
        c->out_since_ms = uv_now(S.loop);
    conn_schedule(c);
}

/* Sends as much of the queue as the socket takes.  Returns -1 on a fatal
 * socket error. */
static int conn_flush(wb__conn *c) {
    while (c->out_head) {
        out_frame *o = c->out_head;
        int nfds = o->off == 0 ? o->nfds : 0;
        ssize_t n = wb__fd_send(c->fd, o->data + o->off, o->len - o->off,
                                o->fds, nfds, MSG_DONTWAIT);
        if (n < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        if (nfds > 0) {
            /* The kernel holds its own references now. */
            for (int i = 0; i < nfds; i++)
                close(o->fds[i]);
            c->out_fds -= nfds;
            o->nfds = 0;
        }
        o->off += (size_t)n;
        c->out_bytes -= (size_t)n;
        c->out_since_ms = uv_now(S.loop);
        if (o->off == o->len) {
            c->out_head = o->next;
            if (c->out_head == NULL)
                c->out_tail = NULL;
            out_free(o);
        }
    }
    c->out_since_ms = 0;
    return 0;
}

/* ------------------------------------------------------------ input */

/* 1 while c may hand up another frame. */
static int conn_can_process(const wb__conn *c) {
    return !c->paused && !c->closing && c->out_bytes < WB_OUT_HIGH_WATER &&
           c->out_fds < WB_OUT_MAX_FDS;
}

/* Hands up every complete frame in the input buffer while c may process. */
static void conn_process(wb__conn *c) {
    size_t pos = 0;
    int partial = 0;
    while (conn_can_process(c)) {
        size_t avail = c->in.len - pos;
        if (avail < WB_FRAME_HEADER) {
            partial = avail > 0;
            break;
        }
        uint32_t len = wb__frame_length((uint8_t *)c->in.p + pos);
        if (len > WB_MAX_FRAME) {
            wb__warn("client %llu: frame of %u bytes exceeds the %u-byte "
                     "limit",
                     (unsigned long long)c->id, len, WB_MAX_FRAME);
            S.ops->oversized(c->state, len);
            wb__conn_close_later(c, 0);
            break;
        }
        if (avail < WB_FRAME_HEADER + (size_t)len) {
            partial = 1;
            break;
        }
        pos += WB_FRAME_HEADER + (size_t)len;
        S.ops->frame(c->state, (uint8_t *)c->in.p + pos - len, len);
    }
    wb__buf_consume(&c->in, pos);
    wb__buf_shrink(&c->in, 4 * WB_READ_CHUNK);
    if (!partial)
        c->frame_since_ms = 0;
    else if (c->frame_since_ms == 0)
        c->frame_since_ms = uv_now(S.loop);
}

/* Reads what the socket has, making room for a whole frame once its
 * length is known to be within the limit.  Returns -1 when the peer is
 * gone or the connection is unusable. */
static int conn_read(wb__conn *c) {
    size_t want = WB_READ_CHUNK;
    if (c->in.len >= WB_FRAME_HEADER) {
        uint32_t len = wb__frame_length((uint8_t *)c->in.p);
        size_t need = WB_FRAME_HEADER + (size_t)len;
        if (len <= WB_MAX_FRAME && need > c->in.len + want)
            want = need - c->in.len;
    }
    if (wb__buf_reserve(&c->in, want) != 0)
        return -1;
    int nfds = 0, ctrunc = 0;
    ssize_t n =
        wb__fd_recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1, NULL,
                    0, &nfds, &ctrunc, MSG_DONTWAIT);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if (n == 0)
        return -1;
    c->in.len += (size_t)n;
    c->in.p[c->in.len] = '\0';
    if (nfds > 0 || ctrunc)
        wb__debug("client %llu: closed descriptors it sent unasked",
                  (unsigned long long)c->id);
    return 0;
}

/* ------------------------------------------------------------ events */

static void on_conn_event(uv_poll_t *h, int status, int events);

/* Acts on c's flags at a safe point: tears it down, or polls for what it
 * waits for.  A paused or blocked connection still watches for hang-up, so
 * a client that dies while waiting is noticed at once. */
static void conn_settle(wb__conn *c) {
    if (c->closed)
        return;
    if (c->closing == CLOSE_NOW ||
        (c->closing == CLOSE_AFTER_FLUSH && c->out_head == NULL)) {
        conn_teardown(c);
        return;
    }
    int ev = UV_DISCONNECT;
    if (conn_can_process(c))
        ev |= UV_READABLE;
    if (c->out_head)
        ev |= UV_WRITABLE;
    if (ev != c->events) {
        c->events = ev;
        uv_poll_start(&c->poll, ev, on_conn_event);
    }
}

/* 1 if c's input buffer holds a whole frame (or an oversized header). */
static int conn_has_frame(const wb__conn *c) {
    if (c->in.len < WB_FRAME_HEADER)
        return 0;
    uint32_t len = wb__frame_length((const uint8_t *)c->in.p);
    return len > WB_MAX_FRAME || c->in.len >= WB_FRAME_HEADER + (size_t)len;
}

/* Processes, flushes and settles c: the whole of one turn.  Returns 1 when
 * c should have another turn soon: processing stopped at the output limits
 * with whole frames still buffered, and the flush then made room.  No
 * poll event would come for those (the peer may have nothing more to
 * send), so the caller schedules c once it is no longer current. */
static int conn_turn(wb__conn *c) {
    if (!c->closing)
        conn_process(c);
    if (!c->closed && c->out_head && conn_flush(c) < 0)
        c->closing = CLOSE_NOW;
    conn_settle(c);
    return !c->closed && conn_can_process(c) && conn_has_frame(c);
}

static void on_conn_event(uv_poll_t *h, int status, int events) {
    wb__conn *c = h->data;
    assert(S.current == NULL);
    S.current = c;
    conn_ref(c);
    if (status < 0) {
        c->closing = CLOSE_NOW;
    } else {
        if ((events & UV_WRITABLE) && conn_flush(c) < 0)
            c->closing = CLOSE_NOW;
        if ((events & UV_READABLE) && !c->closing && conn_read(c) < 0)
            c->closing = CLOSE_NOW;
        if ((events & UV_DISCONNECT) && !(events & UV_READABLE))
            c->closing = CLOSE_NOW; /* Hung up while paused or blocked. */
    }
    int again = conn_turn(c);
    S.current = NULL;
    if (again)
        conn_schedule(c);
    conn_unref(c);
}

static void on_idle(uv_idle_t *h) {
    /* Only the connections scheduled so far: those scheduled meanwhile
     * wait for the next turn of the loop. */
    wb__conn *last = S.run_tail;
    while (S.run_head) {
        wb__conn *c = S.run_head;
        S.run_head = c->run_next;
        if (S.run_head == NULL)
            S.run_tail = NULL;
        c->scheduled = 0;
        S.current = c;
        int again = conn_turn(c);
        S.current = NULL;
        if (again)
            conn_schedule(c);
        conn_unref(c);
        if (c == last)
            break;
    }
    if (S.run_head == NULL)
        uv_idle_stop(&S.idle);
}

/* Closes connections that stalled longer than the client timeout. */
static void on_sweep(uv_timer_t *t) {
    uint64_t now = uv_now(S.loop), lim = S.timeout_ms;
    for (wb__conn *c = S.conns, *next; c; c = next) {
        next = c->next;
        const char *why = NULL;
        if (!c->hello && now - c->accepted_ms > lim)
            why = "no hello";
        else if (c->frame_since_ms && now - c->frame_since_ms > lim)
            why = "stalled in the middle of a frame";
        else if (c->out_since_ms && now - c->out_since_ms > lim)
            why = "does not read its replies";
        if (why) {
            wb__info("client %llu (pid %d): %s for %u s: closing",
                     (unsigned long long)c->id, (int)c->cred.pid, why,
                     S.timeout_ms / 1000);
            c->closing = CLOSE_NOW;
            conn_settle(c);
        }
    }
}

/* ------------------------------------------------------------ accepting */

static void on_listen_event(uv_poll_t *h, int status, int events);

static void accept_start(void) {
    S.accepting = 1;
    uv_timer_stop(&S.accept_timer);
    uv_poll_start(&S.listen_poll, UV_READABLE, on_listen_event);
}

static void on_accept_timer(uv_timer_t *t) {
    accept_start();
}

/* Out of descriptors: stops accepting for a while (the listening socket
 * would stay readable and spin the loop), with a warning at most every
 * WB_LOG_EVERY_MS. */
static void accept_rest(int err) {
    uint64_t now = uv_now(S.loop);
    if (S.emfile_logged_ms == 0 ||
        now - S.emfile_logged_ms >= WB_LOG_EVERY_MS) {
        wb__warn("accept: %s (%zu clients); pausing accepts%s", strerror(err),
                 S.nconns, S.emfile_quiet ? " (repeated)" : "");
        S.emfile_logged_ms = now;
        S.emfile_quiet = 0;
    } else {
        S.emfile_quiet++;
    }
    S.accepting = 0;
    uv_poll_stop(&S.listen_poll);
    uv_timer_start(&S.accept_timer, on_accept_timer, WB_ACCEPT_PAUSE_MS, 0);
}

static void on_listen_event(uv_poll_t *h, int status, int events) {
    for (int i = 0; i < 64 && S.accepting; i++) {
        int fd = accept4(S.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM)
                accept_rest(errno);
            else if (errno != EAGAIN && errno != EWOULDBLOCK &&
                     errno != EINTR && errno != ECONNABORTED)
                wb__warn("accept: %s", strerror(errno));
            return;
        }
        if (S.nconns >= WB_MAX_CLIENTS) {
            wb__warn("refusing a client: %zu connected", S.nconns);
            close(fd);
            continue;
        }
        wb__conn *c = calloc(1, sizeof(*c));
        if (c == NULL || uv_poll_init(S.loop, &c->poll, fd) != 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->id = ++S.next_id;
        c->refs = 1;
        c->poll.data = c;
        c->accepted_ms = uv_now(S.loop);
        socklen_t sl = sizeof(c->cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &sl) < 0)
            c->cred.pid = 0, c->cred.uid = (uid_t)-1, c->cred.gid = (gid_t)-1;
        peer_groups(c);
        c->next = S.conns;
        if (S.conns)
            S.conns->prev = c;
        S.conns = c;
        S.nconns++;
        wb__debug("client %llu: connected pid=%d uid=%d gid=%d",
                  (unsigned long long)c->id, (int)c->cred.pid, (int)c->cred.uid,
                  (int)c->cred.gid);
        c->state = S.ops->open(c);
        if (c->state == NULL)
            c->closing = CLOSE_NOW;
        conn_settle(c);
    }
}

int wb__conn_listen(uv_loop_t *loop, int fd, const wb__conn_ops *ops,
                    unsigned timeout_s) {
    S.loop = loop;
    S.ops = ops;
    S.listen_fd = fd;
    S.timeout_ms = timeout_s * 1000u;
    if (uv_poll_init(loop, &S.listen_poll, fd) != 0)
        return -1;
    uv_idle_init(loop, &S.idle);
    uv_timer_init(loop, &S.accept_timer);
    uv_timer_init(loop, &S.sweep);
    if (S.timeout_ms) {
        uint64_t every = S.timeout_ms / 4 < 1000 ? S.timeout_ms / 4 : 1000;
        uv_timer_start(&S.sweep, on_sweep, every ? every : 1,
                       every ? every : 1);
    }
    accept_start();
    return 0;
}

void wb__conn_shutdown(void) {
    if (S.listen_fd >= 0) {
        uv_poll_stop(&S.listen_poll);
        uv_close((uv_handle_t *)&S.listen_poll, NULL);
        uv_timer_stop(&S.accept_timer);
        uv_timer_stop(&S.sweep);
        close(S.listen_fd);
        S.listen_fd = -1;
        S.accepting = 0;
    }
    while (S.conns)
        conn_teardown(S.conns);
}
