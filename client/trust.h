/* trust.h -- What libwbroker checks before it believes the daemon: who
 * listens on the socket it connected to.
 *
 * Anyone who can put a socket where the library looks can answer like a
 * daemon; this check keeps such a process from being talked to at all.
 * Only client code includes this header. */
#ifndef WB_CLIENT_TRUST_H
#define WB_CLIENT_TRUST_H

#include <stddef.h>

#define WB_TRUST_WHY_MAX 768 /* Bytes enough for any sentence in why. */

/* Checks the socket sock, connected to path: the directory of path must
 * be trusted (wb__socket_dir_check() for this process's euid, with
 * WB_DIR_TRUST_PLACED), and the process listening on it (SO_PEERCRED) must
 * run as root, as this process's euid or as the directory's owner.
 * Returns 0, or WB_EPERM, WB_ECONNECT or WB_ESYS with a sentence in why
 * (n bytes) that names the socket and says what was wrong. */
int wb__trust_peer(int sock, const char *path, char *why, size_t n);

#endif
