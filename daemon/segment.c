/* segment.c -- memfd-backed shared-memory segments: hugetlb, shmem with
 * transparent huge pages, or 4 KiB pages (see segment.h). */
#include "segment.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "wbroker.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HUGE_PAGE (2ull * 1024 * 1024)

static wb__pages_mode pages_mode = WB_PAGES_AUTO;

/* Every open segment, for wb__seg_allocated_total(); loop thread only. */
static wb__segment *open_segments;

static void seg_link(wb__segment *s) {
    s->prev = NULL;
    s->next = open_segments;
    if (open_segments)
        open_segments->prev = s;
    open_segments = s;
}

static void seg_unlink(wb__segment *s) {
    if (s->prev)
        s->prev->next = s->next;
    else if (open_segments == s)
        open_segments = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

void wb__seg_init(wb__segment *s) {
    s->fd = -1;
    s->size = 0;
    s->kind = WB_SEG_4K;
    s->huge = 0;
    s->prev = s->next = NULL;
}

uint64_t wb__seg_allocated(const wb__segment *s) {
    struct stat st;
    if (s->fd < 0 || fstat(s->fd, &st) < 0)
        return 0;
    return (uint64_t)st.st_blocks * 512;
}

uint64_t wb__seg_allocated_total(void) {
    uint64_t n = 0;
    for (const wb__segment *s = open_segments; s; s = s->next)
        n += wb__seg_allocated(s);
    return n;
}

void wb__seg_register(wb__segment *s) {
    assert(s->fd >= 0);
    seg_link(s);
}

uint64_t wb__seg_round(uint64_t bytes) {
    if (bytes == 0)
        return WB_SEG_UNIT;
    return (bytes + WB_SEG_UNIT - 1) / WB_SEG_UNIT * WB_SEG_UNIT;
}

/* Reads one "Key:   N kB" field of /proc/meminfo, in bytes. */
static uint64_t meminfo_field(const char *key) {
    FILE *f = fopen("/proc/meminfo", "re");
    if (f == NULL)
        return 0;
    char line[256];
    uint64_t v = 0;
    size_t klen = strlen(key);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            unsigned long long kb = 0;
            if (sscanf(line + klen + 1, "%llu", &kb) == 1)
                v = (uint64_t)kb * 1024;
            break;
        }
    }
    fclose(f);
    return v;
}

uint64_t wb__mem_available(void) {
    return meminfo_field("MemAvailable");
}
uint64_t wb__mem_total(void) {
    return meminfo_field("MemTotal");
}

/* The smallest memory limit set on dir (under root) or any of its
 * ancestors, read from file in each ("max" or a huge number: none); 0 when
 * none is set. */
static uint64_t cgroup_limit_up(const char *root, const char *dir,
                                const char *file) {
    char path[768], rel[600];
    snprintf(rel, sizeof(rel), "%s", dir);
    uint64_t best = 0;
    for (;;) {
        snprintf(path, sizeof(path), "%s%s/%s", root,
                 strcmp(rel, "/") == 0 ? "" : rel, file);
        FILE *f = fopen(path, "re");
        unsigned long long v = 0;
        if (f != NULL) {
            if (fscanf(f, "%llu", &v) == 1 && v < (1ull << 62) &&
                (best == 0 || v < best))
                best = v;
            fclose(f);
        }
        char *slash = strrchr(rel, '/');
        if (slash == NULL || strcmp(rel, "/") == 0 || rel[0] == '\0')
            break;
        if (slash == rel)
            strcpy(rel, "/");
        else
            *slash = '\0';
    }
    return best;
}

uint64_t wb__cgroup_memory_max(void) {
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f == NULL)
        return 0;
    char line[640];
    uint64_t best = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL || c2[1] != '/')
            continue;
        *c2 = '\0';
        const char *ctl = c1 + 1, *dir = c2 + 1;
        uint64_t v = 0;
        if (*ctl == '\0') /* cgroup v2 */
            v = cgroup_limit_up("/sys/fs/cgroup", dir, "memory.max");
        else if (strstr(ctl, "memory") != NULL) /* v1 memory controller */
            v = cgroup_limit_up("/sys/fs/cgroup/memory", dir,
                                "memory.limit_in_bytes");
        if (v != 0 && (best == 0 || v < best))
            best = v;
    }
    fclose(f);
    return best;
}

