/* transfer.c -- wbroker import and export: safetensors files in and out.
 *
 * import validates the file's header before it asks the daemon for
 * anything, declares every tensor in one publish and reads each tensor's
 * bytes from the file straight into the shared segment, chunk by chunk.
 * Any failure aborts the publish (and a killed process aborts it by
 * closing its connection), so a half-imported version is never visible.
 *
 * export maps a committed version shared and read-only and writes its
 * whole safetensors image (the daemon keeps versions in that layout) to a
 * fresh temporary file next to FILE (a random name opened with O_EXCL and
 * O_NOFOLLOW, so a file or symbolic link planted there is never written
 * through), fsyncs it, renames it over FILE and fsyncs the directory, so
 * FILE is either the old file or the complete new one.  FILE must be
 * absent or a regular file: a device node such as /dev/null, a fifo, a
 * socket, a directory or a symbolic link is refused, before the daemon is
 * asked for anything and again just before the rename, because the rename
 * would replace it rather than write to it (for a link, replace the link
 * rather than what it points to).  A replaced FILE keeps its permission
 * bits.  FILE "-" writes the image to standard output instead.
 *
 * Both draw a progress bar on stderr when stderr is a terminal. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../safetensors.h"
#include "cli.h"

#define WB_CLI_BAR_WIDTH 30            /* Characters of the progress bar. */
#define WB_CLI_BAR_PERIOD_NS 100000000 /* Min nanoseconds between redraws. */
#define WB_CLI_TMP_TRIES 100           /* Random temporary names tried. */
#define WB_CLI_TMP_RANDOM 8            /* Random bytes in a temporary name. */
#define WB_CLI_TMP_MODE 0600           /* Mode of a temporary file. */
#define WB_CLI_NEW_MODE 0666           /* Mode of a new FILE, less umask. */

/* A progress bar on stderr, drawn only when stderr is a terminal. */
typedef struct progress {
    int on;           /* 1 if stderr is a terminal. */
    const char *verb; /* "importing" or "exporting". */
    uint64_t total;   /* Bytes to move. */
    uint64_t done;    /* Bytes moved so far. */
    int64_t last_ns;  /* Monotonic time of the last redraw. */
    int drawn;        /* 1 if a bar is on the screen. */
} progress;

/* Monotonic clock in nanoseconds. */
static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Starts a bar for total bytes. */
static void progress_init(progress *p, const char *verb, uint64_t total) {
    memset(p, 0, sizeof(*p));
    p->on = isatty(STDERR_FILENO);
    p->verb = verb;
    p->total = total;
}

/* Draws the bar now. */
static void progress_draw(progress *p) {
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    int fill = (int)(frac * WB_CLI_BAR_WIDTH);
    char bar[WB_CLI_BAR_WIDTH + 1];
    for (int i = 0; i < WB_CLI_BAR_WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WB_CLI_BAR_WIDTH] = '\0';
    char done[WB_CLI_SIZE_BUF], total[WB_CLI_SIZE_BUF];
    fprintf(stderr, "\r%s [%s] %3d%%  %s / %s\033[K", p->verb, bar,
            (int)(frac * 100.0), cli_size(p->done, done, sizeof(done)),
            cli_size(p->total, total, sizeof(total)));
    fflush(stderr);
    p->drawn = 1;
}

/* Records n more bytes and redraws at most every WB_CLI_BAR_PERIOD_NS. */
static void progress_add(progress *p, uint64_t n) {
    p->done += n;
    if (!p->on)
        return;
    int64_t t = now_ns();
    if (p->drawn && t - p->last_ns < WB_CLI_BAR_PERIOD_NS)
        return;
    p->last_ns = t;
    progress_draw(p);
}

/* Ends the bar: draws it complete when ok, and leaves the line either way
 * so that what follows starts on a line of its own. */
static void progress_end(progress *p, int ok) {
    if (!p->on)
        return;
    if (ok)
        progress_draw(p);
    if (p->drawn)
        fputc('\n', stderr);
    p->drawn = 0;
}

/* ---------------------------------------------------------------- import */

/* Copies tensor i of p from len bytes at file offset off, in chunks
 * through buf (WB_CLI_IO_CHUNK bytes) and wb_publish_write(), counting them
 * in the progress bar.  Returns 0, or reports the failure and returns
 * WB_CLI_FAIL. */
