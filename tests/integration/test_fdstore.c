/* test_fdstore.c -- The daemon's side of the service manager's descriptor
 * store, without systemd: the test plays the manager's two ends of it (a
 * notify socket that keeps FDSTORE descriptors by name and drops them on
 * FDSTOREREMOVE, and LISTEN_FDS / LISTEN_FDNAMES at the next start).  The
 * real systemd runs in the service container test (tests/service/). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "wbroker.h"

#define MAX_STORED 256 /* Descriptors the fake store keeps. */

/* The fake manager's store. */
typedef struct store {
    int sock;                   /* Notify socket, bound at path. */
    char path[108];             /* Its path. */
    char name[MAX_STORED][256]; /* FDNAME of each descriptor. */
    int fd[MAX_STORED];         /* The descriptors. */
    int n;                      /* Entries in use. */
} store;

static void store_open(store *s, const char *dir) {
    memset(s, 0, sizeof(*s));
    snprintf(s->path, sizeof(s->path), "%s/notify", dir);
    s->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->path);
    assert_int_equal(bind(s->sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

/* Reads every notify message that arrives within ms of the last one. */
static void store_drain(store *s, int ms) {
    for (;;) {
        struct pollfd p = {s->sock, POLLIN, 0};
        if (poll(&p, 1, ms) <= 0)
            return;
        char buf[4096];
        char cbuf[CMSG_SPACE(sizeof(int) * 253)];
        struct iovec iov = {buf, sizeof(buf) - 1};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = cbuf,
                            .msg_controllen = sizeof(cbuf)};
        ssize_t n = recvmsg(s->sock, &mh, MSG_CMSG_CLOEXEC);
        assert_true(n >= 0);
        buf[n] = '\0';
        int fds[253], nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_type == SCM_RIGHTS) {
                nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                memcpy(fds, CMSG_DATA(c), (size_t)nfds * sizeof(int));
            }
        const char *nm = strstr(buf, "FDNAME=");
        char name[256] = "";
        if (nm)
            sscanf(nm + 7, "%255[^\n]", name);
        if (strstr(buf, "FDSTOREREMOVE=1")) {
            for (int i = 0; i < s->n;)
                if (strcmp(s->name[i], name) == 0) {
                    close(s->fd[i]);
                    s->n--;
                    s->fd[i] = s->fd[s->n];
                    memcpy(s->name[i], s->name[s->n], 256);
                } else {
                    i++;
                }
        } else if (strstr(buf, "FDSTORE=1")) {
            for (int i = 0; i < nfds; i++) {
                assert_true(s->n < MAX_STORED);
                snprintf(s->name[s->n], 256, "%s", name);
                s->fd[s->n++] = fds[i];
            }
            continue;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
}

/* The manager reads its notify socket all the time (a datagram socket's
 * queue is short, and a daemon whose message does not fit waits). */
static pthread_t drainer;
static volatile int drain_stop;

static void *drain_loop(void *arg) {
    while (!drain_stop)
        store_drain(arg, 20);
    return NULL;
}

static void drain_start(store *s) {
    drain_stop = 0;
    assert_int_equal(pthread_create(&drainer, NULL, drain_loop, s), 0);
}

/* Stops reading, after whatever arrives within 200 ms. */
static void drain_end(store *s) {
    drain_stop = 1;
    pthread_join(drainer, NULL);
    store_drain(s, 200);
}

/* Stored descriptors whose name starts with prefix. */
static int store_count(const store *s, const char *prefix) {
    int n = 0;
    for (int i = 0; i < s->n; i++)
        n += strncmp(s->name[i], prefix, strlen(prefix)) == 0;
    return n;
}

/* Starts wbrokerd with $NOTIFY_SOCKET at s and the stored descriptors
 * passed as LISTEN_FDS (the manager's restart), keep as --keep. */
static void start(wbt_daemon *d, const char *dir, store *s, const char *keep) {
    memset(d, 0, sizeof(*d));
    snprintf(d->sock, sizeof(d->sock), "%s/wb.sock", dir);
    snprintf(d->log, sizeof(d->log), "%s/wbrokerd.log", dir);
    snprintf(d->dir, sizeof(d->dir), "%s", dir);
    char bin[256];
    snprintf(bin, sizeof(bin), "%s/wbrokerd", wbt_build_dir());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(d->log, "a", stderr);
        (void)f;
        /* Move the descriptors out of the way, then to 3, 4, ... */
        int high[MAX_STORED];
        for (int i = 0; i < s->n; i++)
            high[i] = fcntl(s->fd[i], F_DUPFD, 3 + MAX_STORED);
        char names[MAX_STORED * 64] = "";
        for (int i = 0; i < s->n; i++) {
            dup2(high[i], 3 + i);
            strcat(names, i ? ":" : "");
            strcat(names, s->name[i]);
        }
        char num[32];
        snprintf(num, sizeof(num), "%d", s->n);
        setenv("LISTEN_FDS", num, 1);
        snprintf(num, sizeof(num), "%d", (int)getpid());
        setenv("LISTEN_PID", num, 1);
        setenv("LISTEN_FDNAMES", names, 1);
        setenv("NOTIFY_SOCKET", s->path, 1);
        execl(bin, bin, "--socket", d->sock, "--log-level", "debug", "--keep",
              keep, (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 500; i++) {
        int fd = wbt_raw_connect(d);
        if (fd >= 0) {
            close(fd);
            return;
        }
        wbt_sleep_ms(10);
    }
    fail_msg("the daemon did not start");
}

static void kill_daemon(wbt_daemon *d) {
    kill(d->pid, SIGKILL);
    int st;
    waitpid(d->pid, &st, 0);
    d->pid = 0;
    unlink(d->sock);
}

/* Versions, pins, numbers and holds come back from the store after a
 * SIGKILL; a retired version that a process still maps stays charged until
 * it lets go; a descriptor that fails the checks is removed, never served. */
static void test_fdstore_restart(void **state) {
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/wbt-fdstore-XXXXXX");
    assert_non_null(mkdtemp(dir));
    store s;
    store_open(&s, dir);
    wbt_daemon d;
    start(&d, dir, &s, "1");
    drain_start(&s);
    wb_client *c = wbt_connect(&d);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 1000), 1);
    wb_mapping *held;
    assert_int_equal(wb_map(c, "m", 1, WB_MAP_SHARED, &held), 0);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 1000), 2); /* Retires 1. */
    assert_int_equal(wbt_publish_f32(c, "n", 1, 10), 1);
    assert_int_equal(wb_pin(c, "n", 1), 0);
    assert_int_equal(wbt_publish_f32(c, "n", 1, 10), 2);
    assert_int_equal(wbt_publish_f32(c, "gone", 1, 10), 1);
    assert_int_equal(wb_drop(c, "gone", 0), 0);
    uint64_t retired = wbt_counter(&d, "bytes.retired");
    assert_true(retired > 0);
    drain_end(&s);
    /* m@2, n@1, n@2; the hold on m@1; one state record. */
    assert_int_equal(store_count(&s, "v-"), 3);
    assert_int_equal(store_count(&s, "h-"), 1);
    assert_int_equal(store_count(&s, "state-"), 1);
    wb_close(c);
    kill_daemon(&d);

    /* A descriptor that is not sealed, under a version's name. */
    int bad = memfd_create("bad", MFD_CLOEXEC);
    assert_int_equal(ftruncate(bad, 2 << 20), 0);
    snprintf(s.name[s.n], 256, "v-00000000000000ff-9");
    s.fd[s.n++] = bad;
    start(&d, dir, &s, "1");
    drain_start(&s);
    c = wbt_connect(&d);
    wb_model_info *v;
    size_t n;
    assert_int_equal(wb_list(c, &v, &n), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].name, "m") == 0)
            assert_int_equal(v[i].latest, 2),
                assert_int_equal(v[i].nversions, 1);
        else
            assert_int_equal(v[i].pinned, 1), assert_int_equal(v[i].latest, 2);
        assert_int_equal(strlen(v[i].digest), 32);
    }
    wb_model_info_free(v, n);
    assert_int_equal(wbt_counter(&d, "holds"), 1);
    assert_int_equal(wbt_counter(&d, "bytes.retired"), retired);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(held, 1, &t), 0);
    assert_true(((const float *)t.data)[999] == 1999.0f);
    assert_int_equal(wbt_publish_f32(c, "gone", 1, 10), 2);
    assert_int_equal(wbt_publish_f32(c, "m", 2, 10), 3);
    drain_end(&s);
    assert_int_equal(store_count(&s, "v-00000000000000ff"), 0);
    assert_int_equal(store_count(&s, "state-"), 1);
    drain_start(&s);
    /* Letting go of the old mapping ends the hold the new daemon took. */
    wb_unmap(held);
    for (int i = 0; i < 500 && wbt_counter(&d, "holds") != 0; i++)
        wbt_sleep_ms(10);
    assert_int_equal(wbt_counter(&d, "holds"), 0);
    assert_int_equal(wbt_counter(&d, "bytes.retired"), 0);
    wb_close(c);
    drain_end(&s);
    assert_int_equal(store_count(&s, "h-"), 0);
    /* A clean stop leaves the store alone. */
    int before = s.n;
    drain_start(&s);
    assert_int_equal(wbt_finish(&d), 0);
    drain_end(&s);
    assert_int_equal(s.n, before);
    for (int i = 0; i < s.n; i++)
        close(s.fd[i]);
    close(s.sock);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fdstore_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
