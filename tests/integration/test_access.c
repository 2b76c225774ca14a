/* test_access.c -- Who may do what, through the socket, with clients that
 * really run under other uids: ownership without a policy, the policy
 * file's roles, groups and quotas, its reload, and the connection caps.
 *
 * The tests run as root (as CI does) and fork a child per client that
 * drops to another uid, gid and supplementary groups before it connects;
 * without root they are skipped, saying why.  Each child reports the
 * result code and wb_errmsg() of its one request through a pipe. */
#include <errno.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "wbroker.h"

#define NOBODY 65534 /* A uid the policy names. */
#define TRAINER 4242 /* A uid with publish rights in the policy. */
#define STRANGER 4343
#define SERVERS 4500 /* A group the policy names. */
#define KIB 1024u

typedef struct who {
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[4];
} who;

typedef struct result {
    int rc;        /* Result of the request (or of connecting). */
    char msg[600]; /* wb_errmsg() after it. */
} result;

static const who nobody = {NOBODY, NOBODY, 0, {0}};
static const who trainer = {TRAINER, TRAINER, 0, {0}};
static const who stranger = {STRANGER, STRANGER, 0, {0}};
static const who server = {STRANGER, STRANGER, 1, {SERVERS}};

/* Publishes one float32 tensor of len elements as model. */
static int publish(wb_client *c, const char *model, size_t len) {
    int64_t shape[1] = {(int64_t)len};
    wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
    wb_publish *p = NULL;
    int rc = wb_publish_begin(c, model, &spec, 1, NULL, 0, &p);
    if (rc)
        return rc;
    size_t nb;
    float *f = wb_publish_data(p, 0, &nb);
    for (size_t j = 0; j < len; j++)
        f[j] = (float)j;
    return wb_publish_commit(p, NULL);
}

enum {
    OP_PATH,
    OP_CONNECT,
    OP_RAW,
    OP_PUBLISH,
    OP_PUBLISH_BIG,
    OP_DROP,
    OP_PIN,
    OP_LOAD,
    OP_HOLDERS,
    OP_CAST
};

static int do_op(wb_client *c, int op, const char *model) {
    wb_mapping *m = NULL;
    int rc = 0;
    switch (op) {
    case OP_CONNECT:
        return 0;
    case OP_PUBLISH:
        return publish(c, model, 256);
    case OP_PUBLISH_BIG:
        return publish(c, model, 3 * KIB * KIB / 4); /* 3 MiB: 4 charged. */
    case OP_DROP:
        return wb_drop(c, model, 0);
    case OP_PIN:
        return wb_pin(c, model, 0);
    case OP_LOAD:
        rc = wb_map(c, model, 0, WB_MAP_SHARED, &m);
        wb_unmap(m);
        return rc;
    case OP_HOLDERS: { /* How many holders it sees. */
        wb_holder *h = NULL;
        size_t n = 0;
        rc = wb_holders(c, model, &h, &n);
        wb_holders_free(h, n);
        return rc ? rc : (int)n;
    }
    default: {
        wb_rules *r = wb_rules_new();
        wb_rules_cast(r, "*", WB_F16);
        rc = wb_load(c, model, 0, NULL, r, WB_MAP_SHARED, &m);
        wb_unmap(m);
        wb_rules_free(r);
        return rc;
    }
    }
}