static int copy_tensor(wb_cli *cli, int fd, const char *path, wb_publish *p,
                       size_t i, uint8_t *buf, uint64_t off, uint64_t len,
                       progress *pr) {
    uint64_t done = 0;
    while (done < len) {
        size_t want = len - done < WB_CLI_IO_CHUNK ? (size_t)(len - done)
                                                   : WB_CLI_IO_CHUNK;
        ssize_t n = pread(fd, buf, want, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            progress_end(pr, 0);
            return cli_fail(cli, WB_EIO, "%s: %s", path, strerror(errno));
        }
        if (n == 0) {
            progress_end(pr, 0);
            return cli_fail(cli, WB_EIO,
                            "%s: unexpected end of file at byte %" PRIu64, path,
                            off + done);
        }
        int rc = wb_publish_write(p, i, buf, (size_t)n, (size_t)done);
        if (rc) {
            progress_end(pr, 0);
            return cli_fail_client(cli, rc);
        }
        done += (uint64_t)n;
        progress_add(pr, (uint64_t)n);
    }
    return 0;
}

/* Copies every tensor of f from fd into the publish p.  Returns 0, or
 * reports the failure and returns WB_CLI_FAIL (p is left for the caller to
 * abort). */
static int fill_publish(wb_cli *cli, int fd, const char *path,
                        const wb__st_file *f, wb_publish *p) {
    uint8_t *buf = malloc(WB_CLI_IO_CHUNK);
    if (buf == NULL)
        return cli_fail(cli, WB_ENOMEM, "out of memory");
    progress pr;
    progress_init(&pr, "importing", f->data_len);
    /* The parser checked that each tensor's bytes match its shape, which
     * is what the daemon laid out; wb_publish_write() refuses any more. */
    int rc = 0;
    for (size_t i = 0; i < f->n && rc == 0; i++) {
        const wb__st_tensor *t = &f->t[i];
        rc = copy_tensor(cli, fd, path, p, i, buf, f->data_start + t->begin,
                         t->end - t->begin, &pr);
    }
    free(buf);
    if (rc == 0)
        progress_end(&pr, 1);
    return rc;
}

/* Declares f's tensors and metadata to the daemon, fills them and commits.
 * Returns 0 with the new version in *version, or reports the failure and
 * returns WB_CLI_FAIL with nothing published. */
static int publish_file(wb_cli *cli, int fd, const char *path,
                        const char *model, const wb__st_file *f,
                        uint64_t *version) {
    size_t n = f->n + f->n_ties;
    wb_tensor_spec *specs = calloc(n ? n : 1, sizeof(*specs));
    wb_kv *kv = calloc(f->n_meta ? f->n_meta : 1, sizeof(*kv));
    if (specs == NULL || kv == NULL) {
        free(specs);
        free(kv);
        return cli_fail(cli, WB_ENOMEM, "declaring %zu tensors", n);
    }
    for (size_t i = 0; i < n; i++) {
        /* The file's tensors, then its aliases tied to them. */
        const wb__st_tensor *t = &f->t[i < f->n ? i : f->tie_of[i - f->n]];
        specs[i].name = i < f->n ? t->name : f->tie_alias[i - f->n];
        specs[i].dtype = t->dtype;
        specs[i].ndim = t->ndim;
        specs[i].shape = t->shape;
        specs[i].tied_to = i < f->n ? NULL : t->name;
    }
    for (size_t i = 0; i < f->n_meta; i++) {
        kv[i].key = f->meta_keys[i];
        kv[i].value = f->meta_vals[i];
    }
    wb_publish *p = NULL;
    int rc = wb_publish_begin(cli->c, model, specs, n, kv, f->n_meta, &p);
    free(specs);
    free(kv);
    if (rc)
        return cli_fail_client(cli, rc);
    if (fill_publish(cli, fd, path, f, p)) {
        wb_publish_abort(p);
        return WB_CLI_FAIL;
    }
    rc = wb_publish_commit(p, version);
    return rc ? cli_fail_client(cli, rc) : 0;
}

