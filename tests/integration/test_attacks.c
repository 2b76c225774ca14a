/* test_attacks.c -- Regression tests for attacks on wbrokerd through its
 * real socket: pipelined requests inside watcher notifications, drops
 * under requests in flight, descriptors kept past an abort, descriptor
 * exhaustion, dead and stalled clients, races on the header at commit,
 * replies beyond the frame limit, reused version numbers, bad BOOL bytes
 * and metadata that is not UTF-8.
 *
 * Each test starts its own daemon, abuses it with raw frames or the real
 * library, and ends by checking that it is alive and holds no more
 * descriptors, segments or memory than it should.  Every wait is bounded
 * and a watchdog kills a stuck daemon, so that a test fails instead of
 * hanging.  WBT_FILTER=<glob> runs only the tests whose names match. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>

#include "../../daemon/convert.h"
#include "harness.h"

#define WATCHDOG_S 150 /* Seconds before a stuck test's daemon is killed. */
#define REPLY_MS 5000  /* Bound on waiting for an ordinary reply. */
#define SLOW_MS 60000  /* Bound on a reply that does real work. */

/* ------------------------------------------------------------ fixtures */

static int start(void **state, const char *const *extra, unsigned long nofile) {
    if (wbt_setup_limits(state, extra, nofile) != 0) {
        fprintf(stderr, "cannot start the daemon\n");
        return -1;
    }
    wbt_watchdog(*state, WATCHDOG_S);
    return 0;
}

/* No retention (--keep 0): these tests count and map every version. */
static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", "--keep", "0",
                                        NULL};
    return start(state, extra, 0);
}

static int setup_small(void **state) {
    static const char *const extra[] = {"--memory-limit", "64M", NULL};
    return start(state, extra, 0);
}

static int setup_timeout(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G",
                                        "--client-timeout", "1", NULL};
    return start(state, extra, 0);
}

#define LOW_NOFILE 64 /* RLIMIT_NOFILE of the EMFILE test's daemon. */

static int setup_nofile(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", NULL};
    return start(state, extra, LOW_NOFILE);
}

/* Stops the daemon; a clean exit (status 0) is part of every test. */
static int teardown(void **state) {
    return wbt_teardown_finish(state);
}

/* ------------------------------------------------------------ helpers */

/* Fails the test unless the daemon still runs. */
static void assert_alive(const wbt_daemon *d) {
    if (!wbt_running(d))
        fail_msg("wbrokerd died (see its log below)");
}

/* Waits for the daemon to hold no segment and no memory. */
static void wait_clean(const wbt_daemon *d) {
    wbt_wait_clean(d);
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wbt_mem_used(d), 0);
}

/* The daemon's descriptor count once a status round trip has been served
 * and the count has stayed put for 100 ms. */
static int settled_fds(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    wb_close(c);
    return wbt_settled_fds(d, 100, 3000);
}

/* Waits up to 5 s for the descriptor count to come back to n. */
static void wait_fds(const wbt_daemon *d, int n) {
    int got = wbt_wait_fds(d, n);
    if (got != n)
        fail_msg("daemon holds %d descriptors, %d expected", got, n);
}

/* A raw connection that has exchanged the hello. */
static int raw_session(const wbt_daemon *d) {
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    assert_int_equal(wbt_frames_send(fd, &f), 0);
    wbt_frames_free(&f);
    wbt_reply r;
    assert_int_equal(wbt_raw_read(fd, REPLY_MS, &r), 0);
    wbt_reply_free(&r);
    return fd;
}

/* Sends f and frees it. */
static void send_frames(int fd, wbt_frames *f) {
    assert_int_equal(wbt_frames_send(fd, f), 0);
    wbt_frames_free(f);
}

/* Reads the next reply and fails unless it is the success answer to id. */
static void read_ok(int fd, uint64_t id, int timeout_ms, wbt_reply *r) {
    int err = wbt_raw_read(fd, timeout_ms, r);
    if (err != 0)
        fail_msg("request %llu: err %d (%s)", (unsigned long long)id, err,
                 err == WBT_CLOSED    ? "connection closed"
                 : err == WBT_TIMEOUT ? "no reply in time"
                                      : wb_err_name(err));
    assert_int_equal(r->id, id);
}

/* Sends the one request in f, numbered id, frees f, and fails unless the
 * answer is a success. */
static void request_ok(int fd, wbt_frames *f, uint64_t id) {
    send_frames(fd, f);
    wbt_reply r;
    read_ok(fd, id, REPLY_MS, &r);
    wbt_reply_free(&r);
}

/* A status round trip (request id) over a raw session: it still works. */
static void raw_status(int fd, uint64_t id) {
    wbt_frames f = {0};
    wbt_frames_status(&f, id);
    request_ok(fd, &f, id);
}

/* Aborts publish pub over a raw session (request id); fails unless that
 * succeeds. */
static void raw_abort(int fd, uint64_t id, uint64_t pub) {
    wbt_frames f = {0};
    wbt_frames_abort(&f, id, pub);
    request_ok(fd, &f, id);
}

/* A raw connection that sent hello and watch(model, after) in one write,
 * and got the hello's answer, so that the watch is registered: the daemon
 * handles every whole frame it has read before it reads again. */
static int raw_watcher(const wbt_daemon *d, const char *model, uint64_t after,
                       uint64_t id) {
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    wbt_frames_watch(&f, id, model, after, -1);
    send_frames(fd, &f);
    wbt_reply r;
    assert_int_equal(wbt_raw_read(fd, REPLY_MS, &r), 0);
    assert_int_equal(r.id, 1);
    wbt_reply_free(&r);
    return fd;
}

