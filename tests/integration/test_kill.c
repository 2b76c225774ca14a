/* test_kill.c -- Client processes SIGKILLed at every step of the protocol,
 * then a check that the daemon lost nothing and leaked nothing.
 *
 * WB_KILL_CLIENTS children (default KILL_CLIENTS; `make kill-test` runs
 * 1,000) are forked KILL_PARALLEL at a time.  Each is a small C client of
 * the real library that goes to one step and is killed there with SIGKILL
 * (by itself, or by a timer it armed when the step blocks): after connect,
 * after hello, with a publish declared, halfway through writing its
 * tensors, halfway through sending a frame, just before or during commit,
 * while the daemon converts a large tensor for it, while it holds a
 * mapping, while it waits in watch, or at a random moment of a whole
 * session.  Steps go round, so that every one is taken about as often;
 * everything else a child does follows from its seed, printed with the
 * base seed (WB_KILL_SEED=N replays a run).  After each batch every
 * version a child committed must read back bit for bit, and is dropped;
 * at the end the daemon must be alive and back to its baseline: memory
 * charged, holds, clients, descriptors, segments, the bytes the kernel
 * holds for its segments (status), and /proc/meminfo's Shmem within a
 * slack. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define KILL_CLIENTS 100        /* Children by default (WB_KILL_CLIENTS). */
#define KILL_PARALLEL 16        /* Children alive at once. */
#define MAX_TENSORS 4           /* Tensors of a child's model. */
#define MAX_ELEMS (64 * 1024)   /* Elements of one of its tensors. */
#define BIG_ELEMS (4u << 20)    /* F32 elements converted for a child. */
#define REF_ELEMS 4096          /* Elements of each reference tensor. */
#define SHMEM_SLACK (16u << 20) /* Tolerance on /proc/meminfo Shmem. */
#define CHILD_FAILED 3          /* A child's exit when a step failed. */
#define CHILD_LIMIT_S 30        /* A child still alive then is stuck. */

/* Where a child is killed.  The order is the order of a session. */
enum step {
    STEP_CONNECT,       /* Socket connected, nothing sent. */
    STEP_HELLO,         /* Hello answered. */
    STEP_DECLARED,      /* Publish declared, nothing written. */
    STEP_HALF_WRITTEN,  /* Half of the tensors' bytes written. */
    STEP_HALF_FRAME,    /* Half of a request frame sent. */
    STEP_BEFORE_COMMIT, /* Everything written, commit not sent. */
    STEP_IN_COMMIT,     /* Within a few ms of sending commit. */
    STEP_CONVERTING,    /* Waiting for a cast of a large tensor. */
    STEP_HOLDING,       /* Holding a mapping of a reference model. */
    STEP_WATCHING,      /* Waiting in watch. */
    STEP_ANYWHERE,      /* Anywhere in a loop of whole sessions. */
    STEP_COUNT
};

static const char *const step_names[STEP_COUNT] = {
    "after connect",    "after hello",          "publish declared",
    "halfway writing",  "halfway in a frame",   "just before commit",
    "during commit",    "waiting for a cast",   "holding a mapping",
    "waiting in watch", "anywhere in a session"};

/* ------------------------------------------------------------ content */

/* A child's model, all of it derived from one seed. */
typedef struct model_spec {
    uint64_t seed;                  /* What derives everything. */
    size_t n;                       /* Tensors. */
    char name[MAX_TENSORS][24];     /* "t<i>". */
    int dtype[MAX_TENSORS];         /* WB_F32 or WB_I32. */
    int64_t nelem[MAX_TENSORS];     /* Elements (one dimension). */
    wb_tensor_spec ts[MAX_TENSORS]; /* The declaration. */
} model_spec;

