/* test_lifecycle.c -- Integration tests of version lifecycles: retention
 * (--keep), pins, holds and holders, through a real wbrokerd and
 * libwbroker.
 *
 * Each test starts its own daemon.  Versions hold an I32 tensor "w" whose
 * element j is tag * 1000000 + j, so that a mapping read after its version
 * was retired shows which version it still sees.  Holds end
 * asynchronously (the daemon sees the pipe close), so accounting is
 * waited for with a bound, never slept on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "harness.h"

#define NE (256 * 1024) /* Elements of "w": 1 MiB, a 2 MiB segment. */
#define SEG_BYTES (2u * 1024 * 1024) /* Segment of one version. */
#define HOLD_END_MS 1000 /* Bound on a hold ending after its holder. */
#define EMFILE_NOFILE 40 /* RLIMIT_NOFILE of the EMFILE test's daemon. */

/* ------------------------------------------------------------ fixtures */

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", "--keep", "2",
                                        NULL};
    return wbt_setup(state, extra);
}

static int setup_keep_all(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", "--keep", "0",
                                        NULL};
    return wbt_setup(state, extra);
}

/* Out of descriptors with no per-user cap (which would come first). */
static int setup_nofile(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G",
                                        "--max-holds-per-user", "0", NULL};
    return wbt_setup_limits(state, extra, EMFILE_NOFILE);
}

static int setup_user_cap(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G",
                                        "--max-holds-per-user", "3", NULL};
    return wbt_setup(state, extra);
}

static int teardown(void **state) {
    return wbt_teardown(state);
}

/* ------------------------------------------------------------ helpers */

/* Publishes a version of model whose "w" holds tag's values; returns the
 * version number. */
static uint64_t publish_tag(wb_client *c, const char *model, int32_t tag) {
    int64_t shape[1] = {NE};
    wb_tensor_spec spec = {"w", WB_I32, 1, shape, NULL};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, model, &spec, 1, NULL, 0, &p), 0);
    int32_t *x = wb_publish_data(p, 0, NULL);
    assert_non_null(x);
    for (int32_t j = 0; j < NE; j++)
        x[j] = tag * 1000000 + j;
    uint64_t v = 0;
    assert_int_equal(wb_publish_commit(p, &v), 0);
    return v;
}

/* 1 if every element of m's "w" holds tag's values. */
static int holds_tag(const wb_mapping *m, int32_t tag) {
    wb_tensor t;
    long i = wb_map_find(m, "w");
    if (i < 0 || wb_map_tensor(m, (size_t)i, &t) != 0 ||
        t.nbytes != NE * sizeof(int32_t))
        return 0;
    const int32_t *x = t.data;
    for (int32_t j = 0; j < NE; j++)
        if (x[j] != tag * 1000000 + j)
            return 0;
    return 1;
}

/* Looks model up in the list: its entry copied into *out (name not
 * kept); 0 if found, -1 if not listed. */
static int list_entry(wb_client *c, const char *model, wb_model_info *out) {
    wb_model_info *v;
    size_t n;
    assert_int_equal(wb_list(c, &v, &n), 0);
    int rc = -1;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, model) == 0) {
            *out = v[i];
            out->name = NULL;
            rc = 0;
        }
    wb_model_info_free(v, n);
    return rc;
}

static uint64_t mem_used(wb_client *c) {
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    return st.memory_used;
}

/* Waits up to ms for memory_used to become want; returns it then. */
static uint64_t wait_mem(wb_client *c, uint64_t want, int ms) {
    uint64_t used = mem_used(c);
    for (int i = 0; i < ms / 5 && used != want; i++) {
        wbt_sleep_ms(5);
        used = mem_used(c);
    }
    return used;
}

/* Waits up to ms for the daemon's holds counter to become want. */
static uint64_t wait_holds(const wbt_daemon *d, uint64_t want, int ms) {
    uint64_t n = wbt_counter(d, "holds");
    for (int i = 0; i < ms / 5 && n != want; i++) {
        wbt_sleep_ms(5);
        n = wbt_counter(d, "holds");
    }
    return n;
}