/* The field key of a decoded reply map, or NULL. */
static const msgpack_object *field(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* Packs a msgpack string. */
static void pk_str(msgpack_packer *pk, const char *s) {
    wbt_pk_str(pk, s);
}

/* Packs the head of a request: a map of nfields fields besides op, id. */
static void pk_head(msgpack_packer *pk, const char *op, uint64_t id,
                    size_t nfields) {
    msgpack_pack_map(pk, nfields + 2);
    pk_str(pk, "op");
    pk_str(pk, op);
    pk_str(pk, "id");
    msgpack_pack_uint64(pk, id);
}

/* Appends the body in sb to f as a frame and frees sb. */
static void add_body(wbt_frames *f, msgpack_sbuffer *sb) {
    wbt_frames_add(f, sb->data, sb->size);
    msgpack_sbuffer_destroy(sb);
}

/* A publish reply: handle, segment size and the writable descriptor. */
typedef struct pub_reply {
    uint64_t pub;        /* Handle. */
    uint64_t size;       /* Bytes of the segment. */
    uint64_t offs[1024]; /* Offsets in request order (first 1024). */
    int fd;              /* The writable descriptor. */
} pub_reply;

/* Reads the answer to publish request id and keeps its descriptor. */
static void read_pub(int fd, uint64_t id, pub_reply *p) {
    wbt_reply r;
    read_ok(fd, id, SLOW_MS, &r);
    assert_int_equal(r.nfds, 1);
    p->pub = wbt_reply_u64(&r, "pub");
    p->size = wbt_reply_u64(&r, "size");
    assert_true(p->pub != UINT64_MAX);
    assert_true(p->size != UINT64_MAX);
    const msgpack_object *offs = field(r.root, "offs");
    assert_non_null(offs);
    for (uint32_t i = 0; i < offs->via.array.size && i < 1024; i++)
        p->offs[i] = offs->via.array.ptr[i].via.u64;
    p->fd = r.fds[0];
    r.fds[0] = -1;
    wbt_reply_free(&r);
}

/* Publishes n F32 tensors of len elements over a raw session and reads
 * the answer. */
static void raw_publish(int fd, uint64_t id, const char *model, size_t n,
                        size_t len, pub_reply *p) {
    wbt_frames f = {0};
    wbt_frames_publish_f32(&f, id, model, n, len);
    send_frames(fd, &f);
    read_pub(fd, id, p);
}

/* ------------------------------------------------------------ 1: watch */

#define NWATCH 3 /* Other watchers before and after W1's watch. */

/* W1 pipelines [watch m, commit] (or [watch m, drop m]) between other
 * watchers of m; P's commit answers them all.  Fails unless every watch is
 * answered in range, W1's second request gets its own answer after that,
 * and the daemon ends alive and clean. */
static void run_pipelined_watch(const wbt_daemon *d, int with_commit) {
    int base = settled_fds(d);
    wb_client *p = wbt_connect(d);
    assert_non_null(p);
    assert_int_equal(wbt_publish_f32(p, "m", 1, 16), 1);

    /* Watchers registered before and after W1's, so that W1's sits
     * between others in the daemon's list whatever its order. */
    int before[NWATCH], after[NWATCH];
    for (int i = 0; i < NWATCH; i++)
        before[i] = raw_watcher(d, "m", 1, 7);

    int w1 = raw_session(d);
    pub_reply pr = {0};
    if (with_commit)
        raw_publish(w1, 2, "m", 1, 16, &pr);
    wbt_frames f = {0};
    wbt_frames_watch(&f, 3, "m", 1, -1);
    if (with_commit)
        wbt_frames_commit(&f, 4, pr.pub);
    else
        wbt_frames_drop(&f, 4, "m", 0);
    send_frames(w1, &f);
    wbt_sleep_ms(100); /* Let the daemon register W1's watch. */

    for (int i = 0; i < NWATCH; i++)
        after[i] = raw_watcher(d, "m", 1, 7);

    /* P commits version 2: every watcher is answered. */
    assert_int_equal(wbt_publish_f32(p, "m", 1, 16), 2);
    uint64_t top = with_commit ? 3 : 2; /* Highest version there is. */
    for (int i = 0; i < 2 * NWATCH; i++) {
        int fd = i < NWATCH ? before[i] : after[i - NWATCH];
        wbt_reply r;
        read_ok(fd, 7, REPLY_MS, &r);
        uint64_t v = wbt_reply_u64(&r, "version");
        if (v <= 1 || v > top)
            fail_msg("watcher %d answered with version %llu", i,
                     (unsigned long long)v);
        wbt_reply_free(&r);
        close(fd);
    }
    wbt_reply r;
    read_ok(w1, 3, REPLY_MS, &r);
    uint64_t v = wbt_reply_u64(&r, "version");
    assert_true(v > 1 && v <= top);
    wbt_reply_free(&r);
    read_ok(w1, 4, REPLY_MS, &r);
    if (with_commit)
        assert_int_equal(wbt_reply_u64(&r, "version"), 3);
    else
        assert_int_equal(wbt_reply_u64(&r, "dropped"), 2);
    wbt_reply_free(&r);
    if (with_commit)
        close(pr.fd);
    close(w1);
    assert_alive(d);

    /* The model is as the operations left it. */
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(p, &mi, &n), 0);
    if (with_commit) {
        assert_int_equal(n, 1);
        assert_int_equal(mi[0].latest, 3);
        assert_int_equal(mi[0].nversions, 3);
    } else {
        assert_int_equal(n, 0);
    }
    wb_model_info_free(mi, n);
    if (with_commit)
        assert_int_equal(wb_drop(p, "m", 0), 0);
    wb_close(p);
    wait_clean(d);
    wait_fds(d, base);
}

/* A commit pipelined behind a watch runs after the notification, not in it. */
static void test_attacks_watch_then_commit_pipelined(void **state) {
    run_pipelined_watch(*state, 1);
}

/* A drop pipelined behind a watch runs after the notification, not in it. */
static void test_attacks_watch_then_drop_pipelined(void **state) {
    run_pipelined_watch(*state, 0);
}

/* ------------------------------------------------------------ 2: drop */

#define BIG_E (32u * 1024 * 1024) /* Elements of the big F32 tensor. */

/* Value j of tensor i of the converted models. */
static float conv_value(size_t i, size_t j) {
    return (float)(i * 7 + j) * 0.37f - 1e5f;
}

/* Appends a map of model with a cast-everything-to-F16 rule, plus nrename
 * regex renames that match nothing (to make the rules slow). */
static void add_cast_map(wbt_frames *f, uint64_t id, const char *model,
                         int nrename) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pk_head(&pk, "map", id, 6);
    pk_str(&pk, "model");
    pk_str(&pk, model);
    pk_str(&pk, "version");
    msgpack_pack_uint64(&pk, 0);
    pk_str(&pk, "plan");
    msgpack_pack_false(&pk);
    pk_str(&pk, "strict");
    msgpack_pack_true(&pk);
    pk_str(&pk, "ignore_mismatch");
    msgpack_pack_false(&pk);
    pk_str(&pk, "rules");
    msgpack_pack_array(&pk, (size_t)nrename + 1);
    for (int k = 0; k < nrename; k++) {
        char pat[64];
        snprintf(pat, sizeof(pat), "nomatch%d\\.(.*)x", k);
        msgpack_pack_array(&pk, 5);
        msgpack_pack_int(&pk, 5); /* regex */
        pk_str(&pk, pat);
        pk_str(&pk, "y\\1");
        msgpack_pack_int(&pk, -1);
        msgpack_pack_int(&pk, 0);
    }
    msgpack_pack_array(&pk, 5);
    msgpack_pack_int(&pk, 6); /* cast */
    pk_str(&pk, "*");
    pk_str(&pk, "");
    msgpack_pack_int(&pk, WB_F16);
    msgpack_pack_int(&pk, 0);
    add_body(f, &sb);
}

/* Checks a successful cast-map reply: every tensor is the F16 conversion
 * of conv_value() (tensor index from its name "t<i>"). */
