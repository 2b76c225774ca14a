/* test_chaos.c -- Many client processes doing random things to one
 * wbrokerd at once, then a check that nothing leaked or changed.
 *
 * CHAOS_PROCS children run for WB_CHAOS_SECONDS (default 15) with a seed
 * each (printed; WB_CHAOS_SEED fixes the first): they publish small random
 * models into four shared names and commit, abort or die midway; watch
 * with short timeouts; map with rules and casts and check every byte they
 * get; drop models and versions; and disconnect at random points, with
 * requests in flight or pipelined.  Every version's content follows from
 * the seed in its metadata, so any process can check any mapping bit for
 * bit.  The parent respawns children that die.  In the end the daemon must
 * be alive, back to the descriptors, segments and memory it had before,
 * and three reference models nobody touched must read back unchanged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../daemon/convert.h"
#include "harness.h"

#define CHAOS_PROCS 8           /* Client processes at any time. */
#define CHAOS_SECONDS 15        /* Default run time. */
#define CHAOS_MODELS 4          /* Shared names c-0 .. c-3. */
#define CHAOS_REFS 3            /* Reference models nobody touches. */
#define MAX_TENSORS 20          /* Tensors of one random model. */
#define MIN_BYTES 1024          /* Smallest random model. */
#define MAX_BYTES (2 << 20)     /* Largest random model. */
#define HELD_MAPS 6             /* Mappings a child keeps for a while. */
#define SHMEM_SLACK (16u << 20) /* Tolerance on /proc/meminfo Shmem. */
#define EXIT_CHOSEN 42          /* A child's exit on purpose. */

/* ------------------------------------------------------------ content */

/* A random model, all of it derived from one seed. */
typedef struct model_spec {
    uint64_t seed;              /* What derives everything. */
    size_t n;                   /* Tensors. */
    char name[MAX_TENSORS][24]; /* "f<i>.w" (F32) or "x<i>.w". */
    int dtype[MAX_TENSORS];     /* Dtypes. */
    int64_t nelem[MAX_TENSORS]; /* Elements (one dimension). */
} model_spec;

static void spec_derive(uint64_t seed, model_spec *s) {
    memset(s, 0, sizeof(*s));
    s->seed = seed;
    uint64_t r = wbt_mix(seed);
    s->n = 1 + (size_t)(r % MAX_TENSORS);
    /* Total bytes log-uniform between MIN_BYTES and MAX_BYTES. */
    double span = (double)(wbt_mix(r + 1) % 1000) / 1000.0;
    double total = MIN_BYTES * exp2(span * 11.0);
    static const int others[] = {WB_F16, WB_BF16, WB_I32, WB_U8, WB_BOOL};
    for (size_t i = 0; i < s->n; i++) {
        uint64_t q = wbt_mix(r + 100 + i);
        int f32 = q % 10 < 7;
        s->dtype[i] = f32 ? WB_F32 : others[(q >> 8) % 5];
        snprintf(s->name[i], sizeof(s->name[i]), "%c%zu.w", f32 ? 'f' : 'x', i);
        /* Between half and all of an equal share: the whole model stays
         * within MAX_BYTES. */
        double share =
            total / (double)s->n * (0.5 + (double)((q >> 16) % 51) / 100.0);
        int64_t ne = (int64_t)(share / (double)wb_dtype_size(s->dtype[i]));
        s->nelem[i] = ne < 1 ? 1 : ne;
    }
}

