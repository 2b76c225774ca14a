/* test_client_trust.c -- Integration tests: the daemon does not listen in
 * a socket directory that someone else controls.
 *
 * The real daemon is started in directories that a stranger (nobody,
 * 65534) created or that anyone can write, and must refuse to listen
 * there.  Tests that need another uid are skipped unless run as root (CI
 * is). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "harness.h"
#include "paths.h"

#define NOBODY 65534              /* The stranger's uid and gid. */

typedef struct fake {
    pid_t pid;                  /* The fake daemon, 0 once reaped. */
    char top[64];               /* Temporary directory holding it all. */
    char dir[80];               /* Socket directory (top or below). */
    char sock[100];             /* Socket path. */
} fake;

/* ------------------------------------------------------------ helpers */

/* Creates f->top (mode 0755, root's when run as root) and uses it as the
 * socket directory. */
static void fake_dirs(fake *f) {
    memset(f, 0, sizeof(*f));
    snprintf(f->top, sizeof(f->top), "/tmp/wbt-trust-XXXXXX");
    assert_non_null(mkdtemp(f->top));
    assert_int_equal(chmod(f->top, 0755), 0);
    snprintf(f->dir, sizeof(f->dir), "%s", f->top);
    snprintf(f->sock, sizeof(f->sock), "%s/wb.sock", f->dir);
}

/* Makes f->dir a subdirectory "sub" of f->top with the given owner and
 * mode (f->top's mode set to top_mode). */
static void fake_subdir(fake *f, uid_t owner, mode_t mode, mode_t top_mode) {
    snprintf(f->dir, sizeof(f->dir), "%s/sub", f->top);
    snprintf(f->sock, sizeof(f->sock), "%s/wb.sock", f->dir);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(chown(f->dir, owner, owner), 0);
    assert_int_equal(chmod(f->dir, mode), 0);
    assert_int_equal(chmod(f->top, top_mode), 0);
}

/* Removes the fake's socket and directories. */
static void fake_remove(const fake *f) {
    unlink(f->sock);
    if (strcmp(f->dir, f->top) != 0)
        rmdir(f->dir);
    rmdir(f->top);
}

/* 1 if the tests may take other uids. */
static int need_root(void) {
    if (geteuid() == 0)
        return 1;
    fprintf(stderr, "  (skipped: needs root to act as uid %d)\n", NOBODY);
    return 0;
}

/* ------------------------------------------------------------ tests */

/* The directory rule on its own: a missing directory, a relative path. */
static void test_trust_dir_check_rule(void **state) {
    char why[WB_DIR_WHY_MAX] = "";
    uid_t owner = 12345;
    assert_int_equal(wb__socket_dir_check("/nonexistent-wbt/x/wb.sock",
                                          geteuid(), 0, &owner, why,
                                          sizeof(why)),
                     1);
    fake f;
    fake_dirs(&f);
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f.top), 0);
    assert_int_equal(wb__socket_dir_check("wb.sock", geteuid(), 0, &owner,
                                          why, sizeof(why)),
                     0);
    assert_int_equal(owner, geteuid());
    assert_int_equal(chmod(f.top, 0775), 0);
    assert_int_equal(wb__socket_dir_check("wb.sock", geteuid(), 0, &owner,
                                          why, sizeof(why)),
                     WB_EPERM);
    assert_non_null(strstr(why, f.top)); /* Resolved, not ".". */
    assert_int_equal(chdir(cwd), 0);
    fake_remove(&f);
}

/* Runs the real daemon on dir/wb.sock; returns its exit status (-1 if it
 * kept running for 10 s) with its stderr in log. */
static int run_daemon(const char *dir, char *log, size_t n) {
    char sock[160], logpath[160], bin[256];
    snprintf(sock, sizeof(sock), "%s/wb.sock", dir);
    snprintf(logpath, sizeof(logpath), "%s.log", dir);
    snprintf(bin, sizeof(bin), "%s/wbrokerd", wbt_build_dir());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(logpath, "w", stderr) == NULL)
            _exit(126);
        unsetenv("LISTEN_FDS");
        unsetenv("NOTIFY_SOCKET");
        execl(bin, bin, "--socket", sock, (char *)NULL);
        _exit(127);
    }
    int st = 0, code = -1;
    for (int i = 0; i < 1000; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            pid = 0;
            break;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    FILE *f = fopen(logpath, "re");
    size_t k = f ? fread(log, 1, n - 1, f) : 0;
    log[k] = '\0';
    if (f)
        fclose(f);
    fprintf(stderr, "  wbrokerd: %s", log);
    unlink(logpath);
    unlink(sock);
    return code;
}

/* The daemon refuses to listen in a directory that a stranger created. */
static void test_trust_daemon_stranger_dir(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, NOBODY, 0755, 0700);
    char log[4096];
    assert_int_equal(run_daemon(f.dir, log, sizeof(log)), 1);
    assert_non_null(strstr(log, "refusing to listen"));
    assert_non_null(strstr(log, "owner uid 65534"));
    fake_remove(&f);
}

/* The daemon refuses a directory that anyone can write. */
static void test_trust_daemon_open_dir(void **state) {
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, geteuid(), 0777, 0700);
    char log[4096];
    assert_int_equal(run_daemon(f.dir, log, sizeof(log)), 1);
    assert_non_null(strstr(log, "refusing to listen"));
    assert_non_null(strstr(log, "mode 0777"));
    fake_remove(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trust_dir_check_rule),
        cmocka_unit_test(test_trust_daemon_stranger_dir),
        cmocka_unit_test(test_trust_daemon_open_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
