/* test_failmalloc.c -- One allocation of the daemon fails, for every
 * allocation a scripted session makes: the daemon answers that request
 * with an error or closes that connection, and goes on serving.
 *
 * wbrokerd runs with tests/faults/failmalloc.c preloaded, which fails the
 * Nth malloc, calloc or realloc counted from the session's connection on
 * (see there).  The session is what a client does in a day: hello,
 * publish three tensors and write them, commit, map plainly and read
 * every byte, load with rules and a cast, list, watch, status, holders,
 * pin and unpin, drop.  A step that fails is passed over (the library
 * reconnects for the next one); a step that succeeds must give the right
 * answer, every byte of a mapping included.  After each session the daemon
 * must be running and answer a new connection.  First a session without
 * failure counts its allocations (C); then, by default, FM_SAMPLES values
 * of N drawn from the seed (WB_FAILMALLOC_SEED, printed) are tried, or
 * with WB_FAILMALLOC_ALL=1 (`make fault-test`) every N from 1 until a
 * session passes without its Nth allocation.  Each N is tried twice: the
 * Nth allocation alone failing, and every one from the Nth to the end of
 * the session (memory gone for good: the daemon may not even manage an
 * error reply, and closes the connection instead).  In the end the daemon holds
 * no bytes, no segments and no more descriptors than at the start.
 *
 * The client library gets the same: each command of the wbroker CLI
 * (import, info, export, ls, plan with rules, rm) runs with its Nth
 * allocation failing (N sampled, or every N), and must end with an exit
 * status, never a signal; an export that says it succeeded must have
 * written the same bytes as one without failure; the daemon serves on.
 *
 * The preloaded allocator cannot stand in for AddressSanitizer's, so under
 * ASan or TSan the tests are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FM_SANITIZED 1
#else
#define FM_SANITIZED 0
#endif

#define FM_SAMPLES 40      /* Values of N the suite tries. */
#define FM_SESSION_S 20    /* Seconds one session may take. */
#define FM_ELEMS 4096      /* Elements of the big tensor. */
#define FM_MAX_N 1000000ul /* A sweep that goes past this is stuck. */

static char fm_dir[64];   /* Temporary directory of the files below. */
static char fm_ctl[96];   /* Control file: N. */
static char fm_log[96];   /* Log of the preloaded allocator. */
static char fm_lib[4096]; /* The allocator's absolute path. */
static unsigned fm_gen;   /* Makes every control text new. */

static int setup(void **state) {
    if (FM_SANITIZED)
        return 0;
    char lib[256];
    snprintf(lib, sizeof(lib), "%s/libwbfailmalloc.so", wbt_build_dir());
    if (access(lib, R_OK) != 0)
        return -1;
    if (realpath(lib, fm_lib) == NULL)
        return -1;
    snprintf(fm_dir, sizeof(fm_dir), "/tmp/wbfm.XXXXXX");
    if (mkdtemp(fm_dir) == NULL)
        return -1;
    snprintf(fm_ctl, sizeof(fm_ctl), "%s/ctl", fm_dir);
    snprintf(fm_log, sizeof(fm_log), "%s/log", fm_dir);
    FILE *f = fopen(fm_ctl, "w");
    if (f == NULL)
        return -1;
    fputs("0 start\n", f);
    fclose(f);
    setenv("WB_FAILMALLOC_CTL", fm_ctl, 1);
    setenv("WB_FAILMALLOC_LOG", fm_log, 1);
    setenv("LD_PRELOAD", fm_lib, 1);
    static const char *const extra[] = {"--memory-limit", "256M", NULL};
    int rc = wbt_setup(state, extra);
    unsetenv("LD_PRELOAD"); /* Only the daemon. */
    return rc;
}

static int teardown(void **state) {
    if (FM_SANITIZED)
        return 0;
    int rc = wbt_teardown_finish(state);
    unlink(fm_ctl);
    unlink(fm_log);
    rmdir(fm_dir);
    return rc;
}

/* Arms the allocator to fail the nth allocation (0: none) from the next
 * connection on; with from_on set, every one from the nth on. */
