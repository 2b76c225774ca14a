/* test_reconnect.c -- Integration tests: a client handle outlives its
 * connection, and a watch can be cancelled.
 *
 * The daemon is killed (SIGKILL, as a crash would) and a new one started on
 * the same socket path; the handle connected to the first must go on with
 * the second on its next call, keep the mappings it made, refuse to commit a
 * publish that died with the old connection, and still refuse an impostor.
 * wb_watch_cancel() is called from another thread, from a signal handler,
 * and before any watch runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define NOBODY 65534 /* The impostor's uid. */
#define TENSORS 3    /* Tensors of the test model. */
#define ELEMS 4096   /* float32 elements of each. */

/* ------------------------------------------------------------ daemons */

/* Starts build/wbrokerd on d's socket, in d's directory, as the harness
 * does (a stale socket file of a killed daemon is replaced by it), and
 * waits until it accepts. */
static void restart_on(wbt_daemon *d) {
    char bin[256];
    snprintf(bin, sizeof(bin), "%s/wbrokerd", wbt_build_dir());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(d->log, "a", stderr);
        (void)f;
        unsetenv("LISTEN_FDS");
        unsetenv("NOTIFY_SOCKET");
        execl(bin, bin, "--socket", d->sock, "--log-level", "debug",
              (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 500; i++) {
        /* A connect to the stale file fails until the new daemon binds. */
        int fd = wbt_raw_connect(d);
        if (fd >= 0) {
            close(fd);
            return;
        }
        assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
        wbt_sleep_ms(10);
    }
    fail_msg("the restarted daemon does not accept");
}

/* Kills d's daemon the way a crash does, leaving its socket file. */
static void crash(wbt_daemon *d) {
    assert_int_equal(kill(d->pid, SIGKILL), 0);
    assert_int_equal(waitpid(d->pid, NULL, 0), d->pid);
    d->pid = 0;
}

static int setup(void **state) {
    return wbt_setup(state, NULL);
}

static int teardown(void **state) {
    return wbt_teardown(state);
}

/* Descriptors this process holds. */
static int fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Models the daemon behind c lists (through c). */
static size_t models(wb_client *c) {
    wb_model_info *v = NULL;
    size_t n = 0;
    int rc = wb_list(c, &v, &n);
    if (rc)
        fail_msg("list: %s: %s", wb_err_name(rc), wb_errmsg(c));
    wb_model_info_free(v, n);
    return n;
}

/* Fails unless every element of m's tensors holds what wbt_publish_f32
 * wrote. */
static void assert_mapping_intact(const wb_mapping *m) {
    assert_int_equal(wb_map_count(m), TENSORS);
    for (size_t i = 0; i < TENSORS; i++) {
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, i, &t), 0);
        const float *f = t.data;
        for (size_t j = 0; j < ELEMS; j++)
            if (f[j] != (float)(i * 1000 + j))
                fail_msg("tensor %zu element %zu is %g", i, j, (double)f[j]);
    }
}

/* ------------------------------------------------------------ reconnect */

/* A daemon that crashed and came back on the same socket: the next call
 * reconnects and works, and a mapping made from the first daemon stays
 * readable, bit-exact, throughout. */
static void test_reconnect_after_restart(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "m", TENSORS, ELEMS), 1);
    wb_mapping *m = NULL;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    crash(d);
    assert_mapping_intact(m);
    restart_on(d);
    assert_int_equal(models(c), 0); /* The new daemon, empty. */
    assert_string_equal(wb_errmsg(c), "");
    assert_mapping_intact(m);
    assert_int_equal(wbt_publish_f32(c, "m", TENSORS, ELEMS), 1);
    wb_mapping *m2 = NULL;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_PRIVATE, &m2), 0);
    assert_mapping_intact(m2);
    wb_unmap(m2);
    wb_unmap(m);
    assert_int_equal(wbt_clients(d), 2); /* c and the one asking. */
    wb_close(c);
}

/* While the daemon is down a call fails with ECONNECT and a sentence that
 * names the socket and says it was a reconnect; it keeps failing so, and
 * works once the daemon is back. */
static void test_reconnect_while_down(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(models(c), 0);
    crash(d);
    for (int i = 0; i < 2; i++) {
        wb_model_info *v = NULL;
        size_t n = 7;
        assert_int_equal(wb_list(c, &v, &n), WB_ECONNECT);
        assert_null(v);
        assert_int_equal(n, 0);
        fprintf(stderr, "  %s\n", wb_errmsg(c));
        assert_non_null(strstr(wb_errmsg(c), "reconnecting failed"));
        assert_non_null(strstr(wb_errmsg(c), d->sock));
    }
    restart_on(d);
    assert_int_equal(models(c), 0);
    wb_close(c);
}

