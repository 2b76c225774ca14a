/* server.c -- The listening socket and client connections.
 *
 * Connections are plain non-blocking Unix sockets watched with uv_poll_t:
 * replies may carry shared-memory descriptors (SCM_RIGHTS), which libuv's
 * stream writes cannot send, so one queue per connection sends frames with
 * sendmsg() in order, attaching descriptors to a frame's first byte.
 * Descriptors a client sends unasked are closed on arrival. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker.h"
#include "log.h"

static void conn_update_events(wb__conn *c);
static void conn_close(wb__conn *c);

/* Closes every descriptor carried in the control messages of msg. */
static int close_passed_fds(struct msghdr *msg) {
    int n = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm;
         cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < nfd; i++) {
            int fd;
            memcpy(&fd, &fds[i], sizeof(fd));
            close(fd);
            n++;
        }
    }
    return n;
}

void wb__conn_send(wb__conn *c, uint8_t *body, size_t len, const int *fds,
                   int nfds) {
    wb__out *o = calloc(1, sizeof(*o));
    uint8_t *frame = malloc(WB_FRAME_HEADER + len);
    if (o == NULL || frame == NULL || c->closed) {
        free(o);
        free(frame);
        free(body);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (!c->closed)
            conn_close(c);
        return;
    }
    wb__frame_header(frame, (uint32_t)len);
    memcpy(frame + WB_FRAME_HEADER, body, len);
    free(body);
    o->data = frame;
    o->len = WB_FRAME_HEADER + len;
    o->nfds = nfds;
    for (int i = 0; i < nfds; i++)
        o->fds[i] = fds[i];
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_bytes += o->len;
    conn_update_events(c);
}

/* Frees one sent (or abandoned) queue entry and its descriptors. */
static void out_free(wb__out *o) {
    for (int i = 0; i < o->nfds; i++)
        if (o->fds[i] >= 0)
            close(o->fds[i]);
    free(o->data);
    free(o);
}

/* Sends as much of the queue as the socket takes.  Returns -1 on a fatal
 * socket error. */
static int conn_flush(wb__conn *c) {
    while (c->out_head) {
        wb__out *o = c->out_head;
        struct iovec iov = {o->data + o->off, o->len - o->off};
        struct msghdr msg = {0};
        union {
            char buf[CMSG_SPACE(sizeof(int) * WB_MAX_SEGMENTS)];
            struct cmsghdr align;
        } ctl;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (o->off == 0 && o->nfds > 0) {
            memset(&ctl, 0, sizeof(ctl));
            msg.msg_control = ctl.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)o->nfds);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)o->nfds);
            memcpy(CMSG_DATA(cm), o->fds, sizeof(int) * (size_t)o->nfds);
        }
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            return -1;
        }
        if (o->off == 0 && o->nfds > 0) {
            /* The kernel holds its own references now. */
            for (int i = 0; i < o->nfds; i++) {
                close(o->fds[i]);
                o->fds[i] = -1;
            }
        }
        o->off += (size_t)n;
        c->out_bytes -= (size_t)n;
        if (o->off == o->len) {
            c->out_head = o->next;
            if (c->out_head == NULL)
                c->out_tail = NULL;
            out_free(o);
        }
    }
    return 0;
}

/* Handles every complete frame in the input buffer, unless a deferred
 * answer is pending. */
static void conn_process(wb__conn *c) {
    size_t pos = 0;
    while (!c->busy && !c->closing && !c->closed) {
        size_t avail = c->in_len - pos;
        if (avail < WB_FRAME_HEADER)
            break;
        uint32_t len = wb__frame_length(c->in + pos);
        if (len > WB_MAX_FRAME) {
            wb__reply_error(c, 0, WB_ETOOBIG,
                            "frame of %u bytes exceeds the %u-byte limit",
                            len, WB_MAX_FRAME);
            c->closing = 1;
            break;
        }
        if (avail < WB_FRAME_HEADER + (size_t)len) {
            size_t need = WB_FRAME_HEADER + (size_t)len;
            if (c->in_cap - pos < need) {
                /* Make room for the whole frame, now that it is known to
                 * be within the limit. */
                memmove(c->in, c->in + pos, avail);
                c->in_len = avail;
                pos = 0;
                if (c->in_cap < need) {
                    uint8_t *p = realloc(c->in, need);
                    if (p == NULL) {
                        conn_close(c);
                        return;
                    }
                    c->in = p;
                    c->in_cap = need;
                }
            }
            break;
        }
        wb__msg m;
        int rc = wb__msg_decode(&m, c->in + pos + WB_FRAME_HEADER, len);
        pos += WB_FRAME_HEADER + (size_t)len;
        if (rc) {
            wb__reply_error(c, 0, rc, "malformed message: %s",
                            wb_strerror(rc));
            c->closing = 1;
        } else if (wb__handle(c, m.root)) {
            c->busy = 1;
        }
        wb__msg_free(&m);
    }
    if (pos > 0 && !c->closed) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        /* Give back the room a large frame needed once it is handled. */
        if (c->in_cap > 4 * WB_READ_CHUNK && c->in_len <= WB_READ_CHUNK) {
            uint8_t *p = realloc(c->in, WB_READ_CHUNK);
            if (p != NULL) {
                c->in = p;
                c->in_cap = WB_READ_CHUNK;
            }
        }
    }
}