/* Fills buf with tensor i's bytes. */
static void spec_bytes(const model_spec *s, size_t i, void *buf) {
    uint64_t k = wbt_mix(s->seed ^ (0x1234567ull * (i + 1)));
    int64_t n = s->nelem[i];
    switch (s->dtype[i]) {
    case WB_F32:
        for (int64_t j = 0; j < n; j++)
            ((float *)buf)[j] =
                (float)((int64_t)(wbt_mix(k + (uint64_t)j) % 2000001) -
                        1000000) /
                64.0f;
        break;
    case WB_F16:
    case WB_BF16: /* Finite values: no NaN or infinity exponents. */
        for (int64_t j = 0; j < n; j++)
            ((uint16_t *)buf)[j] =
                (uint16_t)(wbt_mix(k + (uint64_t)j) & 0xbbff);
        break;
    case WB_I32:
        for (int64_t j = 0; j < n; j++)
            ((uint32_t *)buf)[j] = (uint32_t)wbt_mix(k + (uint64_t)j);
        break;
    case WB_U8:
        for (int64_t j = 0; j < n; j++)
            ((uint8_t *)buf)[j] = (uint8_t)wbt_mix(k + (uint64_t)j);
        break;
    default: /* BOOL */
        for (int64_t j = 0; j < n; j++)
            ((uint8_t *)buf)[j] = (uint8_t)(wbt_mix(k + (uint64_t)j) & 1);
        break;
    }
}

static size_t spec_nbytes(const model_spec *s, size_t i) {
    return (size_t)s->nelem[i] * wb_dtype_size(s->dtype[i]);
}

/* ------------------------------------------------------------ shared */

enum {
    OP_PUBLISH,
    OP_COMMIT,
    OP_ABORT,
    OP_DIE_PUBLISHING,
    OP_LIMIT,
    OP_MAP,
    OP_MAP_RULES,
    OP_MAP_GONE,
    OP_WATCH,
    OP_WATCH_NEW,
    OP_DROP,
    OP_DROP_GONE,
    OP_RAW_HANGUP,
    OP_RECONNECT,
    OP_STATUS,
    OP_UNMAP,
    OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    "publish",        "commit",
    "abort",          "died publishing",
    "memory limit",   "map",
    "map with rules", "map of a gone version",
    "watch",          "watch saw a new version",
    "drop",           "drop of a gone model/version",
    "raw hang-up",    "reconnect",
    "status/list",    "unmap later",
};

/* Counters the children share with the parent (MAP_SHARED). */
typedef struct chaos_shared {
    uint64_t ops[OP_COUNT]; /* Operations done, by kind. */
    uint64_t failures;      /* Checks that failed in a child. */
} chaos_shared;

static chaos_shared *shared;

static void count(int op) {
    __atomic_add_fetch(&shared->ops[op], 1, 0);
}

/* ------------------------------------------------------------ child */

/* A child's state. */
typedef struct child {
    const wbt_daemon *d;         /* The daemon. */
    uint64_t seed;               /* The child's own seed. */
    uint64_t rng;                /* Its random state. */
    double end;                  /* When to stop. */
    wb_client *c;                /* Library connection. */
    wb_mapping *held[HELD_MAPS]; /* Mappings kept for a while. */
    uint64_t seen[CHAOS_MODELS]; /* Highest version seen per model. */
} child;

static uint64_t rnd(child *k) {
    k->rng += 0x9e3779b97f4a7c15ull;
    return wbt_mix(k->rng);
}
static int chance(child *k, int percent) {
    return (int)(rnd(k) % 100) < percent;
}

/* Reports a failed check and ends the child with status 1. */
static void child_fail(child *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void child_fail(child *k, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "chaos child %d (seed %llu): %s\n", (int)getpid(),
            (unsigned long long)k->seed, msg);
    __atomic_add_fetch(&shared->failures, 1, 0);
    _exit(1);
}

/* Fails unless rc is 0 or one of the codes listed (terminated by 0). */
static void expect(child *k, const char *what, int rc, ...) {
    if (rc == 0)
        return;
    va_list ap;
    va_start(ap, rc);
    for (int ok; (ok = va_arg(ap, int)) != 0;)
        if (rc == ok) {
            va_end(ap);
            return;
        }
    va_end(ap);
    child_fail(k, "%s: %s (%s)", what, wb_err_name(rc), wb_errmsg(k->c));
}

static void model_name(int m, char *buf) {
    snprintf(buf, 8, "c-%d", m);
}

/* Records that model m has a version v; fails if a new commit's number
 * is not above every number seen for the name before. */
