/* restart.c -- Recovery at start, and the hooks that keep the descriptor
 * store, --persist and the state record current (restart.h). */
#include "restart.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <uv.h>

#include "fdstore.h"
#include "ident.h"
#include "log.h"
#include "persist.h"
#include "state.h"
#include "wbroker.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

static int stopping;       /* 1 after wb__restart_stop(). */
static uint64_t state_seq; /* Sequence of the last record rendered. */
static uv_timer_t render_timer;
static int timer_ready;   /* 1 once render_timer is initialised. */
static int render_queued; /* 1 while a render waits for the loop. */

/* 1 when any of the two ways of surviving is in use. */
static int active(void) {
    return !stopping && (wb__fdstore_on() || wb__persist_on());
}

/* Renders the state record and hands it to the store and --persist. */
static void render_now(void) {
    render_queued = 0;
    if (!active())
        return;
    wb__state st;
    if (wb__state_of_registry(++state_seq, &st) != 0) {
        wb__warn("out of memory rendering the state record");
        return;
    }
    wb__buf b = {0};
    wb__state_encode(&st, &b);
    wb__state_free(&st);
    if (b.oom) {
        wb__warn("out of memory rendering the state record");
        wb__buf_free(&b);
        return;
    }
    wb__fdstore_state(b.p, b.len, state_seq);
    wb__persist_state(b.p, b.len);
    wb__buf_free(&b);
}

static void on_render(uv_timer_t *t) {
    (void)t;
    render_now();
}

void wb__restart_changed(void) {
    if (!active() || render_queued)
        return;
    if (!timer_ready) {
        uv_timer_init(uv_default_loop(), &render_timer);
        uv_unref((uv_handle_t *)&render_timer);
        timer_ready = 1;
    }
    render_queued = 1;
    uv_timer_start(&render_timer, on_render, 0, 0);
}

void wb__restart_committed(wb__version *v) {
    if (!active())
        return;
    wb__fdstore_version(v);
    wb__persist_version(v);
    wb__restart_changed();
}

void wb__restart_unlisted(wb__version *v) {
    if (!active())
        return;
    wb__persist_version_gone(v);
    wb__restart_changed();
}

void wb__restart_closed(wb__version *v) {
    if (stopping)
        return;
    wb__fdstore_version_gone(v);
}

void wb__restart_hold(const wb__hold *h, int started) {
    if (!active())
        return;
    const wb__version *v = wb__hold_version(h);
    if (wb__fdstore_on()) {
        char name[WB_FDNAME_MAX];
        wb__fdname_hold(name, v->id, wb__hold_uid(h), wb__hold_pid(h),
                        wb__hold_serial(h));
        int fd = wb__hold_rfd(h);
        if (started)
            wb__fdstore_put(name, &fd, 1);
        else
            wb__fdstore_remove(name);
    }
    /* The record lists retired versions that holds keep charged. */
    if (!v->listed)
        wb__restart_changed();
}

void wb__restart_stop(void) {
    stopping = 1;
    wb__persist_stop();
    if (timer_ready) {
        uv_timer_stop(&render_timer);
        uv_close((uv_handle_t *)&render_timer, NULL);
        timer_ready = 0;
    }
}

/* ------------------------------------------------------------ recovery */

/* A version found at start, before it joins the registry. */
typedef struct cand {
    wb__version *v;   /* The version (one reference). */
    char *model;      /* Its model (owned). */
    uint64_t number;  /* Its number. */
    int from_store;   /* 1 from the descriptor store, 0 from --persist. */
    char fdname[256]; /* Its name in the store. */
} cand;

typedef struct cands {
    cand *c;    /* Entries. */
    size_t n;   /* Used. */
    size_t cap; /* Allocated. */
} cands;

static int cands_add(cands *cs, const cand *c) {
    if (cs->n == cs->cap) {
        size_t cap = cs->cap ? 2 * cs->cap : 16;
        cand *p = realloc(cs->c, cap * sizeof(*p));
        if (p == NULL)
            return -1;
        cs->c = p;
        cs->cap = cap;
    }
    cs->c[cs->n++] = *c;
    return 0;
}

static int in_store(void *arg, uint64_t id) {
    const cands *cs = arg;
    for (size_t i = 0; i < cs->n; i++)
        if (cs->c[i].v->id == id)
            return 1;
    return 0;
}

/* Reads a sealed memfd of at most max bytes whole into a new buffer. */
static int read_memfd(int fd, uint64_t max, uint8_t **out, size_t *len) {
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size > max)
        return -1;
    uint8_t *b = malloc((size_t)st.st_size + 1);
    if (b == NULL)
        return -1;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t k = pread(fd, b + got, (size_t)st.st_size - got, (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(b);
            return -1;
        }
        got += (size_t)k;
    }
    *out = b;
    *len = got;
    return 0;
}

