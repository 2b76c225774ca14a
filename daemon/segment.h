/* segment.h -- Shared-memory segments: the one interface to the allocator.
 *
 * A segment is a sealable file of whole WB_SEG_UNIT units.  Today's only
 * backend is memfd_create(); later backends (a tmpfs mounted with huge=,
 * hugetlbfs, named POSIX shared memory) plug in behind these functions. */
#ifndef WB_DAEMON_SEGMENT_H
#define WB_DAEMON_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#define WB_SEG_UNIT (2u * 1024 * 1024) /* Segment sizes are multiples: 2 MiB. */
#define WB_SEG_RESERVE (256ull * 1024 * 1024) /* RAM kept free for others. */

typedef struct wb__segment {
    int fd;                     /* Read-write descriptor, -1 when closed. */
    uint64_t size;              /* Bytes, a multiple of WB_SEG_UNIT. */
} wb__segment;

/* Rounds bytes up to whole segment units (at least one). */
uint64_t wb__seg_round(uint64_t bytes);

/* Creates a segment of size bytes (a multiple of WB_SEG_UNIT), backs every
 * page now so that a full memory fails here with WB_ENOSPC instead of a
 * SIGBUS later, and forbids growing and shrinking it.  label names it in
 * /proc/PID/maps.  May block for a while: call it off the event loop.
 * Returns 0, WB_ENOSPC or WB_ESYS (err says why). */
int wb__seg_create(const char *label, uint64_t size, wb__segment *out,
                   char *err, size_t errlen);
/* Seals the segment against writes for good.  Fails with WB_EBUSY while a
 * writable shared mapping of it exists anywhere, and with WB_ECORRUPT if
 * someone else changed its seals or size. */
int wb__seg_seal(wb__segment *s);
/* Opens a new read-only descriptor of the segment (a reopen, not a dup, so
 * the receiver can neither write nor add seals).  Returns the fd or
 * WB_ESYS. */
int wb__seg_open_ro(const wb__segment *s);
/* Closes the daemon's descriptor.  Memory returns to the system when the
 * last mapping and descriptor anywhere are gone.  Accepts NULL. */
void wb__seg_close(wb__segment *s);
/* MemAvailable from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_available(void);
/* MemTotal from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_total(void);

#endif
