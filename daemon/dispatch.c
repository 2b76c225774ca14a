/* dispatch.c -- From frames to handlers: the envelope of every request
 * and the hello.
 *
 * The connection layer calls in here through wb__dispatch_ops only; this
 * file decodes a frame, checks "op" and "id" and the hello-first rule, and
 * calls the handler of ops.h that the op names.  A protocol error (a frame
 * that is not a request) is answered with id 0 and closes the connection
 * once the answer is sent. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "dispatch.h"
#include "log.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "stats.h"
#include "wire.h"

/* ------------------------------------------------------------ hello */

static void op_hello(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__hello_req h;
    if (wb__decode_hello_req(req, &h) != 0 || h.proto < WB_PROTO_MIN ||
        h.proto > WB_PROTO_VERSION) {
        wb__reply_error(s, id, WB_EVERSION,
                        "client speaks protocol %llu, daemon speaks %d to %d",
                        (unsigned long long)h.proto, WB_PROTO_MIN,
                        WB_PROTO_VERSION);
        wb__conn_close_later(s->conn, 0);
        return;
    }
    if (wb__access_hello(s, id) != 0) {
        wb__conn_close_later(s->conn, 0);
        return;
    }
    s->hello = 1;
    s->proto = h.proto;
    wb__conn_hello_done(s->conn);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_hello_rep(&r.pk, id, (uint32_t)getpid(), s->proto);
    wb__reply_send(s, &r, NULL, 0);
}

/* ------------------------------------------------------------ dispatch */

/* Each op with the role it needs and the words a refusal uses.  A
 * request naming a model ("model") is checked for that model, and for
 * publish-level ops against its owner as well; commit and abort name no
 * model: the publish they end was checked when it opened (commit checks the
 * owner again, as the model may have gained one meanwhile). */
static const struct {
    const char *name;   /* Value of "op". */
    wb__op_fn fn;       /* Handler. */
    int role;           /* WB_ROLE_*. */
    const char *action; /* "user U may not ACTION model 'M'". */
} op_table[] = {
    {"hello", op_hello, WB_ROLE_NONE, "connect"},
    {"publish", wb__op_publish, WB_ROLE_PUBLISH, "publish to"},
    {"commit", wb__op_commit, WB_ROLE_READ, "commit"},
    {"abort", wb__op_abort, WB_ROLE_READ, "abort"},
    {"map", wb__op_map, WB_ROLE_READ, "load"},
    {"list", wb__op_list, WB_ROLE_READ, "list"},
    {"status", wb__op_status, WB_ROLE_READ, "see the status"},
    {"drop", wb__op_drop, WB_ROLE_PUBLISH, "remove"},
    {"watch", wb__op_watch, WB_ROLE_READ, "watch"},
    {"pin", wb__op_pin, WB_ROLE_PUBLISH, "pin"},
    {"holders", wb__op_holders, WB_ROLE_READ, "list the holders of"},
};

/* The access check of every request: 0 to go on, or -1 once refused.  A
 * request whose model is missing or invalid goes on to its handler, which
 * refuses it for that. */
static int access_check(wb__session *s, uint64_t id, const msgpack_object *req,
                        int role, const char *action) {
    if (role == WB_ROLE_NONE)
        return 0;
    const msgpack_object *mo = wb__mp_get(req, "model");
    char model[WB_MAX_NAME + 1];
    if (mo && mo->type == MSGPACK_OBJECT_STR) {
        wb__str name = {mo->via.str.ptr, mo->via.str.size};
        if (wb__req_name(name, model) != 0)
            return 0;
        return wb__access_model(s, id, role, action, model);
    }
    if (mo && mo->type != MSGPACK_OBJECT_NIL && role >= WB_ROLE_PUBLISH)
        return 0; /* Malformed: the handler refuses it. */
    return wb__access_model(s, id, role, action, NULL);
}

/* Answers a protocol error with id 0 and closes once it is sent. */
static void protocol_error(wb__session *s, int code, const char *what) {
    wb__reply_error(s, 0, code, "%s", what);
    wb__conn_close_later(s->conn, 0);
}

static void *on_open(wb__conn *c) {
    wb__session *s = wb__session_open(c);
    if (s && wb__access_open(s) != 0) {
        wb__session_close(s);
        return NULL;
    }
    return s;
}

static void on_frame(void *state, const uint8_t *body, size_t len) {
    wb__session *s = state;
    assert(wb__session_live(s) && !s->busy);
    wb__msg m;
    int rc = wb__msg_decode(&m, body, len);
    if (rc) {
        wb__msg_free(&m);
        protocol_error(s, rc,
                       rc == WB_ETOOBIG
                           ? "malformed message: too many objects"
                           : "malformed message: not one msgpack map "
                             "within the protocol's limits");
        return;
    }
    uint64_t id = 0;
    const msgpack_object *op = wb__mp_get(m.root, "op");
    if (wb__mp_get_u64(m.root, "id", &id) != 0 || id == 0 || op == NULL ||
        op->type != MSGPACK_OBJECT_STR) {
        protocol_error(s, WB_EPROTO, "a request needs an op and an id > 0");
    } else if (!s->hello && !wb__mp_streq(op, "hello")) {
        protocol_error(s, WB_EPROTO, "hello first");
    } else {
        size_t i = 0, n = sizeof(op_table) / sizeof(op_table[0]);
        while (i < n && !wb__mp_streq(op, op_table[i].name))
            i++;
        wb__stats_request(i < n ? op_table[i].name : NULL);
        if (i < n && access_check(s, id, m.root, op_table[i].role,
                                  op_table[i].action) != 0)
            ; /* Refused and answered. */
        else if (i < n)
            op_table[i].fn(s, id, m.root);
        else
            wb__reply_error(
                s, id, WB_EPROTO, "unknown op '%.*s'",
                (int)(op->via.str.size > 64 ? 64 : op->via.str.size),
                op->via.str.ptr);
    }
    wb__msg_free(&m);
}

static void on_oversized(void *state, uint32_t len) {
    char why[128];
    snprintf(why, sizeof(why), "frame of %u bytes exceeds the %u-byte limit",
             len, WB_MAX_FRAME);
    protocol_error(state, WB_ETOOBIG, why);
}

static void on_closed(void *state) {
    wb__session *s = state;
    if (s == NULL)
        return; /* Refused at open: no session was kept. */
    wb__publish_session_closed(s);
    wb__watch_session_closed(s);
    wb__session_close(s);
}

const wb__conn_ops wb__dispatch_ops = {
    .open = on_open,
    .frame = on_frame,
    .oversized = on_oversized,
    .closed = on_closed,
};
