/* conn.h -- Client connections: accepting, framing, output queues, and
 * closing and resuming at safe points.
 *
 * This is the bottom of the daemon's request path.  It reads frames and
 * hands each complete one up through the callbacks of wb__conn_ops; it
 * never calls a request handler any other way, and nothing a handler does
 * to a connection takes effect inside the handler:
 *   - closing (a failed send, a protocol error, a vanished peer) only marks
 *     the connection; the loop frees it at a safe point, as Redis's
 *     freeClientAsync() does;
 *   - resuming a paused connection only schedules it; its pipelined
 *     requests run from the loop's idle phase, never from inside another
 *     client's handler or a job's completion.
 * Replies may carry descriptors (SCM_RIGHTS), which libuv's stream writes
 * cannot send, so sockets are watched with uv_poll_t and written with
 * sendmsg() in order. */
#ifndef WB_DAEMON_CONN_H
#define WB_DAEMON_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "buf.h"

#define WB_READ_CHUNK (64 * 1024) /* Bytes asked of one recv. */
/* Queued reply bytes above which requests wait. */
#define WB_OUT_HIGH_WATER (4u * 1024 * 1024)
/* Queued descriptors above which requests wait. */
#define WB_OUT_MAX_FDS 128
#define WB_MAX_CLIENTS 4096 /* Connections at once. */
/* Accepting rests this long after EMFILE. */
#define WB_ACCEPT_PAUSE_MS 100
/* A repeated warning is logged at most this often. */
#define WB_LOG_EVERY_MS 10000

typedef struct wb__conn wb__conn;

/* What the layer above does with a connection.  Each callback runs on the
 * loop at a safe point, never nested in another. */
typedef struct wb__conn_ops {
    /* A connection was accepted: returns the state the layer above keeps
     * for it (passed back below), or NULL to refuse it. */
    void *(*open)(wb__conn *c);
    /* One complete frame body (len <= WB_MAX_FRAME).  The bytes are valid
     * during the call only. */
    void (*frame)(void *state, const uint8_t *body, size_t len);
    /* A frame declared len > WB_MAX_FRAME bytes: answer it; the connection
     * closes once the answer is sent. */
    void (*oversized)(void *state, uint32_t len);
    /* The connection is going away; no more calls follow, and sends on it
     * are dropped from now on. */
    void (*closed)(void *state);
} wb__conn_ops;

/* Starts listening on fd (already bound and listening, non-blocking)
 * with the given callbacks.  timeout_s > 0 closes connections that have
 * not said hello, stall in the middle of a frame, or do not read queued
 * replies for that long.  Returns 0 or -1. */
int wb__conn_listen(uv_loop_t *loop, int fd, const wb__conn_ops *ops,
                    unsigned timeout_s);
/* Stops accepting and closes every connection (at shut-down). */
void wb__conn_shutdown(void);

/* Queues a frame with body bytes and nfds descriptors (ownership of the
 * descriptors passes in every case; body is copied).  Never closes the
 * connection itself: on failure it is marked closing.  A send on a
 * closing connection is dropped. */
void wb__conn_send(wb__conn *c, const void *body, size_t len, const int *fds,
                   int nfds);
/* Stops handing c's frames up until wb__conn_resume(). */
void wb__conn_pause(wb__conn *c);
/* Schedules c to go on with its pipelined frames from the loop's idle
 * phase.  Accepts a closing connection (nothing happens). */
void wb__conn_resume(wb__conn *c);
/* Marks c to close once its queued replies are sent (for a protocol error
 * answered first); with now set, at the next safe point, dropping them. */
void wb__conn_close_later(wb__conn *c, int now);
/* Marks that c has said hello (ends the hello timeout). */
void wb__conn_hello_done(wb__conn *c);
/* 1 once c is closing (no more frames will be handed up). */
int wb__conn_closing(const wb__conn *c);

/* Identity of the peer. */
uint64_t wb__conn_id(const wb__conn *c);
const struct ucred *wb__conn_cred(const wb__conn *c);
/* Copies up to max of the peer's supplementary groups (SO_PEERGROUPS, as
 * the peer had them when it connected) into groups; returns how many. */
int wb__conn_groups(const wb__conn *c, gid_t *groups, int max);
/* Connections open now. */
size_t wb__conn_count(void);

#endif
