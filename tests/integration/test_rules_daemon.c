/* test_rules_daemon.c -- Mapping rules and dtype conversion through a real
 * wbrokerd: slow and pathological regexes while other clients are served,
 * renames that would grow keys without bound, malformed rules and schemas
 * on the wire, and converted copies that are
 * made once, shared, accounted and freed with their version. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "../../daemon/convert.h"
#include "harness.h"
#include "rules.h"

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", NULL};
    return wbt_setup(state, extra);
}

static int teardown(void **state) {
    return wbt_teardown(state);
}

/* ------------------------------------------------------------ regexes */

#define WIDE_KEYS 100000 /* Keys of the wide model. */
#define WIDE_AS 15       /* Leading 'a's of each key. */

/* Publishes "wide": WIDE_KEYS one-byte tensors named WIDE_AS 'a's and a
 * six-digit number, keys on which "(a+)+[bc]" backtracks about 2^15 steps
 * (under the per-match limit, about a millisecond each). */
static void publish_wide(wb_client *c) {
    wb_tensor_spec *specs = calloc(WIDE_KEYS, sizeof(*specs));
    char(*names)[WIDE_AS + 8] = calloc(WIDE_KEYS, sizeof(*names));
    assert_non_null(specs);
    assert_non_null(names);
    int64_t shape[1] = {1};
    for (size_t i = 0; i < WIDE_KEYS; i++) {
        memset(names[i], 'a', WIDE_AS);
        snprintf(names[i] + WIDE_AS, 8, "%06zu", i);
        specs[i] = (wb_tensor_spec){names[i], WB_U8, 1, shape, NULL};
    }
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "wide", specs, WIDE_KEYS, NULL, 0, &p),
                     0);
    uint64_t v = 0;
    assert_int_equal(wb_publish_commit(p, &v), 0);
    assert_int_equal(v, 1);
    free(specs);
    free(names);
}

typedef struct slow_load {
    const wbt_daemon *d; /* Daemon to ask. */
    const char *pattern; /* Regex rename applied to every key. */
    int rc;              /* wb_load's result. */
    char errmsg[512];    /* The client's error message. */
    double seconds;      /* How long the request took. */
    atomic_int done;     /* Set when the answer came. */
} slow_load;

static void *slow_load_run(void *arg) {
    slow_load *s = arg;
    wb_client *c = wbt_connect(s->d);
    wb_rules *r = wb_rules_new();
    wb_rules_rename_regex(r, s->pattern, "x\\1");
    wb_mapping *m = NULL;
    double t0 = wbt_now();
    s->rc = wb_load(c, "wide", 0, NULL, r, WB_MAP_PLAN, &m);
    s->seconds = wbt_now() - t0;
    snprintf(s->errmsg, sizeof(s->errmsg), "%s", wb_errmsg(c));
    atomic_store(&s->done, 1);
    wb_unmap(m);
    wb_rules_free(r);
    wb_close(c);
    return NULL;
}

/* A catastrophic pattern stops at the per-match limit on the first key,
 * with an error naming the rule and the key. */
static void test_rules_regex_match_limit(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_wide(c);
    slow_load s = {.d = d, .pattern = "(a|a)+[bc]"};
    slow_load_run(&s);
    assert_int_equal(s.rc, WB_EREGEX);
    assert_non_null(strstr(s.errmsg, "regex \"(a|a)+[bc]\" hit the match "
                                     "limit on key \"aaaaaaaaaaaaaaa000000\""));
    wb_close(c);
}

/* A pattern that stays under the per-match limit but is slow on each of
 * 100,000 keys is stopped by the request's time budget, off the event
 * loop: another client publishes, maps and asks for status meanwhile. */
static void test_rules_regex_budget_others_served(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_wide(c);
    int fds = wbt_fd_count(d);
    slow_load s = {.d = d, .pattern = "(a+)+[bc]"};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_load_run, &s), 0);
    usleep(200 * 1000); /* Let the slow request reach the daemon. */
    for (int i = 0; i < 5; i++) {
        wb_status st;
        assert_int_equal(wb_get_status(c, &st), 0);
        char name[16];
        snprintf(name, sizeof(name), "other%d", i);
        assert_int_equal(wbt_publish_f32(c, name, 2, 256), 1);
        wb_mapping *m;
        assert_int_equal(wb_map(c, name, 0, WB_MAP_SHARED, &m), 0);
        wb_unmap(m);
    }
    /* All of that was served while the slow request was in flight. */
    assert_int_equal(atomic_load(&s.done), 0);
    pthread_join(th, NULL);
    assert_int_equal(s.rc, WB_EREGEX);
    assert_non_null(strstr(s.errmsg, "the rules took longer than 2000 ms"));
    assert_true(s.seconds >= 2.0); /* The budget ran out, not the work. */
    /* Nothing leaked; the model is intact and still served. */
    assert_int_equal(wbt_wait_fds(d, fds + 5), fds + 5);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "wide", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), WIDE_KEYS);
    wb_unmap(m);
    wb_close(c);
}