static void saw_version(child *k, int m, uint64_t v, int fresh) {
    if (fresh && v <= k->seen[m])
        child_fail(k,
                   "c-%d: commit got version %llu, but %llu was seen "
                   "before (version numbers must not repeat)",
                   m, (unsigned long long)v, (unsigned long long)k->seen[m]);
    if (v > k->seen[m])
        k->seen[m] = v;
}

/* Publishes a random model (seed in its metadata) into name; fate decides
 * what happens before the commit. */
static void do_publish(child *k) {
    int mi = (int)(rnd(k) % CHAOS_MODELS);
    char model[8];
    model_name(mi, model);
    model_spec s;
    spec_derive(rnd(k), &s);
    wb_tensor_spec ts[MAX_TENSORS];
    for (size_t i = 0; i < s.n; i++)
        ts[i] = (wb_tensor_spec){s.name[i], s.dtype[i], 1, &s.nelem[i], NULL};
    char seedstr[24];
    snprintf(seedstr, sizeof(seedstr), "%llu", (unsigned long long)s.seed);
    wb_kv kv = {"seed", seedstr};
    wb_publish *p = NULL;
    count(OP_PUBLISH);
    int rc = wb_publish_begin(k->c, model, ts, s.n, &kv, 1, &p);
    if (rc == WB_ELIMIT || rc == WB_ENOSPC) {
        count(OP_LIMIT);
        expect(k, "drop after the limit", wb_drop(k->c, model, 0), WB_ENOMODEL,
               0);
        return;
    }
    expect(k, "publish", rc, 0);
    int fate = (int)(rnd(k) % 100);
    int by_map = chance(k, 50);
    void *buf = malloc(MAX_BYTES + 64);
    if (buf == NULL)
        child_fail(k, "out of memory");
    for (size_t i = 0; i < s.n; i++) {
        if (fate >= 90 && i == s.n / 2) { /* Die midway through writing. */
            count(OP_DIE_PUBLISHING);
            if (fate >= 95)
                raise(SIGKILL);
            _exit(EXIT_CHOSEN);
        }
        spec_bytes(&s, i, buf);
        if (by_map) {
            size_t nb = 0;
            void *dst = wb_publish_data(p, i, &nb);
            if (dst == NULL || nb != spec_nbytes(&s, i))
                child_fail(k, "wb_publish_data: %s", wb_errmsg(k->c));
            memcpy(dst, buf, nb);
        } else {
            expect(k, "publish_write",
                   wb_publish_write(p, i, buf, spec_nbytes(&s, i), 0), 0);
        }
    }
    free(buf);
    if (fate >= 85 && fate < 90) { /* Everything written, then gone. */
        count(OP_DIE_PUBLISHING);
        if (fate >= 88)
            raise(SIGKILL);
        _exit(EXIT_CHOSEN);
    }
    if (fate >= 70 && fate < 85) {
        count(OP_ABORT);
        wb_publish_abort(p);
        return;
    }
    uint64_t v = 0;
    rc = wb_publish_commit(p, &v);
    expect(k, "commit", rc, 0);
    count(OP_COMMIT);
    saw_version(k, mi, v, 1);
}

/* The rules of one map request and what they do to a source name. */
typedef struct chaos_rules {
    int include_f; /* include "f*": F32 tensors only. */
    int rename;    /* 0 none, 1 exact, 2 prefix, 3 add, 4 regex */
    int cast;      /* 0, or the dtype F32 tensors become. */
} chaos_rules;

/* Target name of source name src under r, into out. */
static void rules_apply(const chaos_rules *r, const char *src, char *out,
                        size_t len) {
    if (r->rename == 1 && strcmp(src, "f0.w") == 0)
        snprintf(out, len, "first");
    else if (r->rename == 2 && src[0] == 'f')
        snprintf(out, len, "g%s", src + 1);
    else if (r->rename == 3)
        snprintf(out, len, "m.%s", src);
    else if (r->rename == 4 && src[0] == 'x')
        snprintf(out, len, "y%s", src + 1);
    else
        snprintf(out, len, "%s", src);
}

