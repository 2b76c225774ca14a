/* op_inspect.c -- list, status and holders: what the daemon holds and who
 * holds it. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "hold.h"
#include "ident.h"
#include "msg.h"
#include "ops.h"
#include "persist.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "stats.h"
#include "wire.h"

double wb__started;

/* Cursor over the models that hold versions, for the list encoder. */
typedef struct list_cursor {
    wb__model *m; /* Next model to look at. */
    int digest;   /* 1 to send digests (the client asked). */
    char hex[33]; /* The current row's digest. */
} list_cursor;

static void list_row(void *arg, size_t i, wb__list_entry *e) {
    list_cursor *cur = arg;
    while (cur->m && cur->m->versions == NULL)
        cur->m = cur->m->next;
    wb__model *m = cur->m;
    cur->m = m->next;
    const wb__version *v = wb__version_latest(m);
    e->name.p = m->name;
    e->name.n = strlen(m->name);
    e->latest = v->number;
    e->versions = m->nversions;
    e->tensors = v->n;
    e->bytes = v->data_bytes;
    e->readers = wb__holds_readers(m);
    e->pinned = wb__model_pinned(m);
    e->owner = m->owner;
    if (cur->digest) {
        wb__digest_hex(v->digest, cur->hex);
        e->digest.p = cur->hex;
        e->digest.n = 32;
    }
}

void wb__op_list(wb__session *s, uint64_t id, const msgpack_object *req) {
    list_cursor cur = {wb__reg.models, wb__decode_list_req(req), ""};
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_list_rep(&r.pk, id, wb__registry_models_held(), list_row, &cur,
                      s->proto);
    wb__reply_send(s, &r, NULL, 0);
}

/* The counters of a status reply, gathered before packing. */
typedef struct counter_list {
    char (*name)[64]; /* Names. */
    uint64_t *value;  /* Counts. */
    size_t n;         /* Entries in use. */
    size_t cap;       /* Entries allocated. */
} counter_list;

static void counter_add(void *arg, const char *name, uint64_t value) {
    counter_list *l = arg;
    if (l->n == l->cap)
        return;
    snprintf(l->name[l->n], sizeof(l->name[0]), "%s", name);
    l->value[l->n++] = value;
}

static void counter_row(void *arg, size_t i, wb__str *name, uint64_t *value) {
    const counter_list *l = arg;
    name->p = l->name[i];
    name->n = strlen(l->name[i]);
    *value = l->value[i];
}

void wb__op_status(wb__session *s, uint64_t id, const msgpack_object *req) {
    const char *ver = wb_version_string();
    wb__status_rep st = {
        .server = {ver, strlen(ver)},
        .uptime = (double)uv_hrtime() / 1e9 - wb__started,
        .used = wb__reg.mem_used,
        .limit = wb__reg.mem_limit,
        .shmem = wb__registry_shmem(),
        .models = wb__registry_models_held(),
        .versions = wb__reg.versions,
        .clients = wb__sessions_count(),
        .pid = (uint32_t)getpid(),
    };
    /* Requests and errors, the --huge-pages mode (pages.MODE = 1) and the
     * bytes in each page size, as the kernel reported them at each seal. */
    counter_list cl = {0};
    cl.cap = wb__stats_count() + 16;
    cl.name = calloc(cl.cap, sizeof(cl.name[0]));
    cl.value = calloc(cl.cap, sizeof(uint64_t));
    if (cl.name == NULL || cl.value == NULL)
        cl.cap = 0;
    wb__stats_each(counter_add, &cl);
    char pages[32];
    snprintf(pages, sizeof(pages), "pages.%s",
             wb__seg_pages_name(wb__seg_pages()));
    counter_add(&cl, pages, 1);
    uint64_t huge = wb__seg_huge_total();
    counter_add(&cl, "bytes.2m", huge);
    counter_add(&cl, "bytes.4k", st.shmem > huge ? st.shmem - huge : 0);
    /* Mappings processes keep, and what versions that left their list
     * still charge because of them. */
    counter_add(&cl, "holds", wb__holds_count());
    counter_add(&cl, "bytes.retired", wb__holds_retired_bytes());
    if (wb__reg.mem_pinned)
        counter_add(&cl, "bytes.pinned", wb__reg.mem_pinned);
    if (wb__persist_on()) {
        const wb__persist_stats *ps = &wb__persist_stats_now;
        counter_add(&cl, "persist.backlog", ps->backlog);
        counter_add(&cl, "persist.backlog_bytes", ps->backlog_bytes);
        counter_add(&cl, "persist.written", ps->written);
        counter_add(&cl, "persist.failed", ps->failed);
        counter_add(&cl, "persist.corrupt", ps->corrupt);
        counter_add(&cl, "persist.recovered", ps->recovered);
    }
    st.ncounters = cl.n;
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_status_rep(&r.pk, id, &st, counter_row, &cl);
    wb__reply_send(s, &r, NULL, 0);
    free(cl.name);
    free(cl.value);
}

/* What the row callback of the holders encoder walks: the holds, in an
 * array gathered before packing. */
typedef struct holder_rows {
    const wb__hold **v;   /* Holds to list. */
    size_t n;             /* Entries filled. */
    const wb__session *s; /* Who asks (sees what wb__access_sees_hold
                             lets it). */
} holder_rows;

static void holder_collect(void *arg, const wb__hold *h) {
    holder_rows *hr = arg;
    if (wb__access_sees_hold(hr->s, wb__hold_uid(h),
                             wb__hold_version(h)->model->owner))
        hr->v[hr->n++] = h;
}

static void holder_row(void *arg, size_t i, wb__holder_entry *e) {
    const holder_rows *hr = arg;
    const wb__hold *h = hr->v[i];
    const wb__version *v = wb__hold_version(h);
    const char *comm = wb__hold_comm(h);
    e->pid = wb__hold_pid(h);
    e->uid = wb__hold_uid(h);
    e->comm.p = comm;
    e->comm.n = strlen(comm);
    e->model.p = v->model->name;
    e->model.n = strlen(v->model->name);
    e->version = v->number;
    e->bytes = wb__hold_bytes(h);
    e->since = wb__hold_since(h);
}

void wb__op_holders(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__str name;
    int has_model = 0;
    char model[WB_MAX_NAME + 1];
    const wb__model *m = NULL;
    if (wb__decode_holders_req(req, &name, &has_model) != 0) {
        wb__reply_error(s, id, WB_EPROTO, "model must be a string");
        return;
    }
    if (has_model) {
        if (wb__req_name(name, model) != 0) {
            wb__reply_error(s, id, WB_ENAME, "a valid model name is required");
            return;
        }
        /* A model whose every version left the list is still found
         * while some process holds one. */
        m = wb__model_find(model);
        if (m == NULL || (m->versions == NULL && wb__holds_of(m) == 0)) {
            wb__reply_error(s, id, WB_ENOMODEL, "no model named '%s'", model);
            return;
        }
    }
    size_t n = wb__holds_of(m);
    holder_rows hr = {calloc(n ? n : 1, sizeof(wb__hold *)), 0, s};
    if (hr.v == NULL) {
        wb__reply_error(s, id, WB_ENOMEM, "out of memory");
        return;
    }
    wb__holds_each(m, holder_collect, &hr);
    assert(hr.n <= n);
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_holders_rep(&r.pk, id, hr.n, holder_row, &hr);
    free(hr.v);
    wb__reply_send(s, &r, NULL, 0);
}
