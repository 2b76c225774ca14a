/* segment.h -- Shared-memory segments: the one interface to the allocator.
 *
 * A segment is a sealable file of whole WB_SEG_UNIT units.  It may never
 * grow; it is sealed against writes, shrinking and further seals at
 * commit.  Three backends sit behind these functions, chosen per segment
 * by the daemon's --huge-pages mode (wb__seg_set_pages): a hugetlb memfd
 * (2 MiB pages from the host's reserved pool), a memfd whose pages the
 * kernel backs with transparent huge pages (2 MiB folios of shmem), and a
 * plain memfd (4 KiB pages). */
#ifndef WB_DAEMON_SEGMENT_H
#define WB_DAEMON_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#define WB_SEG_UNIT (2u * 1024 * 1024)        /* Sizes are multiples: 2 MiB. */
#define WB_SEG_RESERVE (256ull * 1024 * 1024) /* RAM kept free for others. */

/* --huge-pages: which backends a new segment may use. */
typedef enum wb__pages_mode {
    WB_PAGES_AUTO,    /* hugetlb where its pool has room, else THP, else 4K. */
    WB_PAGES_HUGETLB, /* hugetlb only: an exhausted pool is WB_ENOSPC. */
    WB_PAGES_THP,     /* shmem with transparent huge pages only. */
    WB_PAGES_OFF,     /* 4 KiB pages only. */
} wb__pages_mode;

/* The backend of one segment. */
typedef enum wb__seg_kind {
    WB_SEG_4K,      /* memfd, 4 KiB pages (shmem_enabled never or deny). */
    WB_SEG_THP,     /* memfd that shmem backs with 2 MiB folios. */
    WB_SEG_HUGETLB, /* MFD_HUGETLB memfd, 2 MiB pages from the pool. */
} wb__seg_kind;

typedef struct wb__segment {
    int fd;                   /* Read-write descriptor, -1 when closed. */
    uint64_t size;            /* Bytes, a multiple of WB_SEG_UNIT. */
    int kind;                 /* wb__seg_kind. */
    uint64_t huge;            /* Bytes the kernel holds in 2 MiB pages, read
                                 back at the seal (wb__seg_huge_bytes). */
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
/* Writes len bytes at off of a segment not yet write-sealed: pwrite, or
 * through a shared mapping on hugetlb, which has no write(2).  Returns 0
 * or WB_ESYS (errno set). */
int wb__seg_write(const wb__segment *s, uint64_t off, const void *buf,
                  size_t len);
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
 * mapping a write-sealed file through a writable one.  populate fills
 * its page tables (wb__seg_populate).  Returns the address or NULL (errno set).
 */
void *wb__seg_map_ro(const wb__segment *s, uint64_t off, size_t len,
                     int populate);
/* Fills the page tables of a mapping of a segment, for reading or (write)
 * writing, after asking for huge pages: MAP_POPULATE would fill them
 * before the advice, a 4 KiB entry at a time even over 2 MiB folios. */
void wb__seg_populate(void *p, size_t len, int write);
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
/* Sets the --huge-pages mode; hugetlb and thp check that the host offers
 * them now.  Returns 0, or WB_EINVAL with err saying what the host lacks. */
int wb__seg_set_pages(wb__pages_mode mode, char *err, size_t errlen);
/* The mode set, and its name ("auto", "hugetlb", "thp", "off"). */
wb__pages_mode wb__seg_pages(void);
const char *wb__seg_pages_name(wb__pages_mode mode);
/* Parses a mode name; -1 when unknown. */
int wb__seg_pages_parse(const char *s);
/* Name of a backend: "hugetlb", "thp" or "4k". */
const char *wb__seg_kind_name(int kind);
/* The alignment of offsets a mapping of s may start at: 2 MiB for
 * hugetlb, the system page otherwise. */
uint64_t wb__seg_page(const wb__segment *s);
/* Bytes of s in 2 MiB pages, asked of the kernel: st_blocks for hugetlb
 * (hugetlbfs has no other page size), the ShmemPmdMapped of a transient
 * read-only mapping in /proc/self/smaps for THP, 0 for 4 KiB. */
uint64_t wb__seg_huge_bytes(const wb__segment *s);
/* Sum of the huge bytes of every open segment, as read at their seals. */
uint64_t wb__seg_huge_total(void);
/* MemAvailable from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_available(void);
/* The memory limit of the daemon's cgroup and its ancestors, in bytes:
 * memory.max (cgroup v2) or memory.limit_in_bytes (v1), the smallest set;
 * 0 when none is set. */
uint64_t wb__cgroup_memory_max(void);
/* MemTotal from /proc/meminfo in bytes, or 0 when unknown. */
uint64_t wb__mem_total(void);

#endif