static wb_rules *rules_build(const chaos_rules *r) {
    wb_rules *w = wb_rules_new();
    if (r->include_f)
        wb_rules_include(w, "f*");
    if (r->rename == 1)
        wb_rules_rename(w, "f0.w", "first");
    else if (r->rename == 2)
        wb_rules_rename_prefix(w, "f", "g");
    else if (r->rename == 3)
        wb_rules_rename_prefix(w, "", "m.");
    else if (r->rename == 4)
        wb_rules_rename_regex(w, "x(\\d+)\\.w", "y\\1.w");
    if (r->cast) { /* Only F32 tensors: their targets, after renaming. */
        static const char *const glob[] = {"f*", "f*", "g*", "m.f*", "f*"};
        wb_rules_cast(w, glob[r->rename], r->cast);
    }
    return w;
}

/* Checks every tensor of m (mapped under rules r, NULL for none) against
 * the seed in its metadata. */
static void check_mapping(child *k, const wb_mapping *m, const chaos_rules *r,
                          const char *model) {
    const char *seedstr = wb_map_meta(m, "seed");
    if (seedstr == NULL)
        child_fail(k, "%s@%llu: no seed in its metadata", model,
                   (unsigned long long)wb_map_version(m));
    model_spec s;
    spec_derive(strtoull(seedstr, NULL, 10), &s);
    chaos_rules none = {0};
    if (r == NULL)
        r = &none;
    size_t want = 0;
    for (size_t i = 0; i < s.n; i++)
        want += !r->include_f || s.name[i][0] == 'f';
    if (wb_map_count(m) != want)
        child_fail(k, "%s@%llu (seed %s): %zu tensors mapped, %zu expected",
                   model, (unsigned long long)wb_map_version(m), seedstr,
                   wb_map_count(m), want);
    void *src = malloc(MAX_BYTES + 64), *conv = malloc(MAX_BYTES + 64);
    if (src == NULL || conv == NULL)
        child_fail(k, "out of memory");
    for (size_t t = 0; t < wb_map_count(m); t++) {
        wb_tensor x;
        if (wb_map_tensor(m, t, &x) != 0)
            child_fail(k, "wb_map_tensor %zu", t);
        size_t i = 0;
        while (i < s.n && strcmp(s.name[i], x.source) != 0)
            i++;
        if (i == s.n)
            child_fail(k, "%s: unknown source tensor %s", model, x.source);
        char target[32];
        rules_apply(r, s.name[i], target, sizeof(target));
        if (strcmp(x.name, target) != 0)
            child_fail(k, "%s: %s mapped as %s, expected %s", model, x.source,
                       x.name, target);
        int dt = s.dtype[i] == WB_F32 && r->cast ? r->cast : s.dtype[i];
        if (x.dtype != dt || x.cast != (dt != s.dtype[i]) || x.ndim != 1 ||
            x.shape[0] != s.nelem[i] ||
            x.nbytes != (size_t)s.nelem[i] * wb_dtype_size(dt))
            child_fail(k,
                       "%s: %s has dtype %d cast %d nbytes %zu, "
                       "expected %d",
                       model, x.name, x.dtype, x.cast, x.nbytes, dt);
        spec_bytes(&s, i, src);
        const void *exp = src;
        if (dt != s.dtype[i]) {
            wb__convert(s.dtype[i], dt, src, conv, (size_t)s.nelem[i]);
            exp = conv;
        }
        if (memcmp(x.data, exp, x.nbytes) != 0)
            child_fail(k, "%s@%llu (seed %s): bytes of %s differ", model,
                       (unsigned long long)wb_map_version(m), seedstr, x.name);
    }
    free(src);
    free(conv);
}

/* Keeps m for a while (unmapping, after a last check, what it replaces). */
static void hold(child *k, wb_mapping *m) {
    size_t slot = (size_t)(rnd(k) % HELD_MAPS);
    if (k->held[slot]) {
        check_mapping(k, k->held[slot], NULL, "held");
        wb_unmap(k->held[slot]);
        count(OP_UNMAP);
    }
    k->held[slot] = m;
}