/* Four clients whose rules each take the whole 2 s budget cannot starve
 * the threads that back segments: another client publishes (which needs a
 * segment made off the loop) and maps while all four are still waiting. */
static void test_rules_slow_rules_do_not_starve_publish(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_wide(c);
    slow_load s[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        s[i] = (slow_load){.d = d, .pattern = "(a+)+[bc]"};
        assert_int_equal(pthread_create(&th[i], NULL, slow_load_run, &s[i]), 0);
    }
    usleep(200 * 1000); /* Let the slow requests reach the daemon. */
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fresh%d", i);
        assert_int_equal(wbt_publish_f32(c, name, 2, 1 << 20), 1);
        wb_mapping *m;
        assert_int_equal(wb_map(c, name, 0, WB_MAP_SHARED, &m), 0);
        wb_unmap(m);
    }
    /* All of that while every slow request was still in flight. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(atomic_load(&s[i].done), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].rc, WB_EREGEX);
    }
    wb_close(c);
}

/* A rule that matched no key comes back in the report, described, and the
 * load still succeeds (a dict of exact names is a classic such mistake). */
static void test_rules_unused_rule_reported(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 16), 1);
    wb_schema *sc = wb_schema_new("Net");
    int64_t shape[1] = {16};
    assert_int_equal(wb_schema_add(sc, "t0", WB_F32, 1, shape), 0);
    assert_int_equal(wb_schema_add(sc, "t1", WB_F32, 1, shape), 0);
    wb_rules *r = wb_rules_new();
    assert_int_equal(wb_rules_rename(r, "layer1.", "fc1."), 0);
    assert_int_equal(wb_rules_include(r, "t*"), 0);
    wb_mapping *m = NULL;
    assert_int_equal(wb_load(c, "m", 0, sc, r, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_keys_count(m, WB_KEYS_UNUSED_RULES), 1);
    assert_string_equal(wb_map_key(m, WB_KEYS_UNUSED_RULES, 0),
                        "rule 1: rename \"layer1.\" -> \"fc1.\"");
    assert_int_equal(wb_map_count(m), 2);
    wb_unmap(m);
    wb_rules_free(r);
    wb_schema_free(sc);
    wb_close(c);
}

/* A client that disconnects while its rules run on the thread pool does
 * not disturb the daemon: the result is dropped when it comes back. */
static void test_rules_client_gone_midway(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_wide(c);
    int fds = wbt_fd_count(d);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        slow_load s = {.d = d, .pattern = "(a+)+[bc]"};
        pthread_t th;
        pthread_create(&th, NULL, slow_load_run, &s);
        usleep(300 * 1000);
        _exit(0); /* Mid-request. */
    }
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    sleep(3); /* The budget runs out; the answer has nobody to go to. */
    assert_true(wbt_alive(d));
    assert_int_equal(wbt_wait_fds(d, fds), fds);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(st.clients, 1);
    wb_close(c);
}

/* Peak resident memory of the daemon in KiB (VmHWM), or -1. */
static long daemon_peak_kib(const wbt_daemon *d) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)d->pid);
    FILE *f = fopen(path, "re");
    long kib = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

/* Rules that grow a key without bound (40 regexes each doubling it, which
 * would ask for 2 TiB) are refused with WB_ERULE at the rule that passes
 * WB_MAX_NAME bytes, before the time budget (that would be WB_EREGEX) and
 * without the daemon growing; the connection and the daemon go on
 * serving, and nothing leaks. */