/* Checks a version's descriptor from the store and rebuilds it: sealed
 * for good, whole, a header the daemon wrote whose identity matches the
 * name.  Returns 0 with c filled (the descriptor taken), or -1 with why. */
static int take_stored_version(wb__stored_fd *s, const wb__state *st, cand *c,
                               char *why, size_t whylen) {
    int want = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;
    int seals = fcntl(s->fd, F_GET_SEALS);
    struct stat sb;
    struct statfs fs;
    if (seals < 0 || (seals & want) != want) {
        snprintf(why, whylen, "not sealed for good");
        return -1;
    }
    if (fstat(s->fd, &sb) < 0 || fstatfs(s->fd, &fs) < 0 || sb.st_size <= 0 ||
        (uint64_t)sb.st_size % WB_SEG_UNIT != 0) {
        snprintf(why, whylen, "not a segment (size %lld)",
                 (long long)sb.st_size);
        return -1;
    }
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    wb__rebuilt rb;
    if (wb__read_header(s->fd, (uint64_t)sb.st_size, &hdr, &hlen) != 0) {
        snprintf(why, whylen, "no safetensors header");
        return -1;
    }
    int rc = wb__rebuild(hdr, hlen, 0, &rb, why, whylen);
    free(hdr);
    if (rc)
        return -1;
    wb__version *v = rb.v;
    const wb__state_model *sm = NULL;
    const wb__state_version *sv = wb__state_version_find(st, v->id, &sm);
    if (v->id != s->what.id || rb.ident.number != 0 ||
        wb__seg_round(v->image_len) != (uint64_t)sb.st_size) {
        snprintf(why, whylen, "its header does not match its name or size");
        wb__rebuilt_free(&rb);
        return -1;
    }
    if (sv && (sv->number != s->what.number ||
               strcmp(sm->name, rb.ident.model) != 0)) {
        snprintf(why, whylen, "the state record names it otherwise");
        wb__rebuilt_free(&rb);
        return -1;
    }
    v->seg.fd = s->fd;
    v->seg.size = (uint64_t)sb.st_size;
    v->seg.kind = (unsigned long)fs.f_type == HUGETLBFS_MAGIC ? WB_SEG_HUGETLB
                                                              : WB_SEG_4K;
    wb__seg_register(&v->seg);
    v->seg.huge = wb__seg_huge_bytes(&v->seg);
    if (v->seg.kind == WB_SEG_4K && v->seg.huge)
        v->seg.kind = WB_SEG_THP;
    v->stored = 1;
    if (sv) {
        memcpy(v->digest, sv->digest, WB_DIGEST_LEN);
    } else if (wb__digest_seg(&v->seg, v->image_len,
                              v->image_len - v->data_bytes, v->digest) != 0) {
        snprintf(why, whylen, "cannot digest it: %s", strerror(errno));
        v->stored = 0;
        wb__seg_close(&v->seg); /* Closes s->fd. */
        s->fd = -1;
        wb__rebuilt_free(&rb);
        return -1;
    }
    v->accounted = v->seg.size; /* Charged when it joins the registry. */
    s->fd = -1;
    c->v = v;
    c->model = rb.ident.model;
    c->number = s->what.number;
    c->from_store = 1;
    snprintf(c->fdname, sizeof(c->fdname), "%s", s->name);
    rb.ident.model = NULL;
    rb.v = NULL;
    wb__rebuilt_free(&rb);
    return 0;
}

static int cmp_cand(const void *a, const void *b) {
    const cand *x = a, *y = b;
    int c = strcmp(x->model, y->model);
    if (c)
        return c;
    return x->number < y->number ? -1 : x->number > y->number;
}

/* Drops a candidate that will not be served. */
static void cand_discard(cand *c, const char *why) {
    c->v->accounted = 0; /* Never charged. */
    wb__info("not restoring %s@%llu (%s): %s", c->model,
             (unsigned long long)c->number,
             c->from_store ? "descriptor store" : "--persist", why);
    if (!c->from_store) {
        wb__persist_forget(c->v->id);
    } else {
        wb__fdstore_remove(c->fdname);
        c->v->stored = 0;
    }
    /* Freeing it removes it from the store (its segment closes). */
    wb__version_unref(c->v);
    free(c->model);
    c->v = NULL;
    c->model = NULL;
}

/* Finds a listed version by id. */
static wb__version *listed_by_id(uint64_t id) {
    for (wb__model *m = wb__reg.models; m; m = m->next)
        for (wb__version *v = m->versions; v; v = v->next)
            if (v->id == id)
                return v;
    return NULL;
}

/* The retired-but-held version id of the record, made once (ghosts[]),
 * charging its bytes as before; NULL when the record does not know it. */
