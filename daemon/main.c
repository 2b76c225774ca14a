/* main.c -- wbrokerd: command line, start-up, signals and shut-down.
 *
 * The daemon keeps model state_dicts in sealed shared memory and serves
 * them over a Unix socket (see README.md and docs/protocol.md).  It runs in
 * the foreground, logs to stderr, accepts a socket from systemd (LISTEN_FDS)
 * and reports readiness with sd_notify() under Type=notify. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "broker.h"
#include "log.h"
#include "paths.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: wbrokerd [OPTIONS]\n"
            "\n"
            "Keeps model state_dicts in shared memory and maps them into\n"
            "clients without copies.\n"
            "\n"
            "  --socket PATH        socket to listen on (default: "
            "$WBROKER_SOCKET,\n"
            "                       /run/wbroker/wbroker.sock for root,\n"
            "                       $XDG_RUNTIME_DIR/wbroker.sock, "
            "/tmp/wbroker-$UID/...)\n"
            "  --memory-limit SIZE  shared memory to hold, e.g. 8G or 50%% "
            "(default 50%% of RAM)\n"
            "  --socket-mode MODE   permissions of the socket (default 0660)\n"
            "  --log-level LEVEL    debug, info, warn or error (default "
            "info)\n"
            "  --version            print the version and exit\n"
            "  --help               print this help and exit\n");
}

/* Parses "123", "64K", "8G", "50%" (of RAM).  Returns 0 or -1. */
static int parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    double mul = 1;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    case '%':
        if (v > 100)
            return -1;
        mul = (double)wb__mem_total() / 100.0;
        end++;
        break;
    default: return -1;
    }
    if ((*end == 'i' || *end == 'B') && mul > 1)
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    if (*end != '\0' || v * mul > 1.8e19)
        return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}

/* Creates the socket's directory if it is missing (one level), then
 * refuses a directory that someone else could have put a socket into: it
 * must belong to this user or root and be writable by nobody else (or be
 * root's and sticky, like /tmp).  Returns 0, or -1 after saying why. */
static int make_socket_dir(const char *path) {
    char dir[256];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, geteuid() == 0 ? 0755 : 0700) < 0 && errno != EEXIST)
            wb__warn("mkdir %s: %s", dir, strerror(errno));
    }
    char why[WB_DIR_WHY_MAX];
    int rc = wb__socket_dir_check(path, geteuid(), 0, NULL, why, sizeof(why));
    if (rc == 0 || rc == 1) /* A missing directory fails in bind(). */
        return 0;
    wb__error("refusing to listen on %s: %s", path, why);
    return -1;
}

static uv_signal_t sig_term, sig_int;

static void on_walk_close(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
    wb__broker *b = s->data;
    if (b->stopping)
        return;
    b->stopping = 1;
    wb__info("%s: shutting down", strsignal(signum));
    sd_notify(0, "STOPPING=1");
    wb__server_stop(b);
    uv_signal_stop(&sig_term);
    uv_signal_stop(&sig_int);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"memory-limit", required_argument, NULL, 'm'},
        {"socket-mode", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *socket_opt = NULL;
    uint64_t limit = 0;
    unsigned mode = 0660;
    int c;
    while ((c = getopt_long(argc, argv, "s:m:p:l:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 's': socket_opt = optarg; break;
        case 'm':
            if (parse_size(optarg, &limit) || limit == 0) {
                fprintf(stderr, "wbrokerd: bad --memory-limit '%s'\n", optarg);
                return 2;
            }
            break;
        case 'p': {
            char *end;
            unsigned long m = strtoul(optarg, &end, 8);
            if (*end || m > 0777) {
                fprintf(stderr, "wbrokerd: bad --socket-mode '%s'\n", optarg);
                return 2;
            }
            mode = (unsigned)m;
            break;
        }
        case 'l':
            if ((wb__log_level = wb__log_level_parse(optarg)) < 0) {
                fprintf(stderr, "wbrokerd: bad --log-level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'V': printf("wbrokerd %s\n", wb_version_string()); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (limit == 0)
        limit = wb__mem_total() / 2;
    if (limit == 0)
        limit = 1ull << 30;

    signal(SIGPIPE, SIG_IGN);
    static wb__broker broker;
    wb__broker *b = &broker;
    wb__g = b;
    b->loop = uv_default_loop();
    b->listen_fd = -1;
    b->mem_limit = limit;
    b->started = (double)uv_hrtime() / 1e9;

    int inherited = -1;
    int nfds = sd_listen_fds(1);
    if (nfds > 1) {
        wb__error("systemd passed %d sockets; expected one", nfds);
        return 1;
    }
    if (nfds == 1)
        inherited = SD_LISTEN_FDS_START;

    char path[108];
    if (wb_socket_path(socket_opt, path, sizeof(path)) < 0) {
        wb__error("socket path too long");
        return 1;
    }
    if (inherited < 0 && make_socket_dir(path) < 0)
        return 1;
    if (wb__server_listen(b, path, mode, inherited) < 0)
        return 1;

    uv_signal_init(b->loop, &sig_term);
    uv_signal_init(b->loop, &sig_int);
    sig_term.data = sig_int.data = b;
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);

    wb__info("wbrokerd %s listening on %s (memory limit %llu bytes, pid %d)",
             wb_version_string(), inherited >= 0 ? "systemd socket" : path,
             (unsigned long long)limit, (int)getpid());
    sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%d",
               inherited >= 0 ? "systemd socket" : path, (int)getpid());

    uv_run(b->loop, UV_RUN_DEFAULT);

    /* Drop every version so that each segment is closed and accounted. */
    while (b->models) {
        wb__model *m = b->models;
        while (m->versions)
            wb__version_drop(b, m->versions);
        m->watchers = NULL;
        wb__model_gc(b, m);
    }
    uv_walk(b->loop, on_walk_close, NULL);
    uv_run(b->loop, UV_RUN_DEFAULT);
    uv_loop_close(b->loop);
    wb__info("stopped");
    return 0;
}
