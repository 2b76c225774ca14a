/* persist.c -- --persist DIR: versions written in the background and read
 * back at start (persist.h). */
#include "persist.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "ident.h"
#include "layout.h"
#include "log.h"
#include "wbroker.h"

#define WB_PERSIST_CHUNK (8u << 20) /* Bytes per copy step. */
#define WB_STATE_FILE "state"       /* The state record's file in DIR. */
#define WB_CORRUPT_DIR "corrupt"    /* Where failed files go. */
#define WB_TMP_SUFFIX ".tmp"        /* Temporary files being written. */
#define WB_FILE_SUFFIX ".safetensors"

wb__persist_stats wb__persist_stats_now;

enum { TASK_WRITE, TASK_UNLINK, TASK_STATE };

/* One step of the writer's queue. */
typedef struct ptask {
    int kind;           /* TASK_*. */
    wb__version *v;     /* TASK_WRITE: the version (referenced). */
    uint64_t id;        /* TASK_WRITE, TASK_UNLINK: version id. */
    uint8_t *hdr;       /* TASK_WRITE: the file's header; TASK_STATE: the
                           record (owned). */
    size_t hdr_len;     /* Bytes of hdr. */
    uint64_t src_off;   /* TASK_WRITE: where the data starts in the
                           segment. */
    uint64_t data_len;  /* TASK_WRITE: bytes of data. */
    int src_fd;         /* TASK_WRITE: the segment's descriptor. */
    int rc;             /* Result: 0 or an errno. */
    const char *step;   /* What failed. */
    struct ptask *next; /* Next in the queue. */
} ptask;

static char *dir_path;      /* DIR, or NULL when off. */
static int dir_fd = -1;     /* DIR, opened O_DIRECTORY. */
static int corrupt_fd = -1; /* DIR/corrupt. */
static ptask *queue_head;   /* Tasks waiting, oldest first. */
static ptask *queue_tail;   /* Last waiting task. */
static ptask *running;      /* The task on the pool, or NULL. */
static uv_work_t work;      /* Its request. */
static int stopped;         /* 1 once shut-down began. */
static uint64_t *on_disk;   /* Ids found on disk at start. */
static size_t non_disk;     /* Entries of on_disk. */

int wb__persist_on(void) {
    return dir_fd >= 0;
}

const char *wb__persist_dir(void) {
    return dir_path;
}

int wb__persist_open(const char *dir) {
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        wb__error("--persist %s: %s", dir, strerror(errno));
        return -1;
    }
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
        wb__error("--persist %s: %s", dir, strerror(errno));
        return -1;
    }
    if (mkdirat(dir_fd, WB_CORRUPT_DIR, 0700) < 0 && errno != EEXIST) {
        wb__error("--persist %s: creating %s/: %s", dir, WB_CORRUPT_DIR,
                  strerror(errno));
        return -1;
    }
    corrupt_fd =
        openat(dir_fd, WB_CORRUPT_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (corrupt_fd < 0 || (dir_path = strdup(dir)) == NULL) {
        wb__error("--persist %s: opening %s/: %s", dir, WB_CORRUPT_DIR,
                  strerror(errno));
        return -1;
    }
    return 0;
}

/* Moves DIR/name into DIR/corrupt/ and counts it. */
static void set_aside(const char *name, const char *why) {
    wb__warn("--persist: %s/%s set aside into %s/: %s", dir_path, name,
             WB_CORRUPT_DIR, why);
    if (renameat(dir_fd, name, corrupt_fd, name) < 0) {
        wb__warn("--persist: cannot move %s aside (%s): deleting it", name,
                 strerror(errno));
        unlinkat(dir_fd, name, 0);
    }
    wb__persist_stats_now.corrupt++;
}

/* Reads a whole small file of DIR into a new buffer.  Returns 0, 1 when
 * absent, -1 on failure. */