int wb__seg_write(const wb__segment *s, uint64_t off, const void *buf,
                  size_t len) {
    assert(s->fd >= 0 && off + len <= s->size);
    const uint8_t *p = buf;
    if (s->kind == WB_SEG_HUGETLB) {
        uint64_t base = off / HUGE_PAGE * HUGE_PAGE;
        size_t span = (size_t)((off + len - base + HUGE_PAGE - 1) / HUGE_PAGE *
                               HUGE_PAGE);
        uint8_t *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd,
                          (off_t)base);
        if (m == MAP_FAILED)
            return WB_ESYS;
        memcpy(m + (off - base), p, len);
        munmap(m, span);
        return 0;
    }
    while (len > 0) {
        ssize_t n = pwrite(s->fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return WB_ESYS;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Opens the segment's file anew with flags (a new file description). */
static int seg_reopen(const wb__segment *s, int flags) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
    return open(path, flags | O_CLOEXEC);
}

static int seg_reopen_ro(const wb__segment *s) {
    return seg_reopen(s, O_RDONLY);
}

/* Reads a whole small sysfs/proc file into buf; 0 or -1. */
static int read_small(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t k = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[k] = '\0';
    return 0;
}

/* The bracketed choice of a sysfs "a [b] c" file into out, "" if none. */
static void sysfs_choice(const char *path, char *out, size_t n) {
    char buf[256];
    out[0] = '\0';
    if (read_small(path, buf, sizeof(buf)) != 0)
        return;
    char *l = strchr(buf, '['), *r = l ? strchr(l, ']') : NULL;
    if (r)
        snprintf(out, n, "%.*s", (int)(r - l - 1), l + 1);
}

/* The shmem THP policy that applies to a new memfd's 2 MiB folios:
 * "always", "within_size", "advise", "force", or "" for none.  Kernels
 * since 6.11 have a per-size control that "inherit"s the global one. */
static void thp_policy(char *out, size_t n) {
    char per[32], pol[32];
    sysfs_choice("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/"
                 "shmem_enabled",
                 per, sizeof(per));
    if (per[0] && strcmp(per, "inherit") != 0)
        snprintf(pol, sizeof(pol), "%s", per);
    else
        sysfs_choice("/sys/kernel/mm/transparent_hugepage/shmem_enabled", pol,
                     sizeof(pol));
    int huge = strcmp(pol, "always") == 0 || strcmp(pol, "within_size") == 0 ||
               strcmp(pol, "advise") == 0 || strcmp(pol, "force") == 0;
    snprintf(out, n, "%s", huge ? pol : "");
}

/* Free pages of the hugetlb pool in bytes (0 when it has none). */
static uint64_t hugetlb_free(void) {
    return meminfo_field("HugePages_Free") / 1024 * HUGE_PAGE;
}

static const char *const mode_names[] = {"auto", "hugetlb", "thp", "off"};

const char *wb__seg_pages_name(wb__pages_mode mode) {
    assert((unsigned)mode < 4);
    return mode_names[mode];
}

int wb__seg_pages_parse(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, mode_names[i]) == 0)
            return i;
    return -1;
}

const char *wb__seg_kind_name(int kind) {
    return kind == WB_SEG_HUGETLB ? "hugetlb"
           : kind == WB_SEG_THP   ? "thp"
                                  : "4k";
}

wb__pages_mode wb__seg_pages(void) {
    return pages_mode;
}