static void check_cast_reply(const wbt_reply *r, size_t ntensors) {
    const msgpack_object *segs = field(r->root, "segs");
    const msgpack_object *ts = field(r->root, "tensors");
    assert_non_null(segs);
    assert_non_null(ts);
    assert_int_equal(segs->via.array.size, r->nfds);
    assert_int_equal(ts->via.array.size, ntensors);
    void *base[64];
    size_t size[64];
    for (int k = 0; k < r->nfds; k++) {
        size[k] = (size_t)segs->via.array.ptr[k].via.u64;
        base[k] = mmap(NULL, size[k], PROT_READ, MAP_SHARED, r->fds[k], 0);
        assert_true(base[k] != MAP_FAILED);
    }
    float src[4096];
    uint16_t want[4096];
    for (uint32_t i = 0; i < ts->via.array.size; i++) {
        const msgpack_object *e = ts->via.array.ptr[i].via.array.ptr;
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)e[0].via.str.size,
                 e[0].via.str.ptr);
        size_t ti = strtoul(name + 1, NULL, 10);
        assert_true(e[2].via.str.size == 3 &&
                    memcmp(e[2].via.str.ptr, "F16", 3) == 0);
        uint64_t seg = e[4].via.u64, off = e[5].via.u64, nb = e[6].via.u64;
        assert_true(seg < (uint64_t)r->nfds);
        assert_true(off + nb <= size[seg]);
        const uint16_t *got = (const uint16_t *)((char *)base[seg] + off);
        size_t n = (size_t)nb / 2;
        for (size_t j = 0; j < n; j += 4096) {
            size_t k = n - j < 4096 ? n - j : 4096;
            for (size_t q = 0; q < k; q++)
                src[q] = conv_value(ti, j + q);
            assert_int_equal(wb__convert(WB_F32, WB_F16, src, want, k), 0);
            if (memcmp(got + j, want, k * 2) != 0)
                fail_msg("tensor %s: wrong converted bytes near %zu", name, j);
        }
    }
    for (int k = 0; k < r->nfds; k++)
        munmap(base[k], size[k]);
}

/* Publishes model: n F32 tensors "t<i>" of len elements of conv_value. */
static void publish_conv(wb_client *c, const char *model, size_t n,
                         size_t len) {
    wb_tensor_spec *specs = calloc(n, sizeof(*specs));
    char(*names)[16] = calloc(n, sizeof(*names));
    assert_non_null(specs);
    assert_non_null(names);
    int64_t shape[1] = {(int64_t)len};
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 16, "t%zu", i);
        specs[i] = (wb_tensor_spec){names[i], WB_F32, 1, shape, NULL};
    }
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, model, specs, n, NULL, 0, &p), 0);
    size_t chunk = len < 65536 ? len : 65536;
    float *buf = malloc(chunk * sizeof(float));
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < len; j += chunk) {
            size_t k = len - j < chunk ? len - j : chunk;
            for (size_t q = 0; q < k; q++)
                buf[q] = conv_value(i, j + q);
            assert_int_equal(wb_publish_write(p, i, buf, k * sizeof(float),
                                              j * sizeof(float)),
                             0);
        }
    free(buf);
    assert_int_equal(wb_publish_commit(p, NULL), 0);
    free(specs);
    free(names);
}

/* A sends a converting map of model, B drops the model right after; A
 * gets a correct mapping or a clean "no model/version", and the daemon
 * ends with nothing.  A sends its hello and the map in one write and waits
 * for the hello's answer, by which time the daemon has taken the map too
 * (it handles every whole frame it read): the drop lands while the map is
 * in flight. */
static void drop_under_map(const wbt_daemon *d, const char *model,
                           size_t ntensors, int nrename) {
    wb_client *b = wbt_connect(d);
    assert_non_null(b);
    int a = wbt_raw_connect(d);
    assert_true(a >= 0);
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    add_cast_map(&f, 2, model, nrename);
    send_frames(a, &f);
    wbt_reply r;
    read_ok(a, 1, REPLY_MS, &r);
    wbt_reply_free(&r);
    assert_int_equal(wb_drop(b, model, 0), 0);
    int err = wbt_raw_read(a, SLOW_MS, &r);
    if (err == 0) {
        check_cast_reply(&r, ntensors);
    } else if (err != WB_ENOMODEL && err != WB_ENOVERSION &&
               !(err == WB_EREGEX && nrename > 0)) {
        /* Slow rules may run out of their budget on a slow (sanitizer)
         * build: still an answer, given while the model was dropped. */
        fail_msg("map while dropped: err %d (%s)", err,
                 err == WBT_CLOSED    ? "connection closed"
                 : err == WBT_TIMEOUT ? "no reply"
                                      : wb_err_name(err));
    }
    fprintf(stderr, "  %s: the map got %s\n", model,
            err == 0 ? "a mapping" : wb_err_name(err));
    wbt_reply_free(&r); /* Closes the descriptors: nothing maps it now. */
    raw_status(a, 3);   /* The connection still works. */
    close(a);
    wb_close(b);
    assert_alive(d);
    wait_clean(d);
}

/* A drop during a map's F32->F16 conversion: correct map or clean error. */
static void test_attacks_drop_during_conversion(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    wb_client *c = wbt_connect(d);
    publish_conv(c, "big", 1, BIG_E);
    wb_close(c);
    drop_under_map(d, "big", 1, 0);
    wait_fds(d, base);
}

#define WIDE_N 20000 /* Tensors of the model with slow rules. */
/* Regex renames that match none of the keys: about 0.2 s of rules. */
#define WIDE_RULES 300

/* A drop while a map's rules run: correct map or clean error, no leak. */
static void test_attacks_drop_during_rules(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    wb_client *c = wbt_connect(d);
    publish_conv(c, "wide", WIDE_N, 64);
    wb_close(c);
    drop_under_map(d, "wide", WIDE_N, WIDE_RULES);
    wait_fds(d, base);
}

/* ------------------------------------------------------------ 3: abort */

#define BIG_PUB (12u * 1024 * 1024) /* F32 elements: 48 MiB. */

/* Fails unless the kept descriptor holds no page and cannot get any: no
 * blocks, write() refused, fallocate() refused.  Punching the pages out
 * and sealing writes is not enough for the last: Linux allocates pages for
 * fallocate() within the size of a write-sealed memfd, so the daemon must
 * also shrink an abandoned segment to nothing. */
static void assert_kept_empty(int fd, const char *what) {
    struct stat st;
    double until = wbt_now() + 5;
    do {
        assert_int_equal(fstat(fd, &st), 0);
        if (st.st_blocks == 0)
            break;
        wbt_sleep_ms(20);
    } while (wbt_now() < until);
    if (st.st_blocks != 0)
        fail_msg("%s: the kept descriptor still holds %lld KiB of pages", what,
                 (long long)st.st_blocks / 2);
    if (write(fd, "x", 1) != -1)
        fail_msg("%s: write() on the kept descriptor succeeded", what);
    if (fallocate(fd, 0, 0, 1 << 20) == 0)
        fail_msg("%s: fallocate() on the kept descriptor gave it pages "
                 "again (F_SEAL_WRITE does not stop that: shrink the "
                 "segment to 0 bytes before sealing)",
                 what);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_blocks, 0);
}

/* Waits up to 5 s for status to say no memory is used. */
static void wait_used_zero(const wbt_daemon *d, const char *what) {
    uint64_t used = 0;
    for (int i = 0; i < 250; i++) {
        if ((used = wbt_mem_used(d)) == 0)
            return;
        wbt_sleep_ms(20);
    }
    fail_msg("%s: %llu bytes still charged", what, (unsigned long long)used);
}

