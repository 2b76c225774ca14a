/* broker.h -- wbrokerd's state: models, versions, publishes, connections.
 *
 * Everything here lives on the event-loop thread.  Work handed to libuv's
 * thread pool (segment allocation, dtype conversion) holds references so
 * that nothing it touches is freed under it. */
#ifndef WB_DAEMON_BROKER_H
#define WB_DAEMON_BROKER_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "../proto/rules.h"
#include "../proto/wire.h"
#include "layout.h"
#include "segment.h"

#define WB_READ_CHUNK (64 * 1024)           /* Bytes asked of one recvmsg. */
#define WB_OUT_HIGH_WATER (4u * 1024 * 1024) /* Stop reading above this. */
#define WB_MAX_CLIENTS 4096                 /* Connections served at once. */
#define WB_MAX_MODELS 4096                  /* Models held at once. */
#define WB_MAX_PENDING 16                   /* Open publishes per client. */

struct wb__conn;
struct wb__model;

/* A segment of dtype-converted copies, written by one conversion job. */
typedef struct wb__dseg {
    wb__segment seg;            /* Sealed once every copy is written. */
    uint64_t accounted;         /* Bytes charged to the memory limit. */
    int ready;                  /* 1 once converted and sealed. */
    struct conv_job *job;       /* The job writing it, until it is done. */
    struct wb__dseg *next;      /* Next in the version's list. */
} wb__dseg;

/* A dtype-converted copy of one tensor of a version. */
typedef struct wb__derived {
    int dtype_from;             /* Source dtype. */
    int dtype_to;               /* Converted dtype. */
    size_t src;                 /* Source tensor index (stored order). */
    wb__dseg *ds;               /* Segment holding the copy. */
    uint64_t offset;            /* Where in it. */
    uint64_t nbytes;            /* Bytes of the converted tensor. */
    struct wb__derived *next_src; /* Next copy of the same source tensor. */
} wb__derived;

typedef struct wb__version {
    uint64_t number;            /* 1, 2, ... per model; 0 until committed. */
    struct wb__model *model;    /* Owning model (NULL while pending). */
    wb__segment seg;            /* The safetensors image. */
    size_t n;                   /* Tensors. */
    wb__tinfo *t;               /* Tensors in published order. */
    uint64_t *offset;           /* Absolute offset of each tensor. */
    uint64_t *nbytes;           /* Bytes of each tensor. */
    size_t *tie;                /* NULL, or per tensor the index of the one
                                   whose bytes it shares (its own if none). */
    uint64_t data_bytes;        /* Bytes stored (tied tensors once). */
    char **mkeys;               /* Metadata keys. */
    char **mvals;               /* Metadata values. */
    size_t nmeta;               /* Metadata entries. */
    uint64_t accounted;         /* Bytes charged to the memory limit. */
    int refs;                   /* Registry + in-flight jobs. */
    int dropped;                /* 1 once no longer listed. */
    wb__derived **by_src;       /* Per tensor, its converted copies (NULL
                                   until the first conversion). */
    wb__dseg *dsegs;            /* Segments holding them. */
    struct wb__version *next;   /* Next newer version of the model. */
} wb__version;

/* A client waiting in "watch" for a version newer than after. */
typedef struct wb__watch {
    struct wb__conn *conn;      /* Waiting client. */
    uint64_t req_id;            /* Request to answer. */
    uint64_t after;             /* Answer once latest > after. */
    uv_timer_t timer;           /* Time limit, if any. */
    int has_timer;              /* 1 if timer is armed. */
    struct wb__model *model;    /* Model watched. */
    struct wb__watch *next;     /* Next watcher of the model. */
} wb__watch;

typedef struct wb__model {
    char *name;                 /* Model name. */
    uint64_t last_number;       /* Highest version number handed out. */
    wb__version *versions;      /* Committed versions, oldest first. */
    size_t nversions;           /* Versions in the list. */
    wb__watch *watchers;        /* Clients waiting for a new version. */
    struct wb__model *next;     /* Next model. */
} wb__model;

/* A publish between "publish" and "commit"/"abort". */
typedef struct wb__pending {
    uint64_t id;                /* Handle the client names it by. */
    char *model;                /* Model it will become a version of. */
    wb__version *v;             /* The version being written. */
    uint8_t *header;            /* Header bytes the daemon wrote. */
    uint64_t header_len;        /* Bytes in header. */
    int ready;                  /* 1 once its segment exists. */
    struct wb__conn *conn;      /* Publisher (NULL once it left). */
    struct wb__pending *next;   /* Next of the connection's publishes. */
} wb__pending;

