/* client.c -- libwbroker: the handle, the transport and the round trip
 * of one request; connecting and closing.
 *
 * One request at a time per handle: send a frame, read the reply frame and
 * any descriptors that came with it, and check the reply's envelope: its
 * id must answer the request, its err be 0 or a negative code.  The
 * requests themselves live by concern in client_publish.c, client_map.c
 * and client_inspect.c; every one is packed and every reply decoded by
 * proto/msg.h.
 *
 * Nothing the daemon says is believed unchecked (trust.h): the listener's
 * uid and the socket's directory at connect, every descriptor before it is
 * mapped, and every reply's id.  A reply that breaks the protocol ends the
 * connection. */
#include <assert.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_internal.h"
#include "fdpass.h"
#include "msg.h"
#include "trust.h"
#include "wire.h"

int wb__cl_fail(wb_client *c, int code, const char *fmt, ...) {
    int e = errno;
    if (c) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
        va_end(ap);
        c->sys_errno = code == WB_ESYS ? e : 0;
    }
    errno = e;
    return code;
}

const char *wb_errmsg(const wb_client *c) {
    return c ? c->errmsg : "";
}

int wb_sys_errno(const wb_client *c) {
    return c ? c->sys_errno : 0;
}

/* ------------------------------------------------------------ transport */

/* Sends a frame, its header and body, whole: in one sendmsg() where the
 * socket takes it all, so that the daemon wakes once per request rather
 * than once for the header and again for the body. */
static int send_frame(wb_client *c, const uint8_t *hdr, size_t hlen,
                      const uint8_t *body, size_t blen) {
    struct iovec iov[2] = {{(void *)hdr, hlen}, {(void *)body, blen}};
    int k = 0;
    for (;;) {
        while (k < 2 && iov[k].iov_len == 0)
            k++;
        if (k == 2)
            return 0;
        struct msghdr mh = {.msg_iov = iov + k, .msg_iovlen = (size_t)(2 - k)};
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return wb__cl_fail(c, WB_ECLOSED,
                               "sending to %s: %s (the next call "
                               "reconnects)",
                               c->path, n < 0 ? strerror(errno) : "closed");
        for (size_t left = (size_t)n; left > 0; k++) {
            size_t t = left < iov[k].iov_len ? left : iov[k].iov_len;
            iov[k].iov_base = (uint8_t *)iov[k].iov_base + t;
            iov[k].iov_len -= t;
            left -= t;
            if (iov[k].iov_len > 0)
                break; /* k stays: the rest of this part next. */
        }
    }
}

/* Receives exactly len bytes, collecting passed descriptors into fds
 * (closing those beyond maxfds). */