static void arm_mode(unsigned long n, int from_on) {
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s.new", fm_ctl);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "%lu%s %u\n", n, from_on ? "+" : "", ++fm_gen);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, fm_ctl), 0);
}

static void arm(unsigned long n) {
    arm_mode(n, 0);
}

/* The last value logged with what ("fired", "count"), or -1. */
static long long log_last(const char *what) {
    FILE *f = fopen(fm_log, "r");
    if (f == NULL)
        return -1;
    char w[16];
    unsigned long long v;
    long long last = -1;
    while (fscanf(f, "%15s %llu", w, &v) == 2)
        if (strcmp(w, what) == 0)
            last = (long long)v;
    fclose(f);
    return last;
}

/* The value element j of tensor t holds. */
static uint32_t fm_word(size_t t, size_t j) {
    return (uint32_t)(t * 0x9e3779b9u) ^ (uint32_t)(j * 2654435761u);
}

/* Fails unless mapping m (plain) holds the session's tensors exactly. */
static void check_plain(const wb_mapping *m) {
    assert_int_equal(wb_map_count(m), 3);
    for (size_t t = 0; t < 3; t++) {
        wb_tensor x;
        assert_int_equal(wb_map_tensor(m, t, &x), 0);
        if (t == 2) {
            const uint8_t *b = x.data;
            for (size_t j = 0; j < x.nbytes; j++)
                assert_int_equal(b[j], j & 1);
            continue;
        }
        const uint32_t *w = x.data;
        for (size_t j = 0; j < x.nbytes / 4; j++)
            if (w[j] != fm_word(t, j))
                fail_msg("tensor %s differs at %zu", x.name, j);
    }
}

/* The scripted session.  Returns the steps that succeeded. */
static int session(const wbt_daemon *d) {
    int ok = 0;
    wb_client *c = NULL;
    if (wb_connect(d->sock, &c) != 0) {
        wb_close(c);
        return 0;
    }
    ok++;
    int64_t big = FM_ELEMS, small = 64, nb = 16;
    wb_tensor_spec ts[3] = {{"enc.weight", WB_F32, 1, &big, NULL},
                            {"enc.bias", WB_F32, 1, &small, NULL},
                            {"mask", WB_BOOL, 1, &nb, NULL}};
    wb_kv kv = {"format", "pt"};
    wb_publish *p = NULL;
    uint64_t v = 0;
    if (wb_publish_begin(c, "fm", ts, 3, &kv, 1, &p) == 0) {
        ok++;
        for (size_t t = 0; t < 3; t++) {
            size_t n = 0;
            uint8_t *dst = wb_publish_data(p, t, &n);
            assert_non_null(dst);
            for (size_t j = 0; j < n; j++)
                dst[j] = t == 2 ? (uint8_t)(j & 1) : 0;
            if (t < 2)
                for (size_t j = 0; j < n / 4; j++)
                    ((uint32_t *)(void *)dst)[j] = fm_word(t, j);
        }
        if (wb_publish_commit(p, &v) == 0)
            ok++;
    }
    wb_mapping *m = NULL;
    if (wb_map(c, "fm", 0, WB_MAP_SHARED, &m) == 0) {
        ok++;
        check_plain(m);
        wb_unmap(m);
    }
    wb_rules *r = wb_rules_new();
    assert_non_null(r);
    assert_int_equal(wb_rules_cast(r, "encoder.weight", WB_F16), 0);
    assert_int_equal(wb_rules_rename_prefix(r, "enc.", "encoder."), 0);
    if (wb_load(c, "fm", 0, NULL, r, 0, &m) == 0) {
        ok++;
        long i = wb_map_find(m, "encoder.bias");
        assert_true(i >= 0);
        wb_tensor x;
        assert_int_equal(wb_map_tensor(m, (size_t)i, &x), 0);
        for (size_t j = 0; j < x.nbytes / 4; j++)
            assert_int_equal(((const uint32_t *)x.data)[j], fm_word(1, j));
        i = wb_map_find(m, "encoder.weight");
        assert_true(i >= 0);
        assert_int_equal(wb_map_tensor(m, (size_t)i, &x), 0);
        assert_int_equal(x.dtype, WB_F16);
        wb_unmap(m);
    }
    wb_rules_free(r);
    wb_model_info *mi = NULL;
    size_t n = 0;
    if (wb_list(c, &mi, &n) == 0) {
        ok++;
        wb_model_info_free(mi, n);
    }
    uint64_t got = 0;
    if (wb_watch(c, "fm", 0, 0, &got) == 0)
        ok++;
    wb_status st;
    if (wb_get_status(c, &st) == 0)
        ok++;
    wb_holder *h = NULL;
    if (wb_holders(c, NULL, &h, &n) == 0) {
        ok++;
        wb_holders_free(h, n);
    }
    if (wb_pin(c, "fm", 0) == 0)
        ok++;
    if (wb_unpin(c, "fm", 0) == 0)
        ok++;
    if (wb_drop(c, "fm", 0) == 0)
        ok++;
    wb_close(c);
    return ok;
}

