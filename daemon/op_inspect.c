/* op_inspect.c -- list and status: what the daemon holds. */
#include <unistd.h>

#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "wire.h"

double wb__started;

void wb__op_list(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__reply r;
    wb__reply_begin(&r, id, 1);
    wb__pack_key(&r.pk, "models");
    msgpack_pack_array(&r.pk, wb__registry_models_held());
    for (wb__model *m = wb__reg.models; m; m = m->next) {
        wb__version *v = wb__version_latest(m);
        if (v == NULL)
            continue;
        msgpack_pack_array(&r.pk, 6);
        wb__pack_cstr(&r.pk, m->name);
        msgpack_pack_uint64(&r.pk, v->number);
        msgpack_pack_uint64(&r.pk, m->nversions);
        msgpack_pack_uint64(&r.pk, v->n);
        msgpack_pack_uint64(&r.pk, v->data_bytes);
        msgpack_pack_uint64(&r.pk, wb__sessions_mapping(m->name));
    }
    wb__reply_send(s, &r, NULL, 0);
}

void wb__op_status(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__reply r;
    wb__reply_begin(&r, id, 9);
    wb__pack_key(&r.pk, "server");
    wb__pack_cstr(&r.pk, wb_version_string());
    wb__pack_key(&r.pk, "uptime");
    msgpack_pack_double(&r.pk, (double)uv_hrtime() / 1e9 - wb__started);
    wb__pack_key(&r.pk, "used");
    msgpack_pack_uint64(&r.pk, wb__reg.mem_used);
    wb__pack_key(&r.pk, "limit");
    msgpack_pack_uint64(&r.pk, wb__reg.mem_limit);
    wb__pack_key(&r.pk, "shmem");
    msgpack_pack_uint64(&r.pk, wb__registry_shmem());
    wb__pack_key(&r.pk, "models");
    msgpack_pack_uint64(&r.pk, wb__registry_models_held());
    wb__pack_key(&r.pk, "versions");
    msgpack_pack_uint64(&r.pk, wb__reg.versions);
    wb__pack_key(&r.pk, "clients");
    msgpack_pack_uint64(&r.pk, wb__sessions_count());
    wb__pack_key(&r.pk, "pid");
    msgpack_pack_uint32(&r.pk, (uint32_t)getpid());
    wb__reply_send(s, &r, NULL, 0);
}
