/* registry.c -- Models, committed versions, references and accounting. */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"

wb__broker *wb__g;

wb__model *wb__model_find(wb__broker *b, const char *name) {
    for (wb__model *m = b->models; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

wb__model *wb__model_get(wb__broker *b, const char *name) {
    wb__model *m = wb__model_find(b, name);
    if (m)
        return m;
    if (b->nmodels >= WB_MAX_MODELS)
        return NULL;
    m = calloc(1, sizeof(*m));
    if (m == NULL || (m->name = strdup(name)) == NULL) {
        free(m);
        return NULL;
    }
    m->next = b->models;
    b->models = m;
    b->nmodels++;
    return m;
}

wb__version *wb__version_find(wb__model *m, uint64_t number) {
    if (m == NULL)
        return NULL;
    if (number == 0)
        return wb__version_latest(m);
    for (wb__version *v = m->versions; v; v = v->next)
        if (v->number == number)
            return v;
    return NULL;
}

wb__version *wb__version_latest(wb__model *m) {
    wb__version *last = NULL;
    for (wb__version *v = m ? m->versions : NULL; v; v = v->next)
        last = v;
    return last;
}

void wb__version_ref(wb__version *v) { v->refs++; }

/* Frees a version whose last reference is gone, returning its memory. */
static void version_free(wb__version *v) {
    for (size_t i = 0; v->by_src && i < v->n; i++)
        for (wb__derived *d = v->by_src[i], *next; d; d = next) {
            next = d->next_src;
            free(d);
        }
    for (wb__dseg *ds = v->dsegs, *next; ds; ds = next) {
        next = ds->next;
        wb__seg_close(&ds->seg);
        if (wb__g)
            wb__mem_refund(wb__g, ds->accounted);
        free(ds);
    }
    wb__seg_close(&v->seg);
    if (wb__g)
        wb__mem_refund(wb__g, v->accounted);
    for (size_t i = 0; i < v->n; i++)
        free(v->t[i].name);
    for (size_t i = 0; i < v->nmeta; i++) {
        free(v->mkeys[i]);
        free(v->mvals[i]);
    }
    free(v->t);
    free(v->offset);
    free(v->tie);
    free(v->by_src);
    free(v->nbytes);
    free(v->mkeys);
    free(v->mvals);
    free(v);
}

void wb__version_unref(wb__version *v) {
    if (v != NULL && --v->refs == 0)
        version_free(v);
}

void wb__version_drop(wb__broker *b, wb__version *v) {
    wb__model *m = v->model;
    wb__version **pp = &m->versions;
    while (*pp && *pp != v)
        pp = &(*pp)->next;
    if (*pp == NULL)
        return;
    *pp = v->next;
    v->next = NULL;
    v->dropped = 1;
    m->nversions--;
    b->versions--;
    wb__info("dropped %s@%llu", m->name, (unsigned long long)v->number);
    wb__version_unref(v);
}

void wb__model_gc(wb__broker *b, wb__model *m) {
    if (m->versions || m->watchers)
        return;
    wb__model **pp = &b->models;
    while (*pp && *pp != m)
        pp = &(*pp)->next;
    if (*pp == NULL)
        return;
    *pp = m->next;
    b->nmodels--;
    free(m->name);
    free(m);
}

int wb__mem_charge(wb__broker *b, uint64_t bytes) {
    if (bytes > b->mem_limit || b->mem_used > b->mem_limit - bytes)
        return WB_ELIMIT;
    b->mem_used += bytes;
    return 0;
}

void wb__mem_refund(wb__broker *b, uint64_t bytes) {
    b->mem_used = bytes > b->mem_used ? 0 : b->mem_used - bytes;
}

uint64_t wb__model_readers(wb__broker *b, const char *name) {
    uint64_t n = 0;
    for (wb__conn *c = b->conns; c; c = c->next)
        for (size_t i = 0; i < c->nmapped; i++)
            if (strcmp(c->mapped[i], name) == 0) {
                n++;
                break;
            }
    return n;
}