/* Writes one byte to fd (a pipe between test processes). */
static void signal_fd(int fd) {
    char b = 1;
    assert_int_equal(write(fd, &b, 1), 1);
}

/* Waits for one byte on fd; 0, or -1 at end of file. */
static int wait_fd(int fd) {
    char b;
    ssize_t n;
    do
        n = read(fd, &b, 1);
    while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

/* ------------------------------------------------------------ retention */

/* --keep 2: ten commits leave the two newest versions listed, and the
 * retired ones are gone for map and list, with their memory refunded. */
static void test_lifecycle_keep_two(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    for (int32_t k = 1; k <= 10; k++)
        assert_int_equal(publish_tag(c, "m", k), (uint64_t)k);
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.latest, 10);
    assert_int_equal(mi.nversions, 2);
    assert_int_equal(mi.pinned, 0);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(st.versions, 2);
    assert_int_equal(st.memory_used, 2 * SEG_BYTES);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 8, 0, &m), WB_ENOVERSION);
    assert_null(m);
    assert_int_equal(wb_map(c, "m", 9, WB_MAP_SHARED, &m), 0);
    assert_true(holds_tag(m, 9));
    wb_unmap(m);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    assert_int_equal(wait_mem(c, 0, HOLD_END_MS), 0);
    wb_close(c);
}

/* --keep 0 keeps every version. */
static void test_lifecycle_keep_zero(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    for (int32_t k = 1; k <= 10; k++)
        publish_tag(c, "m", k);
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.nversions, 10);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &m), 0);
    assert_true(holds_tag(m, 1));
    wb_unmap(m);
    wb_close(c);
}

/* A mapping of version 1 keeps reading it bit-exact after retention
 * retired it; its memory stays charged (and counted in bytes.retired)
 * until wb_unmap, then is refunded. */
static void test_lifecycle_retired_mapping_reads(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wbt_counter(d, "holds"), 1);
    for (int32_t k = 2; k <= 10; k++)
        publish_tag(c, "m", k);
    wb_mapping *again;
    assert_int_equal(wb_map(c, "m", 1, 0, &again), WB_ENOVERSION);
    assert_true(holds_tag(m, 1));
    /* Two listed versions and the held, retired one. */
    assert_int_equal(mem_used(c), 3 * SEG_BYTES);
    assert_int_equal(wbt_counter(d, "bytes.retired"), SEG_BYTES);
    /* The daemon closed its own descriptor of the retired segment. */
    assert_int_equal(wbt_segment_count(d), 2);
    wb_unmap(m);
    assert_int_equal(wait_mem(c, 2 * SEG_BYTES, HOLD_END_MS), 2 * SEG_BYTES);
    assert_int_equal(wbt_counter(d, "bytes.retired"), 0);
    assert_int_equal(wbt_counter(d, "holds"), 0);
    wb_close(c);
}

/* A child process holding a retired version keeps its memory charged
 * until it dies; SIGKILL ends its hold within a second. */