/* Runs op on model as w in a child; returns what it got. */
static result as(const wbt_daemon *d, const who *w, int op, const char *model) {
    result res = {WB_ESYS, "child failed"};
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        result r = {0, ""};
        if (setgroups((size_t)w->ngroups, w->groups) || setgid(w->gid) ||
            setuid(w->uid)) {
            r.rc = WB_ESYS;
            snprintf(r.msg, sizeof(r.msg), "dropping to uid %u: %s",
                     (unsigned)w->uid, strerror(errno));
        } else if (op == OP_RAW) {
            /* Connections that never say hello: the first ones wait for
             * their timeout, the one beyond per user + 16 is closed at
             * once.  Reports how many of them were closed within 2 s. */
            int raw[32], n = atoi(model);
            for (int i = 0; i < n && i < 32; i++)
                raw[i] = wbt_raw_connect(d);
            wbt_sleep_ms(300);
            for (int i = 0; i < n && i < 32; i++) {
                char b;
                ssize_t k = raw[i] < 0 ? 0 : recv(raw[i], &b, 1, MSG_DONTWAIT);
                r.rc += k == 0 || (k < 0 && errno != EAGAIN);
                close(raw[i]);
            }
        } else if (op == OP_PATH) {
            setenv("XDG_RUNTIME_DIR", model, 1);
            unsetenv("WBROKER_SOCKET");
            r.rc = wb_socket_path(NULL, r.msg, sizeof(r.msg));
        } else {
            wb_client *c = NULL;
            r.rc = wb_connect(d->sock, &c);
            if (r.rc == 0)
                r.rc = do_op(c, op, model);
            snprintf(r.msg, sizeof(r.msg), "%s", wb_errmsg(c));
            wb_close(c);
        }
        ssize_t k = write(fds[1], &r, sizeof(r));
        _exit(k == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(fds[1]);
    ssize_t k = read(fds[0], &res, sizeof(res));
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    assert_int_equal(k, (ssize_t)sizeof(res));
    return res;
}

static void expect(result r, int rc, const char *text) {
    if (r.rc != rc || (text && strstr(r.msg, text) == NULL))
        fail_msg("got %s (%s), expected %s with \"%s\"", wb_err_name(r.rc),
                 r.msg, wb_err_name(rc), text ? text : "");
}

/* Owner of model according to wb_list, or WB_NO_OWNER. */
static uint32_t owner_of(const wbt_daemon *d, const char *model) {
    wb_client *c = wbt_connect(d);
    wb_model_info *v = NULL;
    size_t n = 0;
    uint32_t owner = WB_NO_OWNER;
    assert_int_equal(wb_list(c, &v, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, model) == 0)
            owner = v[i].owner;
    wb_model_info_free(v, n);
    wb_close(c);
    return owner;
}

static char policy_dir[64];
static char policy_path[128];

static void write_policy(const char *text) {
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s.new", policy_path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, policy_path), 0);
}

/* Starts a daemon whose socket other uids can reach. */
static void start(wbt_daemon *d, const char *policy, const char *const *more) {
    const char *args[16] = {"--socket-mode", "0666"};
    int a = 2;
    if (policy) {
        write_policy(policy);
        args[a++] = "--access";
        args[a++] = policy_path;
    }
    for (int i = 0; more && more[i] && a < 15; i++)
        args[a++] = more[i];
    args[a] = NULL;
    assert_int_equal(wbt_start(d, args), 0);
    assert_int_equal(chmod(d->dir, 0755), 0);
}

static void finish(wbt_daemon *d) {
    assert_int_equal(wbt_finish(d), 0);
}

/* The daemon's log contains text (waits up to 5 s for it). */
static int log_has(const wbt_daemon *d, const char *text) {
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(d->log, "r");
        char line[1024];
        int found = 0;
        while (f && !found && fgets(line, sizeof(line), f))
            found = strstr(line, text) != NULL;
        if (f)
            fclose(f);
        if (found)
            return 1;
        wbt_sleep_ms(10);
    }
    return 0;
}

static int setup_group(void **state) {
    if (geteuid() != 0) {
        fprintf(stderr, "test_access: skipped: it needs root, to run clients "
                        "under other uids\n");
        return 0;
    }
    snprintf(policy_dir, sizeof(policy_dir), "/tmp/wbt-acc-XXXXXX");
    if (mkdtemp(policy_dir) == NULL)
        return -1;
    snprintf(policy_path, sizeof(policy_path), "%s/access.conf", policy_dir);
    return 0;
}

static int teardown_group(void **state) {
    if (policy_dir[0]) {
        unlink(policy_path);
        rmdir(policy_dir);
    }
    return 0;
}

#define NEED_ROOT()                                                            \
    do {                                                                       \
        if (geteuid() != 0)                                                    \
            skip();                                                            \
    } while (0)

