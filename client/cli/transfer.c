/* transfer.c -- wbroker import and export: safetensors files in and out,
 * through wb_import_file() and wb_export_file() (the library holds the one
 * implementation: validation before any request, the atomic write), with a
 * progress bar on stderr when stderr is a terminal.
 *
 * import takes a safetensors file, a sharded checkpoint's index
 * (model.safetensors.index.json) or a directory holding either, and
 * publishes it as one version.  export writes a version to FILE (absent or
 * a regular file, replaced atomically) or, for "-", to standard output.
 *
 * SIGHUP, SIGINT, SIGQUIT and SIGTERM during an export's write stop it
 * through the progress callback, so that the library removes its temporary
 * file; the signal then ends the process as it would have.  Outside the
 * write they end it at once (nothing of ours is on disk then). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* The progress callback of a transfer: draws the bar, and stops the
 * transfer once a signal asked for it (see stop_signals_catch()). */
static volatile sig_atomic_t stop_armed;  /* 1 while a write may be undone. */
static volatile sig_atomic_t stop_signal; /* The signal that came, or 0. */

static int on_progress(void *user, uint64_t done, uint64_t total) {
    progress *p = user;
    stop_armed = 1;
    if (stop_signal)
        return WB_ESTATE;
    p->total = total;
    progress_add(p, done - p->done);
    return 0;
}

/* Signals that stop a transfer rather than end it in the middle. */
static const int stop_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
#define N_STOP_SIGNALS (sizeof(stop_signals) / sizeof(stop_signals[0]))

/* While a write may be undone (the library has called on_progress()),
 * records the signal for on_progress() to stop the transfer; before that
 * ends the process as the signal would have (SA_RESETHAND made its action
 * the default again). */
static void on_stop_signal(int sig) {
    if (!stop_armed)
        raise(sig);
    else
        stop_signal = sig;
}

/* Installs on_stop_signal() for those of stop_signals that are not ignored
 * (nohup's SIGHUP stays ignored), saving the previous actions in old. */
static void stop_signals_catch(struct sigaction old[N_STOP_SIGNALS]) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_STOP_SIGNALS; i++)
        sigaddset(&sa.sa_mask, stop_signals[i]);
    stop_armed = 0;
    stop_signal = 0;
    for (size_t i = 0; i < N_STOP_SIGNALS; i++) {
        sigaction(stop_signals[i], NULL, &old[i]);
        if (old[i].sa_handler != SIG_IGN)
            sigaction(stop_signals[i], &sa, NULL);
    }
}

/* Restores the actions stop_signals_catch() saved, then ends the process
 * with the signal that stopped the transfer, if one did. */
static void stop_signals_restore(const struct sigaction old[N_STOP_SIGNALS]) {
    stop_armed = 0;
    for (size_t i = 0; i < N_STOP_SIGNALS; i++)
        sigaction(stop_signals[i], &old[i], NULL);
    if (stop_signal) {
        signal(stop_signal, SIG_DFL);
        raise(stop_signal);
    }
}

/* ---------------------------------------------------------------- import */

int cmd_import(wb_cli *cli, const wb_cli_args *a) {
    const char *path = a->pos[0], *model = a->pos[1];
    /* --meta KEY=VALUE, split at the first '=' (the parser checked there
     * is one after a non-empty key). */
    wb_kv meta[WB_CLI_MAX_META];
    char *keys[WB_CLI_MAX_META];
    int rc = 0;
    for (int i = 0; i < a->nmeta; i++) {
        const char *eq = strchr(a->meta[i], '=');
        keys[i] = strndup(a->meta[i], (size_t)(eq - a->meta[i]));
        if (keys[i] == NULL)
            rc = cli_fail(cli, WB_ENOMEM, "out of memory");
        meta[i].key = keys[i];
        meta[i].value = eq + 1;
    }
    /* A bad file is refused before anything is asked of a daemon, even
     * when none runs; the import checks it again as it reads it. */
    char err[WB_CLI_ERR_BUF];
    if (rc == 0 && (rc = wb_check_file(path, meta, (size_t)a->nmeta, NULL, err,
                                       sizeof(err))))
        rc = cli_fail(cli, rc, "%s", err);
    if (rc == 0)
        rc = cli_connect(cli);
    progress pr;
    progress_init(&pr, "importing", 0);
    wb_file_info info;
    if (rc == 0) {
        rc = wb_import_file(cli->c, path, model, meta, (size_t)a->nmeta,
                            on_progress, &pr, &info);
        progress_end(&pr, rc == 0);
        if (rc)
            rc = cli_fail_client(cli, rc);
    }
    for (int i = 0; i < a->nmeta; i++)
        free(keys[i]);
    if (rc)
        return rc;
    if (cli->json)
        return cli_json_print(
            json_pack("{s:s, s:I, s:s, s:I, s:I, s:I}", "model", model,
                      "version", (json_int_t)info.version, "file", path,
                      "tensors", (json_int_t)info.tensors, "bytes",
                      (json_int_t)info.bytes, "files", (json_int_t)info.files));
    char size[WB_CLI_SIZE_BUF], files[48] = "";
    if (info.files > 1)
        snprintf(files, sizeof(files), " from %" PRIu64 " files", info.files);
    printf("imported %s as %s@%" PRIu64 " (%" PRIu64 " tensors, %s%s)\n", path,
           model, info.version, info.tensors,
           cli_size(info.bytes, size, sizeof(size)), files);
    return WB_CLI_OK;
}

/* ---------------------------------------------------------------- export */

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
    int rc = cli_connect(cli);
    if (rc)
        return rc;
    progress pr;
    progress_init(&pr, "exporting", 0);
    /* No bar beside standard output: it would interleave with a
     * terminal's data. */
    if (to_stdout)
        pr.on = 0;
    wb_file_info info;
    struct sigaction old[N_STOP_SIGNALS];
    stop_signals_catch(old);
    rc = to_stdout ? wb_export_fd(cli->c, model, version, STDOUT_FILENO,
                                  on_progress, &pr, &info)
                   : wb_export_file(cli->c, model, version, path, on_progress,
                                    &pr, &info);
    progress_end(&pr, rc == 0);
    stop_signals_restore(old);
    if (rc)
        return cli_fail_client(cli, rc);
    if (to_stdout)
        return WB_CLI_OK;
    char size[WB_CLI_SIZE_BUF];
    if (cli->json)
        return cli_json_print(json_pack("{s:s, s:I, s:s, s:I}", "model", model,
                                        "version", (json_int_t)info.version,
                                        "file", path, "bytes",
                                        (json_int_t)info.bytes));
    printf("exported %s@%" PRIu64 " to %s (%s)\n", model, info.version, path,
           cli_size(info.bytes, size, sizeof(size)));
    return WB_CLI_OK;
}