static int read_small(const char *name, uint8_t **out, size_t *len) {
    *out = NULL;
    *len = 0;
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 1 : -1;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size > WB_STATE_MAX_BYTES) {
        close(fd);
        return -1;
    }
    uint8_t *b = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (b && got < (size_t)st.st_size) {
        ssize_t k = read(fd, b + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    if (b == NULL || got != (size_t)st.st_size) {
        free(b);
        return -1;
    }
    *out = b;
    *len = got;
    return 0;
}

int wb__persist_load_state(wb__state *out) {
    memset(out, 0, sizeof(*out));
    uint8_t *b;
    size_t len;
    int rc = read_small(WB_STATE_FILE, &b, &len);
    if (rc == 1)
        return 1;
    char err[256] = "unreadable";
    if (rc == 0)
        rc = wb__state_decode(b, len, out, err, sizeof(err));
    free(b);
    if (rc) {
        set_aside(WB_STATE_FILE, err);
        return -1;
    }
    return 0;
}

/* 1 if name ends with suffix. */
static int ends_with(const char *name, const char *suffix) {
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

/* Reads one version file of DIR into a new sealed segment.  Returns 0
 * with *out filled, or -1 with why set. */
static int load_file(const char *name, uint64_t want_id, wb__persisted *out,
                     char *why, size_t whylen) {
    memset(out, 0, sizeof(*out));
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "not a regular file: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    wb__rebuilt rb;
    memset(&rb, 0, sizeof(rb));
    uint8_t *buf = NULL;
    int rc = wb__read_header(fd, (uint64_t)st.st_size, &hdr, &hlen);
    if (rc) {
        snprintf(why, whylen, "%s",
                 rc == WB_EIO ? "unreadable header" : "not a safetensors file");
        goto fail;
    }
    rc = wb__rebuild(hdr, hlen, (uint64_t)st.st_size, &rb, why, whylen);
    if (rc)
        goto fail;
    wb__version *v = rb.v;
    if (!rb.ident.has_digest || rb.ident.id != want_id) {
        snprintf(why, whylen, "its identity does not match its name");
        goto fail;
    }
    char label[64];
    snprintf(label, sizeof(label), "wbroker:%.40s", rb.ident.model);
    v->accounted = wb__seg_round(v->image_len);
    char err[256];
    if (wb__seg_create(label, v->accounted, &v->seg, err, sizeof(err)) != 0) {
        snprintf(why, whylen, "no memory for it: %s", err);
        v->accounted = 0;
        goto fail_keep;
    }
    wb__seg_register(&v->seg);
    if (wb__seg_write(&v->seg, 0, rb.header, rb.header_len) != 0)
        goto fail_io;
    if ((buf = malloc(WB_PERSIST_CHUNK)) == NULL)
        goto fail_io;
    uint64_t data = v->image_len - rb.header_len;
    for (uint64_t off = 0; off < data;) {
        size_t k = (size_t)(data - off < WB_PERSIST_CHUNK ? data - off
                                                          : WB_PERSIST_CHUNK);
        ssize_t got = pread(fd, buf, k, (off_t)(rb.data_start + off));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 ||
            wb__seg_write(&v->seg, rb.header_len + off, buf, (size_t)got))
            goto fail_io;
        off += (uint64_t)got;
    }
    uint8_t digest[WB_DIGEST_LEN];
    if (wb__seg_seal(&v->seg) != 0 ||
        wb__digest_seg(&v->seg, v->image_len, digest) != 0)
        goto fail_io;
    if (memcmp(digest, rb.ident.digest, WB_DIGEST_LEN) != 0) {
        snprintf(why, whylen, "digest mismatch: its bytes changed");
        goto fail;
    }
    memcpy(v->digest, digest, WB_DIGEST_LEN);
    v->persisted = 1;
    out->v = v;
    out->model = rb.ident.model;
    out->number = rb.ident.number;
    rb.ident.model = NULL;
    rb.v = NULL;
    wb__rebuilt_free(&rb);
    free(hdr);
    free(buf);
    close(fd);
    return 0;
fail_io:
    snprintf(why, whylen, "reading it into memory: %s", strerror(errno));
fail:
    if (rb.v) /* Charged only once it joins the registry. */
        rb.v->accounted = 0;
    free(hdr);
    free(buf);
    close(fd);
    wb__rebuilt_free(&rb);
    return -1;
fail_keep:
    free(hdr);
    free(buf);
    close(fd);
    wb__rebuilt_free(&rb);
    return -2;
}

int wb__persist_recover(int (*skip)(void *arg, uint64_t id), void *arg,
                        wb__persisted **out, size_t *n) {
    *out = NULL;
    *n = 0;
    int dfd = dup(dir_fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        wb__error("--persist %s: %s", dir_path, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return 0;
    }
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (name[0] == '.' || strcmp(name, WB_STATE_FILE) == 0 ||
            strcmp(name, WB_CORRUPT_DIR) == 0)
            continue;
        if (ends_with(name, WB_TMP_SUFFIX)) {
            wb__info("--persist: deleting %s, left by an interrupted write",
                     name);
            unlinkat(dir_fd, name, 0);
            continue;
        }
        uint64_t id = 0;
        char *end = NULL;
        if (strlen(name) == 16 + strlen(WB_FILE_SUFFIX) &&
            ends_with(name, WB_FILE_SUFFIX)) {
            errno = 0;
            id = strtoull(name, &end, 16);
            if (errno || end != name + 16)
                id = 0;
        }
        if (id == 0) {
            set_aside(name, "not a file the daemon wrote (its name)");
            continue;
        }
        uint64_t *od = realloc(on_disk, (non_disk + 1) * sizeof(uint64_t));
        if (od) {
            on_disk = od;
            on_disk[non_disk++] = id;
        }
        if (skip && skip(arg, id))
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            wb__persisted *p = realloc(*out, cap * sizeof(*p));
            if (p == NULL) {
                closedir(d);
                return WB_ENOMEM;
            }
            *out = p;
        }
        char why[512];
        int rc = load_file(name, id, &(*out)[*n], why, sizeof(why));
        if (rc == -1)
            set_aside(name, why);
        else if (rc == -2)
            wb__warn("--persist: %s not loaded: %s", name, why);
        else
            (*n)++;
    }
    closedir(d);
    return 0;
}