/* ------------------------------------------------------------ ownership */

/* Without a policy, another user may load root's model and publish models
 * of its own, and may not publish over, pin or remove root's; each
 * refusal leaves no segment, descriptor or charge behind. */
static void test_access_owner_without_policy(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, NULL, NULL);
    wb_client *c = wbt_connect(&d);
    assert_int_equal(publish(c, "prod", 1024), 0);
    assert_int_equal(owner_of(&d, "prod"), 0);
    int segs = wbt_segment_count(&d);
    uint64_t used = wbt_mem_used(&d);
    int fds = wbt_settled_fds(&d, 100, 2000);

    expect(as(&d, &nobody, OP_DROP, "prod"), WB_EPERM,
           "user 65534 (nobody) may not remove model 'prod': it belongs to "
           "root");
    expect(as(&d, &nobody, OP_PUBLISH, "prod"), WB_EPERM,
           "may not publish to model 'prod': it belongs to root");
    expect(as(&d, &nobody, OP_PIN, "prod"), WB_EPERM,
           "may not pin model 'prod'");
    expect(as(&d, &nobody, OP_LOAD, "prod"), 0, NULL);
    assert_int_equal(wbt_wait_segments(&d, segs), segs);
    assert_int_equal(wbt_mem_used(&d), used);
    assert_int_equal(wbt_wait_fds(&d, fds), fds);

    /* A model of nobody's own: nobody may do everything with it, another
     * user nothing but read, root everything. */
    expect(as(&d, &nobody, OP_PUBLISH, "mine"), 0, NULL);
    assert_int_equal(owner_of(&d, "mine"), NOBODY);
    expect(as(&d, &nobody, OP_PUBLISH, "mine"), 0, NULL);
    expect(as(&d, &nobody, OP_PIN, "mine"), 0, NULL);
    expect(as(&d, &trainer, OP_DROP, "mine"), WB_EPERM,
           "user 4242 may not remove model 'mine': it belongs to nobody");
    expect(as(&d, &trainer, OP_LOAD, "mine"), 0, NULL);
    assert_int_equal(publish(c, "mine", 16), 0); /* Root: an admin. */
    assert_int_equal(owner_of(&d, "mine"), NOBODY);
    expect(as(&d, &nobody, OP_DROP, "mine"), 0, NULL);

    /* The name stays nobody's while the daemon remembers it. */
    expect(as(&d, &trainer, OP_PUBLISH, "mine"), WB_EPERM, "belongs to nobody");
    expect(as(&d, &nobody, OP_PUBLISH, "mine"), 0, NULL);
    assert_int_equal(wb_drop(c, "mine", 0), 0);
    assert_int_equal(wb_drop(c, "prod", 0), 0);
    wb_close(c);
    wbt_wait_clean(&d);
    finish(&d);
}

/* Two users publish the same new name at once: the first commit makes its
 * publisher the owner, and the other's commit is refused, its segment and
 * charge given back. */