/* Descriptors kept past an abort or a hang-up hold no memory, uncharged. */
static void test_attacks_abort_keeps_no_pages(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    int kept[7];
    int s = raw_session(d);
    for (int i = 0; i < 5; i++) {
        pub_reply pr;
        raw_publish(s, 10 + (uint64_t)i * 2, "big", 1, BIG_PUB, &pr);
        kept[i] = pr.fd;
        raw_abort(s, 11 + (uint64_t)i * 2, pr.pub);
        assert_kept_empty(pr.fd, "after abort");
        wait_used_zero(d, "after abort");
    }
    close(s);
    /* The same when the publisher's connection ends instead. */
    for (int i = 5; i < 7; i++) {
        s = raw_session(d);
        pub_reply pr;
        raw_publish(s, 2, "big", 1, BIG_PUB, &pr);
        kept[i] = pr.fd;
        close(s);
        assert_kept_empty(pr.fd, "after the connection closed");
        wait_used_zero(d, "after the connection closed");
    }
    for (int i = 0; i < 7; i++)
        assert_kept_empty(kept[i], "in the end");
    /* Publishing still works within the limit. */
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "big", 1, BIG_PUB), 1);
    assert_int_equal(wb_drop(c, "big", 0), 0);
    wb_close(c);
    for (int i = 0; i < 7; i++)
        close(kept[i]);
    assert_alive(d);
    wait_clean(d);
    wait_fds(d, base);
}

/* Publishes 48 MiB over a fresh connection and returns its result (and
 * aborts it when it succeeded). */
static int try_big_publish(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    int64_t shape[1] = {BIG_PUB};
    wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
    wb_publish *p = NULL;
    int rc = wb_publish_begin(c, "other", &spec, 1, NULL, 0, &p);
    wb_publish_abort(p);
    wb_close(c);
    return rc;
}

/* One round of test_attacks_abort_while_mapped: abort (or hang up) while
 * the segment is mapped writable, then unmap. */
static void abort_mapped_round(const wbt_daemon *d, int hang_up) {
    const char *what = hang_up ? "hang-up while mapped" : "abort while mapped";
    int s = raw_session(d);
    pub_reply pr;
    raw_publish(s, 2, "big", 1, BIG_PUB, &pr);
    uint8_t *m =
        mmap(NULL, pr.size, PROT_READ | PROT_WRITE, MAP_SHARED, pr.fd, 0);
    assert_true(m != MAP_FAILED);
    memset(m + pr.offs[0], 0x5a, 1 << 20);
    if (hang_up) {
        close(s);
    } else {
        raw_abort(s, 3, pr.pub);
    }
    /* While the writable mapping lives, its memory stays charged: another
     * 48 MiB does not fit in 64 MiB.  (A daemon that emptied the segment
     * for good may release the charge at once.) */
    int rc = try_big_publish(d);
    if (rc == 0) {
        struct stat st;
        assert_int_equal(fstat(pr.fd, &st), 0);
        if (st.st_blocks != 0 || fallocate(pr.fd, 0, 0, 4096) == 0)
            fail_msg("%s: the charge was released while the client still "
                     "holds %lld KiB through its mapping",
                     what, (long long)st.st_blocks / 2);
    } else {
        assert_int_equal(rc, WB_ELIMIT);
        assert_true(wbt_mem_used(d) >= pr.size);
    }
    munmap(m, pr.size);
    /* Within 5 s of the unmap: nothing charged, no segment held, and the
     * descriptor the client still keeps holds nothing either. */
    wait_used_zero(d, what);
    assert_int_equal(wbt_wait_segments(d, 0), 0);
    assert_kept_empty(pr.fd, what);
    close(pr.fd);
    if (!hang_up)
        close(s);
}

/* Mapped writable at abort/hang-up: charged until unmapped, then freed. */
static void test_attacks_abort_while_mapped(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    abort_mapped_round(d, 0);
    abort_mapped_round(d, 1);
    assert_int_equal(try_big_publish(d), 0);
    assert_alive(d);
    wait_clean(d);
    wait_fds(d, base);
}

/* ------------------------------------------------------------ 4: fds */

#define HOG_MAPS 2000 /* Map requests the hog pipelines. */
#define HOG_FDS 200   /* Most descriptors the daemon may hold meanwhile. */

/* Sends all of f without blocking for more than timeout_ms in all;
 * returns the bytes sent (the daemon may stop reading: that is fine). */
static size_t send_bounded(int fd, const wbt_frames *f, int timeout_ms) {
    double until = wbt_now() + timeout_ms / 1000.0;
    size_t off = 0;
    while (off < f->len && wbt_now() < until) {
        ssize_t n =
            send(fd, f->data + off, f->len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            break;
        struct pollfd pfd = {fd, POLLOUT, 0};
        poll(&pfd, 1, 50);
    }
    return off;
}

/* A client that never reads its replies cannot pile up descriptors. */
static void test_attacks_descriptor_hog(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 256), 1);
    wb_close(c);
    int base = settled_fds(d);

    int hog = raw_session(d);
    wbt_frames f = {0};
    for (int i = 0; i < HOG_MAPS; i++)
        wbt_frames_map(&f, 10 + (uint64_t)i, "m", 0);
    size_t sent = send_bounded(hog, &f, 3000);
    wbt_frames_free(&f);
    fprintf(stderr, "  hog sent %zu bytes of requests\n", sent);

    int most = 0;
    for (int i = 0; i < 30; i++) {
        int n = wbt_fd_count(d);
        most = n > most ? n : most;
        wbt_sleep_ms(50);
    }
    /* Another client is still served. */
    c = wbt_connect(d);
    assert_non_null(c);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "t1"), &t), 0);
    assert_true(((const float *)t.data)[255] == 1255.0f);
    wb_unmap(m);
    wb_close(c);
    for (int i = 0; i < 10; i++) {
        int n = wbt_fd_count(d);
        most = n > most ? n : most;
        wbt_sleep_ms(20);
    }
    fprintf(stderr, "  daemon held at most %d descriptors (%d at rest)\n", most,
            base);
    if (most >= HOG_FDS)
        fail_msg("the daemon held %d descriptors for one client that does "
                 "not read (bound: %d)",
                 most, HOG_FDS);
    close(hog);
    assert_alive(d);
    wait_fds(d, base);
}

#define EMFILE_CONNS 100 /* Connections held against a LOW_NOFILE daemon. */

/* A non-blocking connection to the daemon, or -1 (backlog full). */
static int connect_nonblock(const wbt_daemon *d) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Opens up to EMFILE_CONNS connections into held (fewer if the backlog
 * fills up) and gives the daemon 500 ms to accept what it can and hit its
 * descriptor limit; returns how many are held. */
static int hold_connections(const wbt_daemon *d, int held[EMFILE_CONNS]) {
    int n = 0;
    for (int i = 0; i < EMFILE_CONNS; i++) {
        int fd = connect_nonblock(d);
        if (fd < 0)
            break;
        held[n++] = fd;
    }
    wbt_sleep_ms(500);
    return n;
}