int wb__persist_has(uint64_t id) {
    for (size_t i = 0; i < non_disk; i++)
        if (on_disk[i] == id)
            return 1;
    return 0;
}

void wb__persist_forget(uint64_t id) {
    char name[64];
    snprintf(name, sizeof(name), "%016llx" WB_FILE_SUFFIX,
             (unsigned long long)id);
    unlinkat(dir_fd, name, 0);
}

/* ------------------------------------------------------------ writer */

/* Writes all of len bytes at p to fd.  Returns 0 or an errno. */
static int write_all(int fd, const uint8_t *p, size_t len) {
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno;
        if (k == 0)
            return EIO;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Copies len bytes at off of in to the end of out: sendfile, else pread
 * and write through one bounded buffer.  Returns 0 or an errno. */
static int copy_data(int out, int in, uint64_t off, uint64_t len) {
    off_t o = (off_t)off;
    uint64_t left = len;
    while (left > 0) {
        size_t k = left < (1u << 30) ? (size_t)left : (1u << 30);
        ssize_t n = sendfile(out, in, &o, k);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EINVAL || errno == ENOSYS) && left == len)
            break; /* No sendfile from this kind of memory: copy. */
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO;
        left -= (uint64_t)n;
    }
    if (left == 0)
        return 0;
    uint8_t *buf = malloc(WB_PERSIST_CHUNK);
    if (buf == NULL)
        return ENOMEM;
    int rc = 0;
    while (rc == 0 && left > 0) {
        size_t k = left < WB_PERSIST_CHUNK ? (size_t)left : WB_PERSIST_CHUNK;
        ssize_t n = pread(in, buf, k, o);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = n < 0 ? errno : EIO;
        else if ((rc = write_all(out, buf, (size_t)n)) == 0) {
            o += n;
            left -= (uint64_t)n;
        }
    }
    free(buf);
    return rc;
}

/* Writes name in DIR atomically: a temporary file, synced, renamed, the
 * directory synced.  The content is hdr, then (src_fd >= 0) data_len bytes
 * of src_fd at src_off. */
static void write_file(ptask *t, const char *name) {
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s" WB_TMP_SUFFIX, name);
    int fd =
        openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        t->rc = errno, t->step = "creating";
        return;
    }
    if ((t->rc = write_all(fd, t->hdr, t->hdr_len)) != 0)
        t->step = "writing the header of";
    else if (t->src_fd >= 0 &&
             (t->rc = copy_data(fd, t->src_fd, t->src_off, t->data_len)) != 0)
        t->step = "writing";
    else if (fsync(fd) < 0)
        t->rc = errno, t->step = "syncing";
    if (close(fd) < 0 && t->rc == 0)
        t->rc = errno, t->step = "closing";
    if (t->rc == 0 && renameat(dir_fd, tmp, dir_fd, name) < 0)
        t->rc = errno, t->step = "renaming";
    if (t->rc) {
        unlinkat(dir_fd, tmp, 0);
        return;
    }
    if (fsync(dir_fd) < 0)
        t->rc = errno, t->step = "syncing the directory after";
}

static void task_work(uv_work_t *w) {
    ptask *t = w->data;
    char name[64];
    snprintf(name, sizeof(name), "%016llx" WB_FILE_SUFFIX,
             (unsigned long long)t->id);
    switch (t->kind) {
    case TASK_WRITE:
        write_file(t, name);
        break;
    case TASK_UNLINK:
        if (unlinkat(dir_fd, name, 0) < 0 && errno != ENOENT)
            t->rc = errno, t->step = "deleting";
        else
            fsync(dir_fd);
        break;
    case TASK_STATE:
        t->src_fd = -1;
        write_file(t, WB_STATE_FILE);
        break;
    }
}

static void run_next(void);

static void task_free(ptask *t) {
    if (t->kind == TASK_WRITE) {
        assert(wb__persist_stats_now.backlog > 0);
        wb__persist_stats_now.backlog--;
        wb__persist_stats_now.backlog_bytes -= t->v->image_len;
        wb__version_unref(t->v);
    }
    free(t->hdr);
    free(t);
}

