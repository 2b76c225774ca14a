/* registry.c -- Models, versions, references and memory accounting. */
#include "registry.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "restart.h"
#include "wbroker.h"

wb__registry wb__reg;

wb__model *wb__model_find(const char *name) {
    assert(name != NULL);
    for (wb__model *m = wb__reg.models; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

/* 1 if m counts against WB_MAX_MODELS (it holds versions or is in use). */
static int model_live(const wb__model *m) {
    return m->versions != NULL || m->refs > 0;
}

/* Forgets the oldest record (a name with nothing left but its number) of
 * user owner, or of anyone when any is set. */
static void forget_oldest_record(int any, uint32_t owner) {
    wb__model **victim = NULL;
    for (wb__model **pp = &wb__reg.models; *pp; pp = &(*pp)->next)
        if (!model_live(*pp) && (any || (*pp)->owner == owner))
            victim = pp; /* The list is newest first: keep the last. */
    if (victim == NULL)
        return;
    wb__model *m = *victim;
    *victim = m->next;
    wb__reg.nrecords--;
    wb__debug("forgot the version numbers of %s (last %llu, user %u)", m->name,
              (unsigned long long)m->last_number, (unsigned)m->owner);
    free(m->name);
    free(m);
}

/* Records of user owner. */
static size_t records_of(uint32_t owner) {
    size_t n = 0;
    for (const wb__model *m = wb__reg.models; m; m = m->next)
        n += !model_live(m) && m->owner == owner;
    return n;
}

wb__model *wb__model_acquire(const char *name) {
    wb__model *m = wb__model_find(name);
    if (m == NULL) {
        if (wb__reg.nmodels >= WB_MAX_MODELS)
            return NULL;
        m = calloc(1, sizeof(*m));
        if (m == NULL || (m->name = strdup(name)) == NULL) {
            free(m);
            return NULL;
        }
        m->owner = WB_NO_OWNER;
        m->next = wb__reg.models;
        wb__reg.models = m;
        wb__reg.nrecords++; /* Becomes live just below. */
    } else if (!model_live(m) && wb__reg.nmodels >= WB_MAX_MODELS) {
        return NULL;
    }
    wb__model_ref(m);
    return m;
}

void wb__model_ref(wb__model *m) {
    assert(m->refs >= 0);
    if (!model_live(m)) {
        wb__reg.nrecords--;
        wb__reg.nmodels++;
    }
    m->refs++;
}

void wb__model_unref(wb__model *m) {
    if (m == NULL)
        return;
    assert(m->refs > 0);
    m->refs--;
    if (model_live(m))
        return;
    assert(m->watchers == NULL);
    wb__reg.nmodels--;
    wb__reg.nrecords++;
    uint32_t owner = m->owner; /* m itself may be the one forgotten. */
    if (records_of(owner) > WB_MAX_MODEL_RECORDS_PER_USER)
        forget_oldest_record(0, owner);
    if (wb__reg.nrecords > WB_MAX_MODEL_RECORDS)
        forget_oldest_record(1, 0);
}

wb__version *wb__version_find(const wb__model *m, uint64_t number) {
    if (m == NULL)
        return NULL;
    if (number == 0)
        return wb__version_latest(m);
    for (wb__version *v = m->versions; v; v = v->next)
        if (v->number == number)
            return v;
    return NULL;
}

wb__version *wb__version_latest(const wb__model *m) {
    wb__version *last = NULL;
    for (wb__version *v = m ? m->versions : NULL; v; v = v->next)
        last = v;
    return last;
}

wb__version *wb__version_new(void) {
    wb__version *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    v->refs = 1;
    wb__seg_init(&v->seg);
    return v;
}

void wb__version_ref(wb__version *v) {
    assert(v->refs > 0);
    v->refs++;
}

/* Closes the daemon's descriptors of an unlisted version that only holds
 * reference: no request or job can reach its segments any more, and the
 * kernel frees their pages once the last mapping elsewhere goes.  The
 * bytes stay charged until version_free(). */
static void version_close_if_held_only(wb__version *v) {
    if (v->listed || v->closed || v->refs != v->holds)
        return;
    for (wb__dseg *ds = v->dsegs; ds; ds = ds->next) {
        assert(ds->job == NULL); /* A job holds a reference on v. */
        wb__seg_close(&ds->seg);
    }
    if (v->seg.fd >= 0)
        wb__restart_closed(v);
    wb__seg_close(&v->seg);
    v->closed = 1;
}

uint64_t wb__version_charged(const wb__version *v) {
    uint64_t n = v->accounted;
    for (const wb__dseg *ds = v->dsegs; ds; ds = ds->next)
        n += ds->accounted;
    return n;
}

uint64_t wb__model_pinned(const wb__model *m) {
    uint64_t n = 0;
    for (const wb__version *v = m->versions; v; v = v->next)
        n += v->pinned != 0;
    return n;
}

/* Frees a version whose last reference is gone, returning its memory. */
static void version_free(wb__version *v) {
    assert(v->refs == 0);
    assert(!v->listed);
    for (size_t i = 0; v->by_src && i < v->n; i++)
        for (wb__derived *d = v->by_src[i], *next; d; d = next) {
            next = d->next_src;
            free(d);
        }
    for (wb__dseg *ds = v->dsegs, *next; ds; ds = next) {
        next = ds->next;
        assert(ds->job == NULL); /* A job holds a reference on v. */
        wb__seg_close(&ds->seg);
        wb__mem_refund(ds->accounted);
        wb__usage_refund(ds->charged_to, ds->accounted);
        free(ds);
    }
    if (v->seg.fd >= 0 && v->number)
        wb__restart_closed(v);
    wb__seg_close(&v->seg);
    wb__mem_refund(v->accounted);
    wb__usage_refund(v->charged_to, v->accounted);
    for (size_t i = 0; i < v->n; i++)
        free(v->t[i].name);
    for (size_t i = 0; i < v->nmeta; i++) {
        free(v->mkeys[i]);
        free(v->mvals[i]);
    }
    wb__model *m = v->model;
    free(v->t);
    free(v->offset);
    free(v->tie);
    free(v->by_src);
    free(v->nbytes);
    free(v->mkeys);
    free(v->mvals);
    free(v->map_tail);
    free(v);
    wb__model_unref(m);
}

void wb__version_unref(wb__version *v) {
    if (v == NULL)
        return;
    assert(v->refs > 0 && v->refs >= v->holds);
    if (--v->refs == 0)
        version_free(v);
    else
        version_close_if_held_only(v);
}

void wb__version_commit(wb__model *m, wb__version *v) {
    assert(v->model == NULL && !v->listed && v->number == 0);
    assert(v->refs >= 1);
    wb__model_ref(m);
    v->model = m;
    v->number = ++m->last_number;
    v->listed = 1;
    wb__version **pp = &m->versions;
    while (*pp)
        pp = &(*pp)->next;
    *pp = v;
    m->nversions++;
    wb__reg.versions++;
}

void wb__version_restore(wb__model *m, wb__version *v, uint64_t number) {
    assert(v->model == NULL && !v->listed && number > 0);
    wb__model_ref(m);
    v->model = m;
    v->number = number;
    v->listed = 1;
    if (m->last_number < number)
        m->last_number = number;
    wb__version **pp = &m->versions;
    while (*pp) {
        assert((*pp)->number < number);
        pp = &(*pp)->next;
    }
    *pp = v;
    m->nversions++;
    wb__reg.versions++;
}

/* Takes v off its model's list; why names the cause for the log. */
static void version_unlist(wb__version *v, const char *why) {
    assert(v->listed && v->model != NULL);
    wb__model *m = v->model;
    wb__version **pp = &m->versions;
    while (*pp && *pp != v)
        pp = &(*pp)->next;
    assert(*pp == v);
    *pp = v->next;
    v->next = NULL;
    v->listed = 0;
    assert(m->nversions > 0 && wb__reg.versions > 0);
    m->nversions--;
    wb__reg.versions--;
    wb__info("%s %s@%llu%s", why, m->name, (unsigned long long)v->number,
             v->holds ? " (still mapped: its memory stays charged until "
                        "the last holder lets go)"
                      : "");
    wb__restart_unlisted(v);
    wb__version_unref(v);
}

void wb__version_drop(wb__version *v) {
    version_unlist(v, "dropped");
}

size_t wb__retention_apply(wb__model *m) {
    if (wb__reg.keep == 0)
        return 0;
    uint64_t unpinned = 0;
    for (const wb__version *v = m->versions; v; v = v->next)
        unpinned += !v->pinned;
    size_t retired = 0;
    while (unpinned > wb__reg.keep) {
        wb__version *v = m->versions;
        while (v != NULL && v->pinned)
            v = v->next;
        assert(v != NULL); /* More unpinned than keep >= 1. */
        version_unlist(v, "retired");
        unpinned--;
        retired++;
    }
    return retired;
}

int wb__mem_charge(uint64_t bytes) {
    if (bytes > wb__reg.mem_limit ||
        wb__reg.mem_used > wb__reg.mem_limit - bytes)
        return WB_ELIMIT;
    wb__reg.mem_used += bytes;
    return 0;
}

void wb__mem_refund(uint64_t bytes) {
    assert(bytes <= wb__reg.mem_used);
    wb__reg.mem_used -= bytes;
}

void wb__seg_abandon(wb__segment *seg, uint64_t accounted) {
    if (seg->fd >= 0 && wb__seg_release(seg) != 0) {
        wb__warn("an abandoned segment keeps %llu bytes that a client may "
                 "hold: they stay charged",
                 (unsigned long long)wb__seg_allocated(seg));
        wb__reg.mem_pinned += accounted;
        accounted = 0;
    }
    wb__seg_close(seg);
    wb__mem_refund(accounted);
}

uint64_t wb__registry_shmem(void) {
    return wb__seg_allocated_total();
}

size_t wb__registry_models_held(void) {
    size_t n = 0;
    for (const wb__model *m = wb__reg.models; m; m = m->next)
        n += m->versions != NULL;
    return n;
}

/* A user's charged bytes. */
typedef struct usage {
    uint32_t uid;
    uint64_t bytes;
    struct usage *next;
} usage;

static usage *usages; /* Users with bytes charged. */

/* The bytes charged to each user, which quotas (access.c) are held
 * against. */

static usage **usage_slot(uint32_t uid) {
    usage **pp = &usages;
    while (*pp && (*pp)->uid != uid)
        pp = &(*pp)->next;
    return pp;
}

void wb__usage_charge(uint32_t uid, uint64_t bytes) {
    if (bytes == 0)
        return;
    usage **pp = usage_slot(uid);
    if (*pp == NULL && (*pp = calloc(1, sizeof(usage))) != NULL)
        (*pp)->uid = uid;
    if (*pp) /* Out of memory: the user's bytes go uncounted. */
        (*pp)->bytes += bytes;
}

void wb__usage_refund(uint32_t uid, uint64_t bytes) {
    usage **pp = usage_slot(uid);
    usage *u = *pp;
    if (u == NULL || bytes == 0)
        return;
    /* Clamped: a charge lost to a failed allocation is not refunded. */
    u->bytes -= bytes < u->bytes ? bytes : u->bytes;
    if (u->bytes == 0) {
        *pp = u->next;
        free(u);
    }
}

uint64_t wb__usage_of(uint32_t uid) {
    usage *u = *usage_slot(uid);
    return u ? u->bytes : 0;
}

void wb__registry_clear(void) {
    /* Holds are ended first (hold.h), so every version goes here.  The
     * reference keeps each model live meanwhile: a model becoming a
     * record could otherwise be forgotten (freed) under this loop. */
    for (wb__model *m = wb__reg.models; m; m = m->next) {
        wb__model_ref(m);
        while (m->versions)
            wb__version_drop(m->versions);
    }
    while (wb__reg.models) {
        wb__model *m = wb__reg.models;
        wb__reg.models = m->next;
        free(m->name);
        free(m);
    }
    wb__reg.nmodels = wb__reg.nrecords = 0;
    /* Last: dropping the versions above refunded their users. */
    while (usages) {
        usage *u = usages;
        usages = u->next;
        free(u);
    }
}
