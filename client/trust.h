/* trust.h -- What libwbroker checks before it believes the daemon: who
 * listens on the socket it connected to, and what each descriptor a reply
 * carries really is.
 *
 * Anyone who can put a socket where the library looks can answer like a
 * daemon.  These checks keep such a process from being talked to at all,
 * and keep any reply from making the library map memory that is shorter
 * than declared (SIGBUS on touching it) or that someone can still change.
 * Only client code includes this header. */
#ifndef WB_CLIENT_TRUST_H
#define WB_CLIENT_TRUST_H

#include <stddef.h>
#include <stdint.h>

#define WB_TRUST_WHY_MAX 768 /* Bytes enough for any sentence in why. */

/* How a segment descriptor must have been handed out. */
typedef enum wb__seg_use {
    WB__SEG_READ, /* A committed segment: read-only, sealed
                   * against writing, shrinking, growing. */
    WB__SEG_WRITE /* A publish: read-write, sealed against
                   * growing only (the daemon seals the rest
                   * at commit). */
} wb__seg_use;

/* Checks the socket sock, connected to path: the directory of path must
 * be trusted (wb__socket_dir_check() for this process's euid, with
 * WB_DIR_TRUST_PLACED), and the process listening on it (SO_PEERCRED) must
 * run as root, as this process's euid or as the directory's owner.
 * Returns 0, or WB_EPERM, WB_ECONNECT or WB_ESYS with a sentence in why
 * (n bytes) that names the socket and says what was wrong. */
int wb__trust_peer(int sock, const char *path, char *why, size_t n);

/* Checks that fd, received for a segment a reply declares to be size
 * bytes, is a memfd (a regular file whose seals can be read) of exactly
 * size bytes, opened and sealed as use requires.  Mapping it then cannot
 * fault beyond its end, and a read-only one cannot change.  Returns 0 or
 * WB_EPROTO with a sentence in why (n bytes) about the descriptor. */
int wb__trust_segment(int fd, uint64_t size, wb__seg_use use, char *why,
                      size_t n);

#endif
