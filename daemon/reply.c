/* reply.c -- Building and queueing replies. */
#include "reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"
#include "stats.h"
#include "wire.h"

#define WB_ERRMSG_MAX 1024 /* Bytes of an error sentence. */

void wb__reply_init(wb__reply *r, uint64_t id) {
    wb__pkbuf_init(&r->out, &r->pk);
    r->id = id;
}

void wb__reply_send(wb__session *s, wb__reply *r, const int *fds, int nfds) {
    size_t len = r->out.sb.size;
    if (r->out.failed && wb__session_live(s)) {
        /* The reply is lost, and an error reply may be too: the client
         * learns of it from the close, at the connection's safe point. */
        wb__warn("client %llu: out of memory packing a reply: closing",
                 (unsigned long long)s->id);
        wb__conn_close_later(s->conn, 0);
    }
    if (!wb__session_live(s) || r->out.failed || len > WB_MAX_FRAME) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        msgpack_sbuffer_destroy(&r->out.sb);
        if (wb__session_live(s))
            wb__reply_error(s, r->id, WB_ETOOBIG,
                            "the reply would take %zu bytes, more than the "
                            "%u-byte frame limit",
                            len, WB_MAX_FRAME);
        return;
    }
    wb__conn_send(s->conn, r->out.sb.data, len, fds, nfds);
    msgpack_sbuffer_destroy(&r->out.sb);
}

/* Sends an error reply with the formatted sentence and sys_errno. */
static void reply_error_v(wb__session *s, uint64_t id, int code, int sys_errno,
                          const char *fmt, va_list ap) {
    char msg[WB_ERRMSG_MAX];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    wb__debug("client %llu: error %s: %s", (unsigned long long)s->id,
              wb_err_name(code), msg);
    wb__stats_error(code);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_error_rep(&r.pk, id, code, msg, sys_errno);
    wb__reply_send(s, &r, NULL, 0);
}

void wb__reply_error(wb__session *s, uint64_t id, int code, const char *fmt,
                     ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(s, id, code, 0, fmt, ap);
    va_end(ap);
}

void wb__reply_error_sys(wb__session *s, uint64_t id, int sys_errno,
                         const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(s, id, WB_ESYS, sys_errno, fmt, ap);
    va_end(ap);
}