static void spec_derive(uint64_t seed, model_spec *s) {
    memset(s, 0, sizeof(*s));
    s->seed = seed;
    uint64_t r = wbt_mix(seed);
    s->n = 1 + (size_t)(r % MAX_TENSORS);
    for (size_t i = 0; i < s->n; i++) {
        uint64_t q = wbt_mix(r + 1 + i);
        s->dtype[i] = q & 1 ? WB_F32 : WB_I32;
        s->nelem[i] = (int64_t)(1 + (q >> 8) % MAX_ELEMS);
        snprintf(s->name[i], sizeof(s->name[i]), "t%zu", i);
        s->ts[i] =
            (wb_tensor_spec){s->name[i], s->dtype[i], 1, &s->nelem[i], NULL};
    }
}

/* The bytes of tensor i: 32-bit words from the seed. */
static void spec_fill(const model_spec *s, size_t i, uint32_t *out) {
    for (int64_t j = 0; j < s->nelem[i]; j++)
        out[j] = (uint32_t)wbt_mix(s->seed ^ ((uint64_t)i << 40) ^ (uint64_t)j);
}

static void model_name(size_t index, char *buf, size_t len) {
    snprintf(buf, len, "k-%zu", index);
}

/* ------------------------------------------------------------ child */

/* What a child knows. */
typedef struct child {
    const wbt_daemon *d; /* The daemon. */
    size_t index;        /* Its number, from 0. */
    uint64_t seed;       /* Its seed. */
    uint64_t rng;        /* State of its random numbers. */
    int step;            /* Where it dies. */
} child;

static uint64_t child_rand(child *k) {
    return k->rng = wbt_mix(k->rng);
}

/* Dies now, as a killed client does: no close, no exit handlers. */
__attribute__((noreturn)) static void die(void) {
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

/* Says why a step failed and ends the child with CHILD_FAILED. */
__attribute__((noreturn, format(printf, 2, 3))) static void
child_fail(const child *k, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "  kill: child %zu (seed %llu, %s): %s\n", k->index,
            (unsigned long long)k->seed, step_names[k->step], msg);
    _exit(CHILD_FAILED);
}

/* Arms a timer that SIGKILLs this process after up to max_us
 * microseconds (from its random numbers), for a step that blocks. */
static void kill_within(child *k, unsigned max_us) {
    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL,
                           .sigev_signo = SIGKILL};
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0)
        child_fail(k, "timer_create failed");
    long us = 1 + (long)(child_rand(k) % max_us);
    struct itimerspec its = {.it_value = {us / 1000000, us % 1000000 * 1000}};
    if (timer_settime(t, 0, &its, NULL) != 0)
        child_fail(k, "timer_settime failed");
}

static wb_client *child_connect(child *k) {
    wb_client *c = NULL;
    if (wb_connect(k->d->sock, &c) != 0)
        child_fail(k, "connect: %s", wb_errmsg(c));
    return c;
}

/* Declares the child's model (named after its index). */
static wb_publish *child_begin(child *k, wb_client *c, model_spec *s) {
    spec_derive(k->seed, s);
    char name[32], seed[24];
    model_name(k->index, name, sizeof(name));
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)k->seed);
    wb_kv kv = {"seed", seed};
    wb_publish *p = NULL;
    int rc = wb_publish_begin(c, name, s->ts, s->n, &kv, 1, &p);
    if (rc != 0)
        child_fail(k, "publish %s: %s: %s", name, wb_err_name(rc),
                   wb_errmsg(c));
    return p;
}

/* Writes the tensors of s into p; with half set only the first half of
 * the bytes (in declaration order), and dies there. */
static void child_write(child *k, wb_publish *p, const model_spec *s,
                        int half) {
    size_t total = 0, done = 0;
    for (size_t i = 0; i < s->n; i++)
        total += (size_t)s->nelem[i] * 4;
    for (size_t i = 0; i < s->n; i++) {
        size_t nb = 0;
        uint32_t *dst = wb_publish_data(p, i, &nb);
        if (dst == NULL || nb != (size_t)s->nelem[i] * 4)
            child_fail(k, "publish data %zu", i);
        if (half && done + nb > total / 2) {
            uint32_t *tmp = malloc(nb);
            if (tmp == NULL)
                child_fail(k, "out of memory");
            spec_fill(s, i, tmp);
            memcpy(dst, tmp, total / 2 - done);
            die();
        }
        spec_fill(s, i, dst);
        done += nb;
    }
}