static void do_map(child *k) {
    int mi = (int)(rnd(k) % CHAOS_MODELS);
    char model[8];
    model_name(mi, model);
    uint64_t ver = chance(k, 70) ? 0 : 1 + rnd(k) % (k->seen[mi] + 2);
    int flags = chance(k, 50) ? WB_MAP_SHARED : WB_MAP_PRIVATE;
    chaos_rules r = {0};
    int with_rules = chance(k, 60);
    if (with_rules) {
        r.include_f = chance(k, 30);
        r.rename = (int)(rnd(k) % 5);
        static const int casts[] = {0, WB_F16, WB_BF16};
        r.cast = casts[rnd(k) % 3];
    }
    wb_rules *w = with_rules ? rules_build(&r) : NULL;
    wb_mapping *m = NULL;
    int rc = wb_load(k->c, model, ver, NULL, w, flags, &m);
    wb_rules_free(w);
    if (rc == WB_ENOMODEL || rc == WB_ENOVERSION) {
        count(OP_MAP_GONE);
        return;
    }
    if (rc == WB_ELIMIT || rc == WB_ENOSPC) {
        count(OP_LIMIT);
        return;
    }
    expect(k, "map", rc, 0);
    count(with_rules ? OP_MAP_RULES : OP_MAP);
    saw_version(k, mi, wb_map_version(m), 0);
    check_mapping(k, m, with_rules ? &r : NULL, model);
    if (!with_rules && chance(k, 50))
        hold(k, m); /* Kept across drops and other publishes. */
    else
        wb_unmap(m);
}

static void do_watch(child *k) {
    int mi = (int)(rnd(k) % CHAOS_MODELS);
    char model[8];
    model_name(mi, model);
    uint64_t after = k->seen[mi];
    int timeout = (int)(rnd(k) % 200);
    uint64_t v = UINT64_MAX;
    expect(k, "watch", wb_watch(k->c, model, after, timeout, &v), 0);
    if (v < after)
        child_fail(k, "watch %s after %llu gave %llu", model,
                   (unsigned long long)after, (unsigned long long)v);
    count(v > after ? OP_WATCH_NEW : OP_WATCH);
    saw_version(k, mi, v, 0);
}

static void do_drop(child *k) {
    int mi = (int)(rnd(k) % CHAOS_MODELS);
    char model[8];
    model_name(mi, model);
    uint64_t ver = chance(k, 30) ? 0 : 1 + rnd(k) % (k->seen[mi] + 1);
    int rc = wb_drop(k->c, model, ver);
    expect(k, "drop", rc, WB_ENOMODEL, WB_ENOVERSION, 0);
    count(rc ? OP_DROP_GONE : OP_DROP);
}