/* A request whose connection breaks while it is out (a watch waiting when
 * the daemon dies) fails with ECLOSED; the next call reconnects. */
static void test_reconnect_broken_mid_request(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    pid_t killer = fork();
    assert_true(killer >= 0);
    if (killer == 0) {
        wbt_sleep_ms(100);
        kill(d->pid, SIGKILL);
        _exit(0);
    }
    uint64_t v = 99;
    int rc = wb_watch(c, "m", 0, 10000, &v);
    assert_int_equal(waitpid(killer, NULL, 0), killer);
    assert_int_equal(rc, WB_ECLOSED);
    assert_non_null(strstr(wb_errmsg(c), "closed the connection"));
    assert_non_null(strstr(wb_errmsg(c), "the next call reconnects"));
    assert_int_equal(v, 99);
    assert_int_equal(waitpid(d->pid, NULL, 0), d->pid);
    d->pid = 0;
    restart_on(d);
    assert_int_equal(models(c), 0);
    wb_close(c);
}

/* A publish begun on a connection that was lost fails its commit with
 * ECLOSED and a sentence saying to publish again, whether the commit is
 * the first call after the loss or another call reconnected in between;
 * an abort of one sends nothing; publishing again works. */
static void test_reconnect_publish_lost(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {ELEMS};
    wb_tensor_spec spec = {"t0", WB_F32, 1, shape, NULL};
    for (int reconnected_between = 0; reconnected_between < 2;
         reconnected_between++) {
        wb_publish *p = NULL;
        assert_int_equal(wb_publish_begin(c, "m", &spec, 1, NULL, 0, &p), 0);
        float *f = wb_publish_data(p, 0, NULL);
        assert_non_null(f);
        f[0] = 1.0f;
        crash(d);
        restart_on(d);
        if (reconnected_between)
            assert_int_equal(models(c), 0);
        uint64_t v = 99;
        assert_int_equal(wb_publish_commit(p, &v), WB_ECLOSED);
        fprintf(stderr, "  %s\n", wb_errmsg(c));
        assert_non_null(strstr(wb_errmsg(c), "publish it again"));
        assert_int_equal(v, 99);
        assert_int_equal(models(c), 0); /* Nothing committed. */
    }
    wb_publish *p = NULL;
    assert_int_equal(wb_publish_begin(c, "m", &spec, 1, NULL, 0, &p), 0);
    crash(d);
    restart_on(d);
    wb_publish_abort(p); /* Nothing to abort on the new daemon. */
    assert_int_equal(wbt_publish_f32(c, "m", 1, ELEMS), 1);
    wb_close(c);
}

/* The daemon that comes back is checked like the first: a process of
 * another user listening on the socket is refused before a byte is sent. */
static void test_reconnect_refuses_impostor(void **state) {
    if (geteuid() != 0) {
        fprintf(stderr, "  (skipped: needs root to act as uid %d)\n", NOBODY);
        return;
    }
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    crash(d);
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t imp = fork();
    assert_true(imp >= 0);
    if (imp == 0) {
        close(ready[0]);
        alarm(20);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock);
        unlink(d->sock);
        int ls = socket(AF_UNIX, SOCK_STREAM, 0);
        /* The peer's credentials are those of listen(), after setuid. */
        if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            setgid(NOBODY) || setuid(NOBODY) || listen(ls, 4) < 0 ||
            write(ready[1], "r", 1) != 1)
            _exit(80);
        int conn = accept(ls, NULL, NULL);
        if (conn < 0)
            _exit(81);
        char b;
        struct pollfd p = {.fd = conn, .events = POLLIN};
        if (poll(&p, 1, 5000) == 1 && read(conn, &b, 1) == 1)
            _exit(3); /* Heard a byte it should not have. */
        _exit(0);
    }
    close(ready[1]);
    char r;
    assert_int_equal(read(ready[0], &r, 1), 1);
    close(ready[0]);
    wb_model_info *v = NULL;
    size_t n = 0;
    int rc = wb_list(c, &v, &n);
    fprintf(stderr, "  %s: %s\n", wb_err_name(rc), wb_errmsg(c));
    assert_int_equal(rc, WB_EPERM);
    assert_non_null(strstr(wb_errmsg(c), "uid 65534"));
    assert_non_null(strstr(wb_errmsg(c), "reconnecting failed"));
    int st;
    assert_int_equal(waitpid(imp, &st, 0), imp);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    unlink(d->sock);
    restart_on(d);
    assert_int_equal(models(c), 0);
    wb_close(c);
}