/* Reads what the socket has.  Returns -1 when the peer is gone. */
static int conn_read(wb__conn *c) {
    if (c->in_cap - c->in_len < WB_READ_CHUNK &&
        c->in_cap < WB_FRAME_HEADER + WB_READ_CHUNK) {
        uint8_t *p = realloc(c->in, c->in_len + WB_READ_CHUNK);
        if (p == NULL)
            return -1;
        c->in = p;
        c->in_cap = c->in_len + WB_READ_CHUNK;
    }
    size_t room = c->in_cap - c->in_len;
    if (room == 0)
        return 0;
    struct iovec iov = {c->in + c->in_len, room};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                   ? 0
                   : -1;
    int stray = close_passed_fds(&msg);
    if (stray)
        wb__warn("client %llu: closed %d descriptor(s) sent unasked",
                 (unsigned long long)c->id, stray);
    if (msg.msg_flags & MSG_CTRUNC)
        wb__warn("client %llu: truncated control data",
                 (unsigned long long)c->id);
    if (n == 0)
        return -1;
    c->in_len += (size_t)n;
    return 0;
}

static void on_conn_event(uv_poll_t *h, int status, int events) {
    wb__conn *c = h->data;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (events & UV_WRITABLE) {
        if (conn_flush(c) < 0) {
            conn_close(c);
            return;
        }
    }
    if ((events & UV_READABLE) && !c->closing) {
        if (conn_read(c) < 0) {
            conn_close(c);
            return;
        }
        conn_process(c);
        if (c->closed)
            return;
        if (conn_flush(c) < 0) {
            conn_close(c);
            return;
        }
    }
    if (c->closing && c->out_head == NULL) {
        conn_close(c);
        return;
    }
    conn_update_events(c);
}

/* Polls for reading unless paused, and for writing while output waits. */
static void conn_update_events(wb__conn *c) {
    if (c->closed)
        return;
    int ev = 0;
    if (!c->closing && !c->busy && c->out_bytes < WB_OUT_HIGH_WATER)
        ev |= UV_READABLE;
    if (c->out_head)
        ev |= UV_WRITABLE;
    if (c->closing && c->out_head == NULL) {
        conn_close(c);
        return;
    }
    if (ev != c->events) {
        c->events = ev;
        if (ev)
            uv_poll_start(&c->poll, ev, on_conn_event);
        else
            uv_poll_stop(&c->poll);
    }
}

void wb__conn_resume(wb__conn *c) {
    if (c->closed)
        return;
    c->busy = 0;
    conn_process(c);
    if (!c->closed)
        conn_update_events(c);
}

static void on_conn_closed(uv_handle_t *h) {
    wb__conn *c = h->data;
    wb__conn_unref(c);
}

void wb__conn_unref(wb__conn *c) {
    if (--c->refs > 0)
        return;
    while (c->out_head) {
        wb__out *o = c->out_head;
        c->out_head = o->next;
        out_free(o);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c);
}

/* Starts closing c: forgets its publishes, watches and maps now, and frees
 * it once libuv and any in-flight job are done with it. */
static void conn_close(wb__conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    wb__broker *b = wb__g;
    wb__conn_cleanup(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        b->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    b->nconns--;
    wb__debug("client %llu: closed", (unsigned long long)c->id);
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_conn_closed);
}

static void on_listen_event(uv_poll_t *h, int status, int events) {
    wb__broker *b = h->data;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(b->listen_fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                wb__warn("accept: %s", strerror(errno));
            return;
        }
        if (b->nconns >= WB_MAX_CLIENTS || b->stopping) {
            wb__warn("refusing a client: %zu connected", b->nconns);
            close(fd);
            continue;
        }
        wb__conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->id = ++b->next_conn_id;
        c->refs = 1;
        socklen_t sl = sizeof(c->cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &sl) < 0)
            c->cred.pid = 0, c->cred.uid = (uid_t)-1, c->cred.gid = (gid_t)-1;
        if (uv_poll_init(b->loop, &c->poll, fd) != 0) {
            close(fd);
            free(c);
            continue;
        }
        c->poll.data = c;
        c->next = b->conns;
        if (b->conns)
            b->conns->prev = c;
        b->conns = c;
        b->nconns++;
        wb__debug("client %llu: connected pid=%d uid=%d gid=%d",
                  (unsigned long long)c->id, (int)c->cred.pid,
                  (int)c->cred.uid, (int)c->cred.gid);
        conn_update_events(c);
    }
}

/* Creates, binds and listens on path; the socket's mode is set before
 * listen() so that no client ever sees other permissions.  A stale socket
 * file is replaced; a live daemon on the path is an error. */
static int bind_path(wb__broker *b, const char *path, unsigned mode) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        wb__error("socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            wb__error("%s exists and is not a socket", path);
            close(fd);
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 &&
            connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(probe);
            close(fd);
            wb__error("another daemon is listening on %s", path);
            return -1;
        }
        if (probe >= 0)
            close(probe);
        unlink(path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        chmod(path, mode) < 0 || listen(fd, 128) < 0) {
        wb__error("listening on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(b->socket_path, sizeof(b->socket_path), "%s", path);
    b->unlink_socket = 1;
    return fd;
}

int wb__server_listen(wb__broker *b, const char *path, unsigned mode,
                      int inherited_fd) {
    int fd = inherited_fd;
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return -1;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    } else if ((fd = bind_path(b, path, mode)) < 0) {
        return -1;
    }
    b->listen_fd = fd;
    if (uv_poll_init(b->loop, &b->listen_poll, fd) != 0)
        return -1;
    b->listen_poll.data = b;
    uv_poll_start(&b->listen_poll, UV_READABLE, on_listen_event);
    return 0;
}

void wb__server_stop(wb__broker *b) {
    if (b->listen_fd >= 0) {
        uv_poll_stop(&b->listen_poll);
        uv_close((uv_handle_t *)&b->listen_poll, NULL);
        close(b->listen_fd);
        b->listen_fd = -1;
    }
    if (b->unlink_socket)
        unlink(b->socket_path);
    while (b->conns)
        conn_close(b->conns);
}