static void test_lifecycle_child_hold_until_killed(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        wb_client *cc = NULL;
        wb_mapping *cm = NULL;
        if (wb_connect(d->sock, &cc) != 0 ||
            wb_map(cc, "m", 1, WB_MAP_SHARED, &cm) != 0)
            _exit(1);
        wb_close(cc);
        char b = holds_tag(cm, 1);
        if (write(ready[1], &b, 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    close(ready[1]);
    char ok = 0;
    assert_int_equal(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    assert_int_equal(ok, 1);
    for (int32_t k = 2; k <= 4; k++)
        publish_tag(c, "m", k);
    assert_int_equal(mem_used(c), 3 * SEG_BYTES);
    wbt_sleep_ms(100);
    assert_int_equal(mem_used(c), 3 * SEG_BYTES);
    double t0 = wbt_now();
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_int_equal(wait_mem(c, 2 * SEG_BYTES, HOLD_END_MS), 2 * SEG_BYTES);
    double took = wbt_now() - t0;
    fprintf(stderr, "  hold ended %.3f s after SIGKILL\n", took);
    assert_true(took < 1.0);
    wb_close(c);
}

/* ------------------------------------------------------------ pins */

/* A pinned version survives retention and is listed as pinned; unpinning
 * it retires it at once (retention runs on unpin as on commit), and the
 * next commit leaves --keep versions.  An explicit drop still removes a
 * pinned version. */
static void test_lifecycle_pin_survives(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    assert_int_equal(wb_pin(c, "m", 1), 0);
    assert_int_equal(wb_pin(c, "m", 1), 0); /* Pinning twice is fine. */
    for (int32_t k = 2; k <= 6; k++)
        publish_tag(c, "m", k);
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.nversions, 3); /* 1 (pinned), 5 and 6. */
    assert_int_equal(mi.pinned, 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &m), 0);
    assert_true(holds_tag(m, 1));
    wb_unmap(m);
    assert_int_equal(wb_map(c, "m", 4, 0, &m), WB_ENOVERSION);

    assert_int_equal(wb_unpin(c, "m", 1), 0);
    assert_int_equal(wb_map(c, "m", 1, 0, &m), WB_ENOVERSION);
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.nversions, 2);
    assert_int_equal(mi.pinned, 0);
    publish_tag(c, "m", 7);
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.nversions, 2);
    assert_int_equal(mi.latest, 7);

    /* The latest (version 0) can be pinned; a drop ignores the pin. */
    assert_int_equal(wb_pin(c, "m", 0), 0);
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.pinned, 1);
    assert_int_equal(wb_drop(c, "m", 7), 0);
    assert_int_equal(wb_map(c, "m", 7, 0, &m), WB_ENOVERSION);
    assert_int_equal(wb_unpin(c, "m", 7), WB_ENOVERSION);
    wb_close(c);
}

/* ------------------------------------------------------------ holds */

/* A hold outlives the client that made it: the mapping is still counted
 * after wb_close, keeps a dropped version's memory charged, and ends with
 * the unmap. */
static void test_lifecycle_hold_outlives_close(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    wb_close(c);
    c = wbt_connect(d);
    wb_holder *h;
    size_t n;
    assert_int_equal(wb_holders(c, "m", &h, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(h[0].pid, (uint32_t)getpid());
    wb_holders_free(h, n);
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.readers, 1);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wbt_sleep_ms(50);
    assert_int_equal(mem_used(c), SEG_BYTES);
    assert_true(holds_tag(m, 1));
    /* A model whose every version is gone is found while held. */
    assert_int_equal(wb_holders(c, "m", &h, &n), 0);
    assert_int_equal(n, 1);
    wb_holders_free(h, n);
    wb_unmap(m);
    assert_int_equal(wait_mem(c, 0, HOLD_END_MS), 0);
    assert_int_equal(wb_holders(c, "m", &h, &n), WB_ENOMODEL);
    assert_null(h);
    assert_int_equal(n, 0);
    wb_close(c);
    wbt_wait_clean(d);
    assert_int_equal(wbt_segment_count(d), 0);
}

/* The descriptors of this process that are the write end of a pipe,
 * into fds (at most max); returns how many. */
static int pipe_write_ends(int *fds, int max) {
    int n = 0;
    for (int fd = 3; fd < 1024 && n < max; fd++) {
        struct stat st;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_ACCMODE) == O_WRONLY && fstat(fd, &st) == 0 &&
            S_ISFIFO(st.st_mode))
            fds[n++] = fd;
    }
    return n;
}

/* Bytes a client writes into its hold pipe, more than the daemon reads
 * per wake-up, are read and ignored: the hold lasts, the daemon goes on
 * answering, and the unmap still ends the hold. */
