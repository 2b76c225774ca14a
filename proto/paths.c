/* paths.c -- Where the daemon's socket lives, resolved the same way by the
 * daemon and every client, and whether its directory can be trusted. */
#include "paths.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wbroker.h"

#define WB_WRITABLE_BY_OTHERS (S_IWGRP | S_IWOTH) /* Mode bits refused. */

/* The per-user socket path of a non-root user. */
static int user_socket(char *buf, size_t len) {
    const char *env = getenv("XDG_RUNTIME_DIR");
    if (env && *env)
        return snprintf(buf, len, "%s/wbroker.sock", env);
    return snprintf(buf, len, "/tmp/wbroker-%u/wbroker.sock",
                    (unsigned)geteuid());
}

int wb__socket_path_listen(const char *explicit_path, char *buf, size_t len) {
    const char *env;
    int n;
    if (explicit_path && *explicit_path)
        n = snprintf(buf, len, "%s", explicit_path);
    else if ((env = getenv("WBROKER_SOCKET")) && *env)
        n = snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(buf, len, "%s", WB_SYSTEM_SOCKET);
    else
        n = user_socket(buf, len);
    if (n < 0 || (size_t)n >= len)
        return WB_ETOOBIG;
    return n;
}

int wb_socket_path(const char *explicit_path, char *buf, size_t len) {
    int n = wb__socket_path_listen(explicit_path, buf, len);
    if (n < 0 || (explicit_path && *explicit_path) || geteuid() == 0)
        return n;
    const char *env = getenv("WBROKER_SOCKET");
    if (env && *env)
        return n;
    /* A user's own daemon when one listens, else the system's: a member
     * of group wbroker needs no WBROKER_SOCKET. */
    struct stat st;
    if (stat(buf, &st) == 0 && S_ISSOCK(st.st_mode))
        return n;
    n = snprintf(buf, len, "%s", WB_SYSTEM_SOCKET);
    if (n < 0 || (size_t)n >= len)
        return WB_ETOOBIG;
    return n;
}

/* Decides about the resolved directory real (st is its stat).  Returns 0
 * or WB_EPERM with why. */
static int judge_dir(const char *real, const struct stat *st, uid_t self,
                     int flags, char *why, size_t n) {
    unsigned mode = (unsigned)(st->st_mode & 07777);
    unsigned uid = (unsigned)st->st_uid;
    if (st->st_mode & WB_WRITABLE_BY_OTHERS) {
        if (st->st_uid == 0 && (st->st_mode & S_ISVTX))
            return 0;
        snprintf(why, n,
                 "socket directory %s (owner uid %u, mode %04o) is writable "
                 "by group or others, who could put their own socket there",
                 real, uid, mode);
        return WB_EPERM;
    }
    if (st->st_uid == 0 || st->st_uid == self)
        return 0;
    if (!(flags & WB_DIR_TRUST_PLACED)) {
        snprintf(why, n,
                 "socket directory %s (owner uid %u, mode %04o) belongs to "
                 "neither root nor uid %u",
                 real, uid, mode, (unsigned)self);
        return WB_EPERM;
    }
    /* real is absolute: its parent is the part before the last '/', or
     * "/" (also for "/" itself, which then is judged as its own parent). */
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", real);
    char *slash = strrchr(parent, '/');
    assert(slash != NULL);
    if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat pst;
    if (stat(parent, &pst) == 0 && S_ISDIR(pst.st_mode) &&
        (pst.st_uid == 0 || pst.st_uid == self) &&
        !(pst.st_mode & WB_WRITABLE_BY_OTHERS))
        return 0;
    snprintf(why, n,
             "socket directory %s (owner uid %u, mode %04o) belongs to "
             "neither root nor uid %u, and its parent %s is not a directory "
             "that only root or uid %u can write, so anyone may have "
             "created it",
             real, uid, mode, (unsigned)self, parent, (unsigned)self);
    return WB_EPERM;
}

int wb__socket_dir_check(const char *socket_path, uid_t self, int flags,
                         uid_t *owner, char *why, size_t n) {
    assert(socket_path != NULL && why != NULL && n > 0);
    char dir[PATH_MAX];
    const char *slash = strrchr(socket_path, '/');
    size_t len = slash == NULL ? 0 : (size_t)(slash - socket_path);
    if (len >= sizeof(dir)) {
        snprintf(why, n, "socket path %.64s... is too long", socket_path);
        return WB_ETOOBIG;
    }
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (len == 0)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)len, socket_path);
    char *real = realpath(dir, NULL);
    if (real == NULL) {
        if (errno == ENOENT)
            return 1;
        snprintf(why, n, "cannot examine socket directory %s: %s", dir,
                 strerror(errno));
        return WB_ESYS;
    }
    struct stat st;
    int rc = 0;
    if (stat(real, &st) < 0) {
        snprintf(why, n, "cannot examine socket directory %s: %s", real,
                 strerror(errno));
        rc = WB_ESYS;
    } else if (!S_ISDIR(st.st_mode)) {
        snprintf(why, n, "socket directory %s is not a directory", real);
        rc = WB_ESYS;
    } else {
        rc = judge_dir(real, &st, self, flags, why, n);
        if (owner)
            *owner = st.st_uid;
    }
    free(real);
    return rc;
}