int cmd_import(wb_cli *cli, const wb_cli_args *a) {
    const char *path = a->pos[0], *model = a->pos[1];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_fail(cli, WB_ESYS, "%s: %s", path, strerror(errno));
    wb__st_file f;
    char err[WB_CLI_ERR_BUF] = "";
    int rc = wb__st_read_file_header(fd, &f, err, sizeof(err));
    if (rc) {
        close(fd);
        return cli_fail(cli, rc, "%s: %s", path, err);
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint64_t version = 0;
    rc = cli_connect(cli);
    if (rc == 0)
        rc = publish_file(cli, fd, path, model, &f, &version);
    close(fd);
    if (rc == 0) {
        char size[WB_CLI_SIZE_BUF];
        if (cli->json)
            rc = cli_json_print(json_pack(
                "{s:s, s:I, s:s, s:I, s:I}", "model", model, "version",
                (json_int_t)version, "file", path, "tensors", (json_int_t)f.n,
                "bytes", (json_int_t)f.data_len));
        else
            printf("imported %s as %s@%" PRIu64 " (%zu tensors, %s)\n", path,
                   model, version, f.n,
                   cli_size(f.data_len, size, sizeof(size)));
    }
    wb__st_file_free(&f);
    return rc;
}

/* ---------------------------------------------------------------- export */

/* Writes len bytes of data to fd in chunks, counting them in the progress
 * bar.  Returns 0 or an errno value. */
static int write_all(int fd, const uint8_t *data, size_t len, progress *pr) {
    while (len > 0) {
        size_t want = len < WB_CLI_IO_CHUNK ? len : WB_CLI_IO_CHUNK;
        ssize_t n = write(fd, data, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        data += n;
        len -= (size_t)n;
        progress_add(pr, (uint64_t)n);
    }
    return 0;
}

/* The temporary file of an export while it exists, for the signal handler
 * that removes it when the export is interrupted. */
static struct {
    int dfd;                     /* Its directory. */
    char name[NAME_MAX + 1];     /* Its name in dfd. */
    volatile sig_atomic_t armed; /* 1 while name is ours to remove. */
} pending_tmp;

/* Signals that remove the temporary file before they end the process. */
static const int tmp_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
#define N_TMP_SIGNALS (sizeof(tmp_signals) / sizeof(tmp_signals[0]))

/* Removes the temporary file, then lets the signal do what it would have
 * done (the handler is installed with SA_RESETHAND). */
static void remove_tmp_and_reraise(int sig) {
    if (pending_tmp.armed)
        unlinkat(pending_tmp.dfd, pending_tmp.name, 0);
    raise(sig);
}

/* Installs remove_tmp_and_reraise() for those of tmp_signals that are not
 * ignored (nohup's SIGHUP stays ignored), saving the previous actions in
 * old. */
static void tmp_signals_catch(struct sigaction old[N_TMP_SIGNALS]) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = remove_tmp_and_reraise;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_TMP_SIGNALS; i++)
        sigaddset(&sa.sa_mask, tmp_signals[i]);
    for (size_t i = 0; i < N_TMP_SIGNALS; i++) {
        sigaction(tmp_signals[i], NULL, &old[i]);
        if (old[i].sa_handler != SIG_IGN)
            sigaction(tmp_signals[i], &sa, NULL);
    }
}

/* Blocks tmp_signals, saving the previous signal mask in old, so that a
 * step and the change of pending_tmp that goes with it happen at once. */
static void tmp_signals_hold(sigset_t *old) {
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < N_TMP_SIGNALS; i++)
        sigaddset(&set, tmp_signals[i]);
    sigprocmask(SIG_BLOCK, &set, old);
}

/* Restores the actions tmp_signals_catch() saved. */
static void tmp_signals_restore(const struct sigaction old[N_TMP_SIGNALS]) {
    for (size_t i = 0; i < N_TMP_SIGNALS; i++)
        sigaction(tmp_signals[i], &old[i], NULL);
}

/* FILE of an export: its directory, held open so that every step works
 * on the same directory whatever happens to the path meanwhile, and its
 * name there. */
typedef struct export_target {
    const char *path; /* FILE as given. */
    const char *base; /* Its last component (points into path). */
    int dfd;          /* Its directory, opened O_DIRECTORY. */
    mode_t mode;      /* Permission bits the written FILE gets. */
} export_target;

/* Names the kind of a file that is not a regular file. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISFIFO(mode))
        return "a fifo";
    if (S_ISSOCK(mode))
        return "a socket";
    return "a special file";
}

/* Checks what t's FILE is now, without following a symbolic link: absent
 * (a new FILE gets WB_CLI_NEW_MODE less the umask) or a regular file
 * (whose permission bits the new one keeps) are fine; anything else is
 * refused, since renaming over it would replace a device node, fifo or
 * socket, or the link instead of what it points to.  Returns 0, or reports
 * why and returns WB_CLI_FAIL. */