int wb__seg_set_pages(wb__pages_mode mode, char *err, size_t errlen) {
    char pol[32];
    if (mode == WB_PAGES_HUGETLB) {
        int fd = memfd_create("wbroker:probe", MFD_CLOEXEC | MFD_ALLOW_SEALING |
                                                   MFD_HUGETLB | MFD_HUGE_2MB);
        if (fd < 0) {
            snprintf(err, errlen, "this kernel cannot make hugetlb memfds (%s)",
                     strerror(errno));
            return WB_EINVAL;
        }
        close(fd);
        char over[32] = "0";
        read_small("/proc/sys/vm/nr_overcommit_hugepages", over, sizeof(over));
        if (meminfo_field("HugePages_Total") == 0 && atoi(over) == 0) {
            snprintf(err, errlen,
                     "the hugetlb pool is empty: set vm.nr_hugepages (see "
                     "the README's host settings)");
            return WB_EINVAL;
        }
    } else if (mode == WB_PAGES_THP) {
        thp_policy(pol, sizeof(pol));
        if (pol[0] == '\0') {
            snprintf(err, errlen,
                     "shared memory gets no transparent huge pages here: "
                     "/sys/kernel/mm/transparent_hugepage/shmem_enabled "
                     "must be within_size, always or advise (see the "
                     "README's host settings)");
            return WB_EINVAL;
        }
    }
    pages_mode = mode;
    return 0;
}