static void test_rules_key_growth_refused(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "m", 4, 4), 1);
    int fds = wbt_fd_count(d);
    long peak = daemon_peak_kib(d);
    assert_true(peak > 0);
    char text[40 * 24] = "", err[256];
    for (int i = 0; i < 40; i++)
        strcat(text, "regex (.*) -> \\1\\1\n");
    wb_rules *r = wb_rules_new();
    assert_int_equal(wb_rules_parse(r, text, err, sizeof(err)), 0);
    for (int k = 0; k < 2; k++) {
        wb_mapping *m = NULL;
        int flags = k == 0 ? WB_MAP_SHARED : WB_MAP_PLAN;
        assert_int_equal(wb_load(c, "m", 0, NULL, r, flags, &m), WB_ERULE);
        assert_null(m);
        assert_non_null(strstr(wb_errmsg(c), "line 10: regex \"(.*)\" -> "
                                             "\"\\1\\1\" makes key \"t0t0"));
        assert_non_null(strstr(wb_errmsg(c), "...\" longer than 1024 bytes "
                                             "(source key \"t0\")"));
    }
    wb_rules_free(r);
    /* The daemon never held the keys: its peak grew by far less than even
     * one doubling past a megabyte would take. */
    assert_true(daemon_peak_kib(d) - peak < 16 * 1024);

    /* The same connection: status, a plain map, and rules within the
     * limit (nine doublings of "t0": exactly 1024 bytes). */
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), 4);
    wb_unmap(m);
    r = wb_rules_new();
    for (int i = 0; i < 9; i++)
        assert_int_equal(wb_rules_rename_regex(r, "(.*)", "\\1\\1"), 0);
    assert_int_equal(wb_load(c, "m", 0, NULL, r, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), 4);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, 1, &t), 0);
    assert_int_equal(strlen(t.name), WB_MAX_NAME);
    assert_memory_equal(t.name, "t1t1t1t1", 8);
    assert_string_equal(t.source, "t1");
    wb_unmap(m);
    wb_rules_free(r);

    /* Another client is served too. */
    wb_client *c2 = wbt_connect(d);
    assert_int_equal(wb_get_status(c2, &st), 0);
    assert_int_equal(st.clients, 2);
    wb_close(c2);
    assert_true(wbt_alive(d));
    assert_int_equal(wbt_wait_fds(d, fds), fds);
    wb_close(c);
}

/* ------------------------------------------------------------ wire */

static void map_head(msgpack_packer *pk, int extra) {
    msgpack_pack_map(pk, (size_t)(3 + extra));
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "map");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 7);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, "m");
}

static void rule(msgpack_packer *pk, int kind, const char *a, const char *b,
                 int dtype) {
    msgpack_pack_array(pk, 5);
    msgpack_pack_int(pk, kind);
    wbt_pk_str(pk, a);
    wbt_pk_str(pk, b);
    msgpack_pack_int(pk, dtype);
    msgpack_pack_int(pk, 0);
}

static void body_rules_not_list(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "rules");
    wbt_pk_str(pk, "rename everything");
}

static void body_rule_short(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 2);
    msgpack_pack_int(pk, 1);
    wbt_pk_str(pk, "a");
}

static void body_rule_kind(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    rule(pk, 99, "a", "b", -1);
}

static void body_rule_bad_regex(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    rule(pk, WB__RULE_REGEX, "layer(\\d+", "x", -1);
}

static void body_rule_bad_dtype(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    rule(pk, WB__RULE_CAST, "*", "", 1000);
}

static void body_schema_not_map(msgpack_packer *pk) {
    map_head(pk, 1);
    wbt_pk_str(pk, "schema");
    msgpack_pack_array(pk, 0);
}

/* A schema of n tensors named t0, each of dtype dt and one size dim. */
static void schema(msgpack_packer *pk, int n, const char *dt, int dim) {
    map_head(pk, 1);
    wbt_pk_str(pk, "schema");
    msgpack_pack_map(pk, 2);
    wbt_pk_str(pk, "target");
    wbt_pk_str(pk, "Net");
    wbt_pk_str(pk, "tensors");
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_array(pk, 3);
        wbt_pk_str(pk, "t0");
        wbt_pk_str(pk, dt);
        msgpack_pack_array(pk, 1);
        msgpack_pack_int(pk, dim);
    }
}

static void body_schema_negative(msgpack_packer *pk) {
    schema(pk, 1, "F32", -4);
}

static void body_schema_dtype(msgpack_packer *pk) {
    schema(pk, 1, "F12", 4);
}

static void body_schema_duplicate(msgpack_packer *pk) {
    schema(pk, 2, "F32", 4);
}

/* Malformed rules and schemas get an error with a stable code on the same
 * connection, which keeps working; nothing leaks. */