static void test_lifecycle_hold_ignores_bytes(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    int before[64], after[64];
    int nb = pipe_write_ends(before, 64);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    int na = pipe_write_ends(after, 64);
    assert_int_equal(na, nb + 1);
    int hold = -1;
    for (int i = 0; i < na && hold < 0; i++) {
        int known = 0;
        for (int k = 0; k < nb; k++)
            known |= before[k] == after[i];
        if (!known)
            hold = after[i];
    }
    assert_true(hold >= 0);
    char junk[3000];
    memset(junk, 'x', sizeof(junk));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(write(hold, junk, sizeof(junk)),
                         (ssize_t)sizeof(junk));
        wbt_sleep_ms(20);
    }
    assert_int_equal(wait_holds(d, 1, 200), 1);
    wb_mapping *m2;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m2), 0);
    assert_true(holds_tag(m2, 1));
    wb_unmap(m2);
    assert_int_equal(wait_holds(d, 1, HOLD_END_MS), 1);
    wb_unmap(m);
    assert_int_equal(wait_holds(d, 0, HOLD_END_MS), 0);
    wb_close(c);
}

/* fork(): the child inherits the mapping and its hold; after the parent
 * unmaps, the version stays held until the child exits. */
static void test_lifecycle_fork_inherits_hold(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    int go[2], done[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(done), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        close(done[0]);
        if (wait_fd(go[0]) != 0)
            _exit(1);
        char b = holds_tag(m, 1);
        if (write(done[1], &b, 1) != 1)
            _exit(2);
        (void)wait_fd(go[0]); /* Exits when the parent says so. */
        _exit(0);
    }
    close(go[0]);
    close(done[1]);
    wb_unmap(m);
    assert_int_equal(wb_drop(c, "m", 0), 0);
    wbt_sleep_ms(100);
    assert_int_equal(mem_used(c), SEG_BYTES);
    assert_int_equal(wbt_counter(d, "holds"), 1);
    signal_fd(go[1]);
    char ok = 0;
    assert_int_equal(read(done[0], &ok, 1), 1);
    assert_int_equal(ok, 1); /* The child still reads it, bit-exact. */
    wbt_sleep_ms(50);
    assert_int_equal(mem_used(c), SEG_BYTES);
    close(go[1]); /* The child exits. */
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(done[0]);
    assert_int_equal(wait_mem(c, 0, HOLD_END_MS), 0);
    assert_int_equal(wait_holds(d, 0, HOLD_END_MS), 0);
    wb_close(c);
}

/* holders names each hold's pid, uid, command, model, version and bytes;
 * readers counts distinct processes; a plan makes no hold. */
