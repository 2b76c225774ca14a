/* session.h -- What the request layer keeps per connection.
 *
 * A session is the request-level half of a connection: whether it said
 * hello, its open publishes, the watch it waits in.  What it mapped is
 * tracked by holds (hold.h), which outlive it.
 * The connection (conn.c) owns the socket; the session outlives it while a
 * thread-pool job or a pending answer still refers to it, and such a job
 * finds conn == NULL once the client is gone. */
#ifndef WB_DAEMON_SESSION_H
#define WB_DAEMON_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conn.h"

#define WB_MAX_PENDING 16     /* Open publishes per connection. */
#define WB_MAX_PEER_GROUPS 64 /* Supplementary groups kept per peer. */

struct wb__pending;
struct wb__watch;

typedef struct wb__session {
    wb__conn *conn;                   /* Transport, NULL once it closed. */
    uint64_t id;                      /* Connection serial, for logs. */
    struct ucred cred;                /* Peer's pid, uid, gid. */
    gid_t groups[WB_MAX_PEER_GROUPS]; /* Peer's supplementary groups. */
    int ngroups;                      /* Entries in groups. */
    int hello;                        /* 1 once the hello was exchanged. */
    uint64_t proto;                   /* Protocol the client speaks. */
    int busy;                         /* 1 while a request awaits its answer. */
    int refs;                         /* The connection's + jobs'. */
    struct wb__pending *pending;      /* Open publishes. */
    size_t npending;                  /* Entries in pending. */
    struct wb__watch *watch;          /* The watch it waits in, or NULL. */
    struct wb__session *prev;         /* Previous session. */
    struct wb__session *next;         /* Next session. */
    char comm[16];                    /* Peer's /proc/PID/comm at its first
                                         hold (hold.h), if comm_known. */
    int comm_known;                   /* 1 once comm was read. */
} wb__session;

/* Makes the session of a new connection (one reference, the
 * connection's).  Returns NULL when memory ran out. */
wb__session *wb__session_open(wb__conn *c);
/* The connection is gone: takes s off the list and drops the connection's
 * reference.  Its publishes and watch must be ended first. */
void wb__session_close(wb__session *s);
void wb__session_ref(wb__session *s);
/* Drops a reference; the last frees the session.  Accepts NULL. */
void wb__session_unref(wb__session *s);
/* 1 while the client is still connected and not closing. */
int wb__session_live(const wb__session *s);
/* Parks the current request: no further pipelined request of s runs until
 * wb__session_resume(). */
void wb__session_pause(wb__session *s);
/* Ends the park once the parked request was answered (deferred: the next
 * pipelined request runs from the loop, not from the caller). */
void wb__session_resume(wb__session *s);
/* Connected clients. */
size_t wb__sessions_count(void);
/* Connected clients that said hello, of user uid (UINT32_MAX: of all). */
size_t wb__sessions_count_hello(uint32_t uid);
/* Connected clients of user uid, whether they said hello or not. */
size_t wb__sessions_count_of(uint32_t uid);

#endif