static void task_done(uv_work_t *w, int status) {
    ptask *t = w->data;
    assert(t == running);
    running = NULL;
    if (status != 0 && t->rc == 0)
        t->rc = ECANCELED, t->step = "writing";
    if (t->rc) {
        wb__persist_stats_now.failed++;
        if (t->kind == TASK_STATE)
            wb__warn("--persist: %s %s/%s failed: %s", t->step, dir_path,
                     WB_STATE_FILE, strerror(t->rc));
        else
            wb__warn("--persist: %s %016llx%s failed: %s (not retried: the "
                     "version is served from memory only)",
                     t->step, (unsigned long long)t->id, WB_FILE_SUFFIX,
                     strerror(t->rc));
    } else if (t->kind == TASK_WRITE) {
        wb__persist_stats_now.written++;
        t->v->persisted = 1;
        wb__debug("--persist: wrote %s@%llu", t->v->model->name,
                  (unsigned long long)t->v->number);
    }
    task_free(t);
    run_next();
}

/* Starts the oldest queued task on the pool when none runs. */
static void run_next(void) {
    if (running || stopped || queue_head == NULL)
        return;
    ptask *t = queue_head;
    queue_head = t->next;
    if (queue_head == NULL)
        queue_tail = NULL;
    t->next = NULL;
    running = t;
    work.data = t;
    if (uv_queue_work(uv_default_loop(), &work, task_work, task_done) != 0) {
        running = NULL;
        wb__persist_stats_now.failed++;
        task_free(t);
    }
}

static void enqueue(ptask *t) {
    if (queue_tail)
        queue_tail->next = t;
    else
        queue_head = t;
    queue_tail = t;
    run_next();
}

void wb__persist_version(wb__version *v) {
    if (dir_fd < 0 || stopped || v->persisted)
        return;
    assert(v->listed && v->model != NULL);
    ptask *t = calloc(1, sizeof(*t));
    wb__buf ident = {0};
    wb__layout lay = {0};
    wb__ident_render(&ident, v->model->name, v->id, v->charged_to, v->number,
                     v->digest);
    if (t == NULL || ident.oom ||
        wb__layout_build(v->t, v->n, v->tie, v->mkeys, v->mvals, v->nmeta,
                         ident.p, &lay) != 0) {
        wb__warn("--persist: out of memory queueing %s@%llu", v->model->name,
                 (unsigned long long)v->number);
        wb__persist_stats_now.failed++;
        free(t);
        wb__buf_free(&ident);
        return;
    }
    wb__buf_free(&ident);
    t->kind = TASK_WRITE;
    t->v = v;
    wb__version_ref(v);
    t->id = v->id;
    t->hdr = lay.header;
    t->hdr_len = lay.header_len;
    lay.header = NULL;
    wb__layout_free(&lay);
    t->src_fd = v->seg.fd;
    t->data_len = v->data_bytes;
    t->src_off = v->image_len - v->data_bytes;
    wb__persist_stats_now.backlog++;
    wb__persist_stats_now.backlog_bytes += v->image_len;
    enqueue(t);
}

void wb__persist_version_gone(wb__version *v) {
    if (dir_fd < 0 || stopped)
        return;
    for (ptask **pp = &queue_head, *prev = NULL; *pp;) {
        ptask *t = *pp;
        if (t->kind == TASK_WRITE && t->v == v) {
            *pp = t->next;
            if (queue_tail == t)
                queue_tail = prev;
            task_free(t);
            continue;
        }
        prev = t;
        pp = &t->next;
    }
    ptask *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        wb__persist_stats_now.failed++;
        return;
    }
    t->kind = TASK_UNLINK;
    t->id = v->id;
    t->src_fd = -1;
    v->persisted = 0;
    enqueue(t);
}

void wb__persist_state(const void *p, size_t len) {
    if (dir_fd < 0 || stopped)
        return;
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL) {
        wb__persist_stats_now.failed++;
        return;
    }
    memcpy(copy, p, len);
    /* A record still waiting is replaced: only the newest matters. */
    for (ptask *t = queue_head; t; t = t->next)
        if (t->kind == TASK_STATE) {
            free(t->hdr);
            t->hdr = copy;
            t->hdr_len = len;
            return;
        }
    ptask *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        free(copy);
        wb__persist_stats_now.failed++;
        return;
    }
    t->kind = TASK_STATE;
    t->hdr = copy;
    t->hdr_len = len;
    t->src_fd = -1;
    enqueue(t);
}

void wb__persist_stop(void) {
    stopped = 1;
    while (queue_head) {
        ptask *t = queue_head;
        queue_head = t->next;
        task_free(t);
    }
    queue_tail = NULL;
}