static void do_status(child *k) {
    wb_status st;
    expect(k, "status", wb_get_status(k->c, &st), 0);
    wb_model_info *mi = NULL;
    size_t n = 0;
    expect(k, "list", wb_list(k->c, &mi, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (mi[i].nversions == 0 || mi[i].latest == 0)
            child_fail(k, "list: %s has %llu versions, latest %llu", mi[i].name,
                       (unsigned long long)mi[i].nversions,
                       (unsigned long long)mi[i].latest);
    wb_model_info_free(mi, n);
    count(OP_STATUS);
}

/* A raw connection that hangs up at a random point: with pipelined
 * requests unread, in the middle of a frame, or in the middle of filling
 * a publish. */
static void do_raw_hangup(child *k) {
    int fd = wbt_raw_connect(k->d);
    if (fd < 0)
        child_fail(k, "raw connect failed");
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    int how = (int)(rnd(k) % 3);
    int mi = (int)(rnd(k) % CHAOS_MODELS);
    char model[8];
    model_name(mi, model);
    if (how == 0) { /* Pipelined requests, some of them slow. */
        int n = 1 + (int)(rnd(k) % 8);
        for (int i = 0; i < n; i++) {
            uint64_t id = 2 + (uint64_t)i;
            switch (rnd(k) % 6) {
            case 0:
                wbt_frames_map(&f, id, model, 0);
                break;
            case 1: /* Answered by someone's commit, or never. */
                wbt_frames_watch(&f, id, model,
                                 chance(k, 50) ? k->seen[mi] : UINT64_MAX / 2,
                                 (int64_t)(rnd(k) % 500));
                break;
            case 2:
                wbt_frames_status(&f, id);
                break;
            case 3:
                wbt_frames_drop(&f, id, model, chance(k, 50) ? 0 : k->seen[mi]);
                break;
            default:
                wbt_frames_publish_f32(&f, id, model, 2, 1024);
                break;
            }
        }
    } else if (how == 1) { /* A frame cut short. */
        wbt_frames_publish_f32(&f, 2, model, 3, 4096);
        f.len -= 1 + rnd(k) % 20;
    } else { /* A publish left half written. */
        wbt_frames_publish_f32(&f, 2, model, 2, 100000);
    }
    wbt_frames_send(fd, &f);
    wbt_frames_free(&f);
    int replies = how == 2 ? 2 : (int)(rnd(k) % 3);
    for (int i = 0; i < replies; i++) {
        wbt_reply r;
        int err = wbt_raw_read(fd, 2000, &r);
        if (how == 2 && i == 1 && err == 0 && r.nfds == 1) {
            float x[1000];
            for (int j = 0; j < 1000; j++)
                x[j] = (float)j;
            ssize_t w = pwrite(r.fds[0], x, sizeof(x), 4096);
            (void)w;
        }
        wbt_reply_free(&r);
        if (err == WBT_CLOSED || err == WBT_TIMEOUT)
            break;
    }
    close(fd);
    count(OP_RAW_HANGUP);
}

static void child_run(child *k) {
    if (wb_connect(k->d->sock, &k->c) != 0)
        child_fail(k, "connect: %s", wb_errmsg(k->c));
    while (wbt_now() < k->end) {
        int op = (int)(rnd(k) % 100);
        if (op < 30)
            do_publish(k);
        else if (op < 62)
            do_map(k);
        else if (op < 74)
            do_watch(k);
        else if (op < 84)
            do_drop(k);
        else if (op < 88)
            do_status(k);
        else if (op < 96)
            do_raw_hangup(k);
        else {
            /* Hang up with mappings held, then carry on anew. */
            count(OP_RECONNECT);
            wb_close(k->c);
            k->c = NULL;
            if (wb_connect(k->d->sock, &k->c) != 0)
                child_fail(k, "reconnect: %s", wb_errmsg(k->c));
        }
    }
    for (int i = 0; i < HELD_MAPS; i++) {
        if (k->held[i])
            check_mapping(k, k->held[i], NULL, "held");
        wb_unmap(k->held[i]);
    }
    wb_close(k->c);
    _exit(0);
}

/* ------------------------------------------------------------ parent */

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", "--log-level",
                                        "info", NULL};
    return wbt_setup(state, extra);
}

static int teardown(void **state) {
    return wbt_teardown_finish(state);
}

/* Publishes reference model i with its seed, through the same code. */
static void publish_ref(wb_client *c, int i, uint64_t seed) {
    model_spec s;
    spec_derive(seed, &s);
    wb_tensor_spec ts[MAX_TENSORS];
    for (size_t t = 0; t < s.n; t++)
        ts[t] = (wb_tensor_spec){s.name[t], s.dtype[t], 1, &s.nelem[t], NULL};
    char name[16], seedstr[24];
    snprintf(name, sizeof(name), "ref-%d", i);
    snprintf(seedstr, sizeof(seedstr), "%llu", (unsigned long long)seed);
    wb_kv kv = {"seed", seedstr};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, name, ts, s.n, &kv, 1, &p), 0);
    void *buf = malloc(MAX_BYTES + 64);
    assert_non_null(buf);
    for (size_t t = 0; t < s.n; t++) {
        spec_bytes(&s, t, buf);
        assert_int_equal(wb_publish_write(p, t, buf, spec_nbytes(&s, t), 0), 0);
    }
    free(buf);
    assert_int_equal(wb_publish_commit(p, NULL), 0);
}

