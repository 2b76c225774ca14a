/* restart.h -- Surviving a restart: recovery at start, and what every
 * change tells the descriptor store (fdstore.h) and --persist (persist.h).
 *
 * The registry, holds and pins call the hooks below; each hook is a no-op
 * when neither the store nor --persist is in use, and after
 * wb__restart_stop() (a daemon shutting down leaves its successor
 * everything).  After every change the state record (state.h) is rendered
 * again, once per turn of the loop however many changes it saw. */
#ifndef WB_DAEMON_RESTART_H
#define WB_DAEMON_RESTART_H

#include "hold.h"
#include "registry.h"

/* Recovers at start, before the socket is served: takes the descriptors
 * the service manager passed (*listen_fd: its listening socket, or -1),
 * opens --persist's directory (persist_dir NULL: none) and rebuilds the
 * registry from the store, the directory and the newest state record; the
 * store's copy of a version wins over the directory's.  Returns 0, or -1
 * after logging why the daemon cannot start. */
int wb__restart_recover(const char *persist_dir, int *listen_fd);

/* A version was committed (listed). */
void wb__restart_committed(wb__version *v);
/* A version left its list (dropped or retired). */
void wb__restart_unlisted(wb__version *v);
/* A committed version's segment is about to be closed. */
void wb__restart_closed(wb__version *v);
/* A hold started (1) or is ending (0). */
void wb__restart_hold(const wb__hold *h, int started);
/* Something the state record holds changed (a pin, a name's owner). */
void wb__restart_changed(void);
/* Shut-down began: nothing more is stored, written or removed. */
void wb__restart_stop(void);

#endif
