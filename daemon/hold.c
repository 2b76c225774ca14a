/* hold.c -- Holds: a polled pipe per mapping a client keeps (see hold.h).
 */
#include "hold.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "ident.h"
#include "log.h"
#include "restart.h"
#include "wbroker.h"

#define WB_HOLD_DRAIN 512 /* Bytes read per wake-up from a chatty client. */

struct wb__hold {
    uv_poll_t poll;               /* Watches rfd for end of file. */
    int rfd;                      /* Read end, -1 once ended. */
    wb__version *v;               /* Version held (referenced). */
    uint32_t pid;                 /* Mapping process (SO_PEERCRED). */
    uint32_t uid;                 /* Its user. */
    char comm[WB_HOLD_COMM_MAX];  /* /proc/PID/comm at map time. */
    uint64_t bytes;               /* Bytes of the segments mapped. */
    uint64_t since;               /* time(NULL) at map time. */
    uint64_t serial;              /* Tells this hold's name in the
                                     descriptor store apart (fdstore.h). */
    struct wb__hold *prev, *next; /* Holds in progress, newest first. */
};

size_t wb__hold_user_max;

/* The holds one user has in progress, so that the per-user cap costs a
 * map O(users), not a walk of every hold. */
typedef struct user_holds {
    uint32_t uid;
    size_t n;
    struct user_holds *next;
} user_holds;

static wb__hold *holds;   /* Holds in progress. */
static size_t nholds;     /* Entries in holds. */
static user_holds *users; /* Users with holds in progress. */

static user_holds **user_slot(uint32_t uid) {
    user_holds **pp = &users;
    while (*pp && (*pp)->uid != uid)
        pp = &(*pp)->next;
    return pp;
}

/* Counts one more hold of uid; -1 when out of memory. */
static int user_add(uint32_t uid) {
    user_holds **pp = user_slot(uid);
    if (*pp == NULL && (*pp = calloc(1, sizeof(user_holds))) == NULL)
        return -1;
    (*pp)->uid = uid;
    (*pp)->n++;
    return 0;
}

static void user_remove(uint32_t uid) {
    user_holds **pp = user_slot(uid);
    user_holds *u = *pp;
    assert(u != NULL && u->n > 0);
    if (--u->n == 0) {
        *pp = u->next;
        free(u);
    }
}

/* Reads the command name of pid, or "?" when it cannot be read (the
 * process may already be gone, or live in another pid namespace). */
static void read_comm(pid_t pid, char *buf, size_t len) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    snprintf(buf, len, "?");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) {
        snprintf(buf, len, "?");
        return;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
}

static void hold_closed(uv_handle_t *h) {
    free(h->data);
}

/* Ends h: stops polling, closes the read end, drops the version's
 * reference (which may refund its memory) and frees h once libuv has let
 * go of the handle. */
static void hold_end(wb__hold *h) {
    assert(h->rfd >= 0 && nholds > 0);
    uv_poll_stop(&h->poll);
    close(h->rfd);
    h->rfd = -1;
    if (h->prev)
        h->prev->next = h->next;
    else
        holds = h->next;
    if (h->next)
        h->next->prev = h->prev;
    nholds--;
    user_remove(h->uid);
    wb__restart_hold(h, 0);
    wb__version *v = h->v;
    h->v = NULL;
    wb__debug("hold of %s@%llu by pid %u ended", v->model->name,
              (unsigned long long)v->number, (unsigned)h->pid);
    assert(v->holds > 0);
    v->holds--;
    wb__version_unref(v);
    uv_close((uv_handle_t *)&h->poll, hold_closed);
}

/* The read end is readable or hung up.  End of file (every write end
 * closed) ends the hold; bytes a client wrote are read and ignored. */
static void on_hold_event(uv_poll_t *p, int status, int events) {
    wb__hold *h = p->data;
    char buf[WB_HOLD_DRAIN];
    ssize_t n = status < 0 ? 0 : read(h->rfd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0)
        return;
    hold_end(h);
}

/* Makes a hold of v by uid/pid on the read end rfd (taken over).  Returns
 * 0, or WB_ENOMEM / WB_ESYS (errno set) with rfd closed. */