static void test_rules_malformed_on_wire(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 1);
    int fds = wbt_fd_count(d);
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(wbt_raw_hello(fd), 0);
    static const struct {
        void (*body)(msgpack_packer *);
        int err;
    } cases[] = {
        {body_rules_not_list, WB_EPROTO},   {body_rule_short, WB_EPROTO},
        {body_rule_kind, WB_ERULE},         {body_rule_bad_regex, WB_ERULE},
        {body_rule_bad_dtype, WB_ERULE},    {body_schema_not_map, WB_EPROTO},
        {body_schema_negative, WB_ESHAPE},  {body_schema_dtype, WB_EDTYPE},
        {body_schema_duplicate, WB_EEXIST},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        wbt_raw_packed(fd, cases[i].body);
        int err = wbt_raw_reply(fd);
        if (err != cases[i].err)
            fail_msg("case %zu: err %d, want %d", i, err, cases[i].err);
    }
    assert_int_equal(wbt_raw_hello(fd), 0);
    close(fd);
    assert_int_equal(wbt_wait_fds(d, fds), fds);
    assert_int_equal(wbt_mem_used(d), 2 << 20);
    wb_close(c);
}

/* ------------------------------------------------------------ conversion */

#define CT 100         /* Tensors of the converted model. */
#define CE (16 * 1024) /* Elements per tensor (64 KiB of F32). */

typedef struct cast_load {
    const wbt_daemon *d; /* Daemon to ask. */
    int dtype;           /* Dtype the target wants. */
    wb_client *c;        /* Kept open with its mapping. */
    wb_mapping *m;       /* The result. */
    int rc;              /* wb_load's result. */
} cast_load;

static void *cast_load_run(void *arg) {
    cast_load *l = arg;
    l->c = wbt_connect(l->d);
    wb_schema *s = wb_schema_new("Net");
    int64_t shape[1] = {CE};
    for (int i = 0; i < CT; i++) {
        char name[8];
        snprintf(name, sizeof(name), "t%d", i);
        wb_schema_add(s, name, l->dtype, 1, shape);
    }
    l->rc = wb_load(l->c, "m", 0, s, NULL, WB_MAP_SHARED, &l->m);
    wb_schema_free(s);
    return NULL;
}

static void cast_load_done(cast_load *l) {
    wb_unmap(l->m);
    wb_close(l->c);
}

/* Checks that l's tensors hold the source values converted as torch does
 * (wb__convert is checked bit for bit against torch elsewhere). */
static void check_converted(const cast_load *l, size_t esize) {
    float *src = malloc(CE * sizeof(float));
    uint8_t *want = malloc(CE * esize);
    assert_non_null(src);
    assert_non_null(want);
    for (int i = 0; i < CT; i++) {
        for (size_t j = 0; j < CE; j++)
            src[j] = (float)((size_t)i * 1000 + j);
        assert_int_equal(wb__convert(WB_F32, l->dtype, src, want, CE), 0);
        wb_tensor t;
        assert_int_equal(wb_map_tensor(l->m, (size_t)i, &t), 0);
        assert_int_equal(t.dtype, l->dtype);
        assert_int_equal(t.cast, 1);
        assert_int_equal(t.nbytes, CE * esize);
        assert_memory_equal(t.data, want, CE * esize);
    }
    free(src);
    free(want);
}

/* Two clients asking the same conversion at once get one converted copy
 * of each of 100 tensors, made once and shared; a third converting to another
 * dtype gets its own; a plain consumer of the same version sees the source
 * untouched.  The copies are accounted, outlive a drop while mapped, and are
 * freed with their version. */
static void test_rules_conversion_shared(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "m", CT, CE), 1);
    uint64_t base = wbt_mem_used(d);
    int segs = wbt_segment_count(d);

    cast_load a = {.d = d, .dtype = WB_F16}, b = {.d = d, .dtype = WB_F16};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, cast_load_run, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, cast_load_run, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.rc, 0);
    assert_int_equal(b.rc, 0);
    check_converted(&a, 2);
    check_converted(&b, 2);
    /* One copy of every tensor, whoever asked, all in one segment (a map
     * reply carries at most 64 descriptors): 100 x 32 KiB in 2 MiB units. */
    uint64_t f16 = 4 << 20;
    assert_int_equal(wbt_wait_segments(d, segs + 1), segs + 1);
    assert_int_equal(wbt_mem_used(d), base + f16);

    cast_load e = {.d = d, .dtype = WB_BF16};
    cast_load_run(&e);
    assert_int_equal(e.rc, 0);
    check_converted(&e, 2);
    assert_int_equal(wbt_wait_segments(d, segs + 2), segs + 2);
    assert_int_equal(wbt_mem_used(d), base + 2 * f16);

    /* A later F16 consumer reuses the cached copy. */
    cast_load l = {.d = d, .dtype = WB_F16};
    cast_load_run(&l);
    assert_int_equal(l.rc, 0);
    assert_int_equal(wbt_wait_segments(d, segs + 2), segs + 2);
    cast_load_done(&l);

    wb_mapping *plain;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &plain), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(plain, 3, &t), 0);
    assert_int_equal(t.cast, 0);
    assert_true(((const float *)t.data)[7] == 3007.0f);

    /* Dropped while mapped: every mapping stays valid, and the memory goes
     * when the last one does. */
    assert_int_equal(wb_drop(c, "m", 0), 0);
    check_converted(&a, 2);
    check_converted(&e, 2);
    cast_load_done(&a);
    cast_load_done(&b);
    cast_load_done(&e);
    wb_unmap(plain);
    wbt_wait_clean(d);
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wbt_mem_used(d), 0);
    wb_close(c);
}