static int recv_all(wb_client *c, uint8_t *buf, size_t len, int *fds, int *nfds,
                    int maxfds) {
    while (len > 0) {
        int got = 0, ctrunc = 0;
        int room = fds ? maxfds - *nfds : 0;
        ssize_t n = wb__fd_recv(c->fd, buf, len, fds ? fds + *nfds : NULL, room,
                                &got, &ctrunc, 0);
        if (n > 0 && fds)
            *nfds += got;
        if (n > 0 && ctrunc)
            return wb__cl_fail(
                c, WB_EPROTO,
                "a reply from %s carried more descriptors than the "
                "%d one reply may hold, and the kernel truncated them",
                c->path, WB_FDPASS_MAX);
        if (n <= 0)
            return wb__cl_fail(c, WB_ECLOSED,
                               "daemon at %s closed the connection%s%s (the "
                               "next call reconnects)",
                               c->path, n < 0 ? ": " : "",
                               n < 0 ? strerror(errno) : "");
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Marks the connection unusable after a transport or framing failure. */
int wb__cl_broken(wb_client *c, int rc) {
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
        return wb__cl_fail(
            c, WB_EPROTO,
            "reply from %s has no err, or one that is not 0 or a "
            "negative code",
            c->path);
    if (bad && strcmp(bad, "id") == 0)
        return wb__cl_fail(c, WB_EPROTO,
                           "reply from %s has no id, or one that is not an "
                           "unsigned integer",
                           c->path);
    return wb__cl_fail(c, WB_EPROTO,
                       "reply from %s has a msg that is not a string", c->path);
}

/* Drains c's cancel eventfd: 1 when wb_watch_cancel() had been called
 * since the last drain, else 0. */
static int take_cancel(wb_client *c) {
    uint64_t n = 0;
    ssize_t k;
    do
        k = read(c->cancel_fd, &n, sizeof(n));
    while (k < 0 && errno == EINTR);
    return k == (ssize_t)sizeof(n) && n > 0;
}

/* Waits until the reply starts to arrive on c's socket or wb_watch_cancel()
 * is called.  A reply already there wins over a cancel, which then stays
 * for the next wb_watch().  Returns 0 (the reply is there, or the socket
 * ended: recv_all tells which), or WB_ECANCELED with the connection
 * dropped, since the daemon would answer the watch on it later. */
static int wait_reply(wb_client *c) {
    for (;;) {
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN},
                              {.fd = c->cancel_fd, .events = POLLIN}};
        int n = poll(p, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return wb__cl_broken(
                c, wb__cl_fail(c, WB_ESYS, "poll: %s", strerror(errno)));
        if (p[0].revents)
            return 0;
        if ((p[1].revents & POLLIN) && take_cancel(c))
            return wb__cl_broken(
                c, wb__cl_fail(c, WB_ECANCELED,
                               "watch cancelled by wb_watch_cancel(); its "
                               "connection to %s was dropped and the next "
                               "call reconnects",
                               c->path));
    }
}

/* Sends the request in sb (a map whose "id" is id) and reads the reply into
 * *m, with its descriptors in fds; with cancellable set, a wb_watch_cancel()
 * while the reply is awaited ends the wait (wait_reply).  Returns the
 * reply's "err" (with c->errmsg set from "msg"), or a transport error.
 * Never reconnects: that is wb__cl_call_fds()'s part. */
static int roundtrip(wb_client *c, msgpack_sbuffer *sb, uint64_t id, wb__msg *m,
                     int *fds, int *nfds, int maxfds, int cancellable,
                     wb__cl_fast_fn fast, void *arg) {
    msgpack_unpacked_init(&m->up);
    m->root = NULL;
    m->owned = NULL;
    if (nfds)
        *nfds = 0;
    if (c->fd < 0)
        return wb__cl_fail(c, WB_ECLOSED, "connection to %s is closed",
                           c->path);
    if (sb->size > WB_MAX_FRAME)
        return wb__cl_fail(c, WB_ETOOBIG,
                           "request of %zu bytes exceeds the %u-byte "
                           "frame limit",
                           sb->size, WB_MAX_FRAME);
    uint8_t hdr[WB_FRAME_HEADER];
    wb__frame_header(hdr, (uint32_t)sb->size);
    int rc =
        send_frame(c, hdr, sizeof(hdr), (const uint8_t *)sb->data, sb->size);
    if (rc == 0 && cancellable && (rc = wait_reply(c)) != 0)
        return rc;
    if (rc == 0)
        rc = recv_all(c, hdr, sizeof(hdr), fds, nfds, maxfds);
    if (rc)
        return wb__cl_broken(c, rc);
    uint32_t len = wb__frame_length(hdr);
    if (len > WB_MAX_FRAME)
        return wb__cl_broken(
            c, wb__cl_fail(c, WB_EPROTO, "reply of %u bytes", len));
    uint8_t *body;
    size_t cap = len ? len : 1;
    if (fast && c->rx && c->rx_cap >= len) {
        body = c->rx, cap = c->rx_cap;
        c->rx = NULL;
    } else {
        if (fast) { /* Too small: the larger buffer is the one to keep. */
            free(c->rx);
            c->rx = NULL;
        }
        body = malloc(cap);
    }
    if (body == NULL)
        return wb__cl_broken(c, wb__cl_fail(c, WB_ENOMEM, "out of memory"));
    if (fast) {
        c->rx_out = body;
        c->rx_out_cap = cap;
    }
    m->owned = body;
    rc = recv_all(c, body, len, fds, nfds, maxfds);
    if (rc == 0 && fast && fast(arg, body, len, id) == 0) {
        c->errmsg[0] = '\0';
        c->sys_errno = 0;
        return 0;
    }
    if (rc == 0)
        rc = wb__msg_decode(m, body, len);
    m->owned = body; /* wb__msg_decode() starts the message afresh. */
    if (rc)
        return wb__cl_broken(
            c, rc == WB_ECLOSED ? rc : wb__cl_fail(c, rc, "malformed reply"));
    uint64_t rid = 0;
    int err = 0;
    wb__str msg;
    const char *bad = NULL;
    if (wb__decode_rep_envelope(m->root, &rid, &err, &msg, &bad))
        return wb__cl_broken(c, envelope_error(c, bad));
    if (rid == 0 && err == 0)
        return wb__cl_broken(
            c, wb__cl_fail(c, WB_EPROTO,
                           "reply from %s has id 0 without an error (id 0 "
                           "is only the daemon's last word on a protocol "
                           "error)",
                           c->path));
    if (rid != 0 && rid != id)
        return wb__cl_broken(
            c, wb__cl_fail(c, WB_EPROTO,
                           "reply from %s out of sequence: id %llu "
                           "answers request %llu",
                           c->path, (unsigned long long)rid,
                           (unsigned long long)id));
    if (err != 0) {
        wb__cl_fail(c, err, "%.*s", (int)msg.n, msg.p);
        if (err == WB_ESYS)
            c->sys_errno = wb__decode_rep_errno(m->root);
        if (rid == 0) /* The daemon gave up on this connection. */
            wb__cl_broken(c, 0);
        return err;
    }
    c->errmsg[0] = '\0';
    c->sys_errno = 0;
    return 0;
}

void wb__cl_req_begin(wb_client *c, wb__cl_req *r) {
    wb__pkbuf_init(&r->out, &r->pk);
    r->id = ++c->next_id;
}

/* 1 when c's socket shows that the daemon is gone: hung up, in error, or
 * readable between requests (an end of stream, or a last word with id 0:
 * no reply is due when no request is out). */
static int peer_gone(const wb_client *c) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    return n != 0; /* n < 0 cannot tell: treat it as gone, and reconnect. */
}

