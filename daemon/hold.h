/* hold.h -- Holds: which processes still map which version.
 *
 * Every map that asks for it (libwbroker's do, plans excepted) creates a
 * hold: a pipe whose read end the daemon keeps and polls, and whose write end
 * travels to the client with the map reply, last after the segments'
 * descriptors.  The client keeps it beside its mapping and closes it only
 * after munmap; a fork() inherits it, exec() does not (O_CLOEXEC), and
 * the kernel closes it when the process exits however it ends.  When the
 * last copy of the write end is gone the read end reports end of file
 * and the hold ends: the version's reference goes, so that a retired or
 * dropped version's memory is refunded then.  docs/protocol.md explains
 * why a pipe and not a pidfd.
 *
 * A hold is not tied to the connection that made it: it outlives a
 * closed client.  Everything here runs on the event-loop thread. */
#ifndef WB_DAEMON_HOLD_H
#define WB_DAEMON_HOLD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "registry.h"

#define WB_HOLD_COMM_MAX 16 /* Bytes of a command name (TASK_COMM_LEN). */

typedef struct wb__hold wb__hold;

/* Most holds one user may have at once (0: no cap), so that one user
 * cannot spend every descriptor of the daemon (set by main.c,
 * --max-holds-per-user). */
extern size_t wb__hold_user_max;

/* Starts a hold on v (a new reference) for the peer cred, of bytes
 * mapped.  On success *wfd is the write end to send to the client (the
 * caller owns it) and 0 is returned; otherwise WB_ETOOBIG when the user
 * already has wb__hold_user_max holds, WB_ESYS with errno set (EMFILE
 * when the daemon is out of descriptors) or WB_ENOMEM, and nothing was
 * made. */
int wb__hold_start(wb__version *v, const struct ucred *cred, uint64_t bytes,
                   int *wfd);

/* Takes back a hold a previous daemon made (its read end rfd, from the
 * service manager's store, taken over) on v.  Returns 0, or WB_ENOMEM /
 * WB_ESYS with rfd closed. */
int wb__hold_adopt(wb__version *v, uint32_t uid, uint32_t pid, int rfd,
                   uint64_t serial);

/* Holds in progress. */
size_t wb__holds_count(void);
/* Calls fn for every hold, newest first, on versions of model (NULL:
 * every model).  fn must not start or end holds. */
void wb__holds_each(const wb__model *model,
                    void (*fn)(void *arg, const wb__hold *h), void *arg);
/* Holds of user uid. */
size_t wb__holds_of_user(uint32_t uid);
/* Holds on versions of model (NULL: all). */
size_t wb__holds_of(const wb__model *model);
/* Distinct processes holding any version of model (not NULL). */
uint64_t wb__holds_readers(const wb__model *model);
/* Bytes still charged for versions that left their model's list but are
 * held. */
uint64_t wb__holds_retired_bytes(void);
/* Ends every hold (at shut-down, before the registry is cleared). */
void wb__holds_clear(void);

/* What a hold records. */
uint32_t wb__hold_pid(const wb__hold *h);
uint32_t wb__hold_uid(const wb__hold *h);
const char *wb__hold_comm(const wb__hold *h);
const wb__version *wb__hold_version(const wb__hold *h);
uint64_t wb__hold_bytes(const wb__hold *h);
uint64_t wb__hold_since(const wb__hold *h);
int wb__hold_rfd(const wb__hold *h);
uint64_t wb__hold_serial(const wb__hold *h);

#endif