/* At EMFILE the daemon neither spins nor floods its log, then recovers. */
static void test_attacks_emfile(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    int held[EMFILE_CONNS], nheld = hold_connections(d, held);
    assert_true(nheld > LOW_NOFILE);
    int fds = wbt_fd_count(d);
    static const char *const words[] = {"accept", "emfile", "too many open",
                                        "descriptor", NULL};
    int lines0 = wbt_log_lines(d);
    double cpu0 = wbt_cpu_seconds(d), t0 = wbt_now();
    wbt_sleep_ms(2000);
    double cpu = wbt_cpu_seconds(d) - cpu0, wall = wbt_now() - t0;
    int noisy = wbt_log_grep(d, lines0, words);
    fprintf(stderr,
            "  %d connections held, daemon at %d descriptors: "
            "%.2f s of CPU in %.2f s, %d log lines about it\n",
            nheld, fds, cpu, wall, noisy);
    assert_true(cpu0 >= 0);
    if (cpu >= 0.5)
        fail_msg("the daemon spun at EMFILE: %.2f s of CPU in %.2f s", cpu,
                 wall);
    if (noisy >= 20)
        fail_msg("the daemon logged %d lines about accept/EMFILE in %.2f s",
                 noisy, wall);
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    /* A new client is served again (within 5 s). */
    wb_client *c = NULL;
    wb_status st;
    int rc = -1;
    for (int i = 0; i < 50 && rc != 0; i++) {
        wb_close(c);
        c = NULL;
        if (wb_connect(d->sock, &c) == 0)
            rc = wb_get_status(c, &st);
        if (rc != 0)
            wbt_sleep_ms(100);
    }
    assert_int_equal(rc, 0);
    wb_close(c);
    assert_alive(d);
    wait_fds(d, base);
}

/* A map that fails because the daemon has no descriptor left gets WB_ESYS
 * with the daemon's errno (EMFILE) in wb_sys_errno(); the same client maps
 * again once descriptors are free. */
static void test_attacks_emfile_errno_reaches_client(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 256), 1);
    int held[EMFILE_CONNS], nheld = hold_connections(d, held);
    wb_mapping *m = NULL;
    int rc = wb_map(c, "m", 0, WB_MAP_SHARED, &m);
    if (rc == 0)
        fail_msg("the map succeeded with the daemon at its descriptor limit");
    assert_int_equal(rc, WB_ESYS);
    assert_int_equal(wb_sys_errno(c), EMFILE);
    assert_null(m);
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    wbt_sleep_ms(300);
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_sys_errno(c), 0);
    wb_unmap(m);
    wb_close(c);
    assert_alive(d);
}

/* ------------------------------------------------------------ 5: dead */

#define DEAD_WATCHERS 50 /* Watchers killed while they wait. */

/* A child: connects, watches m forever, says so on ready, waits. */
static void dead_watcher_child(const wbt_daemon *d, int ready) {
    int fd = wbt_raw_connect(d);
    if (fd < 0)
        _exit(1);
    wbt_frames f = {0};
    wbt_frames_hello(&f, 1);
    wbt_frames_watch(&f, 2, "m", 0, -1);
    if (wbt_frames_send(fd, &f))
        _exit(2);
    wbt_reply r;
    if (wbt_raw_read(fd, REPLY_MS, &r) != 0)
        _exit(3);
    if (write(ready, "r", 1) != 1)
        _exit(4);
    for (;;)
        pause();
}

/* Watchers killed while they wait are noticed within 5 s. */
static void test_attacks_dead_watchers_noticed(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t kids[DEAD_WATCHERS];
    for (int i = 0; i < DEAD_WATCHERS; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            close(pfd[0]);
            wbt_watchdog(NULL, 0);
            signal(SIGALRM, SIG_DFL);
            alarm(60); /* In case nobody kills it. */
            dead_watcher_child(d, pfd[1]);
        }
    }
    close(pfd[1]);
    int ready = 0;
    double until = wbt_now() + 10;
    while (ready < DEAD_WATCHERS && wbt_now() < until) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        char buf[64];
        if (poll(&p, 1, 100) > 0) {
            ssize_t n = read(pfd[0], buf, sizeof(buf));
            if (n <= 0)
                break;
            ready += (int)n;
        }
    }
    close(pfd[0]);
    wb_status st;
    int rc = wb_get_status(c, &st);
    uint64_t counted = st.clients;
    for (int i = 0; i < DEAD_WATCHERS; i++)
        kill(kids[i], SIGKILL);
    for (int i = 0; i < DEAD_WATCHERS; i++)
        waitpid(kids[i], NULL, 0);
    assert_int_equal(ready, DEAD_WATCHERS);
    assert_int_equal(rc, 0);
    assert_int_equal(counted, DEAD_WATCHERS + 1);
    until = wbt_now() + 5;
    do {
        assert_int_equal(wb_get_status(c, &st), 0);
        if (st.clients == 1)
            break;
        wbt_sleep_ms(50);
    } while (wbt_now() < until);
    if (st.clients != 1)
        fail_msg("%llu clients still counted 5 s after %d watchers died",
                 (unsigned long long)st.clients - 1, DEAD_WATCHERS);
    wb_close(c);
    assert_alive(d);
    wait_fds(d, base);
}

/* --client-timeout closes silent and stalled clients, never watchers. */
static void test_attacks_client_timeout(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    double t0 = wbt_now();
    int silent = wbt_raw_connect(d);
    assert_true(silent >= 0);
    int stalled = raw_session(d);
    unsigned char part[2] = {0, 0}; /* Two bytes of a length prefix. */
    assert_int_equal(wbt_raw_send(stalled, part, sizeof(part)), 0);
    int watcher = raw_watcher(d, "m", 0, 9);

    if (!wbt_raw_wait_closed(silent, 5000))
        fail_msg("a connection without hello was not closed within 5 s");
    int left = 5000 - (int)((wbt_now() - t0) * 1000);
    if (!wbt_raw_wait_closed(stalled, left > 0 ? left : 1))
        fail_msg("a connection stalled mid-frame was not closed within 5 s");
    close(silent);
    close(stalled);

    double idle = 3 - (wbt_now() - t0);
    if (idle > 0)
        wbt_sleep_ms((int)(idle * 1000));
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 1);
    wb_close(c);
    wbt_reply r;
    int err = wbt_raw_read(watcher, REPLY_MS, &r);
    if (err != 0)
        fail_msg("the waiting watcher got no answer after 3 s (err %d%s)", err,
                 err == WBT_CLOSED ? ": closed by the daemon" : "");
    assert_int_equal(r.id, 9);
    assert_int_equal(wbt_reply_u64(&r, "version"), 1);
    wbt_reply_free(&r);
    close(watcher);
    assert_alive(d);
    c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wb_close(c);
    wait_clean(d);
    wait_fds(d, base);
}

/* --client-timeout also closes a client that never reads its replies:
 * once its queue stops draining for the timeout, it is dropped with every
 * descriptor it held queued (without the client reading a byte). */
