/* fdstore.h -- The service manager's file descriptor store.
 *
 * Under systemd (with $NOTIFY_SOCKET and FileDescriptorStoreMax= in the
 * unit) the daemon hands the service manager a descriptor of everything a
 * restarted daemon needs, and the manager passes them back at the next
 * start (sd_listen_fds_with_names), after the socket unit's listening
 * socket.  Names (FDNAME, at most 255 printable ASCII characters without
 * ':'; ids are 16 lowercase hex digits, numbers decimal):
 *
 *   v-<id>-<number>               a committed version's sealed memfd
 *   h-<id>-<uid>-<pid>-<serial>   the daemon's read end of a hold's pipe
 *                                 (serial tells apart holds of one process
 *                                 on one version)
 *   state-<seq>                   a sealed memfd of the state record
 *
 * A version's descriptor is removed (FDSTOREREMOVE) when its segment is
 * closed (dropped or retired, and no longer held), a hold's when the hold
 * ends, a state record's once the next one is stored.  Nothing is removed
 * at shut-down: a stopping daemon leaves the store for its successor. */
#ifndef WB_DAEMON_FDSTORE_H
#define WB_DAEMON_FDSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

#define WB_FDSTORE_BATCH 253 /* Descriptors per notify message at most. */

/* What a stored descriptor's name says. */
typedef enum wb__fdkind { WB_FD_VERSION, WB_FD_HOLD, WB_FD_STATE } wb__fdkind;

typedef struct wb__fdname {
    int kind;        /* wb__fdkind. */
    uint64_t id;     /* Version id (versions, holds). */
    uint64_t number; /* Version number (versions), sequence (state). */
    uint32_t uid;    /* Holder's uid (holds). */
    uint32_t pid;    /* Holder's pid (holds). */
    uint64_t serial; /* Tells holds apart (holds). */
} wb__fdname;

/* Parses a descriptor name.  Returns 0, or -1 for a name that is not one
 * of the daemon's (or malformed: every field present, ids 16 lowercase hex
 * digits, numbers decimal without sign or leading zero, nothing after). */
int wb__fdname_parse(const char *name, wb__fdname *out);
/* Formats the name of a version, a hold or a state record into buf
 * (WB_FDNAME_MAX bytes). */
#define WB_FDNAME_MAX 96
void wb__fdname_version(char *buf, uint64_t id, uint64_t number);
void wb__fdname_hold(char *buf, uint64_t id, uint32_t uid, uint32_t pid,
                     uint64_t serial);
void wb__fdname_state(char *buf, uint64_t seq);

/* One descriptor the manager passed at start. */
typedef struct wb__stored_fd {
    char name[256];  /* Its name. */
    wb__fdname what; /* Parsed. */
    int fd;          /* The descriptor, -1 once taken or closed. */
} wb__stored_fd;

/* Takes the descriptors passed at start: *listen_fd the listening socket
 * (-1 when none), the daemon's own in a new array (*out, *n).  Closes
 * descriptors it does not know.  Returns 0, or -1 (logged) when two
 * listening sockets were passed. */
int wb__fdstore_take(int *listen_fd, wb__stored_fd **out, size_t *n);
/* Asks the manager to remove a descriptor by name (no-op when the store is
 * not in use). */
void wb__fdstore_remove(const char *name);
/* Stores fds[0..n) under name, in messages of WB_FDSTORE_BATCH.  Returns
 * 1 when the manager took them, 0 when there is no manager to store them
 * (the store then stays off for good), -1 on a failure (logged). */
int wb__fdstore_put(const char *name, const int *fds, size_t n);
/* 1 while the store is in use: $NOTIFY_SOCKET was set at start and no
 * message has been refused. */
int wb__fdstore_on(void);
/* Turns the store on when $NOTIFY_SOCKET is set (at start, before the
 * first put). */
void wb__fdstore_init(void);

/* Stores a committed version's segment (sets v->stored). */
void wb__fdstore_version(wb__version *v);
/* Removes a version's segment from the store (when closed). */
void wb__fdstore_version_gone(wb__version *v);
/* Stores a state record as a sealed memfd state-<seq>, then removes the
 * previous one. */
void wb__fdstore_state(const void *p, size_t len, uint64_t seq);
/* Forgets which state record is stored (the one recovered from). */
void wb__fdstore_state_adopted(uint64_t seq);

#endif
