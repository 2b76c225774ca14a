/* fdstore.c -- The service manager's file descriptor store (fdstore.h). */
#include "fdstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"

static int store_on;       /* 1 while the manager stores descriptors. */
static uint64_t state_seq; /* Sequence of the stored state record, or 0. */

/* Parses a decimal number without sign or leading zero at *p, up to the
 * next '-' or the end; advances *p.  Returns 0 or -1. */
static int take_dec(const char **p, uint64_t max, uint64_t *out) {
    const char *s = *p;
    uint64_t v = 0;
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        unsigned d = (unsigned)(s[n] - '0');
        if (v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
        n++;
    }
    if (n == 0 || (n > 1 && s[0] == '0'))
        return -1;
    *p = s + n;
    *out = v;
    return 0;
}

/* Parses 16 lowercase hex digits at *p; advances *p.  Returns 0 or -1. */
static int take_hex(const char **p, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = (*p)[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return -1;
        v = v << 4 | d;
    }
    *p += 16;
    *out = v;
    return 0;
}

/* Consumes one '-' at *p.  Returns 0 or -1. */
static int take_dash(const char **p) {
    if (**p != '-')
        return -1;
    (*p)++;
    return 0;
}

int wb__fdname_parse(const char *name, wb__fdname *out) {
    memset(out, 0, sizeof(*out));
    const char *p = name;
    uint64_t uid, pid;
    if (name == NULL)
        return -1;
    if (strncmp(p, "v-", 2) == 0) {
        p += 2;
        out->kind = WB_FD_VERSION;
        if (take_hex(&p, &out->id) || take_dash(&p) ||
            take_dec(&p, UINT64_MAX, &out->number) || out->number == 0)
            return -1;
    } else if (strncmp(p, "h-", 2) == 0) {
        p += 2;
        out->kind = WB_FD_HOLD;
        if (take_hex(&p, &out->id) || take_dash(&p) ||
            take_dec(&p, UINT32_MAX, &uid) || take_dash(&p) ||
            take_dec(&p, UINT32_MAX, &pid) || take_dash(&p) ||
            take_hex(&p, &out->serial))
            return -1;
        out->uid = (uint32_t)uid;
        out->pid = (uint32_t)pid;
    } else if (strncmp(p, "state-", 6) == 0) {
        p += 6;
        out->kind = WB_FD_STATE;
        if (take_dec(&p, UINT64_MAX, &out->number))
            return -1;
    } else {
        return -1;
    }
    if (*p != '\0' || (out->kind != WB_FD_STATE && out->id == 0))
        return -1;
    return 0;
}

void wb__fdname_version(char *buf, uint64_t id, uint64_t number) {
    snprintf(buf, WB_FDNAME_MAX, "v-%016llx-%llu", (unsigned long long)id,
             (unsigned long long)number);
}

void wb__fdname_hold(char *buf, uint64_t id, uint32_t uid, uint32_t pid,
                     uint64_t serial) {
    snprintf(buf, WB_FDNAME_MAX, "h-%016llx-%u-%u-%016llx",
             (unsigned long long)id, (unsigned)uid, (unsigned)pid,
             (unsigned long long)serial);
}

void wb__fdname_state(char *buf, uint64_t seq) {
    snprintf(buf, WB_FDNAME_MAX, "state-%llu", (unsigned long long)seq);
}

void wb__fdstore_init(void) {
    const char *e = getenv("NOTIFY_SOCKET");
    store_on = e != NULL && e[0] != '\0';
}

int wb__fdstore_on(void) {
    return store_on;
}

int wb__fdstore_take(int *listen_fd, wb__stored_fd **out, size_t *n) {
    *listen_fd = -1;
    *out = NULL;
    *n = 0;
    char **names = NULL;
    int nfds = sd_listen_fds_with_names(1, &names);
    if (nfds <= 0)
        return 0;
    wb__stored_fd *v = calloc((size_t)nfds, sizeof(*v));
    int rc = 0;
    for (int i = 0; i < nfds; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        wb__fdname what;
        if (wb__fdname_parse(name, &what) == 0 && v != NULL) {
            snprintf(v[*n].name, sizeof(v[*n].name), "%s", name);
            v[*n].what = what;
            v[*n].fd = fd;
            (*n)++;
        } else if (sd_is_socket(fd, AF_UNIX, SOCK_STREAM, 1) > 0) {
            if (*listen_fd >= 0) {
                wb__error("systemd passed two listening sockets (%s and "
                          "another); expected one",
                          name);
                rc = -1;
            }
            *listen_fd = fd;
        } else {
            wb__warn("closing descriptor %d (%s) from the service manager: "
                     "not one of the daemon's",
                     fd, name);
            close(fd);
        }
    }
    for (int i = 0; names && i < nfds; i++)
        free(names[i]);
    free(names);
    *out = v;
    return rc;
}

void wb__fdstore_remove(const char *name) {
    if (!store_on)
        return;
    char msg[WB_FDNAME_MAX + 40];
    snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
    sd_pid_notify(0, 0, msg);
}

int wb__fdstore_put(const char *name, const int *fds, size_t n) {
    if (!store_on)
        return 0;
    char msg[WB_FDNAME_MAX + 40];
    snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
    for (size_t i = 0; i < n; i += WB_FDSTORE_BATCH) {
        size_t k = n - i < WB_FDSTORE_BATCH ? n - i : WB_FDSTORE_BATCH;
        int rc = sd_pid_notify_with_fds(0, 0, msg, fds + i, (unsigned)k);
        if (rc == 0) {
            store_on = 0;
            return 0;
        }
        if (rc < 0) {
            wb__warn("storing %s with the service manager: %s", name,
                     strerror(-rc));
            return -1;
        }
    }
    return 1;
}

void wb__fdstore_version(wb__version *v) {
    if (!store_on || v->seg.fd < 0 || v->stored)
        return;
    char name[WB_FDNAME_MAX];
    wb__fdname_version(name, v->id, v->number);
    if (wb__fdstore_put(name, &v->seg.fd, 1) > 0)
        v->stored = 1;
}

void wb__fdstore_version_gone(wb__version *v) {
    if (!v->stored)
        return;
    char name[WB_FDNAME_MAX];
    wb__fdname_version(name, v->id, v->number);
    wb__fdstore_remove(name);
    v->stored = 0;
}

void wb__fdstore_state(const void *p, size_t len, uint64_t seq) {
    if (!store_on)
        return;
    char name[WB_FDNAME_MAX];
    wb__fdname_state(name, seq);
    int fd = memfd_create("wbroker-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    const uint8_t *b = p;
    size_t done = 0;
    while (fd >= 0 && done < len) {
        ssize_t k = write(fd, b + done, len - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        done += (size_t)k;
    }
    if (fd < 0 || done != len ||
        fcntl(fd, F_ADD_SEALS,
              F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
        wb__warn("cannot make the state record's memfd: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    if (wb__fdstore_put(name, &fd, 1) > 0) {
        /* The new one first: a crash between the two leaves both, and the
         * next start takes the higher sequence. */
        if (state_seq) {
            wb__fdname_state(name, state_seq);
            wb__fdstore_remove(name);
        }
        state_seq = seq;
    }
    close(fd);
}

void wb__fdstore_state_adopted(uint64_t seq) {
    state_seq = seq;
}