static int hold_make(wb__version *v, uint32_t uid, uint32_t pid, int rfd,
                     uint64_t serial, wb__hold **out) {
    wb__hold *h = calloc(1, sizeof(*h));
    if (h == NULL || user_add(uid) != 0) {
        free(h);
        close(rfd);
        return WB_ENOMEM;
    }
    int rc = uv_poll_init(uv_default_loop(), &h->poll, rfd);
    if (rc == 0)
        rc =
            uv_poll_start(&h->poll, UV_READABLE | UV_DISCONNECT, on_hold_event);
    if (rc) {
        user_remove(uid);
        close(rfd);
        free(h);
        errno = -rc;
        return WB_ESYS;
    }
    /* Holds never keep the loop running: shut-down ends them. */
    uv_unref((uv_handle_t *)&h->poll);
    h->poll.data = h;
    h->rfd = rfd;
    h->v = v;
    wb__version_ref(v);
    v->holds++;
    h->pid = pid;
    h->uid = uid;
    h->serial = serial;
    read_comm((pid_t)pid, h->comm, sizeof(h->comm));
    h->since = (uint64_t)time(NULL);
    h->next = holds;
    if (holds)
        holds->prev = h;
    holds = h;
    nholds++;
    *out = h;
    return 0;
}

int wb__hold_adopt(wb__version *v, uint32_t uid, uint32_t pid, int rfd,
                   uint64_t serial) {
    wb__hold *h;
    int rc = hold_make(v, uid, pid, rfd, serial, &h);
    if (rc == 0)
        h->bytes = v->seg.fd >= 0 ? v->seg.size : v->accounted;
    return rc;
}

int wb__hold_start(wb__version *v, const struct ucred *cred, uint64_t bytes,
                   int *wfd) {
    assert(v->model != NULL);
    if (wb__hold_user_max &&
        wb__holds_of_user((uint32_t)cred->uid) >= wb__hold_user_max)
        return WB_ETOOBIG;
    int p[2];
    /* Both ends block: the client's like any pipe would (it never
     * writes), and uv_poll_init() makes the daemon's non-blocking itself;
     * no fcntl() pair per map to undo O_NONBLOCK on the client's. */
    if (pipe2(p, O_CLOEXEC) < 0)
        return WB_ESYS;
    wb__hold *h;
    int rc = hold_make(v, (uint32_t)cred->uid, (uint32_t)cred->pid, p[0],
                       wb__ident_new_id(), &h);
    if (rc) {
        int e = errno;
        close(p[1]);
        errno = e;
        return rc;
    }
    h->bytes = bytes;
    *wfd = p[1];
    wb__restart_hold(h, 1);
    return 0;
}

size_t wb__holds_count(void) {
    return nholds;
}

void wb__holds_each(const wb__model *model,
                    void (*fn)(void *arg, const wb__hold *h), void *arg) {
    for (const wb__hold *h = holds; h; h = h->next)
        if (model == NULL || h->v->model == model)
            fn(arg, h);
}

size_t wb__holds_of_user(uint32_t uid) {
    const user_holds *u = *user_slot(uid);
    return u ? u->n : 0;
}

size_t wb__holds_of(const wb__model *model) {
    size_t n = 0;
    for (const wb__hold *h = holds; h; h = h->next)
        n += model == NULL || h->v->model == model;
    return n;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

uint64_t wb__holds_readers(const wb__model *model) {
    assert(model != NULL);
    size_t n = wb__holds_of(model);
    if (n < 2)
        return n;
    uint32_t *pid = malloc(n * sizeof(uint32_t));
    if (pid == NULL)
        return n; /* An upper bound beats failing a list. */
    size_t k = 0;
    for (const wb__hold *h = holds; h; h = h->next)
        if (h->v->model == model)
            pid[k++] = h->pid;
    assert(k == n);
    qsort(pid, n, sizeof(uint32_t), cmp_u32);
    uint64_t distinct = 1;
    for (size_t i = 1; i < n; i++)
        distinct += pid[i] != pid[i - 1];
    free(pid);
    return distinct;
}

uint64_t wb__holds_retired_bytes(void) {
    for (const wb__hold *h = holds; h; h = h->next)
        h->v->mark = 0;
    uint64_t n = 0;
    for (const wb__hold *h = holds; h; h = h->next)
        if (!h->v->listed && !h->v->mark) {
            h->v->mark = 1;
            n += wb__version_charged(h->v);
        }
    return n;
}

void wb__holds_clear(void) {
    while (holds)
        hold_end(holds);
}

uint32_t wb__hold_pid(const wb__hold *h) {
    return h->pid;
}
uint32_t wb__hold_uid(const wb__hold *h) {
    return h->uid;
}
const char *wb__hold_comm(const wb__hold *h) {
    return h->comm;
}
const wb__version *wb__hold_version(const wb__hold *h) {
    return h->v;
}
uint64_t wb__hold_bytes(const wb__hold *h) {
    return h->bytes;
}
uint64_t wb__hold_since(const wb__hold *h) {
    return h->since;
}
int wb__hold_rfd(const wb__hold *h) {
    return h->rfd;
}
uint64_t wb__hold_serial(const wb__hold *h) {
    return h->serial;
}