static void test_lifecycle_holders_names(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    publish_tag(c, "m", 2);
    publish_tag(c, "other", 1);
    wb_mapping *m1, *m2, *plan;
    uint64_t before = (uint64_t)time(NULL);
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &m1), 0);
    assert_int_equal(wb_map(c, "m", 2, 0, &m2), 0);
    assert_int_equal(wb_map(c, "m", 2, WB_MAP_PLAN, &plan), 0);
    wb_unmap(plan);

    int ready[2], quit[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(quit), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(quit[1]);
        wb_unmap(m1); /* The parent's, inherited: this child lets go. */
        wb_unmap(m2);
        prctl(PR_SET_NAME, "wbt-holder", 0, 0, 0);
        wb_client *cc = NULL;
        wb_mapping *cm = NULL;
        if (wb_connect(d->sock, &cc) != 0 ||
            wb_map(cc, "other", 0, WB_MAP_SHARED, &cm) != 0)
            _exit(1);
        signal_fd(ready[1]);
        (void)wait_fd(quit[0]);
        _exit(0);
    }
    close(ready[1]);
    close(quit[0]);
    assert_int_equal(wait_fd(ready[0]), 0);

    wb_holder *h;
    size_t n;
    assert_int_equal(wb_holders(c, NULL, &h, &n), 0);
    assert_int_equal(n, 3);
    char comm[32] = "";
    FILE *f = fopen("/proc/self/comm", "re");
    assert_non_null(f);
    assert_non_null(fgets(comm, sizeof(comm), f));
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    int seen_child = 0, seen_v1 = 0, seen_v2 = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(h[i].uid, (uint32_t)getuid());
        assert_int_equal(h[i].bytes, SEG_BYTES);
        assert_true(h[i].since >= before && h[i].since <= before + 60);
        if (h[i].pid == (uint32_t)pid) {
            assert_string_equal(h[i].comm, "wbt-holder");
            assert_string_equal(h[i].model, "other");
            assert_int_equal(h[i].version, 1);
            seen_child++;
        } else {
            assert_int_equal(h[i].pid, (uint32_t)getpid());
            assert_string_equal(h[i].comm, comm);
            assert_string_equal(h[i].model, "m");
            seen_v1 += h[i].version == 1;
            seen_v2 += h[i].version == 2;
        }
    }
    assert_int_equal(seen_child, 1);
    assert_int_equal(seen_v1, 1);
    assert_int_equal(seen_v2, 1);
    wb_holders_free(h, n);
    assert_int_equal(wb_holders(c, "other", &h, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(h[0].pid, (uint32_t)pid);
    wb_holders_free(h, n);

    /* Two holds of one process count one reader. */
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.readers, 1);
    assert_int_equal(list_entry(c, "other", &mi), 0);
    assert_int_equal(mi.readers, 1);

    close(quit[1]);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    close(ready[0]);
    assert_int_equal(wait_holds(d, 2, HOLD_END_MS), 2);
    assert_int_equal(list_entry(c, "other", &mi), 0);
    assert_int_equal(mi.readers, 0);
    wb_unmap(m1);
    wb_unmap(m2);
    assert_int_equal(wait_holds(d, 0, HOLD_END_MS), 0);
    assert_int_equal(wb_holders(c, NULL, &h, &n), 0);
    assert_int_equal(n, 0);
    wb_holders_free(h, n);
    wb_close(c);
}

/* ------------------------------------------------------------ errors */

static const char *raw_model; /* Model name the raw packers send. */

/* pin without its "pin" field. */
static void pk_pin_no_flag(msgpack_packer *pk) {
    msgpack_pack_map(pk, 4);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "pin");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 7);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, raw_model);
    wbt_pk_str(pk, "version");
    msgpack_pack_uint64(pk, 1);
}

/* pin of raw_model@1 with every field right. */
static void pk_pin(msgpack_packer *pk) {
    msgpack_pack_map(pk, 5);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "pin");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 8);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, raw_model);
    wbt_pk_str(pk, "version");
    msgpack_pack_uint64(pk, 1);
    wbt_pk_str(pk, "pin");
    msgpack_pack_true(pk);
}

/* holders of raw_model. */
static void pk_holders(msgpack_packer *pk) {
    msgpack_pack_map(pk, 3);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "holders");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 9);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, raw_model);
}

/* holders whose model is not a string. */
static void pk_holders_int(msgpack_packer *pk) {
    msgpack_pack_map(pk, 3);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "holders");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 10);
    wbt_pk_str(pk, "model");
    msgpack_pack_uint64(pk, 3);
}

/* Sends fn's request on a raw session with raw_model = model; returns the
 * reply's err. */
static int raw_call(const wbt_daemon *d, void (*fn)(msgpack_packer *),
                    const char *model) {
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(wbt_raw_hello(fd), 0);
    raw_model = model;
    wbt_raw_packed(fd, fn);
    int err = wbt_raw_reply(fd);
    close(fd);
    return err;
}

/* pin, unpin and holders refuse a missing model, a missing version, bad
 * names and malformed requests with their codes, through the socket, and
 * the daemon goes on serving. */