uint64_t wb__seg_page(const wb__segment *s) {
    return s->kind == WB_SEG_HUGETLB ? HUGE_PAGE
                                     : (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Fails a create: closes fd, says why, keeps errno. */
static int create_fail(int fd, int rc, int e, char *err, size_t errlen,
                       const char *what, uint64_t size) {
    if (fd >= 0)
        close(fd);
    snprintf(err, errlen, "%s %llu bytes: %s", what, (unsigned long long)size,
             strerror(e));
    errno = e;
    return rc;
}

/* Allocates a hugetlb memfd of size bytes: fallocate takes every page
 * from the pool now, so that an exhausted pool is ENOSPC here and never a
 * SIGBUS at a later fault.  Returns the fd, or -1 with errno set. */
static int create_hugetlb(const char *label, uint64_t size) {
    int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB |
                                     MFD_HUGE_2MB);
    if (fd < 0)
        return -1;
    if (fallocate(fd, 0, 0, (off_t)size) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Faults every page of fd in through a shared mapping that asks for huge
 * pages: under shmem_enabled=advise this is the only way to get 2 MiB
 * folios (fallocate allocates 4 KiB ones).  The mapping is aligned to
 * 2 MiB so that each folio can sit under one PMD. Returns 0 or errno. */
static int populate_huge(int fd, uint64_t size) {
    size_t span = (size_t)(size + HUGE_PAGE);
    uint8_t *r = mmap(NULL, span, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED)
        return errno;
    uint8_t *a = (uint8_t *)(((uintptr_t)r + HUGE_PAGE - 1) &
                             ~(uintptr_t)(HUGE_PAGE - 1));
    void *p = mmap(a, (size_t)size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED, fd, 0);
    int e = 0;
    if (p == MAP_FAILED)
        e = errno;
    else if (madvise(a, (size_t)size, MADV_HUGEPAGE) < 0 ||
             madvise(a, (size_t)size, MADV_POPULATE_WRITE) < 0) {
        e = errno;
        if (e == EINVAL) { /* Before 5.14: touch each page. */
            e = 0;
            for (uint64_t o = 0; o < size; o += 4096)
                ((volatile uint8_t *)a)[o] = 0;
        }
    }
    munmap(r, span);
    return e;
}

/* Allocates a shmem memfd of size bytes, with 2 MiB folios when thp is
 * set and the policy gives them.  Returns the fd or -1 (errno set, and
 * *rc the wbroker code). */
static int create_shmem(const char *label, uint64_t size, int thp, int *rc) {
    *rc = WB_ESYS;
    int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -1;
    char pol[32] = "";
    if (thp)
        thp_policy(pol, sizeof(pol));
    int e = 0;
    /* within_size gives a huge folio only where the file's length covers
     * it: the length is set before anything is allocated. */
    if (ftruncate(fd, (off_t)size) < 0)
        e = errno;
    else if (strcmp(pol, "advise") == 0)
        e = populate_huge(fd, size);
    if (e == 0)
        e = posix_fallocate(fd, 0, (off_t)size);
    if (e) {
        close(fd);
        *rc = (e == ENOSPC || e == ENOMEM || e == EFBIG) ? WB_ENOSPC : WB_ESYS;
        errno = e;
        return -1;
    }
    return fd;
}

int wb__seg_create(const char *label, uint64_t size, wb__segment *out,
                   char *err, size_t errlen) {
    wb__seg_init(out);
    assert(size % HUGE_PAGE == 0);
    int fd = -1;
    wb__pages_mode mode = pages_mode;
    if (mode == WB_PAGES_HUGETLB || mode == WB_PAGES_AUTO) {
        /* The pool is not MemAvailable: its own free count decides, and
         * auto does not even try when it is short. */
        if (mode == WB_PAGES_HUGETLB || hugetlb_free() >= size)
            fd = create_hugetlb(label, size);
        if (fd < 0 && mode == WB_PAGES_HUGETLB) {
            int e = errno;
            return create_fail(
                -1,
                e == ENOSPC || e == ENOMEM || e == EFBIG ? WB_ENOSPC : WB_ESYS,
                e == ENOMEM ? ENOSPC : e, err, errlen,
                "the hugetlb pool has no room for", size);
        }
        if (fd >= 0)
            out->kind = WB_SEG_HUGETLB;
        else if (mode == WB_PAGES_AUTO && hugetlb_free() > 0)
            wb__info("segment %s of %llu bytes: the hugetlb pool has "
                     "%llu bytes free; trying shared memory",
                     label, (unsigned long long)size,
                     (unsigned long long)hugetlb_free());
    }
    if (fd < 0) {
        uint64_t avail = wb__mem_available();
        if (avail != 0 && size + WB_SEG_RESERVE > avail) {
            snprintf(err, errlen,
                     "segment of %llu bytes does not fit: %llu bytes "
                     "available",
                     (unsigned long long)size, (unsigned long long)avail);
            return WB_ENOSPC;
        }
        int thp = mode == WB_PAGES_THP || mode == WB_PAGES_AUTO, rc;
        fd = create_shmem(label, size, thp, &rc);
        if (fd < 0)
            return create_fail(-1, rc, errno, err, errlen, "allocating", size);
        char pol[32] = "";
        if (thp)
            thp_policy(pol, sizeof(pol));
        out->kind = pol[0] ? WB_SEG_THP : WB_SEG_4K;
    }
    /* Growing is forbidden from the start (a publisher could otherwise
     * take memory beyond what it was charged); shrinking only at the seal,
     * so that an abandoned segment can still be truncated to nothing. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) < 0)
        return create_fail(fd, WB_ESYS, errno, err, errlen,
                           "sealing the size of", size);
    out->fd = fd;
    out->size = size;
    wb__debug("segment %s: %llu bytes, %s pages", label,
              (unsigned long long)size, wb__seg_kind_name(out->kind));
    return 0;
}

/* ShmemPmdMapped of the mapping at addr in /proc/self/smaps, in bytes. */
static uint64_t smaps_pmd_mapped(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "re");
    if (f == NULL)
        return 0;
    char line[512], start[32];
    snprintf(start, sizeof(start), "%lx-", (unsigned long)(uintptr_t)addr);
    size_t sl = strlen(start);
    int in = 0;
    uint64_t v = 0;
    while (fgets(line, sizeof(line), f)) {
        if (!in) {
            in = strncmp(line, start, sl) == 0;
            continue;
        }
        unsigned long long kb;
        if (sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1) {
            v = (uint64_t)kb * 1024;
            break;
        }
        if (strchr(line, '-') && !strchr(line, ':'))
            break; /* The next mapping's header: no such field. */
    }
    fclose(f);
    return v;
}

uint64_t wb__seg_huge_bytes(const wb__segment *s) {
    if (s->fd < 0 || s->size == 0)
        return 0;
    if (s->kind == WB_SEG_HUGETLB)
        return wb__seg_allocated(s);
    if (s->kind != WB_SEG_THP)
        return 0;
    /* The page cache says nothing about folio sizes to user space; a
     * read-only mapping at a 2 MiB boundary puts every 2 MiB folio under
     * one PMD when populated, and smaps counts those. */
    int fd = seg_reopen_ro(s);
    if (fd < 0)
        return 0;
    size_t span = (size_t)(s->size + HUGE_PAGE);
    uint8_t *r = mmap(NULL, span, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    uint64_t v = 0;
    if (r != MAP_FAILED) {
        uint8_t *a = (uint8_t *)(((uintptr_t)r + HUGE_PAGE - 1) &
                                 ~(uintptr_t)(HUGE_PAGE - 1));
        if (mmap(a, (size_t)s->size, PROT_READ, MAP_SHARED | MAP_FIXED, fd,
                 0) != MAP_FAILED) {
            madvise(a, (size_t)s->size, MADV_HUGEPAGE);
            madvise(a, (size_t)s->size, MADV_POPULATE_READ);
            v = smaps_pmd_mapped(a);
        }
        munmap(r, span);
    }
    close(fd);
    return v;
}

uint64_t wb__seg_huge_total(void) {
    uint64_t n = 0;
    for (const wb__segment *s = open_segments; s; s = s->next)
        n += s->huge;
    return n;
}

int wb__seg_seal_write(wb__segment *s) {
    if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_WRITE) < 0)
        return errno == EBUSY ? WB_EBUSY : WB_ECORRUPT;
    return 0;
}

int wb__seg_seal(wb__segment *s) {
    int rc = wb__seg_seal_write(s);
    if (rc)
        return rc;
    if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
        return WB_ECORRUPT;
    int seals = fcntl(s->fd, F_GET_SEALS);
    int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
    struct stat st;
    if (seals < 0 || (seals & want) != want || fstat(s->fd, &st) < 0 ||
        (uint64_t)st.st_size != s->size)
        return WB_ECORRUPT;
    /* Sealed pages never move between folio sizes on their own but for
     * khugepaged or reclaim: read at the seal is what status reports. */
    s->huge = wb__seg_huge_bytes(s);
    return 0;
}

int wb__seg_read(const wb__segment *s, uint64_t off, void *buf, size_t len) {
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(s->fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return WB_ECORRUPT;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int wb__seg_open_ro(const wb__segment *s) {
    int fd = seg_reopen(s, O_RDONLY);
    return fd < 0 ? WB_ESYS : fd;
}

int wb__seg_open_rw(const wb__segment *s) {
    int fd = seg_reopen(s, O_RDWR);
    return fd < 0 ? WB_ESYS : fd;
}

void *wb__seg_map_ro(const wb__segment *s, uint64_t off, size_t len,
                     int populate) {
    assert(s->fd >= 0);
    int fd = seg_reopen(s, O_RDONLY);
    if (fd < 0)
        return NULL;
    void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
    int e = errno;
    close(fd);
    if (p != MAP_FAILED && populate)
        wb__seg_populate(p, len, 0);
    errno = e;
    return p == MAP_FAILED ? NULL : p;
}

void wb__seg_populate(void *p, size_t len, int write) {
    madvise(p, len, MADV_HUGEPAGE);
    if (madvise(p, len, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
        return;
    volatile uint8_t *b = p; /* Before 5.14: fault each page in. */
    for (size_t o = 0; o < len; o += 4096)
        if (write)
            b[o] = b[o];
        else
            (void)b[o];
}

int wb__seg_release(wb__segment *s) {
    assert(s->fd >= 0);
    int seals = fcntl(s->fd, F_GET_SEALS);
    if (seals < 0)
        return WB_ECORRUPT;
    if (!(seals & F_SEAL_SHRINK)) {
        /* Truncating frees every page, mapped or not; with shrinking and
         * growing then sealed no descriptor anywhere can get one back. */
        if (ftruncate(s->fd, 0) < 0 ||
            fcntl(s->fd, F_ADD_SEALS,
                  F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
            return WB_ECORRUPT;
        fcntl(s->fd, F_ADD_SEALS, F_SEAL_WRITE); /* EBUSY if mapped: fine. */
        s->size = 0;
        s->huge = 0;
    }
    return wb__seg_allocated(s) == 0 ? 0 : WB_ECORRUPT;
}

void wb__seg_close(wb__segment *s) {
    if (s == NULL || s->fd < 0)
        return;
    seg_unlink(s);
    close(s->fd);
    s->fd = -1;
}
