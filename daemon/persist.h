/* persist.h -- --persist DIR: every committed version written to disk, and
 * read back at start.
 *
 * Each committed version is written in the background as
 * DIR/<id>.safetensors: a safetensors header carrying the version's
 * metadata, its ties and its identity (WB_VERSION_KEY, here with its number
 * and digest), then the data bytes copied from the sealed segment itself
 * (sendfile from the memfd, no second copy in memory), under a temporary
 * name (<id>.safetensors.tmp), synced, renamed, and the directory synced.
 * Writes run on the thread pool one at a time, in commit order; the queue
 * holds at most one entry per listed version, so it is bounded by what the
 * memory limit lets the daemon hold.  A version dropped or retired loses
 * its file.  DIR/state holds the state record (state.h), replaced the same
 * way after every change.
 *
 * A failed write (ENOSPC, EIO) is logged and counted (persist.failed) and
 * not retried: the version stays served from memory, and the next start
 * will not find it on disk.  Commits never wait for the disk. */
#ifndef WB_DAEMON_PERSIST_H
#define WB_DAEMON_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"
#include "state.h"

/* Counters status reports (persist.*). */
typedef struct wb__persist_stats {
    uint64_t backlog;       /* Versions queued or being written. */
    uint64_t backlog_bytes; /* Their image bytes. */
    uint64_t written;       /* Versions written since start. */
    uint64_t failed;        /* Writes that failed (versions and state). */
    uint64_t corrupt;       /* Files set aside into DIR/corrupt/ at start. */
    uint64_t recovered;     /* Versions loaded from DIR at start. */
} wb__persist_stats;

extern wb__persist_stats wb__persist_stats_now;

/* Opens (creating it, one level) the directory DIR and DIR/corrupt.
 * Returns 0, or -1 after logging why. */
int wb__persist_open(const char *dir);
/* 1 once a directory is open. */
int wb__persist_on(void);
/* The directory, or NULL. */
const char *wb__persist_dir(void);

/* Reads DIR/state.  Returns 0 with *out filled, 1 when there is none, or
 * -1 when it is unreadable (logged; it is moved to corrupt/). */
int wb__persist_load_state(wb__state *out);

/* A version read back from DIR at start: a new version with its segment
 * filled, sealed and digest-checked, its number, and its file's id. */
typedef struct wb__persisted {
    wb__version *v;  /* New version, one reference, segment registered. */
    char *model;     /* Model name (owned). */
    uint64_t number; /* Version number. */
} wb__persisted;

/* Reads every version file in DIR back, skipping ids for which skip(arg,
 * id) returns 1 (the store holds them: its copy wins).  Temporary files
 * are deleted; a file that fails anything (parse, identity, digest, size)
 * is moved into DIR/corrupt/, logged and counted.  Returns the versions in
 * a new array (*out, *n; free the array only).  Returns 0 or WB_ENOMEM. */
int wb__persist_recover(int (*skip)(void *arg, uint64_t id), void *arg,
                        wb__persisted **out, size_t *n);
/* Deletes a version file found at start that the state record says was
 * dropped. */
void wb__persist_forget(uint64_t id);
/* 1 if DIR holds a file for id (after recovery). */
int wb__persist_has(uint64_t id);

/* Queues the writing of a committed version. */
void wb__persist_version(wb__version *v);
/* Cancels a queued write and queues the removal of v's file (dropped or
 * retired). */
void wb__persist_version_gone(wb__version *v);
/* Queues DIR/state replaced by the record in p (copied). */
void wb__persist_state(const void *p, size_t len);
/* Stops queueing (at shut-down): what is queued is left undone. */
void wb__persist_stop(void);

#endif
