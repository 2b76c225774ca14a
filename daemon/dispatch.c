/* dispatch.c -- From frames to handlers: the envelope of every request,
 * the hello, and the sessions.
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

#include "log.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "wire.h"

static wb__session *sessions; /* Connected sessions. */
static size_t nsessions;      /* Entries in sessions. */

/* ------------------------------------------------------------ sessions */

void wb__session_ref(wb__session *s) {
    assert(s->refs > 0);
    s->refs++;
}

void wb__session_unref(wb__session *s) {
    if (s == NULL)
        return;
    assert(s->refs > 0);
    if (--s->refs > 0)
        return;
    assert(s->conn == NULL && s->pending == NULL && s->watch == NULL);
    free(s);
}

int wb__session_live(const wb__session *s) {
    return s->conn != NULL && !wb__conn_closing(s->conn);
}

void wb__session_pause(wb__session *s) {
    assert(!s->busy);
    s->busy = 1;
    wb__conn_pause(s->conn);
}

void wb__session_resume(wb__session *s) {
    assert(s->busy);
    s->busy = 0;
    if (s->conn)
        wb__conn_resume(s->conn);
}

void wb__session_note_mapped(wb__session *s, const char *model) {
    for (size_t i = 0; i < s->nmapped; i++)
        if (strcmp(s->mapped[i], model) == 0)
            return;
    char **m = realloc(s->mapped, (s->nmapped + 1) * sizeof(char *));
    if (m == NULL)
        return;
    s->mapped = m;
    if ((m[s->nmapped] = strdup(model)) != NULL)
        s->nmapped++;
}

uint64_t wb__sessions_mapping(const char *model) {
    uint64_t n = 0;
    for (const wb__session *s = sessions; s; s = s->next)
        for (size_t i = 0; i < s->nmapped; i++)
            if (strcmp(s->mapped[i], model) == 0) {
                n++;
                break;
            }
    return n;
}

size_t wb__sessions_count(void) { return nsessions; }

/* ------------------------------------------------------------ helpers */

int wb__req_name(const msgpack_object *req, const char *key, char *buf) {
    const char *s;
    size_t n;
    int rc = wb__mp_get_str(req, key, &s, &n);
    if (rc == 1)
        return WB_EINVAL;
    if (rc)
        return rc;
    if (wb__check_name(s, n))
        return WB_ENAME;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

wb__version *wb__req_version(wb__session *s, uint64_t id,
                             const msgpack_object *req, char *model) {
    wb__model_req mr;
    int rc = wb__decode_model_req(req, &mr);
    if (rc == 0 && wb__check_name(mr.model.p, mr.model.n))
        rc = WB_ENAME;
    if (rc) {
        wb__reply_error(s, id, rc,
                        rc == WB_EPROTO ? "model must be a string and "
                                          "version an integer"
                                        : "a valid model name is required");
        return NULL;
    }
    memcpy(model, mr.model.p, mr.model.n);
    model[mr.model.n] = '\0';
    wb__model *m = wb__model_find(model);
    if (m == NULL || m->versions == NULL) {
        wb__reply_error(s, id, WB_ENOMODEL, "no model named '%s'", model);
        return NULL;
    }
    wb__version *v = wb__version_find(m, mr.version);
    if (v == NULL)
        wb__reply_error(s, id, WB_ENOVERSION,
                        "model '%s' has no version %llu (latest is %llu)",
                        model, (unsigned long long)mr.version,
                        (unsigned long long)wb__version_latest(m)->number);
    return v;
}

/* ------------------------------------------------------------ hello */

static void op_hello(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__hello_req h;
    if (wb__decode_hello_req(req, &h) != 0 || h.proto != WB_PROTO_VERSION) {
        wb__reply_error(s, id, WB_EVERSION,
                        "client speaks protocol %llu, daemon speaks %d",
                        (unsigned long long)h.proto, WB_PROTO_VERSION);
        wb__conn_close_later(s->conn, 0);
        return;
    }
    s->hello = 1;
    wb__conn_hello_done(s->conn);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_hello_rep(&r.pk, id, (uint32_t)getpid());
    wb__reply_send(s, &r, NULL, 0);
}

/* ------------------------------------------------------------ dispatch */

static const struct {
    const char *name;           /* Value of "op". */
    wb__op_fn fn;               /* Handler. */
} op_table[] = {
    {"hello", op_hello},         {"publish", wb__op_publish},
    {"commit", wb__op_commit},   {"abort", wb__op_abort},
    {"map", wb__op_map},         {"list", wb__op_list},
    {"status", wb__op_status},   {"drop", wb__op_drop},
    {"watch", wb__op_watch},
};

/* Answers a protocol error with id 0 and closes once it is sent. */
static void protocol_error(wb__session *s, int code, const char *what) {
    wb__reply_error(s, 0, code, "%s", what);
    wb__conn_close_later(s->conn, 0);
}

static void *on_open(wb__conn *c) {
    wb__session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->conn = c;
    s->id = wb__conn_id(c);
    s->cred = *wb__conn_cred(c);
    s->refs = 1;
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    nsessions++;
    return s;
}

static void on_frame(void *state, const uint8_t *body, size_t len) {
    wb__session *s = state;
    assert(wb__session_live(s) && !s->busy);
    wb__msg m;
    int rc = wb__msg_decode(&m, body, len);
    if (rc) {
        wb__msg_free(&m);
        protocol_error(s, rc, rc == WB_ETOOBIG
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
        if (i < n)
            op_table[i].fn(s, id, m.root);
        else
            wb__reply_error(s, id, WB_EPROTO, "unknown op '%.*s'",
                            (int)(op->via.str.size > 64 ? 64
                                                        : op->via.str.size),
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
    wb__publish_session_closed(s);
    wb__watch_session_closed(s);
    for (size_t i = 0; i < s->nmapped; i++)
        free(s->mapped[i]);
    free(s->mapped);
    s->mapped = NULL;
    s->nmapped = 0;
    if (s->prev)
        s->prev->next = s->next;
    else
        sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    nsessions--;
    s->conn = NULL;
    wb__session_unref(s);
}

const wb__conn_ops wb__dispatch_ops = {
    .open = on_open,
    .frame = on_frame,
    .oversized = on_oversized,
    .closed = on_closed,
};
