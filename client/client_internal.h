/* client_internal.h -- What the files of libwbroker share: the handle,
 * recording a failure, and the round trip of one request.
 *
 * A request is packed into a wb__cl_req by a proto/msg.h encoder and sent
 * with wb__cl_call() (or wb__cl_call_fds() when the reply brings
 * descriptors), which checks the reply's envelope; the caller decodes the
 * rest with the matching proto/msg.h decoder.  Only client code includes
 * this header. */
#ifndef WB_CLIENT_INTERNAL_H
#define WB_CLIENT_INTERNAL_H

#include <msgpack.h>
#include <stdint.h>

#include "msg.h"
#include "wbroker.h"
#include "wire.h"

#define WB_CLIENT_PATH_MAX 108    /* Bytes of a socket path (sun_path). */
#define WB_CLIENT_ERRMSG_MAX 1024 /* Bytes of the last failure's detail. */

struct wb_client {
    int fd;                            /* Connected socket, -1 once broken
                                          (the next call reconnects). */
    int cancel_fd;                     /* eventfd wb_watch_cancel() counts
                                          up and wb_watch() drains. */
    uint64_t gen;                      /* Connections made so far (0: none
                                          yet): tells a publish whether the
                                          connection it began on is the one
                                          open now. */
    uint64_t next_id;                  /* Id of the next request. */
    char path[WB_CLIENT_PATH_MAX];     /* Socket path, for messages. */
    char errmsg[WB_CLIENT_ERRMSG_MAX]; /* Detail of the last failure. */
    int sys_errno;                     /* errno behind the last WB_ESYS failure
                                          (this process's or the daemon's), or 0. */
    uint8_t *rx;       /* A reply body's buffer kept for the next map reply
                          (wb__cl_msg_done), or NULL. */
    size_t rx_cap;     /* Bytes of rx. */
    uint8_t *rx_out;   /* The buffer the last fast call read into. */
    size_t rx_out_cap; /* Its bytes. */
};

/* One request on its way: the bytes packed so far and its id. */
typedef struct wb__cl_req {
    wb__pkbuf out;     /* The packed request. */
    msgpack_packer pk; /* Packer writing into out. */
    uint64_t id;       /* Id the request carries. */
} wb__cl_req;

/* Records a failure on c (when not NULL) and returns code.  For WB_ESYS
 * the errno in effect on entry is kept as the failure's system code (and
 * errno itself is left as it was). */
int wb__cl_fail(wb_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Marks c's connection unusable (after a transport, framing or trust
 * failure) and returns rc. */
int wb__cl_broken(wb_client *c, int rc);

/* Starts r as c's next request: an empty buffer and the next id, which
 * the encoder is to pack. */
void wb__cl_req_begin(wb_client *c, wb__cl_req *r);

/* Sends r, frees its buffer and reads the reply into *m (free it with
 * wb__msg_free() in every case), with up to maxfds descriptors in fds
 * (*nfds of them; fds and nfds may be NULL when none may come).  Returns
 * the reply's err, with c->errmsg set from its msg (an error with id 0
 * ends the connection); WB_ETOOBIG for a request over the frame limit;
 * or a transport or envelope error (WB_ECLOSED, WB_EPROTO, WB_ENOMEM),
 * which ends the connection. */
int wb__cl_call_fds(wb_client *c, wb__cl_req *r, wb__msg *m, int *fds,
                    int *nfds, int maxfds);

/* A decoder wb__cl_call_fast() tries on a reply's body before the
 * general path: returns 0 when it took the body (a success answering
 * request id), else nonzero to leave it to msgpack-c and the envelope
 * check, which then decide as they always did. */
typedef int (*wb__cl_fast_fn)(void *arg, const uint8_t *body, size_t len,
                              uint64_t id);
/* wb__cl_call_fds() with fast tried first on the reply's body: when it
 * takes it, returns 0 with m->root NULL (nothing unpacked) and the body
 * in m->owned, for what fast decoded to view.  The body's buffer comes
 * from c when c keeps one large enough; free m with wb__cl_msg_done(). */
int wb__cl_call_fast(wb_client *c, wb__cl_req *r, wb__msg *m, int *fds,
                     int *nfds, int maxfds, wb__cl_fast_fn fast, void *arg);
/* Frees m like wb__msg_free(), but keeps the buffer of a body that
 * wb__cl_call_fast() read, when it is at most WB_CL_RX_KEEP bytes, for
 * the next such call: no malloc and free of the reply per map. */
void wb__cl_msg_done(wb_client *c, wb__msg *m);
#define WB_CL_RX_KEEP (1u << 20)
/* wb__cl_call_fds() for a reply that brings no descriptors. */
int wb__cl_call(wb_client *c, wb__cl_req *r, wb__msg *m);

/* wb__cl_call() whose wait for the reply ends, with WB_ECANCELED and the
 * connection dropped, when wb_watch_cancel() is called (for wb_watch). */
int wb__cl_call_cancellable(wb_client *c, wb__cl_req *r, wb__msg *m);

/* Both calls above first make sure c is connected: a connection marked
 * broken, or whose socket shows the daemon gone (zero-timeout poll), is
 * replaced by a new one (connect, trust checks, hello) to the same path,
 * and c->gen counts it.  A connection that breaks during the request fails
 * it with WB_ECLOSED and is marked, for the next call to replace. */

/* Checks c's connection without reconnecting: marks it broken when its
 * socket shows the daemon gone.  Returns 1 when it is still open. */
int wb__cl_live(wb_client *c);

/* Takes a pending wb_watch_cancel(): 1 if there was one (now consumed). */
int wb__cl_take_cancel(wb_client *c);

#endif
