/* op_inspect.c -- list and status: what the daemon holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "stats.h"
#include "wire.h"

double wb__started;

/* Cursor over the models that hold versions, for the list encoder. */
typedef struct list_cursor {
    wb__model *m; /* Next model to look at. */
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
    e->readers = wb__sessions_mapping(m->name);
}

void wb__op_list(wb__session *s, uint64_t id, const msgpack_object *req) {
    list_cursor cur = {wb__reg.models};
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_list_rep(&r.pk, id, wb__registry_models_held(), list_row, &cur);
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
    /* Requests and errors, and the bytes in each page size (all segments
     * are 4 KiB pages today). */
    counter_list cl = {0};
    cl.cap = wb__stats_count() + 2;
    cl.name = calloc(cl.cap, sizeof(cl.name[0]));
    cl.value = calloc(cl.cap, sizeof(uint64_t));
    if (cl.name == NULL || cl.value == NULL)
        cl.cap = 0;
    wb__stats_each(counter_add, &cl);
    counter_add(&cl, "bytes.4k", st.shmem);
    if (wb__reg.mem_pinned)
        counter_add(&cl, "bytes.pinned", wb__reg.mem_pinned);
    st.ncounters = cl.n;
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_status_rep(&r.pk, id, &st, counter_row, &cl);
    wb__reply_send(s, &r, NULL, 0);
    free(cl.name);
    free(cl.value);
}