int wb__cl_live(wb_client *c) {
    if (c->fd >= 0 && peer_gone(c))
        wb__cl_broken(c, 0);
    return c->fd >= 0;
}

/* Connects c's socket to c->path, checks whoever listens there (trust.h)
 * and says hello.  On success c->gen counts one more connection; on
 * failure c->fd is -1 and c->errmsg says why. */
/* Fails a connect refused by the socket's permissions, naming the socket,
 * its owner and the group that grants access. */
static int permission_denied(wb_client *c, int e) {
    struct stat st;
    if (stat(c->path, &st) != 0)
        return wb__cl_fail(c, WB_EPERM,
                           "%s: %s (this process may not reach that socket: "
                           "see the modes of its directories)",
                           c->path, strerror(e));
    char user[64], group[64];
    struct passwd *pw = getpwuid(st.st_uid);
    struct group *gr = getgrgid(st.st_gid);
    snprintf(user, sizeof(user), "%s", pw ? pw->pw_name : "?");
    snprintf(group, sizeof(group), "%s", gr ? gr->gr_name : "?");
    return wb__cl_fail(c, WB_EPERM,
                       "%s: %s: the socket belongs to user %s (uid %u) and "
                       "group %s (gid %u), mode %04o; join group %s (then "
                       "log in again) or ask its administrator for access",
                       c->path, strerror(e), user, (unsigned)st.st_uid, group,
                       (unsigned)st.st_gid, (unsigned)(st.st_mode & 07777),
                       group);
}

/* Connects c->fd to c->path and checks whoever listens there (trust.h).
 * Returns 0, or fails with c->fd -1. */