#define FM_STEPS 12 /* Steps of a session that all succeed. */

/* Runs the session with the nth allocation failing; fails the test unless
 * the daemon is running and serving afterwards.  Returns 1 if the nth
 * allocation was reached. */
static int run_with(const wbt_daemon *d, unsigned long n, int from_on,
                    int *steps) {
    arm_mode(n, from_on);
    wbt_watchdog(d, FM_SESSION_S);
    *steps = session(d);
    arm(0); /* The checks below must not meet a failure. */
    if (!wbt_running(d))
        fail_msg("wbrokerd died when its allocation %lu%s failed", n,
                 from_on ? " and every later one" : "");
    long clients = wbt_clients(d);
    wbt_watchdog(NULL, 0);
    if (clients < 1)
        fail_msg("wbrokerd stopped serving after allocation %lu%s failed", n,
                 from_on ? " and every later one" : "");
    return log_last("fired") == (long long)n;
}

/* Each allocation of a session failing in turn leaves a serving daemon. */
static void test_failmalloc_every_step(void **state) {
    if (FM_SANITIZED)
        skip();
    wbt_daemon *d = *state;
    int base_fds = wbt_settled_fds(d, 200, 5000);
    int base_segs = wbt_segment_count(d);

    /* A session without failure: its steps all pass; count them. */
    int steps = 0;
    assert_int_equal(run_with(d, 0, 0, &steps), 0);
    assert_int_equal(steps, FM_STEPS);
    arm(FM_MAX_N * 100);
    steps = session(d);
    assert_int_equal(steps, FM_STEPS);
    arm(0);
    assert_true(wbt_clients(d) >= 1); /* Its accept logs the count. */
    long long count = log_last("count");
    assert_true(count > 0);

    const char *env = getenv("WB_FAILMALLOC_ALL");
    int all = env && *env && strcmp(env, "0") != 0;
    uint64_t seed = wbt_seed("WB_FAILMALLOC_SEED");
    fprintf(stderr,
            "  failmalloc: a session makes %lld allocations; %s "
            "(WB_FAILMALLOC_SEED=%llu)\n",
            count, all ? "trying every one" : "sampling",
            (unsigned long long)seed);
    unsigned long tried = 0, fired = 0, partial = 0;
    double t0 = wbt_now();
    if (all) {
        for (unsigned long n = 1; n < FM_MAX_N; n++) {
            int hit = run_with(d, n, 0, &steps);
            tried++;
            fired += (unsigned long)hit;
            partial += steps < FM_STEPS;
            if (!hit)
                break; /* The whole session went by: every N is done. */
            fired += (unsigned long)run_with(d, n, 1, &steps);
            partial += steps < FM_STEPS;
            tried++;
        }
    } else {
        for (int i = 0; i < FM_SAMPLES; i++) {
            unsigned long n = 1 + (unsigned long)(wbt_mix(seed + (uint64_t)i) %
                                                  (uint64_t)count);
            fired += (unsigned long)run_with(d, n, i & 1, &steps);
            partial += steps < FM_STEPS;
            tried++;
        }
    }
    fprintf(stderr,
            "  failmalloc: %lu sessions in %.1f s, %lu with the failure "
            "reached, %lu with a step refused; the daemon served on\n",
            tried, wbt_now() - t0, fired, partial);
    assert_true(fired > 0);

    /* Whatever a failure left behind goes with the model. */
    wb_client *c = wbt_connect(d);
    int rc = wb_drop(c, "fm", 0);
    assert_true(rc == 0 || rc == WB_ENOMODEL);
    wb_close(c);
    double until = wbt_now() + 10;
    while (wbt_now() < until &&
           (wbt_mem_used(d) != 0 || wbt_segment_count(d) != base_segs ||
            wbt_fd_count(d) != base_fds))
        wbt_sleep_ms(50);
    assert_int_equal(wbt_mem_used(d), 0);
    assert_int_equal(wbt_segment_count(d), base_segs);
    assert_int_equal(wbt_settled_fds(d, 200, 5000), base_fds);
}

