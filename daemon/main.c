/* main.c -- wbrokerd: command line, start-up, signals and shut-down.
 *
 * The daemon keeps model state_dicts in sealed shared memory and serves
 * them over a Unix socket (see README.md and docs/protocol.md).  It runs in
 * the foreground, logs to stderr, accepts a socket from systemd (LISTEN_FDS)
 * and reports readiness with sd_notify() under Type=notify. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "access.h"
#include "conn.h"
#include "dispatch.h"
#include "hold.h"
#include "log.h"
#include "ops.h"
#include "paths.h"
#include "registry.h"
#include "restart.h"
#include "worker.h"

#define WB_DEFAULT_CLIENT_TIMEOUT 30 /* Seconds, --client-timeout. */
#define WB_DEFAULT_KEEP 2            /* Unpinned versions per model, --keep. */

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
            "  --client-timeout S   close clients that say no hello, stall in\n"
            "                       a frame or read no replies for S "
            "seconds\n"
            "                       (default 30; 0 never)\n"
            "  --keep N             unpinned versions a commit leaves per "
            "model; older\n"
            "                       ones are retired (default 2; 0 keeps "
            "all)\n"
            "  --max-holds-per-user N\n"
            "                       mappings one user may hold at once, "
            "one descriptor\n"
            "                       each (default half the descriptor "
            "limit; 0 no cap)\n"
            "  --access FILE        access policy (default "
            "/etc/wbroker/access.conf\n"
            "                       when it exists; SIGHUP reloads it)\n"
            "  --max-clients N      clients served at once (default 1024; "
            "admins\n"
            "                       have 16 more)\n"
            "  --max-clients-per-user N\n"
            "                       clients one user may have at once "
            "(default 256)\n"
            "  --log-level LEVEL    debug, info, warn or error (default "
            "info)\n"
            "  --huge-pages MODE    auto, hugetlb, thp or off: 2 MiB pages "
            "for segments\n"
            "                       (default auto: hugetlb where its pool "
            "has room,\n"
            "                       else transparent huge pages, else 4 "
            "KiB)\n"
            "  --persist DIR        also write every committed version to "
            "DIR (in the\n"
            "                       background) and load DIR's versions "
            "back at start\n"
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
    case '\0':
        break;
    case 'k':
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    case '%':
        if (v > 100)
            return -1;
        mul = (double)wb__mem_total() / 100.0;
        end++;
        break;
    default:
        return -1;
    }
    if ((*end == 'i' || *end == 'B') && mul > 1)
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    if (*end != '\0' || v * mul > 1.8e19)
        return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}

/* Parses a decimal count ("0", "12").  Returns 0 or -1. */
static int parse_count(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno)
        return -1;
    *out = v;
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

/* Creates, binds and listens on path; the socket's mode is set before
 * listen() so that no client ever sees other permissions.  A stale socket
 * file is replaced; a live daemon on the path is an error. */
