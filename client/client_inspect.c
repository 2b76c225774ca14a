/* client_inspect.c -- libwbroker: what the daemon holds and says (list,
 * status, holders), dropping and pinning versions and watching for new
 * ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "msg.h"
#include "wire.h"

int wb_list(wb_client *c, wb_model_info **out, size_t *n) {
    if (c == NULL || out == NULL || n == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    *out = NULL;
    *n = 0;
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_list_req(&r.pk, r.id);
    wb__msg m;
    int rc = wb__cl_call(c, &r, &m);
    wb__list_entry *e = NULL;
    size_t ne = 0;
    int drc = rc ? 0 : wb__decode_list_rep(m.root, &e, &ne);
    if (drc)
        rc = wb__cl_fail(c, drc, "%s",
                         drc == WB_ENOMEM ? "out of memory"
                                          : "malformed list reply");
    wb_model_info *v = NULL;
    if (rc == 0 && !(v = calloc(ne ? ne : 1, sizeof(*v))))
        rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < ne; i++) {
        v[i].latest = e[i].latest;
        v[i].nversions = e[i].versions;
        v[i].tensors = e[i].tensors;
        v[i].bytes = e[i].bytes;
        v[i].readers = e[i].readers;
        v[i].pinned = e[i].pinned;
        v[i].owner =
            e[i].owner > UINT32_MAX ? WB_NO_OWNER : (uint32_t)e[i].owner;
        if (e[i].digest.p && e[i].digest.n == sizeof(v[i].digest) - 1)
            memcpy(v[i].digest, e[i].digest.p, e[i].digest.n);
        *n = i + 1;
        if ((v[i].name = wb__str_dup(e[i].name)) == NULL)
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    }
    free(e);
    wb__msg_free(&m);
    if (rc) {
        wb_model_info_free(v, *n);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

void wb_model_info_free(wb_model_info *v, size_t n) {
    for (size_t i = 0; v && i < n; i++)
        free(v[i].name);
    free(v);
}

/* Asks for the daemon's status and decodes the reply into *st (zeroed
 * first, so that wb__status_rep_free() is right in every case) while *m
 * holds the message its strings point into (free it with wb__msg_free()
 * in every case).  Returns 0 or an error recorded on c. */
static int status_call(wb_client *c, wb__msg *m, wb__status_rep *st) {
    memset(st, 0, sizeof(*st));
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_status_req(&r.pk, r.id);
    int rc = wb__cl_call(c, &r, m);
    if (rc == 0 && (rc = wb__decode_status_rep(m->root, st)) != 0)
        rc = wb__cl_fail(c, rc, "%s",
                         rc == WB_ENOMEM ? "out of memory"
                                         : "malformed status reply");
    return rc;
}