static void test_access_commit_race_first_owner_wins(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, NULL, NULL);
    int segs0 = wbt_segment_count(&d);
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        result r = {0, ""};
        wb_client *c = NULL;
        wb_publish *p = NULL;
        int64_t shape[1] = {16};
        wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
        if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY) ||
            wb_connect(d.sock, &c) ||
            wb_publish_begin(c, "race", &spec, 1, NULL, 0, &p))
            r.rc = WB_ESYS;
        char b = 0;
        if (write(up[1], &b, 1) != 1 || read(down[0], &b, 1) != 1)
            _exit(1);
        if (r.rc == 0) {
            r.rc = wb_publish_commit(p, NULL);
            snprintf(r.msg, sizeof(r.msg), "%s", wb_errmsg(c));
        }
        wb_close(c);
        _exit(write(up[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(up[1]);
    close(down[0]);
    char b;
    assert_int_equal(read(up[0], &b, 1), 1);
    expect(as(&d, &trainer, OP_PUBLISH, "race"), 0, NULL);
    assert_int_equal(owner_of(&d, "race"), TRAINER);
    assert_int_equal(write(down[1], "x", 1), 1);
    result r;
    assert_int_equal(read(up[0], &r, sizeof(r)), (ssize_t)sizeof(r));
    int st;
    waitpid(pid, &st, 0);
    close(up[0]);
    close(down[1]);
    expect(r, WB_EPERM,
           "user 65534 (nobody) may not commit to model 'race': it belongs "
           "to user 4242");
    assert_int_equal(owner_of(&d, "race"), TRAINER);
    assert_int_equal(wbt_wait_segments(&d, segs0 + 1), segs0 + 1);
    wb_client *c = wbt_connect(&d);
    assert_int_equal(wb_drop(c, "race", 0), 0);
    wb_close(c);
    wbt_wait_clean(&d);
    finish(&d);
}

/* holders: a reader sees its own processes, the owner and admins every
 * holder of the model. */
static void test_access_holders_of_ones_own(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, NULL, NULL);
    expect(as(&d, &trainer, OP_PUBLISH, "tm"), 0, NULL);
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* nobody maps tm and keeps it. */
        wb_client *c = NULL;
        wb_mapping *m = NULL;
        char b = 0;
        if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY) ||
            wb_connect(d.sock, &c) || wb_map(c, "tm", 0, WB_MAP_SHARED, &m))
            b = 1;
        if (write(up[1], &b, 1) != 1 || read(down[0], &b, 1) < 0)
            _exit(1);
        wb_unmap(m);
        wb_close(c);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    char b = 1;
    assert_int_equal(read(up[0], &b, 1), 1);
    assert_int_equal(b, 0);
    expect(as(&d, &stranger, OP_HOLDERS, "tm"), 0, NULL); /* Sees none. */
    expect(as(&d, &trainer, OP_HOLDERS, "tm"), 1, NULL);  /* The owner. */
    wb_client *c = wbt_connect(&d);
    wb_holder *h = NULL;
    size_t n = 0;
    assert_int_equal(wb_holders(c, NULL, &h, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(h[0].uid, NOBODY);
    wb_holders_free(h, n);
    assert_int_equal(write(down[1], "x", 1), 1);
    int st;
    waitpid(pid, &st, 0);
    close(up[0]);
    close(down[1]);
    assert_int_equal(wb_drop(c, "tm", 0), 0);
    wb_close(c);
    wbt_wait_clean(&d);
    finish(&d);
}

/* ------------------------------------------------------------ policy */

static const char policy[] =
    "# trainers publish train-*, servers read, operators administer\n"
    "user:4242 train-* publish quota=5M\n"
    "group:4500 * read quota=1M\n"
    "user:nobody * read\n"
    "group:4600 * admin\n";

/* Roles of the policy: a user no line names cannot connect, one named
 * through a supplementary group can, read covers loads, publish covers the
 * models its glob names only. */
static void test_access_policy_roles_and_groups(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, policy, NULL);
    wb_client *c = wbt_connect(&d);
    assert_int_equal(publish(c, "prod", 1024), 0);

    expect(as(&d, &stranger, OP_CONNECT, NULL), WB_EPERM,
           "user 4343 may not connect");
    assert_true(log_has(&d, "audit: refused connect: user 4343"));
    expect(as(&d, &server, OP_LOAD, "prod"), 0, NULL);
    expect(as(&d, &server, OP_PUBLISH, "new"), WB_EPERM,
           "the access policy gives it read there, publish is needed");
    expect(as(&d, &nobody, OP_DROP, "prod"), WB_EPERM, "may not remove");
    expect(as(&d, &trainer, OP_PUBLISH, "train-a"), 0, NULL);
    expect(as(&d, &trainer, OP_PUBLISH, "serve-a"), WB_EPERM,
           "gives it no role there");
    expect(as(&d, &trainer, OP_LOAD, "prod"), WB_EPERM, "no role");
    /* An operator (group 4600) may remove what another user owns. */
    const who op = {STRANGER, STRANGER, 2, {1234, 4600}};
    expect(as(&d, &op, OP_DROP, "train-a"), 0, NULL);
    assert_int_equal(wb_drop(c, "prod", 0), 0);
    wb_close(c);
    wbt_wait_clean(&d);
    finish(&d);
}