static void test_lifecycle_errors(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    assert_int_equal(wb_pin(c, "absent", 1), WB_ENOMODEL);
    assert_non_null(strstr(wb_errmsg(c), "absent"));
    assert_int_equal(wb_unpin(c, "absent", 1), WB_ENOMODEL);
    assert_int_equal(wb_pin(c, "m", 9), WB_ENOVERSION);
    assert_non_null(strstr(wb_errmsg(c), "latest is 1"));
    assert_int_equal(wb_unpin(c, "m", 9), WB_ENOVERSION);
    assert_int_equal(wb_pin(c, "", 1), WB_ENAME);
    assert_int_equal(wb_pin(NULL, "m", 1), WB_EINVAL);
    assert_int_equal(wb_pin(c, NULL, 1), WB_EINVAL);
    wb_holder *h = (wb_holder *)1;
    size_t n = 5;
    assert_int_equal(wb_holders(c, "absent", &h, &n), WB_ENOMODEL);
    assert_null(h);
    assert_int_equal(n, 0);
    assert_int_equal(wb_holders(c, "", &h, &n), WB_ENAME);
    assert_int_equal(wb_holders(c, NULL, NULL, &n), WB_EINVAL);
    assert_int_equal(wb_holders(NULL, NULL, &h, &n), WB_EINVAL);

    /* What the library would not send, the daemon refuses itself. */
    assert_int_equal(raw_call(d, pk_pin, "bad\xff"), WB_ENAME);
    assert_int_equal(raw_call(d, pk_pin, "absent"), WB_ENOMODEL);
    assert_int_equal(raw_call(d, pk_pin_no_flag, "m"), WB_EPROTO);
    assert_int_equal(raw_call(d, pk_pin, "m"), 0);
    assert_int_equal(raw_call(d, pk_holders, "bad\xff"), WB_ENAME);
    assert_int_equal(raw_call(d, pk_holders, "absent"), WB_ENOMODEL);
    assert_int_equal(raw_call(d, pk_holders, "m"), 0);
    assert_int_equal(raw_call(d, pk_holders_int, "m"), WB_EPROTO);
    wb_model_info mi;
    assert_int_equal(list_entry(c, "m", &mi), 0);
    assert_int_equal(mi.pinned, 1);
    wb_close(c);
}

/* A plain map of raw_model@1: with "hold" true when hold_field is 1,
 * without the field when 0, and as a plan asking for a hold when 2. */
static int hold_field;

static void pk_map(msgpack_packer *pk) {
    msgpack_pack_map(pk, 4 + (hold_field != 0) + (hold_field == 2));
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "map");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 11);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, raw_model);
    wbt_pk_str(pk, "version");
    msgpack_pack_uint64(pk, 1);
    if (hold_field) {
        wbt_pk_str(pk, "hold");
        msgpack_pack_true(pk);
    }
    if (hold_field == 2) {
        wbt_pk_str(pk, "plan");
        msgpack_pack_true(pk);
    }
}

/* Sends pk_map with hold_field = how on a raw session; returns the
 * descriptors of the reply, with the last one's kind checked when a hold
 * came. */