/* Publishes and commits the child's model; returns the version. */
static uint64_t child_publish(child *k, wb_client *c) {
    model_spec s;
    wb_publish *p = child_begin(k, c, &s);
    child_write(k, p, &s, 0);
    uint64_t v = 0;
    int rc = wb_publish_commit(p, &v);
    if (rc != 0)
        child_fail(k, "commit: %s: %s", wb_err_name(rc), wb_errmsg(c));
    return v;
}

/* Half of a publish frame, then death: the daemon holds a partial frame. */
static void child_half_frame(child *k) {
    int fd = wbt_raw_connect(k->d);
    if (fd < 0 || wbt_raw_hello(fd) != 0)
        child_fail(k, "raw hello");
    wbt_frames f = {0};
    wbt_frames_publish_f32(&f, 2, "k-frame", 8, 1024);
    size_t cut = 1 + (size_t)(child_rand(k) % (f.len - 1));
    if (wbt_raw_send(fd, f.data, cut) != 0)
        child_fail(k, "raw send");
    die();
}

/* How long a cast of the big model takes, in microseconds: the parent
 * measures it before forking, and converting children are killed within
 * twice that. */
static unsigned cast_us = 20000;

/* Publishes model name of one BIG_ELEMS F32 tensor "big.w".  Returns 0 or
 * the failure's code (c's errmsg says why). */
static int publish_big(wb_client *c, const char *name) {
    int64_t n = BIG_ELEMS;
    wb_tensor_spec ts = {"big.w", WB_F32, 1, &n, NULL};
    wb_publish *p = NULL;
    int rc = wb_publish_begin(c, name, &ts, 1, NULL, 0, &p);
    if (rc != 0)
        return rc;
    size_t nb = 0;
    float *dst = wb_publish_data(p, 0, &nb);
    if (dst == NULL || nb != (size_t)BIG_ELEMS * 4) {
        wb_publish_abort(p);
        return WB_EINVAL;
    }
    for (size_t j = 0; j < BIG_ELEMS; j++)
        dst[j] = (float)(j % 4096) * 0.25f;
    return wb_publish_commit(p, NULL);
}

/* Loads model name with every tensor cast to F16 into *m. */
static int load_cast(wb_client *c, const char *name, wb_mapping **m) {
    wb_rules *r = wb_rules_new();
    if (r == NULL || wb_rules_cast(r, "*", WB_F16) != 0) {
        wb_rules_free(r);
        return WB_ENOMEM;
    }
    int rc = wb_load(c, name, 0, NULL, r, 0, m);
    wb_rules_free(r);
    return rc;
}

/* Publishes a big model and loads it as F16, so that the daemon converts
 * it, and dies while that runs (or, when the conversion is done first,
 * while holding the result). */
static void child_converting(child *k, wb_client *c) {
    char name[32];
    model_name(k->index, name, sizeof(name));
    int rc = publish_big(c, name);
    if (rc != 0)
        child_fail(k, "publish big: %s: %s", wb_err_name(rc), wb_errmsg(c));
    kill_within(k, 2 * cast_us);
    wb_mapping *m = NULL;
    rc = load_cast(c, name, &m);
    if (rc != 0)
        child_fail(k, "load with a cast: %s: %s", wb_err_name(rc),
                   wb_errmsg(c));
    for (;;)
        pause();
}

/* Maps the reference model (shared or private, by chance), reads it and
 * dies holding it. */
static void child_holding(child *k, wb_client *c) {
    wb_mapping *m = NULL;
    int flags = child_rand(k) & 1 ? WB_MAP_SHARED : WB_MAP_PRIVATE;
    int rc = wb_map(c, "ref", 0, flags, &m);
    if (rc != 0)
        child_fail(k, "map ref: %s: %s", wb_err_name(rc), wb_errmsg(c));
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < wb_map_count(m); i++) {
        wb_tensor t;
        if (wb_map_tensor(m, i, &t) == 0)
            for (size_t j = 0; j < t.nbytes; j += 4096)
                sink ^= ((const uint8_t *)t.data)[j];
    }
    (void)sink;
    die();
}