/* One reply (or other bytes) waiting to be sent. */
typedef struct wb__out {
    uint8_t *data;              /* Frame bytes. */
    size_t len;                 /* Bytes in data. */
    size_t off;                 /* Bytes already sent. */
    int fds[WB_MAX_SEGMENTS];   /* Descriptors sent with the first byte. */
    int nfds;                   /* Entries in fds. */
    struct wb__out *next;       /* Next in the queue. */
} wb__out;

typedef struct wb__conn {
    uv_poll_t poll;             /* Readiness of fd. */
    int fd;                     /* Connected socket. */
    uint64_t id;                /* Serial number, for logs. */
    struct ucred cred;          /* Peer's pid, uid, gid (SO_PEERCRED). */
    uint8_t *in;                /* Received bytes not yet handled. */
    size_t in_len;              /* Bytes in in. */
    size_t in_cap;              /* Bytes allocated for in. */
    wb__out *out_head;          /* Queue of replies. */
    wb__out *out_tail;          /* Last reply queued. */
    size_t out_bytes;           /* Unsent bytes in the queue. */
    int hello;                  /* 1 once the hello was exchanged. */
    int busy;                   /* A request awaits a deferred answer. */
    int closing;                /* Close once the queue is flushed. */
    int closed;                 /* uv_close() was called. */
    int refs;                   /* Loop + in-flight jobs. */
    int events;                 /* Events currently polled for. */
    wb__pending *pending;       /* Open publishes. */
    char **mapped;              /* Models this client has mapped. */
    size_t nmapped;             /* Entries in mapped. */
    struct wb__conn *prev;      /* Previous connection. */
    struct wb__conn *next;      /* Next connection. */
} wb__conn;

typedef struct wb__broker {
    uv_loop_t *loop;            /* The event loop. */
    int listen_fd;              /* Listening socket. */
    uv_poll_t listen_poll;      /* Readiness of listen_fd. */
    char socket_path[108];      /* Path we bound ("" if inherited). */
    int unlink_socket;          /* 1 to unlink the path at exit. */
    wb__model *models;          /* All models. */
    size_t nmodels;             /* Models in the list. */
    wb__conn *conns;            /* All connections. */
    size_t nconns;              /* Connections in the list. */
    uint64_t next_conn_id;      /* Serial of the next connection. */
    uint64_t next_pub_id;       /* Handle of the next publish. */
    uint64_t mem_used;          /* Bytes charged to the limit. */
    uint64_t mem_limit;         /* --memory-limit in bytes. */
    uint64_t versions;          /* Committed versions held. */
    double started;             /* uv_hrtime() at start, in seconds. */
    int stopping;               /* 1 once a signal asked us to stop. */
} wb__broker;

extern wb__broker *wb__g; /* The daemon's single broker. */

/* server.c */
int wb__server_listen(wb__broker *b, const char *path, unsigned mode,
                      int inherited_fd);
void wb__server_stop(wb__broker *b);
/* Queues a reply frame (takes ownership of body and of fds). */
void wb__conn_send(wb__conn *c, uint8_t *body, size_t len, const int *fds,
                   int nfds);
/* Resumes reading after a deferred answer was queued. */
void wb__conn_resume(wb__conn *c);
void wb__conn_unref(wb__conn *c);

/* handlers.c */
/* Handles one decoded request.  Returns 1 if the answer is deferred (the
 * connection must pause until wb__conn_resume()), else 0. */
int wb__handle(wb__conn *c, const msgpack_object *req);
/* Sends an error reply. */
void wb__reply_error(wb__conn *c, uint64_t id, int code, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
/* Releases everything a closing connection still holds. */
void wb__conn_cleanup(wb__conn *c);

/* registry.c */
wb__model *wb__model_find(wb__broker *b, const char *name);
wb__model *wb__model_get(wb__broker *b, const char *name);
wb__version *wb__version_find(wb__model *m, uint64_t number);
wb__version *wb__version_latest(wb__model *m);
void wb__version_ref(wb__version *v);
void wb__version_unref(wb__version *v);
/* Removes a committed version from its model (and drops the registry's
 * reference). */
void wb__version_drop(wb__broker *b, wb__version *v);
/* Frees the model if it holds no versions and no watchers. */
void wb__model_gc(wb__broker *b, wb__model *m);
/* Charges or refunds bytes against the memory limit. */
int wb__mem_charge(wb__broker *b, uint64_t bytes);
void wb__mem_refund(wb__broker *b, uint64_t bytes);
uint64_t wb__model_readers(wb__broker *b, const char *name);

#endif