/* ------------------------------------------------------------ cancel */

typedef struct watcher {
    wb_client *c;
    int rc;
    uint64_t version;
    double ended; /* wbt_now() when wb_watch returned. */
} watcher;

static void *watch_thread(void *arg) {
    watcher *w = arg;
    w->rc = wb_watch(w->c, "m", 0, -1, &w->version);
    w->ended = wbt_now();
    return NULL;
}

/* Joins t, failing the test (after killing the process's wait) when it
 * has not ended within ms. */
static void join_within(pthread_t t, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(t, NULL, &ts) != 0)
        fail_msg("the watch did not end within %d ms", ms);
}

/* A cancel from another thread wakes a watch(-1) within 100 ms with
 * ECANCELED; the daemon sees that connection go, and the next call
 * reconnects and works (a watch included). */
static void test_cancel_wakes_watch(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    watcher w = {.c = c, .rc = 1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, watch_thread, &w), 0);
    wbt_sleep_ms(200); /* Well inside its wait. */
    assert_int_equal(wbt_clients(d), 2);
    double t0 = wbt_now();
    assert_int_equal(wb_watch_cancel(c), 0);
    join_within(t, 2000);
    fprintf(stderr, "  woke after %.1f ms\n", (w.ended - t0) * 1e3);
    assert_true(w.ended - t0 < 0.1);
    assert_int_equal(w.rc, WB_ECANCELED);
    assert_int_equal(w.version, 0);
    assert_non_null(strstr(wb_errmsg(c), "cancelled"));
    assert_int_equal(wb_err_name(WB_ECANCELED)[0], 'E');
    assert_string_equal(wb_err_name(WB_ECANCELED), "ECANCELED");
    for (int i = 0; i < 500 && wbt_clients(d) != 1; i++)
        wbt_sleep_ms(10);
    assert_int_equal(wbt_clients(d), 1); /* The watch's connection went. */
    assert_int_equal(models(c), 0);
    assert_int_equal(wbt_publish_f32(c, "m", 1, 16), 1);
    uint64_t v = 0;
    assert_int_equal(wb_watch(c, "m", 0, 0, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(wb_watch_cancel(NULL), WB_EINVAL);
    wb_close(c);
}

/* A cancel made when no watch runs makes the next watch return ECANCELED
 * at once, without touching the connection, and only that one, however
 * many cancels came; other calls ignore it. */
static void test_cancel_is_sticky_once(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int before = fd_count();
    assert_int_equal(wb_watch_cancel(c), 0);
    assert_int_equal(wb_watch_cancel(c), 0);
    assert_int_equal(wb_watch_cancel(c), 0);
    assert_int_equal(models(c), 0); /* Not cancelled: not a watch. */
    uint64_t v = 99;
    double t0 = wbt_now();
    assert_int_equal(wb_watch(c, "m", 0, -1, &v), WB_ECANCELED);
    assert_true(wbt_now() - t0 < 0.1);
    assert_int_equal(v, 99);
    assert_non_null(strstr(wb_errmsg(c), "before it"));
    assert_int_equal(fd_count(), before); /* Same connection. */
    assert_int_equal(wbt_clients(d), 2);
    /* Once: the next watch waits as usual (here until its timeout). */
    t0 = wbt_now();
    assert_int_equal(wb_watch(c, "m", 0, 100, &v), 0);
    assert_true(wbt_now() - t0 >= 0.09);
    assert_int_equal(v, 0);
    wb_close(c);
}

static wb_client *signal_client; /* Handle the signal handler cancels. */

static void on_signal(int sig) {
    wb_watch_cancel(signal_client);
}

static void *signal_thread(void *arg) {
    pthread_t *target = arg;
    wbt_sleep_ms(150);
    pthread_kill(*target, SIGUSR1);
    return NULL;
}

/* A cancel from a signal handler, in the very thread that waits, ends the
 * watch (the handler only writes to the handle's eventfd). */
static void test_cancel_from_signal_handler(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    signal_client = c;
    struct sigaction sa = {.sa_handler = on_signal}, old;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
    pthread_t self = pthread_self(), t;
    assert_int_equal(pthread_create(&t, NULL, signal_thread, &self), 0);
    uint64_t v = 99;
    double t0 = wbt_now();
    int rc = wb_watch(c, "m", 0, 5000, &v);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
    assert_int_equal(rc, WB_ECANCELED);
    assert_true(wbt_now() - t0 < 1.0);
    assert_int_equal(models(c), 0);
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reconnect_after_restart, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_while_down, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_broken_mid_request,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_publish_lost, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_refuses_impostor, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_wakes_watch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_is_sticky_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_signal_handler, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