/* Waits in watch on a model nobody publishes, in the library or on a raw
 * connection with the watch pipelined after the hello, and is killed in
 * the wait. */
static void child_watching(child *k) {
    if (child_rand(k) & 1) {
        wb_client *c = child_connect(k);
        kill_within(k, 5000);
        uint64_t v = 0;
        int rc = wb_watch(c, "nobody", 0, -1, &v);
        child_fail(k, "watch returned %s", wb_err_name(rc));
    }
    int fd = wbt_raw_connect(k->d);
    if (fd < 0)
        child_fail(k, "raw connect");
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    wbt_frames_watch(&f, 2, "nobody", 0, -1);
    if (wbt_frames_send(fd, &f) != 0)
        child_fail(k, "raw send");
    kill_within(k, 5000);
    for (;;)
        pause();
}

/* Whole sessions, one after the other, until the timer armed first kills
 * the child somewhere in them: publish and commit, map the latest and
 * check it, a short watch, status, list, holders. */
static void child_anywhere(child *k) {
    kill_within(k, 30000);
    for (;;) {
        wb_client *c = child_connect(k);
        uint64_t v = child_publish(k, c);
        wb_mapping *m = NULL;
        char name[32];
        model_name(k->index, name, sizeof(name));
        int rc = wb_map(c, name, v, WB_MAP_PRIVATE, &m);
        if (rc != 0)
            child_fail(k, "map %s@%llu: %s", name, (unsigned long long)v,
                       wb_err_name(rc));
        model_spec s;
        spec_derive(k->seed, &s);
        uint32_t *want = malloc(MAX_ELEMS * 4);
        for (size_t i = 0; i < s.n; i++) {
            wb_tensor t;
            spec_fill(&s, i, want);
            if (wb_map_tensor(m, i, &t) != 0 ||
                memcmp(t.data, want, t.nbytes) != 0)
                child_fail(k, "%s@%llu: tensor %zu differs", name,
                           (unsigned long long)v, i);
        }
        free(want);
        (void)wb_watch(c, name, v, 1, &v);
        wb_status st;
        (void)wb_get_status(c, &st);
        wb_model_info *mi = NULL;
        size_t n = 0;
        if (wb_list(c, &mi, &n) == 0)
            wb_model_info_free(mi, n);
        wb_holder *h = NULL;
        if (wb_holders(c, NULL, &h, &n) == 0)
            wb_holders_free(h, n);
        if (child_rand(k) & 1)
            wb_unmap(m); /* Else the next round holds it still. */
        wb_close(c);
    }
}

/* Goes to step k->step and dies there. */
__attribute__((noreturn)) static void child_run(child *k) {
    model_spec s;
    switch (k->step) {
    case STEP_CONNECT:
        if (wbt_raw_connect(k->d) < 0)
            child_fail(k, "raw connect");
        die();
    case STEP_HELLO:
        child_connect(k);
        die();
    case STEP_DECLARED:
        child_begin(k, child_connect(k), &s);
        die();
    case STEP_HALF_WRITTEN: {
        wb_publish *p = child_begin(k, child_connect(k), &s);
        child_write(k, p, &s, 1);
        die();
    }
    case STEP_HALF_FRAME:
        child_half_frame(k);
        die();
    case STEP_BEFORE_COMMIT: {
        wb_publish *p = child_begin(k, child_connect(k), &s);
        child_write(k, p, &s, 0);
        die();
    }
    case STEP_IN_COMMIT: {
        wb_client *c = child_connect(k);
        wb_publish *p = child_begin(k, c, &s);
        child_write(k, p, &s, 0);
        kill_within(k, 3000);
        int rc = wb_publish_commit(p, NULL);
        if (rc != 0)
            child_fail(k, "commit: %s: %s", wb_err_name(rc), wb_errmsg(c));
        for (;;)
            pause();
    }
    case STEP_CONVERTING:
        child_converting(k, child_connect(k));
        die();
    case STEP_HOLDING:
        child_holding(k, child_connect(k));
        die();
    case STEP_WATCHING:
        child_watching(k);
        die();
    default:
        child_anywhere(k);
        die();
    }
}