/* Quotas (segments are charged in 2 MiB units): a publish over the
 * user's quota is refused before any segment is made, naming the quota and
 * the usage, and fits again once the user drops a model; a cast counts
 * against the user whose load asked for it. */
static void test_access_quota(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, policy, NULL);
    expect(as(&d, &trainer, OP_PUBLISH_BIG, "train-a"), 0, NULL);
    int segs = wbt_segment_count(&d);
    uint64_t used = wbt_mem_used(&d);
    expect(as(&d, &trainer, OP_PUBLISH_BIG, "train-b"), WB_ELIMIT,
           "publishing 4194304 bytes would exceed the quota of user 4242 "
           "(5242880 bytes, line 2 of");
    assert_int_equal(wbt_segment_count(&d), segs);
    assert_int_equal(wbt_mem_used(&d), used);
    expect(as(&d, &trainer, OP_DROP, "train-a"), 0, NULL);
    expect(as(&d, &trainer, OP_PUBLISH_BIG, "train-b"), 0, NULL);

    /* Group 4500's quota is 1 MiB per user: a float16 copy of a 3 MiB
     * float32 model (2 MiB charged) does not fit; a plain load takes
     * none. */
    expect(as(&d, &server, OP_CAST, "train-b"), WB_ELIMIT,
           "exceed the quota of user 4343");
    expect(as(&d, &server, OP_LOAD, "train-b"), 0, NULL);
    assert_int_equal(wbt_segment_count(&d), segs);
    /* Root has no quota: its cast is made. */
    wb_client *c = wbt_connect(&d);
    assert_int_equal(do_op(c, OP_CAST, "train-b"), 0);
    assert_int_equal(wb_drop(c, "train-b", 0), 0);
    wb_close(c);
    wbt_wait_clean(&d);
    finish(&d);
}

/* SIGHUP reloads the policy; a file with a bad line keeps the one in force
 * and logs the line and the reason. */
static void test_access_reload(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, policy, NULL);
    expect(as(&d, &stranger, OP_CONNECT, NULL), WB_EPERM, "may not connect");
    write_policy("user:4343 * read\nuser:4242 * publish quota=lots\n");
    kill(d.pid, SIGHUP);
    assert_true(log_has(&d, "line 2: the fourth field must be quota=SIZE"));
    assert_true(log_has(&d, "the policy in force stays"));
    expect(as(&d, &stranger, OP_CONNECT, NULL), WB_EPERM, "may not connect");
    expect(as(&d, &trainer, OP_PUBLISH, "train-x"), 0, NULL);

    write_policy("user:4343 * read\n");
    kill(d.pid, SIGHUP);
    assert_true(log_has(&d, "reloaded access policy"));
    expect(as(&d, &stranger, OP_CONNECT, NULL), 0, NULL);
    expect(as(&d, &trainer, OP_CONNECT, NULL), WB_EPERM, "may not connect");
    finish(&d);
}

/* ------------------------------------------------------------ caps */

/* A child as w that keeps n connections open until told to go; returns
 * its pid and the write end that tells it, and how many it got. */
static pid_t hold_open(const wbt_daemon *d, const who *w, int n, int *go,
                       int *got) {
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        int k = 0;
        wb_client *c[8] = {0};
        if (setgroups(0, NULL) == 0 && setgid(w->gid) == 0 &&
            setuid(w->uid) == 0)
            for (int i = 0; i < n && i < 8; i++)
                k += wb_connect(d->sock, &c[i]) == 0;
        if (write(up[1], &k, sizeof(k)) != sizeof(k))
            _exit(1);
        char b;
        if (read(down[0], &b, 1) < 0)
            _exit(1);
        for (int i = 0; i < 8; i++)
            wb_close(c[i]);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    assert_int_equal(read(up[0], got, sizeof(*got)), (ssize_t)sizeof(*got));
    close(up[0]);
    *go = down[1];
    return pid;
}