static void test_attacks_client_timeout_unread_replies(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 256), 1);
    int base = settled_fds(d);
    long clients = wbt_clients(d);
    int hog = raw_session(d);
    wbt_frames f = {0};
    for (int i = 0; i < HOG_MAPS; i++)
        wbt_frames_map(&f, 10 + (uint64_t)i, "m", 0);
    send_bounded(hog, &f, 2000);
    wbt_frames_free(&f);
    double until = wbt_now() + 5;
    while (wbt_clients(d) > clients && wbt_now() < until)
        wbt_sleep_ms(50);
    if (wbt_clients(d) > clients)
        fail_msg("a client that reads no replies was still connected 5 s "
                 "after its queue stopped draining");
    close(hog);
    wait_fds(d, base);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wb_close(c);
    wait_clean(d);
}

/* ------------------------------------------------------------ 6: header */

#define RACE_ROUNDS 80 /* Commits raced against header writes. */
/* Tensors of each raced version: a longer header makes the race easier to
 * win (about 1 in 7 commits against today's check-then-seal). */
#define RACE_N 100
#define RACE_E 1024 /* Elements per tensor. */

/* Element j of tensor i in round k. */
static float race_value(int k, size_t i, size_t j) {
    return (float)(k * 100000 + (int)i * 10000) + (float)j;
}

typedef struct racer {
    int fd;              /* The publisher's writable descriptor. */
    const uint8_t *real; /* The daemon's header. */
    const uint8_t *fake; /* Another valid-looking header. */
    size_t len;          /* Bytes of each. */
    atomic_int stop;     /* Set to end the loop. */
    atomic_long writes;  /* pwrite() calls that succeeded. */
} racer;

/* Writes the fake and the real header in turn until told to stop or the
 * kernel refuses (the segment got sealed). */
static void *racer_run(void *arg) {
    racer *r = arg;
    while (!atomic_load(&r->stop)) {
        if (pwrite(r->fd, r->fake, r->len, 0) != (ssize_t)r->len)
            break;
        if (pwrite(r->fd, r->real, r->len, 0) != (ssize_t)r->len)
            break;
        atomic_fetch_add(&r->writes, 2);
    }
    return NULL;
}

/* Sends a publish of RACE_N F32 tensors "t<i>" with metadata round=k. */
static void send_race_publish(int fd, uint64_t id, int k) {
    char v[16];
    snprintf(v, sizeof(v), "%d", k);
    wbt_frames f = {0};
    wbt_frames_publish_f32_meta(&f, id, "m", RACE_N, RACE_E, "round", v);
    send_frames(fd, &f);
}

/* A header rewritten during the commit check is never committed. */
static void test_attacks_commit_header_race(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    int s = raw_session(d);
    uint8_t *real[RACE_ROUNDS];
    size_t hlen[RACE_ROUNDS];
    uint64_t version[RACE_ROUNDS];
    int corrupt = 0, committed = 0;
    long writes = 0;
    for (int k = 0; k < RACE_ROUNDS; k++) {
        uint64_t id = 10 + (uint64_t)k * 2;
        send_race_publish(s, id, k);
        pub_reply pr;
        read_pub(s, id, &pr);
        float buf[RACE_E];
        for (int i = 0; i < RACE_N; i++) {
            for (size_t j = 0; j < RACE_E; j++)
                buf[j] = race_value(k, (size_t)i, j);
            assert_int_equal(pwrite(pr.fd, buf, sizeof(buf), (off_t)pr.offs[i]),
                             (ssize_t)sizeof(buf));
        }
        uint64_t n8 = 0;
        assert_int_equal(pread(pr.fd, &n8, 8, 0), 8);
        assert_true(n8 > 0 && n8 < 65536);
        hlen[k] = 8 + (size_t)n8;
        real[k] = malloc(hlen[k]);
        uint8_t *fake = malloc(hlen[k]);
        assert_non_null(real[k]);
        assert_non_null(fake);
        assert_int_equal(pread(pr.fd, real[k], hlen[k], 0), (ssize_t)hlen[k]);
        memcpy(fake, real[k], hlen[k]);
        char *t0 = memmem(fake, hlen[k], "\"t0\"", 4);
        assert_non_null(t0);
        t0[1] = 'x'; /* A header naming "x0" instead. */
        racer rc = {.fd = pr.fd, .real = real[k], .fake = fake, .len = hlen[k]};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, racer_run, &rc), 0);
        while (atomic_load(&rc.writes) < 200)
            sched_yield();
        wbt_frames f = {0};
        wbt_frames_commit(&f, id + 1, pr.pub);
        send_frames(s, &f);
        wbt_reply r;
        int err = wbt_raw_read(s, REPLY_MS, &r);
        atomic_store(&rc.stop, 1);
        pthread_join(th, NULL);
        writes += atomic_load(&rc.writes);
        if (err == 0) {
            version[k] = wbt_reply_u64(&r, "version");
            assert_true(version[k] != UINT64_MAX);
            committed++;
        } else if (err == WB_ECORRUPT) {
            version[k] = 0;
            corrupt++;
        } else {
            fail_msg("round %d: commit answered err %d", k, err);
        }
        wbt_reply_free(&r);
        free(fake);
        close(pr.fd);
    }
    close(s);
    fprintf(stderr,
            "  %d commits, %d refused as corrupt, %ld header "
            "writes\n",
            committed, corrupt, writes);

    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    int bad = 0;
    for (int k = 0; k < RACE_ROUNDS; k++) {
        if (version[k] == 0)
            continue;
        wb_mapping *m;
        assert_int_equal(wb_map(c, "m", version[k], WB_MAP_SHARED, &m), 0);
        char want[16];
        snprintf(want, sizeof(want), "%d", k);
        assert_string_equal(wb_map_meta(m, "round"), want);
        assert_int_equal(wb_map_count(m), RACE_N);
        for (int i = 0; i < RACE_N; i++) {
            char name[16];
            snprintf(name, sizeof(name), "t%d", i);
            long ix = wb_map_find(m, name);
            assert_true(ix >= 0);
            wb_tensor t;
            assert_int_equal(wb_map_tensor(m, (size_t)ix, &t), 0);
            const float *x = t.data;
            for (size_t j = 0; j < RACE_E; j++)
                assert_true(x[j] == race_value(k, (size_t)i, j));
        }
        const void *img;
        size_t len;
        assert_int_equal(wb_map_image(m, &img, &len), 0);
        if (len < hlen[k] || memcmp(img, real[k], hlen[k]) != 0) {
            fprintf(stderr,
                    "  version %llu (round %d) was committed with "
                    "the publisher's header\n",
                    (unsigned long long)version[k], k);
            bad++;
        }
        wb_unmap(m);
    }
    for (int k = 0; k < RACE_ROUNDS; k++)
        free(real[k]);
    if (bad)
        fail_msg("%d of %d committed versions carry a header the daemon "
                 "did not write",
                 bad, committed);
    assert_int_equal(wb_drop(c, "m", 0), committed ? 0 : WB_ENOMODEL);
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
    wait_fds(d, base);
}

/* Flags of the daemon's descriptors that are memfd segments of model,
 * OR-ed together; -1 if it holds none. */