/* ------------------------------------------------------------ parent */

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "2G", NULL};
    return wbt_setup(state, extra);
}

static int teardown(void **state) {
    return wbt_teardown_finish(state);
}

/* Publishes the reference model "ref": two tensors from seed. */
static void publish_ref(wb_client *c, uint64_t seed) {
    int64_t n = REF_ELEMS;
    wb_tensor_spec ts[2] = {{"a", WB_F32, 1, &n, NULL},
                            {"b", WB_I32, 1, &n, NULL}};
    wb_publish *p = NULL;
    assert_int_equal(wb_publish_begin(c, "ref", ts, 2, NULL, 0, &p), 0);
    for (size_t i = 0; i < 2; i++) {
        size_t nb = 0;
        uint32_t *dst = wb_publish_data(p, i, &nb);
        assert_non_null(dst);
        for (size_t j = 0; j < REF_ELEMS; j++)
            dst[j] = (uint32_t)wbt_mix(seed + i * REF_ELEMS + j);
    }
    assert_int_equal(wb_publish_commit(p, NULL), 0);
}

/* Fails unless "ref" reads back as published, at version 1. */
static void check_ref(wb_client *c, uint64_t seed) {
    wb_mapping *m = NULL;
    assert_int_equal(wb_map(c, "ref", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_version(m), 1);
    assert_int_equal(wb_map_count(m), 2);
    for (size_t i = 0; i < 2; i++) {
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, i, &t), 0);
        const uint32_t *w = t.data;
        for (size_t j = 0; j < REF_ELEMS; j++)
            if (w[j] != (uint32_t)wbt_mix(seed + i * REF_ELEMS + j))
                fail_msg("ref: tensor %s changed at %zu", t.name, j);
    }
    wb_unmap(m);
}

/* Fails unless mapping m of a child's model holds exactly what the child
 * wrote: the tensors its "seed" derives, or the big tensor of a
 * conversion child. */
static void check_version(const wb_mapping *m, const char *name) {
    const char *seedstr = wb_map_meta(m, "seed");
    wb_tensor t;
    if (seedstr == NULL) {
        assert_int_equal(wb_map_count(m), 1);
        assert_int_equal(wb_map_tensor(m, 0, &t), 0);
        assert_int_equal(t.nbytes, (uint64_t)BIG_ELEMS * 4);
        const float *f = t.data;
        for (size_t j = 0; j < BIG_ELEMS; j++)
            if (f[j] != (float)(j % 4096) * 0.25f)
                fail_msg("%s@%llu: big.w differs at %zu", name,
                         (unsigned long long)wb_map_version(m), j);
        return;
    }
    model_spec s;
    spec_derive(strtoull(seedstr, NULL, 10), &s);
    assert_int_equal(wb_map_count(m), s.n);
    uint32_t *want = malloc(MAX_ELEMS * 4);
    assert_non_null(want);
    for (size_t i = 0; i < s.n; i++) {
        assert_int_equal(wb_map_tensor(m, i, &t), 0);
        assert_string_equal(t.name, s.name[i]);
        assert_int_equal(t.dtype, s.dtype[i]);
        assert_int_equal(t.nbytes, (uint64_t)s.nelem[i] * 4);
        spec_fill(&s, i, want);
        if (memcmp(t.data, want, t.nbytes) != 0)
            fail_msg("%s@%llu: tensor %s differs", name,
                     (unsigned long long)wb_map_version(m), t.name);
    }
    free(want);
}

/* Checks every version of child index's model that the daemon still
 * holds, then drops the model.  Returns the versions checked. */
