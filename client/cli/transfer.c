/* transfer.c -- wbroker import and export: safetensors files in and out.
 *
 * import validates the file's header before it asks the daemon for
 * anything, declares every tensor in one publish and reads each tensor's
 * bytes from the file straight into the shared segment, chunk by chunk.
 * Any failure aborts the publish (and a killed process aborts it by
 * closing its connection), so a half-imported version is never visible.
 *
 * export maps a committed version shared and read-only and writes its
 * whole safetensors image (the daemon keeps versions in that layout) to
 * FILE.tmp, fsyncs it, renames it over FILE and fsyncs the directory, so
 * FILE is either the old file or the complete new one.
 *
 * Both draw a progress bar on stderr when stderr is a terminal. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../safetensors.h"
#include "cli.h"

#define WB_CLI_BAR_WIDTH 30            /* Characters of the progress bar. */
#define WB_CLI_BAR_PERIOD_NS 100000000 /* Min nanoseconds between redraws. */

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

/* Writes the image to path atomically: path.tmp, fsync, rename, fsync of
 * the directory.  Returns 0, or reports the failure and returns
 * WB_CLI_FAIL with path untouched and path.tmp removed. */
static int write_file_atomic(wb_cli *cli, const char *path, const uint8_t *data,
                             size_t len) {
    char tmp[WB_CLI_PATH_BUF];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return cli_fail(cli, WB_EINVAL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return cli_fail(cli, WB_ESYS, "%s: %s", tmp, strerror(errno));
    progress pr;
    progress_init(&pr, "exporting", len);
    int e = write_all(fd, data, len, &pr);
    const char *what = "writing";
    if (e == 0 && fsync(fd) != 0) {
        e = errno;
        what = "syncing";
    }
    if (close(fd) != 0 && e == 0) {
        e = errno;
        what = "closing";
    }
    if (e == 0 && rename(tmp, path) != 0) {
        e = errno;
        what = "renaming";
    }
    progress_end(&pr, e == 0);
    if (e) {
        unlink(tmp);
        return cli_fail(cli, WB_ESYS, "%s %s: %s", what, tmp, strerror(e));
    }
    /* Make the rename itself durable. */
    char dir[WB_CLI_PATH_BUF];
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
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
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    wb_mapping *m = NULL;
    int rc = wb_map(cli->c, model, version, WB_MAP_SHARED, &m);
    if (rc) {
        wb_unmap(m);
        return cli_fail_client(cli, rc);
    }
    const void *data;
    size_t len;
    rc = wb_map_image(m, &data, &len);
    if (rc) {
        wb_unmap(m);
        return cli_fail(cli, rc, "%s: cannot read the safetensors image",
                        model);
    }
    if (to_stdout) {
        progress pr;
        progress_init(&pr, "exporting", len);
        pr.on = 0; /* The bar would interleave with a terminal's data. */
        int e = write_all(STDOUT_FILENO, data, len, &pr);
        rc = e ? cli_fail(cli, WB_ESYS, "writing stdout: %s", strerror(e))
               : WB_CLI_OK;
    } else {
        rc = write_file_atomic(cli, path, data, len);
    }
    uint64_t v = wb_map_version(m);
    wb_unmap(m);
    if (rc || to_stdout)
        return rc;
    char size[WB_CLI_SIZE_BUF];
    if (cli->json)
        return cli_json_print(json_pack("{s:s, s:I, s:s, s:I}", "model", model,
                                        "version", (json_int_t)v, "file", path,
                                        "bytes", (json_int_t)len));
    printf("exported %s@%" PRIu64 " to %s (%s)\n", model, v, path,
           cli_size(len, size, sizeof(size)));
    return WB_CLI_OK;
}