static int daemon_segment_flags(const wbt_daemon *d, const char *model) {
    char dir[64], want[128];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)d->pid);
    snprintf(want, sizeof(want), "/memfd:wbroker:%s ", model);
    int flags = -1;
    for (int fd = 0; fd < 4096; fd++) {
        char link[96], target[256];
        snprintf(link, sizeof(link), "%s/%d", dir, fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strncmp(target, want, strlen(want)) != 0)
            continue;
        char info[96], line[128];
        snprintf(info, sizeof(info), "/proc/%d/fdinfo/%d", (int)d->pid, fd);
        FILE *f = fopen(info, "re");
        unsigned fl;
        while (f && fgets(line, sizeof(line), f))
            if (sscanf(line, "flags: %o", &fl) == 1)
                flags = (flags < 0 ? 0 : flags) | (int)fl;
        if (f)
            fclose(f);
    }
    return flags;
}

/* The publisher's descriptor does not share the daemon's file flags. */
static void test_attacks_publisher_own_description(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    int s = raw_session(d);
    pub_reply pr;
    raw_publish(s, 2, "f", 1, 1024, &pr);
    int before = daemon_segment_flags(d, "f");
    assert_true(before >= 0);
    assert_int_equal(fcntl(pr.fd, F_SETFL, O_APPEND | O_NONBLOCK), 0);
    int after = daemon_segment_flags(d, "f");
    if (after & (O_APPEND | O_NONBLOCK))
        fail_msg("the publisher's fcntl(F_SETFL) changed the daemon's own "
                 "descriptor (flags %o -> %o): they share one file "
                 "description",
                 (unsigned)before, (unsigned)after);
    /* pwrite() appends on an O_APPEND descriptor: drop the flags again. */
    assert_int_equal(fcntl(pr.fd, F_SETFL, 0), 0);
    float x[1024];
    for (int j = 0; j < 1024; j++)
        x[j] = (float)j;
    assert_int_equal(pwrite(pr.fd, x, sizeof(x), (off_t)pr.offs[0]),
                     (ssize_t)sizeof(x));
    wbt_frames f = {0};
    wbt_frames_commit(&f, 3, pr.pub);
    wbt_frames_map(&f, 4, "f", 0);
    send_frames(s, &f);
    wbt_reply r;
    read_ok(s, 3, REPLY_MS, &r);
    wbt_reply_free(&r);
    read_ok(s, 4, REPLY_MS, &r);
    assert_int_equal(r.nfds, 1);
    int fl = fcntl(r.fds[0], F_GETFL);
    assert_true(fl >= 0);
    assert_int_equal(fl & O_ACCMODE, O_RDONLY);
    assert_int_equal(fl & (O_APPEND | O_NONBLOCK), 0);
    wbt_reply_free(&r);
    close(pr.fd);
    close(s);
    assert_alive(d);
    wb_client *c = wbt_connect(d);
    assert_int_equal(wb_drop(c, "f", 0), 0);
    wb_close(c);
    wait_clean(d);
    wait_fds(d, base);
}

/* ------------------------------------------------------------ 7: frame */

#define HUGE_N 200000 /* Tensors whose plain map reply exceeds a frame. */
#define HUGE_NAME 100 /* Bytes of each of their names. */

/* Publishes n U8 tensors named "<i, 8 digits>" padded with 'x' to
 * namelen bytes.  Returns wb_publish_begin's result (committed when 0). */
static int publish_named(wb_client *c, const char *model, size_t n,
                         size_t namelen) {
    wb_tensor_spec *specs = calloc(n, sizeof(*specs));
    char *names = calloc(n, namelen + 1);
    assert_non_null(specs);
    assert_non_null(names);
    int64_t shape[1] = {1};
    for (size_t i = 0; i < n; i++) {
        char *nm = names + i * (namelen + 1);
        memset(nm, 'x', namelen);
        char num[16];
        int k = snprintf(num, sizeof(num), "%08zu", i);
        memcpy(nm, num, (size_t)k);
        specs[i] = (wb_tensor_spec){nm, WB_U8, 1, shape, NULL};
    }
    wb_publish *p = NULL;
    int rc = wb_publish_begin(c, model, specs, n, NULL, 0, &p);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            uint8_t b = (uint8_t)(i * 31);
            assert_int_equal(wb_publish_write(p, i, &b, 1, 0), 0);
        }
        assert_int_equal(wb_publish_commit(p, NULL), 0);
    }
    free(specs);
    free(names);
    return rc;
}

/* Publishes n tensors with names of namelen bytes: either the publish is
 * refused up front with ETOOBIG, or the version can be listed and mapped
 * (never a reply the connection cannot carry). */
static void check_publishable_is_mappable(const wbt_daemon *d, int n,
                                          int namelen) {
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    int rc = publish_named(c, "huge", n, namelen);
    wb_status st;
    if (rc == WB_ETOOBIG) {
        fprintf(stderr, "  publish refused: %s\n", wb_errmsg(c));
        assert_int_equal(wb_get_status(c, &st), 0);
        assert_int_equal(st.models, 0);
    } else {
        assert_int_equal(rc, 0);
        wb_model_info *mi;
        size_t cnt;
        assert_int_equal(wb_list(c, &mi, &cnt), 0);
        assert_int_equal(cnt, 1);
        assert_int_equal(mi[0].tensors, n);
        wb_model_info_free(mi, cnt);
        wb_mapping *m = NULL;
        rc = wb_map(c, "huge", 0, WB_MAP_SHARED, &m);
        if (rc != 0)
            fail_msg("map of %d tensors: %s: %s", n, wb_err_name(rc),
                     wb_errmsg(c));
        assert_int_equal(wb_map_count(m), n);
        char name[HUGE_NAME + 1];
        memset(name, 'x', (size_t)namelen);
        name[namelen] = '\0';
        memcpy(name, "00123456", 8);
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, name), &t), 0);
        assert_int_equal(*(const uint8_t *)t.data, (uint8_t)(123456 * 31));
        wb_unmap(m);
        assert_int_equal(wb_get_status(c, &st), 0);
        assert_int_equal(wb_drop(c, "huge", 0), 0);
    }
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
}

/* 200,000 tensors with 100-byte names: the map reply would pass the
 * frame's byte limit. */
static void test_attacks_reply_over_frame_limit(void **state) {
    check_publishable_is_mappable(*state, HUGE_N, HUGE_NAME);
}

/* 240,000 tensors with 8-byte names: the bytes fit a frame, but the map
 * reply would hold more msgpack objects than a frame may. */
static void test_attacks_reply_over_object_limit(void **state) {
    check_publishable_is_mappable(*state, 240000, 8);
}

#define GROW_N 100000   /* Tensors of the model renamed past the limit. */
#define GROW_NAME 60    /* Bytes of each name. */
#define GROW_PREFIX 400 /* Bytes the rename adds to each. */

/* Renames that grow a reply past the frame get ETOOBIG; client lives on. */
static void test_attacks_rules_grow_reply(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(publish_named(c, "grow", GROW_N, GROW_NAME), 0);
    wb_mapping *m = NULL;
    assert_int_equal(wb_map(c, "grow", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), GROW_N);
    wb_unmap(m);
    char prefix[GROW_PREFIX + 1];
    memset(prefix, 'p', GROW_PREFIX);
    prefix[GROW_PREFIX] = '\0';
    wb_rules *r = wb_rules_new();
    assert_int_equal(wb_rules_rename_prefix(r, "", prefix), 0);
    m = NULL;
    int rc = wb_load(c, "grow", 0, NULL, r, WB_MAP_SHARED, &m);
    wb_rules_free(r);
    if (rc != WB_ETOOBIG)
        fail_msg("a reply grown past the frame limit: %s (%s), not ETOOBIG",
                 wb_err_name(rc), wb_errmsg(c));
    assert_null(m);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(wb_map(c, "grow", 0, WB_MAP_SHARED, &m), 0);
    wb_unmap(m);
    assert_int_equal(wb_drop(c, "grow", 0), 0);
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
}

