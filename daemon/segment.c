/* segment.c -- memfd-backed shared-memory segments. */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wbroker.h"

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

uint64_t wb__mem_available(void) { return meminfo_field("MemAvailable"); }
uint64_t wb__mem_total(void) { return meminfo_field("MemTotal"); }

int wb__seg_create(const char *label, uint64_t size, wb__segment *out,
                   char *err, size_t errlen) {
    out->fd = -1;
    out->size = 0;
    uint64_t avail = wb__mem_available();
    if (avail != 0 && size + WB_SEG_RESERVE > avail) {
        snprintf(err, errlen,
                 "segment of %llu bytes does not fit: %llu bytes available",
                 (unsigned long long)size, (unsigned long long)avail);
        return WB_ENOSPC;
    }
    int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        snprintf(err, errlen, "memfd_create: %s", strerror(errno));
        return WB_ESYS;
    }
    int rc = posix_fallocate(fd, 0, (off_t)size);
    if (rc != 0) {
        close(fd);
        snprintf(err, errlen, "allocating %llu bytes: %s",
                 (unsigned long long)size, strerror(rc));
        return (rc == ENOSPC || rc == ENOMEM || rc == EFBIG) ? WB_ENOSPC
                                                               : WB_ESYS;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        snprintf(err, errlen, "sealing size: %s", strerror(errno));
        close(fd);
        return WB_ESYS;
    }
    out->fd = fd;
    out->size = size;
    return 0;
}

int wb__seg_seal(wb__segment *s) {
    if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_WRITE) < 0)
        return errno == EBUSY ? WB_EBUSY : WB_ECORRUPT;
    if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_SEAL) < 0)
        return WB_ECORRUPT;
    int seals = fcntl(s->fd, F_GET_SEALS);
    int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
    struct stat st;
    if (seals < 0 || (seals & want) != want || fstat(s->fd, &st) < 0 ||
        (uint64_t)st.st_size != s->size)
        return WB_ECORRUPT;
    return 0;
}

int wb__seg_open_ro(const wb__segment *s) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? WB_ESYS : fd;
}

void wb__seg_close(wb__segment *s) {
    if (s == NULL || s->fd < 0)
        return;
    close(s->fd);
    s->fd = -1;
}
