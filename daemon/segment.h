/* segment.h -- Shared-memory segments: the one interface to the allocator.
 *
 * A segment is a sealable file of whole WB_SEG_UNIT units.  It may never
 * grow; it is sealed against writes, shrinking and further seals at
 * commit.  Today's only
 * backend is memfd_create(); later backends (a tmpfs mounted with huge=,
 * hugetlbfs, named POSIX shared memory) plug in behind these functions. */
#ifndef WB_DAEMON_SEGMENT_H
#define WB_DAEMON_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#define WB_SEG_UNIT (2u * 1024 * 1024)        /* Sizes are multiples: 2 MiB. */
#define WB_SEG_RESERVE (256ull * 1024 * 1024) /* RAM kept free for others. */

typedef struct wb__segment {
    int fd;                   /* Read-write descriptor, -1 when closed. */
    uint64_t size;            /* Bytes, a multiple of WB_SEG_UNIT. */
    struct wb__segment *prev; /* Previous open segment (all are listed,
                                 for wb__seg_allocated_total). */
    struct wb__segment *next; /* Next open segment. */
} wb__segment;

/* Makes s a closed segment (fd -1). */
void wb__seg_init(wb__segment *s);

/* Rounds bytes up to whole segment units (at least one). */
uint64_t wb__seg_round(uint64_t bytes);

/* Creates a segment of size bytes (a multiple of WB_SEG_UNIT), backs every
 * page now so that a full memory fails here with WB_ENOSPC instead of a
 * SIGBUS later, and forbids growing and shrinking it.  label names it in
 * /proc/PID/maps.  May block for a while: call it off the event loop.
 * Returns 0, WB_ENOSPC or WB_ESYS (err says why, errno holds the
 * system's code). */
int wb__seg_create(const char *label, uint64_t size, wb__segment *out,
                   char *err, size_t errlen);
/* Lists a segment made by wb__seg_create() (which may run off the loop)
 * among the open ones; call on the loop before anything else uses it. */
void wb__seg_register(wb__segment *s);
/* Forbids writes (the first step of a commit): fails with WB_EBUSY while
 * a writable shared mapping of it exists anywhere.  The segment can still
 * be truncated by the daemon (wb__seg_release) until wb__seg_seal(). */
int wb__seg_seal_write(wb__segment *s);
/* Seals the segment for good: writes, shrinking, growing and further seals
 * (the write seal first, if not yet there).  Fails with WB_EBUSY while a
 * writable shared mapping exists, and with WB_ECORRUPT if someone else
 * changed its seals or size. */
int wb__seg_seal(wb__segment *s);
/* Reads len bytes at off with pread (no mapping, so a file someone
 * truncated gives WB_ECORRUPT, never a SIGBUS).  Returns 0 or
 * WB_ECORRUPT. */
int wb__seg_read(const wb__segment *s, uint64_t off, void *buf, size_t len);
/* Empties a segment that is not, or no longer, meant to be committed:
 * truncates it to nothing and seals shrinking and growing, so that no
 * descriptor or mapping a client kept can pin or allocate a page (a kept
 * mapping faults on access).  Returns 0 when it holds no pages, or
 * WB_ECORRUPT for a segment already sealed for good that still holds
 * pages (they stay until the last holder closes). */
int wb__seg_release(wb__segment *s);
/* Opens a new read-write file description of the segment for a publisher
 * (a reopen, so flags it sets, such as O_APPEND, never reach the daemon's
 * own description).  Returns the fd or WB_ESYS. */
int wb__seg_open_rw(const wb__segment *s);
/* Maps len bytes at offset off (page-aligned) of a sealed segment,
 * read-only, through a read-only descriptor: Linux before 6.7 refuses
 * mapping a write-sealed file through a writable one.  populate asks for
 * MAP_POPULATE.  Returns the address or NULL (errno set). */
void *wb__seg_map_ro(const wb__segment *s, uint64_t off, size_t len,
                     int populate);
/* Bytes the kernel has allocated (st_blocks) to every open segment. */
uint64_t wb__seg_allocated_total(void);
/* Bytes allocated to one segment, from fstat. */
uint64_t wb__seg_allocated(const wb__segment *s);
/* Opens a new read-only descriptor of the segment (a reopen, not a dup, so
 * the receiver can neither write nor add seals).  Returns the fd or
 * WB_ESYS. */
int wb__seg_open_ro(const wb__segment *s);
/* Closes the daemon's descriptor.  Memory returns to the system when the
 * last mapping and descriptor anywhere are gone.  Accepts NULL. */
void wb__seg_close(wb__segment *s);
/* MemAvailable from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_available(void);
/* The memory limit of the daemon's cgroup and its ancestors, in bytes:
 * memory.max (cgroup v2) or memory.limit_in_bytes (v1), the smallest set;
 * 0 when none is set. */
uint64_t wb__cgroup_memory_max(void);
/* MemTotal from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_total(void);

#endif
