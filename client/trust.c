/* trust.c -- The client library's checks on the daemon it talks to: the
 * socket's directory and the listener's uid at connect (see trust.h). */
#include "trust.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "paths.h"
#include "wbroker.h"

int wb__trust_peer(int sock, const char *path, char *why, size_t n) {
    char dwhy[WB_DIR_WHY_MAX];
    uid_t self = geteuid();
    uid_t owner = 0;
    int rc = wb__socket_dir_check(path, self, WB_DIR_TRUST_PLACED, &owner,
                                  dwhy, sizeof(dwhy));
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