static int bind_path(const char *path, unsigned mode) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        wb__error("socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            wb__error("%s exists and is not a socket", path);
            close(fd);
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 &&
            connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(probe);
            close(fd);
            wb__error("another daemon is listening on %s", path);
            return -1;
        }
        if (probe >= 0)
            close(probe);
        unlink(path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        chmod(path, mode) < 0 || listen(fd, 128) < 0) {
        wb__error("listening on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Makes a listening socket: systemd's (inherited_fd >= 0) made
 * non-blocking, or a new one bound at path.  Returns the fd or -1. */
static int listen_socket(const char *path, unsigned mode, int inherited_fd) {
    int fd = inherited_fd;
    if (fd < 0)
        return bind_path(path, mode);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

/* Every mapping a client keeps costs the daemon one descriptor (its hold,
 * hold.h), so the soft RLIMIT_NOFILE is raised to the hard one; a map
 * fails with EMFILE beyond it.  Returns the soft limit then (0 when
 * unknown). */
static uint64_t raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            wb__warn("cannot raise the descriptor limit to %llu: %s",
                     (unsigned long long)want, strerror(errno));
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    wb__debug("descriptor limit %llu (each mapping a client keeps uses one)",
              (unsigned long long)rl.rlim_cur);
    return rl.rlim_cur == RLIM_INFINITY ? 0 : (uint64_t)rl.rlim_cur;
}

static uv_signal_t sig_term, sig_int, sig_hup;
static int stopping;
static char bound_path[108]; /* Socket path to unlink at exit, or "". */

static void on_walk_close(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
    if (stopping)
        return;
    stopping = 1;
    wb__info("%s: shutting down", strsignal(signum));
    sd_notify(0, "STOPPING=1");
    /* What the store and --persist hold stays for the next start. */
    wb__restart_stop();
    wb__conn_shutdown();
    if (bound_path[0])
        unlink(bound_path);
    uv_signal_stop(&sig_term);
    uv_signal_stop(&sig_int);
    uv_signal_stop(&sig_hup);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
}

static void on_hup(uv_signal_t *s, int signum) {
    (void)s, (void)signum;
    wb__access_reload();
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"memory-limit", required_argument, NULL, 'm'},
        {"socket-mode", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'l'},
        {"client-timeout", required_argument, NULL, 't'},
        {"keep", required_argument, NULL, 'k'},
        {"max-holds-per-user", required_argument, NULL, 'H'},
        {"huge-pages", required_argument, NULL, 'P'},
        {"access", required_argument, NULL, 'A'},
        {"max-clients", required_argument, NULL, 'C'},
        {"max-clients-per-user", required_argument, NULL, 'U'},
        {"persist", required_argument, NULL, 'D'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *socket_opt = NULL;
    uint64_t limit = 0;
    unsigned mode = 0660;
    unsigned timeout = WB_DEFAULT_CLIENT_TIMEOUT;
    uint64_t keep = WB_DEFAULT_KEEP;
    uint64_t user_holds = 0;
    int user_holds_set = 0;
    int pages = WB_PAGES_AUTO;
    const char *access_file = NULL;
    const char *persist_dir = NULL;
    uint64_t nclients;
    int c;
    while ((c = getopt_long(argc, argv, "s:m:p:l:t:k:H:P:A:C:U:D:Vh", opts,
                            NULL)) != -1) {
        switch (c) {
        case 'D':
            persist_dir = optarg;
            break;
        case 'P':
            if ((pages = wb__seg_pages_parse(optarg)) < 0) {
                fprintf(stderr, "wbrokerd: bad --huge-pages '%s'\n", optarg);
                return 2;
            }
            break;
        case 'k':
            if (parse_count(optarg, &keep)) {
                fprintf(stderr, "wbrokerd: bad --keep '%s'\n", optarg);
                return 2;
            }
            break;
        case 'H':
            if (parse_count(optarg, &user_holds) || user_holds > SIZE_MAX) {
                fprintf(stderr, "wbrokerd: bad --max-holds-per-user '%s'\n",
                        optarg);
                return 2;
            }
            user_holds_set = 1;
            break;
        case 'A':
            access_file = optarg;
            break;
        case 'C':
        case 'U':
            if (parse_count(optarg, &nclients) || nclients == 0 ||
                nclients > WB_MAX_CLIENTS - WB_ADMIN_SLOTS) {
                fprintf(stderr,
                        "wbrokerd: bad --max-clients%s '%s' (1 to %d)\n",
                        c == 'U' ? "-per-user" : "", optarg,
                        WB_MAX_CLIENTS - WB_ADMIN_SLOTS);
                return 2;
            }
            if (c == 'C')
                wb__max_clients = (size_t)nclients;
            else
                wb__max_clients_per_user = (size_t)nclients;
            break;
        case 't': {
            char *end;
            unsigned long t = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end || t > 86400) {
                fprintf(stderr, "wbrokerd: bad --client-timeout '%s'\n",
                        optarg);
                return 2;
            }
            timeout = (unsigned)t;
            break;
        }
        case 's':
            socket_opt = optarg;
            break;
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
        case 'V':
            printf("wbrokerd %s\n", wb_version_string());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
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

    uint64_t total = wb__mem_total();
    if (total != 0 && limit > total)
        wb__warn("memory limit of %llu bytes is more than this machine's "
                 "%llu bytes of memory: publishes will fail for want of "
                 "memory (ENOSPC) long before the limit (ELIMIT)",
                 (unsigned long long)limit, (unsigned long long)total);
    uint64_t cg = wb__cgroup_memory_max();
    /* The daemon's own memory counts against its cgroup too: keep some
     * of it out of the limit, or the OOM killer answers before ELIMIT. */
    uint64_t room = cg - (cg / 8 < WB_SEG_RESERVE ? cg / 8 : WB_SEG_RESERVE);
    if (cg != 0 && limit > room) {
        wb__warn("memory limit lowered from %llu to %llu bytes: the daemon's "
                 "cgroup allows %llu in all",
                 (unsigned long long)limit, (unsigned long long)room,
                 (unsigned long long)cg);
        limit = room;
    }

    char why[256];
    if (wb__seg_set_pages((wb__pages_mode)pages, why, sizeof(why)) != 0) {
        wb__error("--huge-pages %s: %s", wb__seg_pages_name(pages), why);
        return 1;
    }

    if (wb__access_load(access_file) != 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    uint64_t nofile = raise_nofile();
    /* Half the descriptors for any one user's holds by default: the rest
     * stay for other users, connections and segments. */
    wb__hold_user_max = (size_t)(user_holds_set ? user_holds : nofile / 2);
    uv_loop_t *loop = uv_default_loop();
    wb__reg.mem_limit = limit;
    wb__reg.keep = keep;
    wb__started = (double)uv_hrtime() / 1e9;

    /* Before the socket exists: whoever sees it may already signal us. */
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);

    /* The listening socket and what the descriptor store kept come in
     * one list; versions come back before anyone can connect. */
    int inherited = -1;
    if (wb__restart_recover(persist_dir, &inherited) != 0)
        return 1;

    char path[108];
    if (wb__socket_path_listen(socket_opt, path, sizeof(path)) < 0) {
        wb__error("socket path too long");
        return 1;
    }
    if (inherited < 0 && make_socket_dir(path) < 0)
        return 1;
    int lfd = listen_socket(path, mode, inherited);
    if (lfd < 0)
        return 1;
    if (inherited < 0)
        snprintf(bound_path, sizeof(bound_path), "%s", path);
    if (wb__worker_start(loop) != 0 ||
        wb__conn_listen(loop, lfd, &wb__dispatch_ops, timeout) != 0) {
        wb__error("cannot start the event loop's handles");
        return 1;
    }

    wb__info("wbrokerd %s listening on %s (memory limit %llu bytes, keep "
             "%llu, client timeout %u s, huge pages %s, pid %d)",
             wb_version_string(), inherited >= 0 ? "systemd socket" : path,
             (unsigned long long)limit, (unsigned long long)keep, timeout,
             wb__seg_pages_name(pages), (int)getpid());
    sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%d",
               inherited >= 0 ? "systemd socket" : path, (int)getpid());

    uv_run(loop, UV_RUN_DEFAULT);

    /* Every connection is closed: finish the worker's tasks, then drop
     * every version so that each segment is closed and accounted. */
    wb__worker_stop();
    uv_run(loop, UV_RUN_NOWAIT);
    wb__holds_clear();
    wb__registry_clear();
    wb__access_clear();
    uv_walk(loop, on_walk_close, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    wb__info("stopped");
    return 0;
}
