/* trust.c -- The client library's checks on the daemon it talks to: the
 * socket's directory and the listener's uid at connect, and every segment
 * descriptor before anything is mapped (see trust.h). */
#include "trust.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "paths.h"
#include "wbroker.h"

#define WB_SEALS_READ (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW)
/* A publish's segment may not grow (the daemon may still truncate it). */
#define WB_SEALS_WRITE F_SEAL_GROW

int wb__trust_peer(int sock, const char *path, char *why, size_t n) {
    char dwhy[WB_DIR_WHY_MAX];
    uid_t self = geteuid();
    uid_t owner = 0;
    int rc = wb__socket_dir_check(path, self, WB_DIR_TRUST_PLACED, &owner, dwhy,
                                  sizeof(dwhy));
    if (rc == 1) {
        snprintf(why, n,
                 "refusing the daemon at %s: its directory disappeared "
                 "while connecting",
                 path);
        return WB_ECONNECT;
    }
    if (rc) {
        snprintf(why, n, "refusing the daemon at %s: %s", path, dwhy);
        return rc == WB_EPERM ? WB_EPERM : WB_ESYS;
    }
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 ||
        len != sizeof(cr)) {
        snprintf(why, n,
                 "refusing the daemon at %s: cannot learn who listens "
                 "there: %s",
                 path, strerror(errno));
        return WB_ESYS;
    }
    if (cr.uid == 0 || cr.uid == self || cr.uid == owner)
        return 0;
    snprintf(why, n,
             "refusing the daemon at %s: the process listening there runs "
             "as uid %u, not as root, as this process (uid %u) or as the "
             "owner of the socket's directory (uid %u)",
             path, (unsigned)cr.uid, (unsigned)self, (unsigned)owner);
    return WB_EPERM;
}

/* Writes the names of the seals in want that seals lacks into buf. */
static void missing_seals(int seals, int want, char *buf, size_t n) {
    static const struct {
        int seal;         /* F_SEAL_* bit. */
        const char *name; /* What it forbids. */
    } names[] = {{F_SEAL_WRITE, "writing"},
                 {F_SEAL_SHRINK, "shrinking"},
                 {F_SEAL_GROW, "growing"}};
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(want & names[i].seal) || (seals & names[i].seal))
            continue;
        int k =
            snprintf(buf + at, n - at, "%s%s", at ? ", " : "", names[i].name);
        if (k < 0 || (size_t)k >= n - at)
            break;
        at += (size_t)k;
    }
}

int wb__trust_segment(int fd, uint64_t size, wb__seg_use use, char *why,
                      size_t n) {
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(why, n, "descriptor cannot be examined: %s", strerror(errno));
        return WB_EPROTO;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, n, "descriptor is not a regular file (a memfd)");
        return WB_EPROTO;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size != size) {
        snprintf(why, n,
                 "descriptor holds %lld bytes where the reply declares %llu",
                 (long long)st.st_size, (unsigned long long)size);
        return WB_EPROTO;
    }
    int fl = fcntl(fd, F_GETFL);
    int acc = fl < 0 ? -1 : fl & O_ACCMODE;
    if (use == WB__SEG_READ && acc != O_RDONLY) {
        snprintf(why, n, "descriptor is open for writing, not read-only");
        return WB_EPROTO;
    }
    if (use == WB__SEG_WRITE && acc != O_RDWR) {
        snprintf(why, n, "descriptor is not open for reading and writing");
        return WB_EPROTO;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        snprintf(why, n,
                 "descriptor is not a memfd: its seals cannot be "
                 "read (%s)",
                 strerror(errno));
        return WB_EPROTO;
    }
    int want = use == WB__SEG_READ ? WB_SEALS_READ : WB_SEALS_WRITE;
    if ((seals & want) != want) {
        char what[64];
        missing_seals(seals, want, what, sizeof(what));
        snprintf(why, n, "memfd is not sealed against %s (seals 0x%x)", what,
                 (unsigned)seals);
        return WB_EPROTO;
    }
    if (use == WB__SEG_WRITE && (seals & F_SEAL_WRITE)) {
        snprintf(why, n,
                 "memfd of a new publish is already sealed against "
                 "writing");
        return WB_EPROTO;
    }
    return 0;
}