int wb_get_status(wb_client *c, wb_status *out) {
    if (c == NULL || out == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    memset(out, 0, sizeof(*out));
    wb__msg m;
    wb__status_rep st;
    int rc = status_call(c, &m, &st);
    if (rc == 0) {
        snprintf(out->version, sizeof(out->version), "%.*s", (int)st.server.n,
                 st.server.p);
        out->uptime = st.uptime;
        out->memory_used = st.used;
        out->memory_limit = st.limit;
        out->memory_shmem = st.shmem;
        out->models = st.models;
        out->versions = st.versions;
        out->clients = st.clients;
        out->pid = st.pid;
    }
    wb__status_rep_free(&st);
    wb__msg_free(&m);
    return rc;
}

int wb_get_counters(wb_client *c, wb_counter **out, size_t *n) {
    if (c == NULL || out == NULL || n == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    *out = NULL;
    *n = 0;
    wb__msg m;
    wb__status_rep st;
    int rc = status_call(c, &m, &st);
    wb_counter *v = NULL;
    if (rc == 0 && (v = calloc(st.ncounters + 1, sizeof(*v))) == NULL)
        rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    size_t k = 0;
    for (; rc == 0 && k < st.ncounters; k++) {
        if ((v[k].name = wb__str_dup(st.cnames[k])) == NULL)
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
        v[k].value = st.cvalues[k];
    }
    wb__status_rep_free(&st);
    wb__msg_free(&m);
    if (rc) {
        wb_counters_free(v, k);
        return rc;
    }
    *out = v;
    *n = k;
    return 0;
}

void wb_counters_free(wb_counter *v, size_t n) {
    for (size_t i = 0; v && i < n; i++)
        free(v[i].name);
    free(v);
}

int wb_drop(wb_client *c, const char *model, uint64_t version) {
    if (c == NULL || model == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_drop_req(&r.pk, r.id, model, version);
    wb__msg m;
    int rc = wb__cl_call(c, &r, &m);
    uint64_t dropped;
    if (rc == 0 && wb__decode_u64_rep(m.root, "dropped", &dropped))
        rc = wb__cl_fail(c, WB_EPROTO, "malformed drop reply");
    wb__msg_free(&m);
    return rc;
}

int wb_watch(wb_client *c, const char *model, uint64_t after, int timeout_ms,
             uint64_t *version) {
    if (c == NULL || model == NULL || version == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    if (wb__cl_take_cancel(c)) /* A stop() that came before the watch. */
        return wb__cl_fail(c, WB_ECANCELED,
                           "watch cancelled by a wb_watch_cancel() made "
                           "before it");
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_watch_req(&r.pk, r.id, model, after,
                       timeout_ms < 0 ? -1 : timeout_ms);
    wb__msg m;
    int rc = wb__cl_call_cancellable(c, &r, &m);
    uint64_t v = 0;
    if (rc == 0 && wb__decode_u64_rep(m.root, "version", &v))
        rc = wb__cl_fail(c, WB_EPROTO, "malformed watch reply");
    if (rc == 0)
        *version = v;
    wb__msg_free(&m);
    return rc;
}

/* Pins (pin 1) or unpins version of model. */
static int pin_call(wb_client *c, const char *model, uint64_t version,
                    int pin) {
    if (c == NULL || model == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    if (wb__check_name(model, strlen(model)))
        return wb__cl_fail(c, WB_ENAME, "invalid model name");
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_pin_req(&r.pk, r.id, model, version, pin);
    wb__msg m;
    int rc = wb__cl_call(c, &r, &m);
    uint64_t got;
    if (rc == 0 && wb__decode_u64_rep(m.root, "version", &got))
        rc = wb__cl_fail(c, WB_EPROTO, "malformed pin reply");
    wb__msg_free(&m);
    return rc;
}

int wb_pin(wb_client *c, const char *model, uint64_t version) {
    return pin_call(c, model, version, 1);
}

int wb_unpin(wb_client *c, const char *model, uint64_t version) {
    return pin_call(c, model, version, 0);
}

int wb_holders(wb_client *c, const char *model, wb_holder **out, size_t *n) {
    if (out)
        *out = NULL;
    if (n)
        *n = 0;
    if (c == NULL || out == NULL || n == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    if (model && wb__check_name(model, strlen(model)))
        return wb__cl_fail(c, WB_ENAME, "invalid model name");
    wb__cl_req r;
    wb__cl_req_begin(c, &r);
    wb__pack_holders_req(&r.pk, r.id, model);
    wb__msg m;
    int rc = wb__cl_call(c, &r, &m);
    wb__holder_entry *e = NULL;
    size_t ne = 0;
    int drc = rc ? 0 : wb__decode_holders_rep(m.root, &e, &ne);
    if (drc)
        rc = wb__cl_fail(c, drc, "%s",
                         drc == WB_ENOMEM ? "out of memory"
                                          : "malformed holders reply");
    wb_holder *v = NULL;
    size_t k = 0;
    if (rc == 0 && !(v = calloc(ne ? ne : 1, sizeof(*v))))
        rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
    for (; rc == 0 && k < ne; k++) {
        v[k].pid = e[k].pid;
        v[k].uid = e[k].uid;
        v[k].version = e[k].version;
        v[k].bytes = e[k].bytes;
        v[k].since = e[k].since;
        v[k].comm = wb__str_dup(e[k].comm);
        v[k].model = wb__str_dup(e[k].model);
        if (v[k].comm == NULL || v[k].model == NULL) {
            k++; /* Freed below with the rest. */
            rc = wb__cl_fail(c, WB_ENOMEM, "out of memory");
            break;
        }
    }
    free(e);
    wb__msg_free(&m);
    if (rc) {
        wb_holders_free(v, k);
        return rc;
    }
    *out = v;
    *n = k;
    return 0;
}

void wb_holders_free(wb_holder *v, size_t n) {
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].comm);
        free(v[i].model);
    }
    free(v);
}