/* ------------------------------------------------------------ 8: numbers */

/* A model dropped whole and published again goes on from 3, not 1. */
static void test_attacks_version_numbers_not_reused(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 1);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 2);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    int w = raw_watcher(d, "m", 2, 5);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 3);
    wbt_reply r;
    read_ok(w, 5, REPLY_MS, &r);
    assert_int_equal(wbt_reply_u64(&r, "version"), 3);
    wbt_reply_free(&r);
    close(w);
    /* Again, with nobody watching to keep the model's record. */
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wbt_sleep_ms(50);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 4), 4);
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(mi[0].latest, 4);
    assert_int_equal(mi[0].nversions, 1);
    wb_model_info_free(mi, n);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
}

/* ------------------------------------------------------------ 9: BOOL */

#define BOOL_N 4096 /* Elements of the BOOL tensor. */

/* Publishes a BOOL tensor with bad[at] = value (at < 0: all 0/1) next to
 * an F32 tensor of arbitrary bytes; returns the commit's result. */
static int publish_bool(wb_client *c, long at, uint8_t value) {
    int64_t bs[1] = {BOOL_N}, fs[1] = {64};
    wb_tensor_spec specs[2] = {{"mask", WB_BOOL, 1, bs, NULL},
                               {"w", WB_F32, 1, fs, NULL}};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "b", specs, 2, NULL, 0, &p), 0);
    uint8_t mask[BOOL_N];
    for (int i = 0; i < BOOL_N; i++)
        mask[i] = (uint8_t)((i * 7) % 3 == 0);
    if (at >= 0)
        mask[at] = value;
    uint8_t junk[256];
    for (int i = 0; i < 256; i++)
        junk[i] = (uint8_t)(i * 13 + 2);
    assert_int_equal(wb_publish_write(p, 0, mask, sizeof(mask), 0), 0);
    assert_int_equal(wb_publish_write(p, 1, junk, sizeof(junk), 0), 0);
    uint64_t v = 0;
    return wb_publish_commit(p, &v);
}

/* BOOL bytes other than 0/1 are refused at commit with EINVAL. */
static void test_attacks_bool_bytes(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    static const struct {
        long at;
        uint8_t value;
    } bad[] = {{1000, 2}, {BOOL_N - 1, 0xff}, {0, 0x80}};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        int rc = publish_bool(c, bad[k].at, bad[k].value);
        if (rc != WB_EINVAL)
            fail_msg("BOOL byte %#x at %ld: commit gave %s, not EINVAL",
                     bad[k].value, bad[k].at, wb_err_name(rc));
    }
    wait_clean(d);
    assert_int_equal(publish_bool(c, -1, 0), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "b", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_version(m), 1);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "mask"), &t), 0);
    const uint8_t *x = t.data;
    for (int i = 0; i < BOOL_N; i++)
        assert_int_equal(x[i], (i * 7) % 3 == 0);
    wb_unmap(m);
    assert_int_equal(wb_drop(c, "b", 0), 0);
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
}

/* ------------------------------------------------------------ 10: UTF-8 */

/* Sends a publish of one small tensor with metadata {key: value}. */
static void send_meta_publish(int fd, uint64_t id, const char *key,
                              const char *value) {
    wbt_frames f = {0};
    wbt_frames_publish_f32_meta(&f, id, "u", 1, 4, key, value);
    send_frames(fd, &f);
}

/* Metadata that is not UTF-8 is refused with EINVAL; the client lives on. */
static void test_attacks_meta_not_utf8(void **state) {
    wbt_daemon *d = *state;
    int base = settled_fds(d);
    int s = raw_session(d);
    static const char *const bad[] = {
        "\xff\xfe",         "\xc0\xaf",     "ok\xe0\x80\xaf", "\xed\xa0\x80",
        "\xf4\x90\x80\x80", "tail\xe2\x82", "\x80",           "a\xc3",
    };
    uint64_t id = 10;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        send_meta_publish(s, id, "k", bad[k]);
        wbt_reply r;
        int err = wbt_raw_read(s, REPLY_MS, &r);
        if (err != WB_EINVAL)
            fail_msg("metadata value %zu (not UTF-8): err %d, not EINVAL", k,
                     err);
        wbt_reply_free(&r);
        id++;
        raw_status(s, id);
        id++;
    }
    /* A key that is not UTF-8 is refused too. */
    send_meta_publish(s, id, "\xc0\xaf", "v");
    wbt_reply r;
    assert_int_equal(wbt_raw_read(s, REPLY_MS, &r), WB_EINVAL);
    wbt_reply_free(&r);
    id++;
    static const char *const good[] = {"",
                                       "plain",
                                       "\xc3\xa9t\xc3\xa9",
                                       "\xe6\x97\xa5\xe6\x9c\xac",
                                       "\xf0\x9f\x98\x80",
                                       "\xf4\x8f\xbf\xbf"};
    for (size_t k = 0; k < sizeof(good) / sizeof(good[0]); k++) {
        send_meta_publish(s, id, "k", good[k]);
        pub_reply pr;
        read_pub(s, id, &pr);
        close(pr.fd);
        id++;
        raw_abort(s, id, pr.pub);
        id++;
    }
    close(s);
    /* Through the library too. */
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    int64_t shape[1] = {4};
    wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
    wb_kv kv = {"k", "\xff\xfe"};
    wb_publish *p = NULL;
    assert_int_equal(wb_publish_begin(c, "u", &spec, 1, &kv, 1, &p), WB_EINVAL);
    assert_null(p);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    wb_close(c);
    assert_alive(d);
    wait_clean(d);
    wait_fds(d, base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_attacks_watch_then_commit_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_watch_then_drop_pipelined,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_drop_during_conversion,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_drop_during_rules, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attacks_abort_keeps_no_pages,
                                        setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_abort_while_mapped,
                                        setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_descriptor_hog, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attacks_emfile, setup_nofile,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_attacks_emfile_errno_reaches_client, setup_nofile, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_dead_watchers_noticed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_client_timeout,
                                        setup_timeout, teardown),
        cmocka_unit_test_setup_teardown(
            test_attacks_client_timeout_unread_replies, setup_timeout,
            teardown),
        cmocka_unit_test_setup_teardown(test_attacks_commit_header_race, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attacks_publisher_own_description,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_reply_over_object_limit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_reply_over_frame_limit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_rules_grow_reply, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attacks_version_numbers_not_reused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_bool_bytes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attacks_meta_not_utf8, setup,
                                        teardown),
    };
    const char *only = getenv("WBT_FILTER"); /* e.g. "*emfile*" */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
