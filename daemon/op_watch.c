/* op_watch.c -- watch: waiting for a version newer than the one a client
 * has.
 *
 * A watch parks its session until the model's latest version is newer
 * than "after", or until its time limit.  Answering a watcher only queues
 * the reply and schedules the session to go on: the watcher's pipelined
 * requests run later from the loop, never inside the commit that woke it,
 * so a notification pass never sees the list change under it. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "wire.h"

/* A client waiting in "watch" for a version newer than after. */
typedef struct wb__watch {
    wb__session *s;         /* Waiting client (its watch). */
    uint64_t req_id;        /* Request to answer. */
    uint64_t after;         /* Answer once latest > after. */
    uv_timer_t timer;       /* Time limit, if any. */
    int has_timer;          /* 1 if timer was initialised. */
    wb__model *model;       /* Model watched (referenced). */
    struct wb__watch *next; /* Next watcher of the model. */
} wb__watch;

static void watch_closed(uv_handle_t *h) {
    free(h->data);
}

/* Unlinks w from its model and its session and frees it (after its timer
 * closes). */
static void watch_free(wb__watch *w) {
    wb__model *m = w->model;
    wb__watch **pp = &m->watchers;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    assert(*pp == w);
    *pp = w->next;
    assert(w->s->watch == w);
    w->s->watch = NULL;
    if (w->has_timer) {
        uv_timer_stop(&w->timer);
        w->timer.data = w;
        uv_close((uv_handle_t *)&w->timer, watch_closed);
    } else {
        free(w);
    }
    wb__model_unref(m);
}

/* Answers w with version, frees it and lets its session go on. */
static void watch_answer(wb__watch *w, uint64_t version) {
    wb__session *s = w->s;
    wb__reply r;
    wb__reply_init(&r, w->req_id);
    wb__pack_u64_rep(&r.pk, w->req_id, "version", version);
    wb__reply_send(s, &r, NULL, 0);
    watch_free(w);
    wb__session_resume(s);
}

static void on_watch_timeout(uv_timer_t *t) {
    wb__watch *w = t->data;
    watch_answer(w, w->after);
}

void wb__watch_notify(wb__model *m) {
    wb__version *latest = wb__version_latest(m);
    if (latest == NULL)
        return;
    wb__model_ref(m); /* The last watcher's free must not free m. */
    for (wb__watch *w = m->watchers, *next; w; w = next) {
        next = w->next;
        if (latest->number > w->after)
            watch_answer(w, latest->number);
    }
    wb__model_unref(m);
}

void wb__watch_session_closed(wb__session *s) {
    if (s->watch)
        watch_free(s->watch);
}

void wb__op_watch(wb__session *s, uint64_t id, const msgpack_object *req) {
    char model[WB_MAX_NAME + 1];
    wb__watch_req wr;
    int rc = wb__decode_watch_req(req, &wr);
    if (rc == 0)
        rc = wb__req_name(wr.model, model);
    if (rc) {
        wb__reply_error(s, id, rc,
                        "watch needs a model name, after and timeout");
        return;
    }
    uint64_t after = wr.after;
    int64_t timeout = wr.timeout_ms;
    wb__model *m = wb__model_acquire(model);
    if (m == NULL) {
        wb__reply_error(s, id, WB_ETOOBIG, "at most %d models", WB_MAX_MODELS);
        return;
    }
    wb__version *latest = wb__version_latest(m);
    if ((latest && latest->number > after) || timeout == 0) {
        wb__reply r;
        wb__reply_init(&r, id);
        wb__pack_u64_rep(&r.pk, id, "version",
                         latest && latest->number > after ? latest->number
                                                          : after);
        wb__reply_send(s, &r, NULL, 0);
        wb__model_unref(m);
        return;
    }
    wb__watch *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        wb__model_unref(m);
        return;
    }
    w->s = s;
    w->req_id = id;
    w->after = after;
    w->model = m; /* Takes over the reference. */
    w->next = m->watchers;
    m->watchers = w;
    s->watch = w;
    if (timeout > 0) {
        uv_timer_init(uv_default_loop(), &w->timer);
        w->timer.data = w;
        w->has_timer = 1;
        uv_timer_start(&w->timer, on_watch_timeout, (uint64_t)timeout, 0);
    }
    wb__session_pause(s);
}
