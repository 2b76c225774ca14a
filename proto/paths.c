/* paths.c -- Where the daemon's socket lives, resolved the same way by the
 * daemon and every client. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "wbroker.h"

int wb_socket_path(const char *explicit_path, char *buf, size_t len) {
    const char *env;
    int n;
    if (explicit_path && *explicit_path)
        n = snprintf(buf, len, "%s", explicit_path);
    else if ((env = getenv("WBROKER_SOCKET")) && *env)
        n = snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(buf, len, "/run/wbroker/wbroker.sock");
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        n = snprintf(buf, len, "%s/wbroker.sock", env);
    else
        n = snprintf(buf, len, "/tmp/wbroker-%u/wbroker.sock",
                     (unsigned)geteuid());
    if (n < 0 || (size_t)n >= len)
        return WB_ETOOBIG;
    return n;
}