static int target_check(wb_cli *cli, export_target *t) {
    struct stat st;
    if (fstatat(t->dfd, t->base, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            return cli_fail(cli, WB_ESYS, "%s: %s", t->path, strerror(errno));
        mode_t mask = umask(0);
        umask(mask);
        t->mode = WB_CLI_NEW_MODE & ~mask;
        return 0;
    }
    if (S_ISREG(st.st_mode)) {
        t->mode = st.st_mode & 0777;
        return 0;
    }
    if (S_ISLNK(st.st_mode))
        return cli_fail(cli, WB_EINVAL,
                        "%s: a symbolic link, not a regular file; export "
                        "neither follows nor replaces links (name the file "
                        "it points to)",
                        t->path);
    return cli_fail(cli, WB_EINVAL,
                    "%s: %s, not a regular file; export only creates or "
                    "replaces regular files (use - for standard output)",
                    t->path, file_kind(st.st_mode));
}

/* Opens the directory of path into *t and checks FILE with target_check().
 * Returns 0 (close t->dfd when done), or reports the failure and returns
 * WB_CLI_FAIL with nothing open. */
static int target_open(wb_cli *cli, const char *path, export_target *t) {
    char dir[WB_CLI_PATH_BUF];
    const char *slash = strrchr(path, '/');
    memset(t, 0, sizeof(*t));
    t->path = path;
    t->base = slash ? slash + 1 : path;
    t->dfd = -1;
    if (*t->base == '\0')
        return cli_fail(cli, WB_EINVAL,
                        "%s: names a directory, not a regular file", path);
    size_t dlen = slash == NULL   ? 0
                  : slash == path ? 1
                                  : (size_t)(slash - path);
    if (dlen >= sizeof(dir))
        return cli_fail(cli, WB_EINVAL, "%s: path too long", path);
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)dlen, path);
    t->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->dfd < 0)
        return cli_fail(cli, WB_ESYS, "%s: directory %s: %s", path, dir,
                        strerror(errno));
    if (target_check(cli, t)) {
        close(t->dfd);
        t->dfd = -1;
        return WB_CLI_FAIL;
    }
    return 0;
}

/* Creates a fresh temporary file for t in its directory, named
 * ".BASE.RANDOM.tmp" (BASE shortened to fit NAME_MAX) with
 * O_CREAT|O_EXCL|O_NOFOLLOW, so that nothing already there (a file, or a
 * symbolic link planted to redirect the write) is ever opened; up to
 * WB_CLI_TMP_TRIES random names.  Writes the name into name.  Returns the
 * descriptor, or -1 with errno set. */