static unsigned check_and_drop(wb_client *c, size_t index) {
    char name[32];
    model_name(index, name, sizeof(name));
    wb_mapping *m = NULL;
    int rc = wb_map(c, name, 0, WB_MAP_SHARED, &m);
    if (rc == WB_ENOMODEL)
        return 0;
    if (rc != 0)
        fail_msg("map %s: %s: %s", name, wb_err_name(rc), wb_errmsg(c));
    uint64_t latest = wb_map_version(m);
    check_version(m, name);
    wb_unmap(m);
    unsigned checked = 1;
    for (uint64_t v = 1; v < latest; v++) {
        rc = wb_map(c, name, v, WB_MAP_SHARED, &m);
        if (rc == WB_ENOVERSION)
            continue;
        if (rc != 0)
            fail_msg("map %s@%llu: %s", name, (unsigned long long)v,
                     wb_err_name(rc));
        check_version(m, name);
        wb_unmap(m);
        checked++;
    }
    rc = wb_drop(c, name, 0);
    if (rc != 0 && rc != WB_ENOMODEL)
        fail_msg("drop %s: %s", name, wb_err_name(rc));
    return checked;
}

/* Waits up to 10 s for the daemon to count clients connections. */
static void wait_clients(wb_client *c, uint64_t clients) {
    double until = wbt_now() + 10;
    wb_status st;
    do {
        assert_int_equal(wb_get_status(c, &st), 0);
        if (st.clients == clients)
            return;
        wbt_sleep_ms(5);
    } while (wbt_now() < until);
    fail_msg("the daemon still counts %llu clients, not %llu",
             (unsigned long long)st.clients, (unsigned long long)clients);
}

static pid_t spawn(const wbt_daemon *d, size_t index, uint64_t seed, int step) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        wbt_watchdog(NULL, 0);
        signal(SIGALRM, SIG_DFL);
        alarm(CHILD_LIMIT_S); /* A child that was not killed is stuck. */
        child k = {.d = d,
                   .index = index,
                   .seed = seed,
                   .rng = wbt_mix(seed ^ 0x5851f42d4c957f2dull),
                   .step = step};
        child_run(&k);
    }
    return pid;
}

