/* paths.h -- Whether the directory that holds the daemon's socket can be
 * trusted: one rule for the daemon and every client.
 *
 * wb_socket_path() (wbroker.h) says where the socket lives.  Someone who
 * can write to its directory, or who created it, can put their own socket
 * there; the daemon refuses to listen in such a directory and the client
 * library refuses to connect through one. */
#ifndef WB_PROTO_PATHS_H
#define WB_PROTO_PATHS_H

#include <stddef.h>
#include <sys/types.h>

#define WB_SYSTEM_SOCKET "/run/wbroker/wbroker.sock" /* The system's. */

/* The path the daemon listens on: wb_socket_path()'s rule without looking
 * for a socket that exists (a non-root daemon takes its per-user path). */
int wb__socket_path_listen(const char *explicit_path, char *buf, size_t len);

/* Also trust a directory that only root or * self could have put where it
 * is. */
#define WB_DIR_TRUST_PLACED 1
#define WB_DIR_WHY_MAX 512 /* Bytes enough for any sentence in why. */

/* Checks the directory of socket_path (the part before its last '/', "."
 * without one), with symbolic links resolved.  The directory is trusted
 * when it is
 *  - owned by root or by self, and writable by neither group nor others;
 *  - owned by root and sticky, like /tmp: nobody else can remove or
 *    replace the socket in it (the client's peer check stops a stranger's
 *    socket there);
 *  - with WB_DIR_TRUST_PLACED: writable by neither group nor others, and
 *    inside a parent that belongs to root or self and is writable by
 *    neither group nor others, so that only root or self can have put it
 *    there (systemd's /run/wbroker, owned by the service's user).
 * The directory's owner goes to *owner (may be NULL).  Returns 0 when
 * trusted; 1 when the directory does not exist; WB_EPERM when it is not
 * trusted, WB_ESYS when it cannot be examined and WB_ETOOBIG when the path
 * is too long, each with a sentence in why (n bytes) that names the
 * directory, its owner and its mode. */
int wb__socket_dir_check(const char *socket_path, uid_t self, int flags,
                         uid_t *owner, char *why, size_t n);

#endif