typedef struct big_cast {
    const wbt_daemon *d; /* Daemon to ask. */
    int rc;              /* wb_load's result. */
} big_cast;

#define BIG_E (32 * 1024 * 1024) /* Elements of the big tensor (128 MiB). */

/* Value j of the big tensor: every float16 rounding case comes up. */
static float big_value(size_t j) {
    return (float)j * 0.37f - 1e6f;
}

/* Loads "big" as float16 (a conversion of a few hundred ms, in parallel
 * parts that split the tensor) and checks every element. */
static void *big_cast_run(void *arg) {
    big_cast *b = arg;
    wb_client *c = wbt_connect(b->d);
    wb_schema *s = wb_schema_new("Net");
    int64_t shape[1] = {BIG_E};
    wb_schema_add(s, "big", WB_F16, 1, shape);
    wb_mapping *m = NULL;
    float chunk[4096];
    uint16_t want[4096];
    b->rc = wb_load(c, "big", 0, s, NULL, WB_MAP_SHARED | WB_MAP_NONSTRICT, &m);
    wb_tensor t;
    if (b->rc == 0 && wb_map_tensor(m, 0, &t) == 0) {
        const uint16_t *got = t.data;
        for (size_t j = 0; j < BIG_E && b->rc == 0; j += 4096) {
            for (size_t k = 0; k < 4096; k++)
                chunk[k] = big_value(j + k);
            wb__convert(WB_F32, WB_F16, chunk, want, 4096);
            if (memcmp(got + j, want, sizeof(want)) != 0)
                b->rc = -1000;
        }
    }
    wb_unmap(m);
    wb_schema_free(s);
    wb_close(c);
    return NULL;
}

/* A request that joins a conversion in flight and then fails (a dtype
 * pair without a conversion) is answered once: the same connection's next
 * request gets its own answer, and the joined conversion completes. */
static void test_rules_cast_error_while_joined(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t big[1] = {BIG_E}, small[1] = {4};
    wb_tensor_spec specs[2] = {{"big", WB_F32, 1, big, NULL},
                               {"small", WB_F32, 1, small, NULL}};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "big", specs, 2, NULL, 0, &p), 0);
    float *w = wb_publish_data(p, 0, NULL);
    for (size_t j = 0; j < BIG_E; j++)
        w[j] = big_value(j);
    assert_int_equal(wb_publish_commit(p, NULL), 0);
    big_cast b = {.d = d};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, big_cast_run, &b), 0);
    usleep(50 * 1000); /* Let the conversion start. */
    wb_schema *s = wb_schema_new("Net");
    wb_schema_add(s, "big", WB_F16, 1, big);
    wb_schema_add(s, "small", WB_I8, 1, small); /* No F32 -> I8. */
    wb_mapping *m = NULL;
    assert_int_equal(wb_load(c, "big", 0, s, NULL, WB_MAP_SHARED, &m),
                     WB_EDTYPE);
    assert_non_null(strstr(wb_errmsg(c), "cannot convert small"));
    wb_schema_free(s);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(wb_get_status(c, &st), 0);
    pthread_join(th, NULL);
    assert_int_equal(b.rc, 0);
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rules_regex_match_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_rules_slow_rules_do_not_starve_publish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rules_unused_rule_reported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rules_regex_budget_others_served,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_rules_client_gone_midway, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rules_key_growth_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rules_malformed_on_wire, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rules_conversion_shared, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rules_cast_error_while_joined,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