/* Clients killed at every step leave the daemon alive, clean and intact. */
static void test_kill_clients_at_every_step(void **state) {
    wbt_daemon *d = *state;
    const char *env = getenv("WB_KILL_CLIENTS");
    size_t nclients = env && *env ? strtoull(env, NULL, 10) : KILL_CLIENTS;
    uint64_t base_seed = wbt_seed("WB_KILL_SEED");
    wbt_watchdog(d, 120 + (unsigned)(nclients / 4));
    fprintf(stderr,
            "  kill: %zu clients, %d at a time, base seed %llu "
            "(WB_KILL_SEED=%llu repeats the run)\n",
            nclients, KILL_PARALLEL, (unsigned long long)base_seed,
            (unsigned long long)base_seed);

    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    uint64_t ref_seed = wbt_mix(base_seed ^ 0xabcdefull);
    publish_ref(c, ref_seed);
    /* The time of one cast, for the converting children's kill window. */
    assert_int_equal(publish_big(c, "cast-probe"), 0);
    wb_mapping *probe = NULL;
    double t_cast = wbt_now();
    assert_int_equal(load_cast(c, "cast-probe", &probe), 0);
    t_cast = wbt_now() - t_cast;
    wb_unmap(probe);
    assert_int_equal(wb_drop(c, "cast-probe", 0), 0);
    cast_us = (unsigned)(t_cast * 1e6) + 1;
    fprintf(stderr, "  kill: a cast of %u MiB F32 to F16 takes %.1f ms\n",
            BIG_ELEMS * 4 >> 20, t_cast * 1e3);
    int base_fds = wbt_settled_fds(d, 200, 5000);
    int base_segs = wbt_segment_count(d);
    uint64_t base_mem = wbt_mem_used(d);
    uint64_t base_holds = wbt_counter(d, "holds");
    base_fds = wbt_settled_fds(d, 200, 5000);
    uint64_t base_shmem = wbt_shmem_bytes();
    wb_status st0;
    assert_int_equal(wb_get_status(c, &st0), 0);

    double t0 = wbt_now();
    unsigned killed[STEP_COUNT] = {0};
    unsigned bad = 0, versions = 0;
    int rot = (int)(wbt_mix(base_seed) % STEP_COUNT);
    for (size_t start = 0; start < nclients; start += KILL_PARALLEL) {
        size_t nb =
            nclients - start < KILL_PARALLEL ? nclients - start : KILL_PARALLEL;
        pid_t kids[KILL_PARALLEL];
        int steps[KILL_PARALLEL];
        for (size_t j = 0; j < nb; j++) {
            size_t index = start + j;
            steps[j] = (int)((index + (size_t)rot) % STEP_COUNT);
            kids[j] = spawn(d, index, base_seed + index, steps[j]);
        }
        for (size_t j = 0; j < nb; j++) {
            int st = 0;
            assert_int_equal(waitpid(kids[j], &st, 0), kids[j]);
            if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
                killed[steps[j]]++;
            } else {
                bad++;
                fprintf(stderr,
                        "  kill: child %zu (seed %llu, %s) ended with %s "
                        "%d\n",
                        start + j, (unsigned long long)(base_seed + start + j),
                        step_names[steps[j]],
                        WIFEXITED(st) ? "status" : "signal",
                        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            }
        }
        if (!wbt_running(d))
            fail_msg("wbrokerd died (see its log below)");
        /* Once the daemon has seen every child of the batch go, what they
         * committed is all there is: check it and drop it. */
        wait_clients(c, 1);
        for (size_t j = 0; j < nb; j++)
            versions += check_and_drop(c, start + j);
    }
    double took = wbt_now() - t0;
    for (int i = 0; i < STEP_COUNT; i++)
        fprintf(stderr, "  kill: %5u killed %s\n", killed[i], step_names[i]);
    fprintf(stderr,
            "  kill: %zu clients in %.1f s, %u versions read back bit for "
            "bit, %u failed\n",
            nclients, took, versions, bad);
    assert_int_equal(bad, 0);

    double until = wbt_now() + 10;
    int fds, segs;
    uint64_t mem, holds, shmem, seg_shmem = 0;
    long clients;
    do {
        wb_status st;
        assert_int_equal(wb_get_status(c, &st), 0);
        seg_shmem = st.memory_shmem;
        fds = wbt_fd_count(d);
        segs = wbt_segment_count(d);
        mem = wbt_mem_used(d);
        holds = wbt_counter(d, "holds");
        clients = wbt_clients(d);
        shmem = wbt_shmem_bytes();
        if (fds == base_fds && segs == base_segs && mem == base_mem &&
            holds == base_holds && clients == 2 &&
            seg_shmem == st0.memory_shmem && shmem <= base_shmem + SHMEM_SLACK)
            break;
        wbt_sleep_ms(50);
    } while (wbt_now() < until);
    fprintf(stderr,
            "  kill: descriptors %d (before %d), segments %d (%d), memory "
            "%llu (%llu), holds %llu (%llu), clients %ld, segments' shmem "
            "%llu (%llu), host Shmem %+lld KiB\n",
            fds, base_fds, segs, base_segs, (unsigned long long)mem,
            (unsigned long long)base_mem, (unsigned long long)holds,
            (unsigned long long)base_holds, clients,
            (unsigned long long)seg_shmem, (unsigned long long)st0.memory_shmem,
            ((long long)shmem - (long long)base_shmem) / 1024);
    assert_int_equal(segs, base_segs);
    assert_int_equal(mem, base_mem);
    assert_int_equal(holds, base_holds);
    assert_int_equal(clients, 2); /* c and the one asking. */
    assert_int_equal(fds, base_fds);
    assert_int_equal(seg_shmem, st0.memory_shmem);
    if (shmem > base_shmem + SHMEM_SLACK)
        fail_msg("Shmem grew by %llu KiB",
                 (unsigned long long)(shmem - base_shmem) / 1024);
    check_ref(c, ref_seed);
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_clients_at_every_step, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