/* Writes rather than closes: a later child holds a copy of go too. */
static void release(pid_t pid, int go) {
    assert_int_equal(write(go, "x", 1), 1);
    close(go);
    int st;
    waitpid(pid, &st, 0);
}

/* A user at its cap cannot take another connection, while other users and
 * admins still can; past --max-clients only admins connect. */
static void test_access_client_caps(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    const char *const caps[] = {"--max-clients", "3", "--max-clients-per-user",
                                "2", NULL};
    start(&d, NULL, caps);
    int go, got;
    pid_t held = hold_open(&d, &nobody, 3, &go, &got);
    assert_int_equal(got, 2);
    expect(as(&d, &nobody, OP_CONNECT, NULL), WB_ELIMIT,
           "at most 2 clients per user");
    expect(as(&d, &trainer, OP_CONNECT, NULL), 0, NULL);
    int go2, got2;
    pid_t held2 = hold_open(&d, &trainer, 1, &go2, &got2);
    assert_int_equal(got2, 1);
    expect(as(&d, &stranger, OP_CONNECT, NULL), WB_ELIMIT,
           "at most 3 clients in all");
    wb_client *c = wbt_connect(&d); /* Root: an admin slot. */
    wb_close(c);
    release(held, go);
    release(held2, go2);
    wbt_sleep_ms(100);
    expect(as(&d, &nobody, OP_CONNECT, NULL), 0, NULL);
    /* 2 + 16 connections without a hello are let wait for their hello;
     * the 19th and 20th are closed at once. */
    int fds = wbt_settled_fds(&d, 100, 2000);
    assert_int_equal(as(&d, &nobody, OP_RAW, "18").rc, 0);
    assert_int_equal(wbt_wait_fds(&d, fds), fds);
    assert_int_equal(as(&d, &nobody, OP_RAW, "20").rc, 2);
    assert_true(log_has(&d, "audit: refused a connection of uid 65534"));
    expect(as(&d, &trainer, OP_CONNECT, NULL), 0, NULL);
    finish(&d);
}

/* ------------------------------------------------------------ finding */

/* A client that the socket's mode refuses hears which socket, whose, and
 * which group grants access. */
static void
test_access_socket_mode_refusal_names_owner_and_group(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    const char *const mode[] = {"--socket-mode", "0660", NULL};
    start(&d, NULL, mode);
    result r = as(&d, &nobody, OP_CONNECT, NULL);
    expect(r, WB_EPERM, d.sock);
    expect(r, WB_EPERM, "belongs to user root (uid 0) and group root (gid 0)");
    expect(r, WB_EPERM, "join group root");
    finish(&d);
}

/* Without --socket or WBROKER_SOCKET a user's client takes the user's own
 * socket when one is there, else the system's. */
static void test_access_client_finds_system_socket(void **state) {
    NEED_ROOT();
    wbt_daemon d;
    start(&d, NULL, NULL);
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/wbt-run-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chmod(dir, 0777), 0);
    result r = as(&d, &nobody, OP_PATH, dir);
    assert_true(r.rc > 0);
    assert_string_equal(r.msg, "/run/wbroker/wbroker.sock");
    /* The test daemon's socket stands in for the user's own. */
    char own[128];
    snprintf(own, sizeof(own), "%s/wbroker.sock", dir);
    assert_int_equal(link(d.sock, own), 0);
    r = as(&d, &nobody, OP_PATH, dir);
    assert_string_equal(r.msg, own);
    unlink(own);
    rmdir(dir);
    finish(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_owner_without_policy),
        cmocka_unit_test(test_access_commit_race_first_owner_wins),
        cmocka_unit_test(test_access_holders_of_ones_own),
        cmocka_unit_test(test_access_policy_roles_and_groups),
        cmocka_unit_test(test_access_quota),
        cmocka_unit_test(test_access_reload),
        cmocka_unit_test(test_access_client_caps),
        cmocka_unit_test(test_access_socket_mode_refusal_names_owner_and_group),
        cmocka_unit_test(test_access_client_finds_system_socket),
    };
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