static int dial_once(wb_client *c) {
    assert(c->fd < 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return wb__cl_fail(c, WB_ESYS, "socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        if (e == EACCES || e == EPERM)
            return permission_denied(c, e);
        return wb__cl_fail(c, WB_ECONNECT,
                           "no wbrokerd listens at %s (%s): start one "
                           "(wbrokerd, or systemctl start wbrokerd.socket), "
                           "or point --socket or WBROKER_SOCKET at its socket",
                           c->path, strerror(e));
    }
    char why[WB_TRUST_WHY_MAX];
    int trc = wb__trust_peer(c->fd, c->path, why, sizeof(why));
    if (trc) /* Not a byte sent to whoever this is. */
        return wb__cl_broken(c, wb__cl_fail(c, trc, "%s", why));
    return 0;
}

/* Connects and says hello in the newest protocol the daemon speaks: a
 * daemon older than this library refuses a newer protocol with EVERSION
 * and closes, so each older one is tried on a new connection, down to
 * WB_PROTO_MIN.  On success c->gen counts one more connection; on failure
 * c->fd is -1 and c->errmsg says why. */
static int dial(wb_client *c) {
    for (uint64_t proto = WB_PROTO_VERSION;; proto--) {
        int rc = dial_once(c);
        if (rc)
            return rc;
        wb__cl_req r;
        wb__cl_req_begin(c, &r);
        wb__pack_hello_req(&r.pk, r.id, proto, wb_version_string());
        wb__msg m = {0}; /* Freed whether or not a reply came. */
        rc = r.out.failed ? wb__cl_fail(c, WB_ENOMEM, "out of memory")
                          : roundtrip(c, &r.out.sb, r.id, &m, NULL, NULL, 0, 0,
                                      NULL, NULL);
        msgpack_sbuffer_destroy(&r.out.sb);
        wb__hello_rep hr;
        if (rc == 0 && wb__decode_hello_rep(m.root, &hr))
            rc = wb__cl_fail(c, WB_EPROTO, "malformed hello reply from %s",
                             c->path);
        wb__msg_free(&m);
        if (rc == 0) {
            c->gen++;
            return 0;
        }
        wb__cl_broken(c, rc);
        if (rc != WB_EVERSION || proto <= WB_PROTO_MIN)
            return rc;
    }
}

/* Makes sure c has a live connection before a request goes out: one that
 * broke earlier, or whose socket shows the daemon gone, is replaced by a
 * new one to the same path (the daemon restarted).  Returns 0, or why no
 * connection could be made, with the sentence saying it was a reconnect. */
static int ensure_connected(wb_client *c) {
    if (wb__cl_live(c))
        return 0;
    if (c->gen == 0) /* wb_connect() failed: the handle is for errmsg only. */
        return wb__cl_fail(c, WB_ECLOSED,
                           "this handle never connected to %s (wb_connect() "
                           "failed): close it",
                           c->path);
    int rc = dial(c);
    if (rc) {
        char why[WB_CLIENT_ERRMSG_MAX];
        memcpy(why, c->errmsg, sizeof(why));
        int e = c->sys_errno;
        wb__cl_fail(c, rc,
                    "the connection to the daemon was lost and "
                    "reconnecting failed: %.900s",
                    why);
        c->sys_errno = e;
    }
    return rc;
}

static int call(wb_client *c, wb__cl_req *r, wb__msg *m, int *fds, int *nfds,
                int maxfds, int cancellable, wb__cl_fast_fn fast, void *arg) {
    int rc = r->out.failed ? wb__cl_fail(c, WB_ENOMEM,
                                         "out of memory packing the request")
                           : ensure_connected(c);
    if (rc) {
        msgpack_unpacked_init(&m->up);
        m->root = NULL;
        m->owned = NULL;
        if (nfds)
            *nfds = 0;
        msgpack_sbuffer_destroy(&r->out.sb);
        return rc;
    }
    rc = roundtrip(c, &r->out.sb, r->id, m, fds, nfds, maxfds, cancellable,
                   fast, arg);
    msgpack_sbuffer_destroy(&r->out.sb);
    return rc;
}

int wb__cl_call_fds(wb_client *c, wb__cl_req *r, wb__msg *m, int *fds,
                    int *nfds, int maxfds) {
    return call(c, r, m, fds, nfds, maxfds, 0, NULL, NULL);
}

int wb__cl_call_fast(wb_client *c, wb__cl_req *r, wb__msg *m, int *fds,
                     int *nfds, int maxfds, wb__cl_fast_fn fast, void *arg) {
    c->rx_out = NULL;
    return call(c, r, m, fds, nfds, maxfds, 0, fast, arg);
}

void wb__cl_msg_done(wb_client *c, wb__msg *m) {
    if (m->owned && m->owned == c->rx_out && c->rx == NULL &&
        c->rx_out_cap <= WB_CL_RX_KEEP) {
        c->rx = m->owned;
        c->rx_cap = c->rx_out_cap;
        m->owned = NULL;
    }
    c->rx_out = NULL;
    wb__msg_free(m);
}

int wb__cl_call(wb_client *c, wb__cl_req *r, wb__msg *m) {
    return call(c, r, m, NULL, NULL, 0, 0, NULL, NULL);
}

int wb__cl_call_cancellable(wb_client *c, wb__cl_req *r, wb__msg *m) {
    return call(c, r, m, NULL, NULL, 0, 1, NULL, NULL);
}

int wb__cl_take_cancel(wb_client *c) {
    return take_cancel(c);
}

int wb_watch_cancel(wb_client *c) {
    if (c == NULL)
        return WB_EINVAL;
    /* Only write(2): async-signal-safe, and thread-safe against a wb_watch
     * polling the eventfd.  EAGAIN (the counter full) already means a
     * cancel is pending. */
    int e = errno;
    uint64_t one = 1;
    ssize_t k = write(c->cancel_fd, &one, sizeof(one));
    (void)k;
    errno = e;
    return 0;
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
    c->cancel_fd = -1;
    *out = c;
    if (wb_socket_path(socket_path, c->path, sizeof(c->path)) < 0)
        return wb__cl_fail(c, WB_EINVAL, "socket path too long");
    c->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->cancel_fd < 0)
        return wb__cl_fail(c, WB_ESYS, "eventfd: %s", strerror(errno));
    return dial(c);
}

void wb_close(wb_client *c) {
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    if (c->cancel_fd >= 0)
        close(c->cancel_fd);
    free(c->rx);
    free(c);
}