/* ------------------------------------------------------------ client */

#define FM_CLI_SAMPLES 8 /* Values of N per command the suite tries. */

static char cli_st[96];    /* A safetensors file to import. */
static char cli_rules[96]; /* A rules file for plan. */
static char cli_out[96];   /* Where export writes. */
static char cli_ref[96];   /* An export made without failure. */
static char cli_log[96];   /* The CLI's allocator log. */

/* Writes a small safetensors file: two F32 tensors and metadata. */
static void write_st(const char *path) {
    static const char hdr[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"enc.bias\":{\"dtype\":\"F32\",\"shape\":[4],"
        "\"data_offsets\":[0,16]},"
        "\"enc.weight\":{\"dtype\":\"F32\",\"shape\":[4,4],"
        "\"data_offsets\":[16,80]}}";
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t n = sizeof(hdr) - 1;
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, n, f);
    for (uint32_t j = 0; j < 20; j++) {
        float v = (float)j * 0.5f;
        fwrite(&v, 4, 1, f);
    }
    assert_int_equal(fclose(f), 0);
}

/* Runs the CLI with args (NULL-terminated, after --socket) and the nth
 * allocation failing (0: none; with from_on, every one from then on).
 * Returns its wait status. */
static int cli(const wbt_daemon *d, unsigned long n, int from_on,
               const char *const *args) {
    char bin[256], nbuf[32];
    snprintf(bin, sizeof(bin), "%s/wbroker", wbt_build_dir());
    snprintf(nbuf, sizeof(nbuf), "%lu%s", n, from_on ? "+" : "");
    const char *argv[16] = {bin, "--socket", d->sock};
    int k = 3;
    for (; *args && k < 15; args++)
        argv[k++] = *args;
    argv[k] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        wbt_watchdog(NULL, 0);
        if (n > 0) {
            setenv("LD_PRELOAD", fm_lib, 1);
            setenv("WB_FAILMALLOC_N", nbuf, 1);
            setenv("WB_FAILMALLOC_LOG", cli_log, 1);
        }
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        if (getenv("WB_FAILMALLOC_VERBOSE") == NULL)
            dup2(null, 2);
        alarm(FM_SESSION_S);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

/* 1 if files a and b hold the same bytes. */
static int same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int x = fgetc(fa), y = fgetc(fb);
        if (x != y)
            same = 0;
        if (x == EOF || y == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* Each allocation of each CLI command failing in turn ends the command
 * with a status, leaves no wrong export behind and a daemon serving. */
static void test_failmalloc_client(void **state) {
    if (FM_SANITIZED)
        skip();
    wbt_daemon *d = *state;
    snprintf(cli_st, sizeof(cli_st), "%s/in.safetensors", fm_dir);
    snprintf(cli_rules, sizeof(cli_rules), "%s/rules", fm_dir);
    snprintf(cli_out, sizeof(cli_out), "%s/out.safetensors", fm_dir);
    snprintf(cli_ref, sizeof(cli_ref), "%s/ref.safetensors", fm_dir);
    snprintf(cli_log, sizeof(cli_log), "%s/cli.log", fm_dir);
    write_st(cli_st);
    FILE *f = fopen(cli_rules, "w");
    assert_non_null(f);
    fputs("prefix enc. -> enc.\ncast *.weight F16\nstrict false\n", f);
    fclose(f);
    const char *const import[] = {"import", cli_st, "fmc", NULL};
    const char *const info[] = {"info", "fmc", NULL};
    const char *const export[] = {"export", "fmc", cli_out, NULL};
    const char *const ref[] = {"export", "fmc", cli_ref, NULL};
    const char *const ls[] = {"ls", NULL};
    const char *const plan[] = {"plan",    "fmc",     "--target", cli_st,
                                "--rules", cli_rules, NULL};
    const char *const rm[] = {"rm", "fmc", NULL};
    const char *const *cmds[] = {import, info, export, ls, plan, rm};
    static const char *const names[] = {"import", "info", "export",
                                        "ls",     "plan", "rm"};
    const size_t ncmds = sizeof(cmds) / sizeof(cmds[0]);

    arm(0);
    assert_int_equal(cli(d, 0, 0, import), 0);
    assert_int_equal(cli(d, 0, 0, ref), 0);

    const char *env = getenv("WB_FAILMALLOC_ALL");
    int all = env && *env && strcmp(env, "0") != 0;
    env = getenv("WB_FAILMALLOC_SEED");
    uint64_t seed = env && *env
                        ? strtoull(env, NULL, 0)
                        : (uint64_t)time(NULL) * 1000003u + (uint64_t)getpid();
    unsigned long runs = 0, refused = 0;
    for (size_t ci = 0; ci < ncmds; ci++) {
        /* Its allocations, from one run without failure. */
        (void)cli(d, 0, 0, rm);
        assert_int_equal(cli(d, 0, 0, import), 0);
        unlink(cli_log);
        assert_int_equal(cli(d, FM_MAX_N * 100, 0, cmds[ci]), 0);
        long long count = -1;
        FILE *lf = fopen(cli_log, "r");
        char w[16];
        unsigned long long v;
        while (lf && fscanf(lf, "%15s %llu", w, &v) == 2)
            if (strcmp(w, "count") == 0)
                count = (long long)v;
        if (lf)
            fclose(lf);
        assert_true(count > 0);
        fprintf(stderr, "  failmalloc: wbroker %s makes %lld allocations\n",
                names[ci], count);
        unsigned long nn = all ? (unsigned long)count * 2 : FM_CLI_SAMPLES;
        for (unsigned long i = 0; i < nn; i++) {
            unsigned long n =
                all ? 1 + i / 2
                    : 1 + (unsigned long)(wbt_mix(seed + ci * 1000 + i) %
                                          (uint64_t)count);
            int from_on = all ? (int)(i & 1) : (int)(i & 1);
            /* The state the command expects: the model there, except
             * for import. */
            (void)cli(d, 0, 0, rm);
            if (cmds[ci] != import)
                assert_int_equal(cli(d, 0, 0, import), 0);
            unlink(cli_out);
            int st = cli(d, n, from_on, cmds[ci]);
            runs++;
            if (!WIFEXITED(st))
                fail_msg("wbroker %s died of signal %d when its allocation "
                         "%lu%s failed",
                         names[ci], WTERMSIG(st), n,
                         from_on ? " and every later one" : "");
            refused += WEXITSTATUS(st) != 0;
            if (cmds[ci] == export && WEXITSTATUS(st) == 0 &&
                !same_file(cli_out, cli_ref))
                fail_msg("wbroker export reported success with allocation "
                         "%lu%s failing but wrote other bytes",
                         n, from_on ? "+" : "");
            if (!wbt_running(d))
                fail_msg("wbrokerd died during wbroker %s", names[ci]);
        }
    }
    fprintf(stderr,
            "  failmalloc: %lu CLI runs with an allocation failing, %lu "
            "ended with an error status, none with a signal\n",
            runs, refused);
    (void)cli(d, 0, 0, rm);
    unlink(cli_st);
    unlink(cli_rules);
    unlink(cli_out);
    unlink(cli_ref);
    unlink(cli_log);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_failmalloc_every_step, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failmalloc_client, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
