/* segment.c -- memfd-backed shared-memory segments. */
#include "segment.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wbroker.h"

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

int wb__seg_create(const char *label, uint64_t size, wb__segment *out,
                   char *err, size_t errlen) {
    wb__seg_init(out);
    uint64_t avail = wb__mem_available();
    if (avail != 0 && size + WB_SEG_RESERVE > avail) {
        snprintf(err, errlen,
                 "segment of %llu bytes does not fit: %llu bytes available",
                 (unsigned long long)size, (unsigned long long)avail);
        return WB_ENOSPC;
    }
    int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "memfd_create: %s", strerror(e));
        errno = e;
        return WB_ESYS;
    }
    int rc = posix_fallocate(fd, 0, (off_t)size);
    if (rc != 0) {
        close(fd);
        snprintf(err, errlen, "allocating %llu bytes: %s",
                 (unsigned long long)size, strerror(rc));
        errno = rc;
        return (rc == ENOSPC || rc == ENOMEM || rc == EFBIG) ? WB_ENOSPC
                                                             : WB_ESYS;
    }
    /* Growing is forbidden from the start (a publisher could otherwise
     * take memory beyond what it was charged); shrinking only at the seal,
     * so that an abandoned segment can still be truncated to nothing. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) < 0) {
        int e = errno;
        snprintf(err, errlen, "sealing size: %s", strerror(e));
        close(fd);
        errno = e;
        return WB_ESYS;
    }
    out->fd = fd;
    out->size = size;
    return 0;
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

/* Opens the segment's file anew with flags (a new file description). */
static int seg_reopen(const wb__segment *s, int flags) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
    return open(path, flags | O_CLOEXEC);
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
    void *p = mmap(NULL, len, PROT_READ,
                   MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, (off_t)off);
    int e = errno;
    close(fd);
    errno = e;
    return p == MAP_FAILED ? NULL : p;
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