/* Fails unless reference model i reads back exactly as published. */
static void check_ref(wb_client *c, int i, uint64_t seed) {
    char name[16];
    snprintf(name, sizeof(name), "ref-%d", i);
    wb_mapping *m;
    assert_int_equal(wb_map(c, name, 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_version(m), 1);
    model_spec s;
    spec_derive(seed, &s);
    assert_int_equal(wb_map_count(m), s.n);
    void *buf = malloc(MAX_BYTES + 64);
    assert_non_null(buf);
    for (size_t t = 0; t < s.n; t++) {
        wb_tensor x;
        assert_int_equal(wb_map_tensor(m, t, &x), 0);
        assert_string_equal(x.name, s.name[t]);
        assert_int_equal(x.nbytes, spec_nbytes(&s, t));
        spec_bytes(&s, t, buf);
        if (memcmp(x.data, buf, x.nbytes) != 0)
            fail_msg("reference %s: tensor %s changed", name, x.name);
    }
    free(buf);
    wb_unmap(m);
}

/* The daemon's descriptor count once it has stayed put for 200 ms. */
static int settled_fds(const wbt_daemon *d) {
    return wbt_settled_fds(d, 200, 5000);
}

/* Starts a child with seed that runs until end; returns its pid. */
static pid_t spawn(const wbt_daemon *d, uint64_t seed, double end) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        wbt_watchdog(NULL, 0);
        signal(SIGALRM, SIG_DFL);
        alarm((unsigned)(end - wbt_now()) + 60); /* In case it is stuck. */
        child k = {.d = d,
                   .seed = seed,
                   .rng = wbt_mix(seed ^ 0x5851f42d4c957f2dull),
                   .end = end};
        child_run(&k);
    }
    return pid;
}

