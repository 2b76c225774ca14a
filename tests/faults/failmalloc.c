/* failmalloc.c -- A preloaded allocator that fails one chosen allocation
 * of the daemon, for the allocation-failure sweep (test_failmalloc.c).
 *
 * LD_PRELOAD=libwbfailmalloc.so wbrokerd ...: malloc, calloc and realloc
 * go to glibc's allocator, except that the Nth of them counted since the
 * last arming returns NULL (with errno ENOMEM), once, or, when N is
 * followed by "+", every one from the Nth on (memory gone for good, until
 * the next arming).  The file named by WB_FAILMALLOC_CTL holds N (0: fail
 * nothing) and any text after it; it is read at each accepted
 * connection, and a new N arms the count from there, so that allocations
 * of start-up and of earlier connections do not count, and the Nth is
 * one made on behalf of the clients (request handling, the worker thread's
 * jobs, closing).  WB_FAILMALLOC_LOG names a file that gets a line
 * "armed N" at each arming, "fired N" when the Nth fails, and
 * "count C" (allocations since the arming) at each accept, which tells a
 * test how many allocation points a session has.  A client program is
 * armed from its start instead by WB_FAILMALLOC_N (N, or N+), and logs
 * "count C" when it exits.  Allocations inside glibc's user and group
 * lookups (getpwuid and the like) never fail: glibc's NSS dereferences
 * NULL when one does (glibc 2.36, nss_database.c:402), in any program.
 * For a build without ASan, whose allocator replaces these functions
 * first. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t k, size_t n);
void *__libc_realloc(void *p, size_t n);

static atomic_ullong counted; /* Allocations since the arming. */
static atomic_ullong fail_at; /* The one to fail (0: none). */
static atomic_int fail_on;    /* 1: every one from fail_at on. */
static char ctl_seen[32];     /* The control file's text at the arming. */

/* Appends one line to the log, without allocating. */
static void log_line(const char *what, unsigned long long v) {
    const char *path = getenv("WB_FAILMALLOC_LOG");
    if (path == NULL)
        return;
    char line[64];
    int n = snprintf(line, sizeof(line), "%s %llu\n", what, v);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t k = write(fd, line, (size_t)n);
    (void)k;
    close(fd);
}

static _Thread_local int in_nss; /* 1 inside a user or group lookup. */

/* 1 if this allocation is the one to fail. */
static int should_fail(void) {
    unsigned long long at = atomic_load(&fail_at);
    if (at == 0 || in_nss)
        return 0;
    unsigned long long k = atomic_fetch_add(&counted, 1) + 1;
    if (k < at || (k > at && !atomic_load(&fail_on)))
        return 0;
    if (k == at)
        log_line("fired", at);
    if (!atomic_load(&fail_on))
        atomic_store(&fail_at, 0);
    return 1;
}

void *malloc(size_t n) {
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_malloc(n);
}

void *calloc(size_t k, size_t n) {
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_calloc(k, n);
}

void *realloc(void *p, size_t n) {
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(p, n);
}

/* Arms N (and "+") as the text buf says. */
static void arm_text(const char *buf) {
    unsigned long long n = 0;
    const char *p = buf;
    for (; *p >= '0' && *p <= '9'; p++)
        n = n * 10 + (unsigned long long)(*p - '0');
    atomic_store(&fail_at, 0); /* Nothing fails while re-arming. */
    atomic_store(&counted, 0);
    atomic_store(&fail_on, *p == '+');
    atomic_store(&fail_at, n);
    log_line("armed", n);
}

/* Reads the control file; a text other than the last arms a new N. */
static void rearm(void) {
    const char *path = getenv("WB_FAILMALLOC_CTL");
    if (path == NULL)
        return;
    char buf[32] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t k = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (k <= 0 || memcmp(buf, ctl_seen, sizeof(buf)) == 0)
        return;
    memcpy(ctl_seen, buf, sizeof(buf));
    arm_text(buf);
}

/* A client is armed from its start, and says at its end how many
 * allocations it made. */
__attribute__((constructor)) static void client_start(void) {
    const char *n = getenv("WB_FAILMALLOC_N");
    if (n != NULL)
        arm_text(n);
}

__attribute__((destructor)) static void client_end(void) {
    if (getenv("WB_FAILMALLOC_N") != NULL)
        log_line("count", atomic_load(&counted));
}

int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags) {
    int c = (int)syscall(SYS_accept4, fd, sa, len, flags);
    if (c >= 0) {
        log_line("count", atomic_load(&counted));
        rearm();
    }
    return c;
}

/* The user and group lookups, passed through with failures held off. */
#define NSS_PASS(ret, name, params, args)                                      \
    ret name params {                                                          \
        in_nss++;                                                              \
        static ret(*real) params;                                              \
        if (real == NULL)                                                      \
            real = (ret(*) params)dlsym(RTLD_NEXT, #name);                     \
        ret rv = real args;                                                    \
        in_nss--;                                                              \
        return rv;                                                             \
    }

NSS_PASS(struct passwd *, getpwuid, (uid_t uid), (uid))
NSS_PASS(struct passwd *, getpwnam, (const char *n), (n))
NSS_PASS(struct group *, getgrgid, (gid_t gid), (gid))
NSS_PASS(struct group *, getgrnam, (const char *n), (n))
NSS_PASS(int, getpwuid_r,
         (uid_t uid, struct passwd *pw, char *b, size_t n, struct passwd **r),
         (uid, pw, b, n, r))
NSS_PASS(int, getpwnam_r,
         (const char *nm, struct passwd *pw, char *b, size_t n,
          struct passwd **r),
         (nm, pw, b, n, r))
NSS_PASS(int, getgrgid_r,
         (gid_t gid, struct group *gr, char *b, size_t n, struct group **r),
         (gid, gr, b, n, r))
NSS_PASS(int, getgrnam_r,
         (const char *nm, struct group *gr, char *b, size_t n,
          struct group **r),
         (nm, gr, b, n, r))
NSS_PASS(int, getgrouplist, (const char *u, gid_t g, gid_t *gs, int *n),
         (u, g, gs, n))