static int tmp_create(const export_target *t, char name[NAME_MAX + 1]) {
    static const char hex[] = "0123456789abcdef";
    /* Room for BASE beside the two dots, the random digits and ".tmp". */
    int room = NAME_MAX - 2 - 2 * WB_CLI_TMP_RANDOM - 4;
    for (int attempt = 0; attempt < WB_CLI_TMP_TRIES; attempt++) {
        uint8_t r[WB_CLI_TMP_RANDOM];
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
            return -1;
        char suffix[2 * WB_CLI_TMP_RANDOM + 1];
        for (size_t i = 0; i < sizeof(r); i++) {
            suffix[2 * i] = hex[r[i] >> 4];
            suffix[2 * i + 1] = hex[r[i] & 15];
        }
        suffix[2 * WB_CLI_TMP_RANDOM] = '\0';
        snprintf(name, NAME_MAX + 1, ".%.*s.%s.tmp", room, t->base, suffix);
        int fd = openat(t->dfd, name,
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        WB_CLI_TMP_MODE);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

/* Writes the image to t's FILE atomically: a fresh temporary file next to
 * it (tmp_create()), written, given its final mode and fsynced, FILE
 * checked again, a rename over FILE, then an fsync of the directory.
 * Returns 0, or reports the failure and returns WB_CLI_FAIL with FILE
 * untouched and the temporary file removed (also when SIGINT, SIGTERM,
 * SIGHUP or SIGQUIT interrupt the copy). */
static int write_file_atomic(wb_cli *cli, export_target *t, const uint8_t *data,
                             size_t len) {
    struct sigaction old[N_TMP_SIGNALS];
    sigset_t mask;
    tmp_signals_catch(old);
    tmp_signals_hold(&mask); /* No signal between creating and arming. */
    int fd = tmp_create(t, pending_tmp.name);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0) {
        pending_tmp.dfd = t->dfd;
        pending_tmp.armed = 1;
    }
    sigprocmask(SIG_SETMASK, &mask, NULL);
    if (fd < 0) {
        tmp_signals_restore(old);
        return cli_fail(cli, WB_ESYS, "%s: creating a temporary file: %s",
                        t->path, strerror(e));
    }
    progress pr;
    progress_init(&pr, "exporting", len);
    e = write_all(fd, data, len, &pr);
    const char *what = "writing";
    if (e == 0 && fchmod(fd, t->mode) != 0) {
        e = errno;
        what = "setting the mode of";
    }
    if (e == 0 && fsync(fd) != 0) {
        e = errno;
        what = "syncing";
    }
    if (close(fd) != 0 && e == 0) {
        e = errno;
        what = "closing";
    }
    progress_end(&pr, e == 0);
    /* FILE may have become something else while we wrote; what can still
     * change between this check and the rename is only replaced, never
     * written through (rename replaces the directory entry). */
    int rc = e ? cli_fail(cli, WB_ESYS, "%s %s: %s", what, pending_tmp.name,
                          strerror(e))
               : target_check(cli, t);
    tmp_signals_hold(&mask); /* Renamed or removed, and disarmed, at once. */
    if (rc == 0 && renameat(t->dfd, pending_tmp.name, t->dfd, t->base) != 0)
        rc = cli_fail(cli, WB_ESYS, "renaming %s to %s: %s", pending_tmp.name,
                      t->path, strerror(errno));
    if (rc)
        unlinkat(t->dfd, pending_tmp.name, 0);
    pending_tmp.armed = 0;
    sigprocmask(SIG_SETMASK, &mask, NULL);
    tmp_signals_restore(old);
    /* Make the rename itself durable; FILE is in place either way. */
    if (rc == 0)
        fsync(t->dfd);
    return rc;
}

/* Writes the image to standard output (FILE "-"), without a progress bar
 * (it would interleave with a terminal's data).  Returns 0, or reports the
 * failure and returns WB_CLI_FAIL. */
static int write_stdout(wb_cli *cli, const uint8_t *data, size_t len) {
    progress pr;
    progress_init(&pr, "exporting", len);
    pr.on = 0;
    int e = write_all(STDOUT_FILENO, data, len, &pr);
    return e ? cli_fail(cli, WB_ESYS, "writing stdout: %s", strerror(e))
             : WB_CLI_OK;
}

int cmd_export(wb_cli *cli, const wb_cli_args *a) {
    char model[WB_MAX_NAME + 1];
    uint64_t version;
    const char *path = a->pos[1];
    if (cli_parse_ref(a->pos[0], model, sizeof(model), &version))
        return WB_CLI_USAGE;
    int to_stdout = strcmp(path, "-") == 0;
    if (to_stdout && cli->json)
        return cli_usage_error("export: cannot write the file to stdout "
                               "with --json");
    if (to_stdout && isatty(STDOUT_FILENO))
        return cli_usage_error("export: refusing to write a safetensors "
                               "image to a terminal (redirect stdout)");
    /* Refuse a FILE we would not replace before asking the daemon. */
    export_target t = {.dfd = -1};
    if (!to_stdout && target_open(cli, path, &t))
        return WB_CLI_FAIL;
    wb_mapping *m = NULL;
    int rc = cli_connect(cli);
    if (rc == 0 && (rc = wb_map(cli->c, model, version, WB_MAP_SHARED, &m)))
        rc = cli_fail_client(cli, rc);
    const void *data = NULL;
    size_t len = 0;
    if (rc == 0 && (rc = wb_map_image(m, &data, &len)))
        rc = cli_fail(cli, rc, "%s: cannot read the safetensors image", model);
    if (rc == 0)
        rc = to_stdout ? write_stdout(cli, data, len)
                       : write_file_atomic(cli, &t, data, len);
    uint64_t v = m ? wb_map_version(m) : 0;
    wb_unmap(m);
    if (t.dfd >= 0)
        close(t.dfd);
    if (rc || to_stdout)
        return rc ? WB_CLI_FAIL : WB_CLI_OK;
    char size[WB_CLI_SIZE_BUF];
    if (cli->json)
        return cli_json_print(json_pack("{s:s, s:I, s:s, s:I}", "model", model,
                                        "version", (json_int_t)v, "file", path,
                                        "bytes", (json_int_t)len));
    printf("exported %s@%" PRIu64 " to %s (%s)\n", model, v, path,
           cli_size(len, size, sizeof(size)));
    return WB_CLI_OK;
}
