/* reply.h -- Building and queueing replies.
 *
 * A reply is one msgpack map: "id", "err" and the operation's fields.
 * Every reply goes through wb__reply_send(), which refuses to send one
 * larger than the frame limit (the client gets WB_ETOOBIG instead, and
 * the connection stays usable), and drops it when the client is gone. */
#ifndef WB_DAEMON_REPLY_H
#define WB_DAEMON_REPLY_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "msg.h"
#include "session.h"

typedef struct wb__reply {
    wb__pkbuf out;     /* Bytes. */
    msgpack_packer pk; /* Packer writing into out. */
    uint64_t id;       /* Request answered. */
} wb__reply;

/* Prepares r to answer request id: the body is then packed into r->pk by
 * one of proto/msg.h's encoders. */
void wb__reply_init(wb__reply *r, uint64_t id);
/* Queues the reply on s with nfds descriptors (ownership of r's bytes
 * and of the descriptors passes in every case). */
void wb__reply_send(wb__session *s, wb__reply *r, const int *fds, int nfds);
/* Sends an error reply: code and a formatted sentence. */
void wb__reply_error(wb__session *s, uint64_t id, int code, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
/* Sends a WB_ESYS error reply that also carries the system's errno
 * (sys_errno > 0), so that the client can hand it on. */
void wb__reply_error_sys(wb__session *s, uint64_t id, int sys_errno,
                         const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