static int raw_map_fds(const wbt_daemon *d, int how) {
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(wbt_raw_hello(fd), 0);
    raw_model = "m";
    hold_field = how;
    wbt_raw_packed(fd, pk_map);
    wbt_reply r;
    assert_int_equal(wbt_raw_read(fd, 5000, &r), 0);
    int n = r.nfds;
    if (how == 1) {
        assert_true(n >= 2);
        struct stat st;
        assert_int_equal(fstat(r.fds[n - 1], &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
        int fl = fcntl(r.fds[n - 1], F_GETFL);
        assert_int_equal(fl & O_ACCMODE, O_WRONLY);
        assert_int_equal(wbt_counter(d, "holds"), 1);
    }
    wbt_reply_free(&r); /* Closes the descriptors: the hold ends. */
    close(fd);
    return n;
}

/* A hold is made only when the map asks for one (the library always does,
 * an older client does not) and never for a plan; the hold's descriptor
 * comes last, write-only. */
static void test_lifecycle_hold_only_when_asked(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    assert_int_equal(raw_map_fds(d, 0), 1);
    assert_int_equal(wbt_counter(d, "holds"), 0);
    assert_int_equal(raw_map_fds(d, 1), 2);
    assert_int_equal(wait_holds(d, 0, HOLD_END_MS), 0);
    assert_int_equal(raw_map_fds(d, 2), 0);
    assert_int_equal(wbt_counter(d, "holds"), 0);
    wb_close(c);
}

/* A daemon out of descriptors answers a map with ESYS/EMFILE and a clear
 * sentence, keeps serving, and maps again once holds end. */
static void test_lifecycle_emfile(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    enum { MAX_MAPS = 4 * EMFILE_NOFILE };
    wb_mapping *maps[MAX_MAPS];
    int n = 0, rc = 0;
    while (n < MAX_MAPS &&
           (rc = wb_map(c, "m", 1, WB_MAP_SHARED, &maps[n])) == 0)
        n++;
    fprintf(stderr, "  %d mappings held before the daemon ran out\n", n);
    assert_true(n > 0 && n < MAX_MAPS);
    assert_int_equal(rc, WB_ESYS);
    assert_int_equal(wb_sys_errno(c), EMFILE);
    assert_non_null(strstr(wb_errmsg(c), "descriptors"));
    /* The same connection is still served. */
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(wbt_counter(d, "holds"), (uint64_t)n);
    for (int i = 0; i < n; i++)
        wb_unmap(maps[i]);
    assert_int_equal(wait_holds(d, 0, HOLD_END_MS), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &m), 0);
    assert_true(holds_tag(m, 1));
    wb_unmap(m);
    wb_close(c);
    assert_true(wbt_alive(d));
}

/* One user's holds are capped (--max-holds-per-user): the next map fails
 * with ETOOBIG and says why, plans still work, and an unmap makes room. */
static void test_lifecycle_user_hold_cap(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    publish_tag(c, "m", 1);
    wb_mapping *m[4];
    for (int i = 0; i < 3; i++)
        assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m[i]), 0);
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m[3]), WB_ETOOBIG);
    assert_null(m[3]);
    assert_non_null(strstr(wb_errmsg(c), "--max-holds-per-user"));
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_PLAN, &m[3]), 0);
    wb_unmap(m[3]);
    wb_unmap(m[0]);
    assert_int_equal(wait_holds(d, 2, HOLD_END_MS), 2);
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m[0]), 0);
    assert_true(holds_tag(m[0], 1));
    for (int i = 0; i < 3; i++)
        wb_unmap(m[i]);
    wb_close(c);
}

#define RECORDS_PER_USER 1024 /* WB_MAX_MODEL_RECORDS_PER_USER. */

/* A user who publishes and drops more names than the daemon remembers for
 * one user forgets their own oldest name's numbers first: that name starts
 * again from 1, the others go on. */
static void test_lifecycle_records_per_user(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    char name[32];
    double t0 = wbt_now();
    for (int i = 0; i <= RECORDS_PER_USER; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        assert_int_equal(wbt_publish_f32(c, name, 1, 1), 1);
        assert_int_equal(wb_drop(c, name, 0), 0);
    }
    fprintf(stderr, "  %d names published and dropped in %.2f s\n",
            RECORDS_PER_USER + 1, wbt_now() - t0);
    assert_int_equal(wbt_publish_f32(c, "r0", 1, 1), 1); /* Forgotten. */
    assert_int_equal(wbt_publish_f32(c, "r1", 1, 1), 2); /* Remembered. */
    snprintf(name, sizeof(name), "r%d", RECORDS_PER_USER);
    assert_int_equal(wbt_publish_f32(c, name, 1, 1), 2);
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lifecycle_keep_two, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_keep_zero,
                                        setup_keep_all, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_retired_mapping_reads,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_child_hold_until_killed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_pin_survives, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_hold_outlives_close,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_fork_inherits_hold,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_holders_names, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_hold_only_when_asked,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_emfile, setup_nofile,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_user_hold_cap,
                                        setup_user_cap, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_records_per_user, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_hold_ignores_bytes,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