static wb__version *retired_ghost(const wb__state *st, uint64_t id,
                                  wb__version ***ghosts, size_t *nghosts) {
    for (size_t i = 0; i < *nghosts; i++)
        if ((*ghosts)[i]->id == id)
            return (*ghosts)[i];
    const wb__state_retired *r = NULL;
    for (size_t i = 0; st && i < st->nr; i++)
        if (st->r[i].id == id)
            r = &st->r[i];
    if (r == NULL)
        return NULL;
    wb__version **g = realloc(*ghosts, (*nghosts + 1) * sizeof(*g));
    wb__version *v = g ? wb__version_new() : NULL;
    wb__model *m = v ? wb__model_acquire(r->model) : NULL;
    if (g)
        *ghosts = g;
    if (m == NULL) {
        wb__version_unref(v);
        return NULL;
    }
    v->model = m; /* The version takes the acquired reference. */
    v->id = id;
    v->number = r->number;
    v->closed = 1;
    v->charged_to = r->uid;
    v->accounted = r->bytes;
    /* Charged whatever the limit says now: the pages are held. */
    wb__reg.mem_used += r->bytes;
    wb__usage_charge(r->uid, r->bytes);
    g[(*nghosts)++] = v;
    return v;
}

int wb__restart_recover(const char *persist_dir, int *listen_fd) {
    uint64_t t0 = uv_hrtime();
    wb__fdstore_init();
    wb__stored_fd *sfd = NULL;
    size_t ns = 0;
    if (wb__fdstore_take(listen_fd, &sfd, &ns) != 0) {
        free(sfd);
        return -1;
    }
    if (persist_dir && wb__persist_open(persist_dir) != 0) {
        free(sfd);
        return -1;
    }

    /* The newest state record: the store's, the directory's. */
    wb__state st;
    int have_state = 0;
    memset(&st, 0, sizeof(st));
    for (size_t i = 0; i < ns; i++) {
        if (sfd[i].what.kind != WB_FD_STATE)
            continue;
        uint8_t *b = NULL;
        size_t len = 0;
        wb__state one;
        char err[256] = "unreadable";
        if (read_memfd(sfd[i].fd, WB_STATE_MAX_BYTES, &b, &len) == 0 &&
            wb__state_decode(b, len, &one, err, sizeof(err)) == 0) {
            if (!have_state || one.seq > st.seq) {
                wb__state_free(&st);
                st = one;
                have_state = 1;
            } else {
                wb__state_free(&one);
            }
        } else {
            wb__warn("state record %s from the store: %s", sfd[i].name, err);
        }
        free(b);
    }
    uint64_t store_seq = have_state ? st.seq : 0;
    for (size_t i = 0; i < ns; i++)
        if (sfd[i].what.kind == WB_FD_STATE) {
            if (!have_state || sfd[i].what.number != st.seq)
                wb__fdstore_remove(sfd[i].name);
            close(sfd[i].fd);
            sfd[i].fd = -1;
        }
    if (have_state)
        wb__fdstore_state_adopted(st.seq);
    if (wb__persist_on()) {
        wb__state disk;
        if (wb__persist_load_state(&disk) == 0) {
            if (!have_state || disk.seq > st.seq) {
                wb__state_free(&st);
                st = disk;
                have_state = 1;
            } else {
                wb__state_free(&disk);
            }
        }
    }
    state_seq = have_state ? st.seq : 0;
    if (store_seq > state_seq)
        state_seq = store_seq;

    /* Versions: the store's first, then the directory's it lacks. */
    cands cs = {0};
    for (size_t i = 0; i < ns; i++) {
        if (sfd[i].what.kind != WB_FD_VERSION)
            continue;
        cand c;
        char why[512];
        memset(&c, 0, sizeof(c));
        if (take_stored_version(&sfd[i], have_state ? &st : NULL, &c, why,
                                sizeof(why)) != 0 ||
            cands_add(&cs, &c) != 0) {
            if (c.v) {
                wb__version_unref(c.v);
                free(c.model);
                snprintf(why, sizeof(why), "out of memory");
            }
            wb__warn("descriptor %s from the store is not served: %s",
                     sfd[i].name, why);
            wb__fdstore_remove(sfd[i].name);
            if (sfd[i].fd >= 0)
                close(sfd[i].fd);
            sfd[i].fd = -1;
        }
    }
    size_t from_store = cs.n;
    if (wb__persist_on()) {
        wb__persisted *pv = NULL;
        size_t np = 0;
        if (wb__persist_recover(in_store, &cs, &pv, &np) != 0) {
            wb__error("out of memory reading --persist %s", persist_dir);
            return -1;
        }
        for (size_t i = 0; i < np; i++) {
            cand c = {pv[i].v, pv[i].model, pv[i].number, 0, ""};
            if (cands_add(&cs, &c) != 0) {
                wb__version_unref(c.v);
                free(c.model);
            }
        }
        free(pv);
    }

    /* Into the registry, each model's versions in number order; what the
     * record says was dropped stays dropped. */
    if (cs.n > 0) /* cs.c is NULL when nothing came back. */
        qsort(cs.c, cs.n, sizeof(cand), cmp_cand);
    uint64_t nrec = 0, bytes = 0, nstore = 0, disk_bytes = 0;
    for (size_t i = 0; i < cs.n; i++) {
        cand *c = &cs.c[i];
        const wb__state_model *sm =
            have_state ? wb__state_model_find(&st, c->model) : NULL;
        const wb__state_version *sv =
            have_state ? wb__state_version_find(&st, c->v->id, NULL) : NULL;
        wb__model *m = wb__model_find(c->model);
        wb__version *last = m ? wb__version_latest(m) : NULL;
        if (sm && !sv && c->number <= sm->last_number) {
            cand_discard(c, "dropped or retired before the restart");
            continue;
        }
        if (last && last->number >= c->number) {
            cand_discard(c, "another copy has its number");
            continue;
        }
        if (wb__mem_charge(c->v->accounted) != 0) {
            cand_discard(c, "over the memory limit");
            continue;
        }
        if ((m = wb__model_acquire(c->model)) == NULL) {
            wb__mem_refund(c->v->accounted);
            cand_discard(c, "too many models");
            continue;
        }
        wb__version *v = c->v;
        if (sv) {
            v->pinned = sv->pinned;
            v->charged_to = sv->charged_to;
        }
        wb__usage_charge(v->charged_to, v->accounted);
        wb__version_restore(m, v, c->number);
        if (m->owner == WB_NO_OWNER)
            m->owner = sm ? sm->owner : v->charged_to;
        if (sm && m->last_number < sm->last_number)
            m->last_number = sm->last_number;
        wb__model_unref(m);
        nrec++;
        nstore += c->from_store;
        bytes += v->image_len;
        disk_bytes += c->from_store ? 0 : v->image_len;
        free(c->model);
    }
    free(cs.c);
    /* Names remembered without versions keep their numbers. */
    for (size_t i = 0; have_state && i < st.nm; i++) {
        wb__model *m = wb__model_find(st.m[i].name);
        if (m == NULL && (m = wb__model_acquire(st.m[i].name)) != NULL) {
            m->last_number = st.m[i].last_number;
            m->owner = st.m[i].owner;
            wb__model_unref(m);
        }
    }

    /* Holds: on listed versions, or on retired ones the record charges. */
    wb__version **ghosts = NULL;
    size_t nghosts = 0, nholds = 0;
    for (size_t i = 0; i < ns; i++) {
        if (sfd[i].what.kind != WB_FD_HOLD || sfd[i].fd < 0)
            continue;
        const wb__fdname *w = &sfd[i].what;
        wb__version *v = listed_by_id(w->id);
        if (v == NULL)
            v = retired_ghost(have_state ? &st : NULL, w->id, &ghosts,
                              &nghosts);
        if (v == NULL ||
            wb__hold_adopt(v, w->uid, w->pid, sfd[i].fd, w->serial) != 0) {
            if (v == NULL)
                close(sfd[i].fd);
            wb__debug("hold %s not taken back", sfd[i].name);
            wb__fdstore_remove(sfd[i].name);
        } else {
            nholds++;
        }
        sfd[i].fd = -1;
    }
    /* The holds alone keep a retired version now. */
    for (size_t i = 0; i < nghosts; i++)
        wb__version_unref(ghosts[i]);
    free(ghosts);
    free(sfd);
    wb__state_free(&st);

    /* Each copy fills what the other lacks. */
    for (wb__model *m = wb__reg.models; m; m = m->next)
        for (wb__version *v = m->versions; v; v = v->next) {
            wb__fdstore_version(v);
            if (wb__persist_on() && !wb__persist_has(v->id))
                wb__persist_version(v);
            else if (wb__persist_on())
                v->persisted = 1;
        }
    wb__persist_stats_now.recovered = nrec - nstore;
    double ms = (double)(uv_hrtime() - t0) / 1e6;
    if (nrec || nholds || wb__persist_on())
        wb__info("recovered %llu versions (%llu bytes) in %.0f ms: %llu "
                 "from the descriptor store, %llu from %s; %zu holds taken "
                 "back",
                 (unsigned long long)nrec, (unsigned long long)bytes, ms,
                 (unsigned long long)nstore,
                 (unsigned long long)(nrec - nstore),
                 persist_dir ? persist_dir : "no --persist directory", nholds);
    if (wb__persist_on())
        wb__info("recovered %llu versions (%llu bytes) from %s in %.0f ms",
                 (unsigned long long)(nrec - nstore),
                 (unsigned long long)disk_bytes, persist_dir, ms);
    (void)from_store;
    wb__restart_changed();
    return 0;
}