/* Random clients for a while leave the daemon alive, clean and intact. */
static void test_chaos_many_clients(void **state) {
    wbt_daemon *d = *state;
    const char *env = getenv("WB_CHAOS_SECONDS");
    double seconds = env && *env ? strtod(env, NULL) : CHAOS_SECONDS;
    uint64_t base_seed = wbt_seed("WB_CHAOS_SEED");
    wbt_watchdog(d, (unsigned)seconds + 120);
    fprintf(stderr,
            "  chaos: %d processes for %.0f s, base seed %llu "
            "(WB_CHAOS_SEED=%llu repeats the seeds)\n",
            CHAOS_PROCS, seconds, (unsigned long long)base_seed,
            (unsigned long long)base_seed);

    shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(shared != MAP_FAILED);
    memset(shared, 0, sizeof(*shared));

    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    uint64_t ref_seed[CHAOS_REFS];
    for (int i = 0; i < CHAOS_REFS; i++) {
        ref_seed[i] = wbt_mix(base_seed ^ (0xabcdefull + (uint64_t)i));
        publish_ref(c, i, ref_seed[i]);
    }
    wb_close(c);
    int base_fds = settled_fds(d);
    int base_segs = wbt_segment_count(d);
    uint64_t base_mem = wbt_mem_used(d);
    base_fds = settled_fds(d); /* After the status connection closed. */
    uint64_t base_shmem = wbt_shmem_bytes();

    double end = wbt_now() + seconds;
    pid_t kids[CHAOS_PROCS];
    uint64_t serial = 0;
    for (int i = 0; i < CHAOS_PROCS; i++) {
        uint64_t seed = base_seed + serial++;
        kids[i] = spawn(d, seed, end);
        fprintf(stderr, "  chaos: child %d seed %llu\n", (int)kids[i],
                (unsigned long long)seed);
    }
    int respawned = 0, chosen = 0, killed = 0, bad = 0;
    int live = CHAOS_PROCS;
    double give_up = end + 60;
    while (live > 0) {
        int st = 0;
        pid_t pid = 0;
        for (int i = 0; i < CHAOS_PROCS && pid <= 0; i++)
            if (kids[i] > 0 && waitpid(kids[i], &st, WNOHANG) == kids[i])
                pid = kids[i];
        if (pid <= 0) {
            if (wbt_now() > give_up) {
                for (int i = 0; i < CHAOS_PROCS; i++)
                    if (kids[i] > 0)
                        kill(kids[i], SIGKILL);
                fail_msg("chaos children still running 60 s after the end");
            }
            wbt_sleep_ms(10);
            continue;
        }
        int slot = 0;
        while (kids[slot] != pid)
            slot++;
        if (WIFEXITED(st) && WEXITSTATUS(st) == EXIT_CHOSEN)
            chosen++;
        else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
            killed++;
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad++;
            fprintf(stderr, "  chaos: child %d ended with %s %d\n", (int)pid,
                    WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        }
        kids[slot] = -1;
        live--;
        if (wbt_now() < end - 0.2 && wbt_running(d)) {
            uint64_t seed = base_seed + serial++;
            kids[slot] = spawn(d, seed, end);
            live++;
            respawned++;
            if (respawned <= 20 || respawned % 50 == 0)
                fprintf(stderr, "  chaos: respawned child %d seed %llu\n",
                        (int)kids[slot], (unsigned long long)seed);
        }
    }
    fprintf(stderr,
            "  chaos: %llu children in all; %d chose to exit, %d "
            "killed themselves, %d failed\n",
            (unsigned long long)serial, chosen, killed, bad);
    for (int i = 0; i < OP_COUNT; i++)
        fprintf(stderr, "  chaos: %8llu %s\n",
                (unsigned long long)shared->ops[i], op_names[i]);

    if (!wbt_running(d))
        fail_msg("wbrokerd died during the chaos (see its log below)");
    assert_int_equal(shared->failures, 0);
    assert_int_equal(bad, 0);
    assert_true(shared->ops[OP_COMMIT] > 0);
    assert_true(shared->ops[OP_MAP] + shared->ops[OP_MAP_RULES] > 0);

    /* Still serving; then back to the baseline once c-* are gone. */
    c = wbt_connect(d);
    assert_non_null(c);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    for (int i = 0; i < CHAOS_MODELS; i++) {
        char model[8];
        model_name(i, model);
        int rc = wb_drop(c, model, 0);
        if (rc != 0 && rc != WB_ENOMODEL)
            fail_msg("drop %s: %s", model, wb_err_name(rc));
    }
    for (int i = 0; i < CHAOS_REFS; i++)
        check_ref(c, i, ref_seed[i]);
    wb_close(c);

    double until = wbt_now() + 10;
    int fds, segs;
    uint64_t mem, shmem;
    do {
        fds = wbt_fd_count(d);
        segs = wbt_segment_count(d);
        mem = wbt_mem_used(d);
        shmem = wbt_shmem_bytes();
        if (fds == base_fds && segs == base_segs && mem == base_mem &&
            shmem <= base_shmem + SHMEM_SLACK)
            break;
        wbt_sleep_ms(50);
    } while (wbt_now() < until);
    fprintf(stderr,
            "  chaos: descriptors %d (before %d), segments %d (%d), "
            "memory %llu (%llu), Shmem %+lld KiB\n",
            fds, base_fds, segs, base_segs, (unsigned long long)mem,
            (unsigned long long)base_mem,
            ((long long)shmem - (long long)base_shmem) / 1024);
    assert_int_equal(segs, base_segs);
    assert_int_equal(mem, base_mem);
    assert_int_equal(fds, base_fds);
    if (shmem > base_shmem + SHMEM_SLACK)
        fail_msg("Shmem grew by %llu KiB",
                 (unsigned long long)(shmem - base_shmem) / 1024);
    munmap(shared, sizeof(*shared));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chaos_many_clients, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
