/* harness.c -- Starts and inspects a real wbrokerd for the tests. */
#include "harness.h"

#include "fdpass.h"
#include "wire.h"

#include <msgpack.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *wbt_build_dir(void) {
    const char *b = getenv("WB_BUILD");
    return b && *b ? b : "build";
}

/* Starts the daemon; nofile > 0 sets its RLIMIT_NOFILE first. */
static int start_daemon(wbt_daemon *d, const char *const *extra,
                        unsigned long nofile) {
    memset(d, 0, sizeof(*d));
    snprintf(d->dir, sizeof(d->dir), "/tmp/wbt-XXXXXX");
    if (mkdtemp(d->dir) == NULL)
        return -1;
    snprintf(d->sock, sizeof(d->sock), "%s/wb.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/wbrokerd.log", d->dir);
    char bin[256];
    snprintf(bin, sizeof(bin), "%s/wbrokerd", wbt_build_dir());
    const char *argv[32];
    int a = 0;
    argv[a++] = bin;
    argv[a++] = "--socket";
    argv[a++] = d->sock;
    argv[a++] = "--log-level";
    argv[a++] = "debug";
    for (int i = 0; extra && extra[i] && a < 30; i++)
        argv[a++] = extra[i];
    argv[a] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        FILE *f = freopen(d->log, "w", stderr);
        (void)f;
        unsetenv("LISTEN_FDS");
        unsetenv("NOTIFY_SOCKET");
        setenv("LIBC_FATAL_STDERR_", "1", 1); /* glibc's aborts to the log. */
        if (nofile > 0) {
            struct rlimit rl = {nofile, nofile};
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                _exit(126);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 500; i++) {
        int fd = wbt_raw_connect(d);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            d->pid = 0;
            return -1;
        }
        wbt_sleep_ms(10);
    }
    return -1;
}

int wbt_start(wbt_daemon *d, const char *const *extra) {
    return start_daemon(d, extra, 0);
}

int wbt_start_limits(wbt_daemon *d, const char *const *extra,
                     unsigned long nofile) {
    return start_daemon(d, extra, nofile);
}

int wbt_stop(wbt_daemon *d) {
    int st = -1;
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        if (waitpid(d->pid, &st, 0) != d->pid)
            st = -1;
        d->pid = 0;
    }
    if (getenv("WBT_KEEP_LOGS") == NULL) {
        unlink(d->log);
        unlink(d->sock);
        rmdir(d->dir);
    }
    return st;
}

wb_client *wbt_connect(const wbt_daemon *d) {
    wb_client *c = NULL;
    int rc = wb_connect(d->sock, &c);
    if (rc) {
        fprintf(stderr, "connect: %s: %s\n", wb_strerror(rc), wb_errmsg(c));
        wb_close(c);
        return NULL;
    }
    return c;
}

/* Calls fn for each open descriptor's link target of pid. */
static int scan_fds(pid_t pid, const char *prefix) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (dir == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        if (prefix == NULL) {
            n++;
            continue;
        }
        char link[320], target[256];
        snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
        ssize_t k = readlink(link, target, sizeof(target) - 1);
        if (k <= 0)
            continue;
        target[k] = '\0';
        if (strstr(target, prefix))
            n++;
    }
    closedir(dir);
    return n;
}

int wbt_fd_count(const wbt_daemon *d) {
    return scan_fds(d->pid, NULL);
}
int wbt_segment_count(const wbt_daemon *d) {
    return scan_fds(d->pid, "/memfd:wbroker:");
}

int wbt_alive(const wbt_daemon *d) {
    return d->pid > 0 && kill(d->pid, 0) == 0 &&
           waitpid(d->pid, NULL, WNOHANG) == 0;
}

uint64_t wbt_mem_used(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    wb_status st;
    uint64_t used = UINT64_MAX;
    if (c && wb_get_status(c, &st) == 0)
        used = st.memory_used;
    wb_close(c);
    return used;
}

uint64_t wbt_counter(const wbt_daemon *d, const char *name) {
    wb_client *c = wbt_connect(d);
    wb_counter *v = NULL;
    size_t n = 0;
    uint64_t value = UINT64_MAX;
    if (c && wb_get_counters(c, &v, &n) == 0) {
        value = 0;
        for (size_t i = 0; i < n; i++)
            if (strcmp(v[i].name, name) == 0)
                value = v[i].value;
    }
    wb_counters_free(v, n);
    wb_close(c);
    return value;
}

uint64_t wbt_publish_f32(wb_client *c, const char *model, size_t n,
                         size_t len) {
    wb_tensor_spec *specs = calloc(n, sizeof(*specs));
    char(*names)[32] = calloc(n, 32);
    int64_t shape[1] = {(int64_t)len};
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 32, "t%zu", i);
        specs[i] = (wb_tensor_spec){names[i], WB_F32, 1, shape, NULL};
    }
    wb_publish *p = NULL;
    uint64_t version = 0;
    int rc = wb_publish_begin(c, model, specs, n, NULL, 0, &p);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            size_t nb;
            float *f = wb_publish_data(p, i, &nb);
            for (size_t j = 0; j < len; j++)
                f[j] = (float)(i * 1000 + j);
        }
        rc = wb_publish_commit(p, &version);
    }
    if (rc)
        fprintf(stderr, "publish %s: %s: %s\n", model, wb_strerror(rc),
                wb_errmsg(c));
    free(specs);
    free(names);
    return rc ? 0 : version;
}

int wbt_raw_connect(const wbt_daemon *d) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

int wbt_raw_send(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int wbt_raw_frame(int fd, const void *body, size_t len) {
    unsigned char h[4] = {(unsigned char)(len >> 24),
                          (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                          (unsigned char)len};
    if (wbt_raw_send(fd, h, 4))
        return -1;
    return wbt_raw_send(fd, body, len);
}

int wbt_raw_recv(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int wbt_raw_reply(int fd) {
    unsigned char h[4];
    if (wbt_raw_recv(fd, h, 4))
        return 1;
    size_t len = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                 ((size_t)h[2] << 8) | h[3];
    char *body = malloc(len ? len : 1);
    if (body == NULL || wbt_raw_recv(fd, body, len)) {
        free(body);
        return 1;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int err = 1000;
    if (msgpack_unpack_next(&up, body, len, &off) == MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
            msgpack_object_kv *kv = &up.data.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR &&
                kv->key.via.str.size == 3 &&
                memcmp(kv->key.via.str.ptr, "err", 3) == 0)
                err = kv->val.type == MSGPACK_OBJECT_NEGATIVE_INTEGER
                          ? (int)kv->val.via.i64
                          : (int)kv->val.via.u64;
        }
    }
    msgpack_unpacked_destroy(&up);
    free(body);
    return err;
}

int wbt_raw_hello(int fd) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, "hello", 5);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_str_with_body(&pk, "proto", 5);
    msgpack_pack_int(&pk, WB_PROTO_VERSION);
    int rc = wbt_raw_frame(fd, sb.data, sb.size) ? -1 : wbt_raw_reply(fd);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int wbt_setup(void **state, const char *const *extra) {
    return wbt_setup_limits(state, extra, 0);
}

int wbt_setup_limits(void **state, const char *const *extra,
                     unsigned long nofile) {
    wbt_daemon *d = calloc(1, sizeof(*d));
    if (d == NULL || wbt_start_limits(d, extra, nofile) != 0) {
        free(d);
        return -1;
    }
    *state = d;
    return 0;
}

int wbt_teardown(void **state) {
    wbt_daemon *d = *state;
    int st = wbt_stop(d);
    free(d);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

void wbt_raw_packed(int fd, void (*fn)(msgpack_packer *)) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    fn(&pk);
    wbt_raw_frame(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

void wbt_pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

void wbt_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int wbt_wait_fds(const wbt_daemon *d, int n) {
    for (int i = 0; i < 500 && wbt_fd_count(d) != n; i++)
        wbt_sleep_ms(10);
    return wbt_fd_count(d);
}

int wbt_wait_segments(const wbt_daemon *d, int n) {
    for (int i = 0; i < 500 && wbt_segment_count(d) != n; i++)
        wbt_sleep_ms(10);
    return wbt_segment_count(d);
}

int wbt_settled_fds(const wbt_daemon *d, int quiet_ms, int max_ms) {
    int n = wbt_fd_count(d), same = 0;
    for (int i = 0; i < max_ms / 10 && same < quiet_ms / 10; i++) {
        wbt_sleep_ms(10);
        int k = wbt_fd_count(d);
        same = k == n ? same + 1 : 0;
        n = k;
    }
    return n;
}

void wbt_wait_clean(const wbt_daemon *d) {
    for (int i = 0; i < 500; i++) {
        if (wbt_segment_count(d) == 0 && wbt_mem_used(d) == 0)
            return;
        wbt_sleep_ms(10);
    }
}

uint64_t wbt_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t wbt_seed(const char *env) {
    const char *v = getenv(env);
    return v && *v ? strtoull(v, NULL, 0)
                   : (uint64_t)time(NULL) * 1000003u + (uint64_t)getpid();
}

double wbt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double wbt_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

size_t wbt_parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K')
        v *= 1024;
    else if (*end == 'M')
        v *= 1024 * 1024;
    else if (*end == 'G')
        v *= 1024.0 * 1024 * 1024;
    return (size_t)v;
}

wb_client *wbt_bench_start(wbt_daemon *d) {
    static const char *const extra[] = {"--log-level", "warn", NULL};
    if (wbt_start(d, extra)) {
        fprintf(stderr, "cannot start %s/wbrokerd\n", wbt_build_dir());
        return NULL;
    }
    wb_client *c = wbt_connect(d);
    if (c == NULL) {
        fprintf(stderr, "cannot connect to %s\n", d->sock);
        wbt_stop(d);
    }
    return c;
}

/* ------------------------------------------------------------ abuse */

int wbt_running(const wbt_daemon *d) {
    if (d->pid <= 0 || kill(d->pid, 0) != 0)
        return 0;
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

int wbt_finish(wbt_daemon *d) {
    int st = -1, found_dead = !wbt_running(d);
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        for (int i = 0; i < 1000; i++) {
            pid_t r = waitpid(d->pid, &st, WNOHANG);
            if (r == d->pid)
                break;
            if (r < 0) { /* Already reaped elsewhere. */
                st = -1;
                break;
            }
            if (i == 999) {
                fprintf(stderr, "wbrokerd %d ignored SIGTERM for 10 s\n",
                        (int)d->pid);
                kill(d->pid, SIGKILL);
                waitpid(d->pid, &st, 0);
                st = -1;
            }
            wbt_sleep_ms(10);
        }
        d->pid = 0;
    }
    if (found_dead || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (found_dead)
            fprintf(stderr, "wbrokerd had died before the end of the test\n");
        if (st == -1)
            ;
        else if (WIFSIGNALED(st))
            fprintf(stderr, "wbrokerd was killed by signal %d\n", WTERMSIG(st));
        else if (WIFEXITED(st))
            fprintf(stderr, "wbrokerd exited with status %d\n",
                    WEXITSTATUS(st));
        wbt_log_tail(d, 120);
    }
    if (getenv("WBT_KEEP_LOGS") == NULL) {
        unlink(d->log);
        unlink(d->sock);
        rmdir(d->dir);
    }
    return found_dead && st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? -1
                                                                           : st;
}

int wbt_teardown_finish(void **state) {
    wbt_daemon *d = *state;
    int st = wbt_finish(d);
    wbt_watchdog(NULL, 0);
    free(d);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

static volatile pid_t watchdog_pid;          /* Daemon the watchdog kills. */
static volatile sig_atomic_t watchdog_fired; /* 1 once it killed it. */

static void on_watchdog(int sig) {
    (void)sig;
    if (!watchdog_fired) {
        static const char msg[] = "\nwatchdog: the test is stuck; killing "
                                  "the daemon so that it fails\n";
        ssize_t w = write(2, msg, sizeof(msg) - 1);
        (void)w;
        if (watchdog_pid > 0)
            kill(watchdog_pid, SIGKILL);
        watchdog_fired = 1;
        alarm(30);
        return;
    }
    static const char msg[] = "watchdog: still stuck; giving up\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    _exit(99);
}

void wbt_watchdog(const wbt_daemon *d, unsigned seconds) {
    alarm(0);
    watchdog_fired = 0;
    watchdog_pid = d ? d->pid : 0;
    if (seconds == 0)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_watchdog;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
}

double wbt_cpu_seconds(const wbt_daemon *d) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    /* After the command: state (3), then fields 4..; utime is 14. */
    unsigned long long utime = 0, stime = 0;
    p += 2;
    for (int field = 3; field < 14 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (p == NULL || sscanf(p, "%llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* Calls fn on each line of the log; returns the number of lines. */
static int log_scan(const wbt_daemon *d, void (*fn)(const char *, void *),
                    void *arg) {
    FILE *f = fopen(d->log, "re");
    if (f == NULL)
        return 0;
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) >= 0) {
        if (fn)
            fn(line, arg);
        n++;
    }
    free(line);
    fclose(f);
    return n;
}

int wbt_log_lines(const wbt_daemon *d) {
    return log_scan(d, NULL, NULL);
}

typedef struct grep_state {
    int skip;                   /* Lines still to skip. */
    const char *const *needles; /* Words looked for. */
    int hits;                   /* Lines found. */
} grep_state;

static void grep_line(const char *line, void *arg) {
    grep_state *g = arg;
    if (g->skip > 0) {
        g->skip--;
        return;
    }
    for (int i = 0; g->needles[i]; i++)
        if (strcasestr(line, g->needles[i])) {
            g->hits++;
            return;
        }
}

int wbt_log_grep(const wbt_daemon *d, int skip, const char *const *needles) {
    grep_state g = {skip, needles, 0};
    log_scan(d, grep_line, &g);
    return g.hits;
}

typedef struct tail_state {
    char *lines[256]; /* Ring of the last lines. */
    int n;            /* Lines seen. */
    int keep;         /* Lines kept (<= 256). */
} tail_state;

static void tail_line(const char *line, void *arg) {
    tail_state *t = arg;
    int k = t->n++ % t->keep;
    free(t->lines[k]);
    t->lines[k] = strdup(line);
}

void wbt_log_tail(const wbt_daemon *d, int n) {
    tail_state t = {.keep = n < 1 ? 1 : n > 256 ? 256 : n};
    log_scan(d, tail_line, &t);
    int first = t.n > t.keep ? t.n - t.keep : 0;
    fprintf(stderr, "---- last %d lines of %s ----\n", t.n - first, d->log);
    for (int i = first; i < t.n; i++) {
        char *l = t.lines[i % t.keep];
        fputs(l ? l : "?\n", stderr);
    }
    fprintf(stderr, "----\n");
    for (int i = 0; i < t.keep; i++)
        free(t.lines[i]);
}

uint64_t wbt_shmem_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "Shmem: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (uint64_t)kb * 1024;
}

long wbt_clients(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    wb_status st;
    long n = -1;
    if (c && wb_get_status(c, &st) == 0)
        n = (long)st.clients;
    wb_close(c);
    return n;
}

/* ------------------------------------------------------------ frames */

void wbt_frames_add(wbt_frames *f, const void *body, size_t len) {
    if (f->len + 4 + len > f->cap) {
        size_t cap = f->cap ? f->cap : 4096;
        while (cap < f->len + 4 + len)
            cap *= 2;
        uint8_t *p = realloc(f->data, cap);
        if (p == NULL)
            abort();
        f->data = p;
        f->cap = cap;
    }
    uint8_t *h = f->data + f->len;
    h[0] = (uint8_t)(len >> 24);
    h[1] = (uint8_t)(len >> 16);
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
    memcpy(h + 4, body, len);
    f->len += 4 + len;
}

/* A request being packed: a map of nfields fields besides op and id. */
typedef struct req {
    msgpack_sbuffer sb; /* Bytes. */
    msgpack_packer pk;  /* Packer into sb. */
} req;

static msgpack_packer *req_begin(req *r, const char *op, uint64_t id,
                                 size_t nfields) {
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&r->pk, nfields + 2);
    wbt_pk_str(&r->pk, "op");
    wbt_pk_str(&r->pk, op);
    wbt_pk_str(&r->pk, "id");
    msgpack_pack_uint64(&r->pk, id);
    return &r->pk;
}

static void req_end(req *r, wbt_frames *f) {
    wbt_frames_add(f, r->sb.data, r->sb.size);
    msgpack_sbuffer_destroy(&r->sb);
}

void wbt_frames_hello(wbt_frames *f, uint64_t id) {
    req r;
    msgpack_packer *pk = req_begin(&r, "hello", id, 1);
    wbt_pk_str(pk, "proto");
    msgpack_pack_int(pk, WB_PROTO_VERSION);
    req_end(&r, f);
}

void wbt_frames_status(wbt_frames *f, uint64_t id) {
    req r;
    req_begin(&r, "status", id, 0);
    req_end(&r, f);
}

void wbt_frames_watch(wbt_frames *f, uint64_t id, const char *model,
                      uint64_t after, int64_t timeout_ms) {
    req r;
    msgpack_packer *pk = req_begin(&r, "watch", id, 3);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, model);
    wbt_pk_str(pk, "after");
    msgpack_pack_uint64(pk, after);
    wbt_pk_str(pk, "timeout");
    msgpack_pack_int64(pk, timeout_ms);
    req_end(&r, f);
}

static void frames_pub(wbt_frames *f, const char *op, uint64_t id,
                       uint64_t pub) {
    req r;
    msgpack_packer *pk = req_begin(&r, op, id, 1);
    wbt_pk_str(pk, "pub");
    msgpack_pack_uint64(pk, pub);
    req_end(&r, f);
}

void wbt_frames_commit(wbt_frames *f, uint64_t id, uint64_t pub) {
    frames_pub(f, "commit", id, pub);
}

void wbt_frames_abort(wbt_frames *f, uint64_t id, uint64_t pub) {
    frames_pub(f, "abort", id, pub);
}

/* A request op whose only fields are model and version. */
static void frames_model_version(wbt_frames *f, const char *op, uint64_t id,
                                 const char *model, uint64_t version) {
    req r;
    msgpack_packer *pk = req_begin(&r, op, id, 2);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, model);
    wbt_pk_str(pk, "version");
    msgpack_pack_uint64(pk, version);
    req_end(&r, f);
}

void wbt_frames_drop(wbt_frames *f, uint64_t id, const char *model,
                     uint64_t version) {
    frames_model_version(f, "drop", id, model, version);
}

void wbt_frames_map(wbt_frames *f, uint64_t id, const char *model,
                    uint64_t version) {
    frames_model_version(f, "map", id, model, version);
}

void wbt_frames_publish_f32(wbt_frames *f, uint64_t id, const char *model,
                            size_t n, size_t len) {
    wbt_frames_publish_f32_meta(f, id, model, n, len, NULL, NULL);
}

void wbt_frames_publish_f32_meta(wbt_frames *f, uint64_t id, const char *model,
                                 size_t n, size_t len, const char *key,
                                 const char *value) {
    req r;
    msgpack_packer *pk = req_begin(&r, "publish", id, key ? 3 : 2);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, model);
    wbt_pk_str(pk, "tensors");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "t%zu", i);
        msgpack_pack_array(pk, 3);
        wbt_pk_str(pk, name);
        wbt_pk_str(pk, "F32");
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint64(pk, len);
    }
    if (key) {
        wbt_pk_str(pk, "meta");
        msgpack_pack_map(pk, 1);
        wbt_pk_str(pk, key);
        wbt_pk_str(pk, value);
    }
    req_end(&r, f);
}

int wbt_frames_send(int fd, const wbt_frames *f) {
    return wbt_raw_send(fd, f->data, f->len);
}

void wbt_frames_free(wbt_frames *f) {
    free(f->data);
    memset(f, 0, sizeof(*f));
}

/* ------------------------------------------------------------ replies */

/* What wbt_reply.priv holds. */
typedef struct reply_priv {
    char *body;          /* The frame's body. */
    msgpack_unpacked up; /* Unpacked body. */
} reply_priv;

/* A reply keeps every descriptor one message may carry. */
_Static_assert(sizeof(((wbt_reply *)0)->fds) == sizeof(int) * WB_FDPASS_MAX,
               "wbt_reply.fds holds WB_FDPASS_MAX descriptors");

/* Reads exactly len bytes before the deadline, collecting descriptors.
 * Returns 0, WBT_CLOSED or WBT_TIMEOUT. */
static int read_until(int fd, void *buf, size_t len, double deadline,
                      wbt_reply *r) {
    char *p = buf;
    while (len > 0) {
        int left = (int)((deadline - wbt_now()) * 1000);
        if (left < 0)
            return WBT_TIMEOUT;
        struct pollfd pfd = {fd, POLLIN, 0};
        int k = poll(&pfd, 1, left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0)
            return WBT_TIMEOUT;
        int *fds = r ? r->fds + r->nfds : NULL;
        int nfds = 0, ctrunc = 0;
        ssize_t n =
            wb__fd_recv(fd, p, len, fds, r ? WB_FDPASS_MAX - r->nfds : 0, &nfds,
                        &ctrunc, MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            continue;
        if (r)
            r->nfds += nfds;
        if (n <= 0)
            return WBT_CLOSED;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int wbt_raw_read(int fd, int timeout_ms, wbt_reply *r) {
    memset(r, 0, sizeof(*r));
    double deadline = wbt_now() + timeout_ms / 1000.0;
    unsigned char h[4];
    int rc = read_until(fd, h, 4, deadline, r);
    if (rc)
        return r->err = rc;
    size_t len = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                 ((size_t)h[2] << 8) | h[3];
    reply_priv *pv = calloc(1, sizeof(*pv));
    if (pv == NULL || (pv->body = malloc(len ? len : 1)) == NULL)
        abort();
    msgpack_unpacked_init(&pv->up);
    r->priv = pv;
    rc = read_until(fd, pv->body, len, deadline, r);
    if (rc)
        return r->err = rc;
    size_t off = 0;
    r->err = WBT_MALFORMED;
    if (msgpack_unpack_next(&pv->up, pv->body, len, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        pv->up.data.type == MSGPACK_OBJECT_MAP) {
        r->root = &pv->up.data;
        const msgpack_object_map *m = &r->root->via.map;
        for (uint32_t i = 0; i < m->size; i++) {
            const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
            if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != 3 ||
                memcmp(k->via.str.ptr, "err", 3) != 0)
                continue;
            if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                r->err = (int)v->via.i64;
            else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                r->err = (int)v->via.u64;
        }
        r->id = wbt_reply_u64(r, "id");
    }
    return r->err;
}

uint64_t wbt_reply_u64(const wbt_reply *r, const char *key) {
    if (r->root == NULL)
        return UINT64_MAX;
    const msgpack_object_map *m = &r->root->via.map;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0 &&
            v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            return v->via.u64;
    }
    return UINT64_MAX;
}

void wbt_reply_free(wbt_reply *r) {
    for (int i = 0; i < r->nfds; i++)
        if (r->fds[i] >= 0)
            close(r->fds[i]);
    reply_priv *pv = r->priv;
    if (pv) {
        msgpack_unpacked_destroy(&pv->up);
        free(pv->body);
        free(pv);
    }
    memset(r, 0, sizeof(*r));
}

int wbt_raw_wait_closed(int fd, int timeout_ms) {
    double deadline = wbt_now() + timeout_ms / 1000.0;
    char buf[4096];
    for (;;) {
        double left = deadline - wbt_now();
        if (left < 0)
            return 0;
        /* Any bytes will do: read them one chunk at a time. */
        struct pollfd pfd = {fd, POLLIN, 0};
        int k = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0)
            continue;
        int nfds = 0, ctrunc = 0; /* Descriptors: closed on arrival. */
        ssize_t n = wb__fd_recv(fd, buf, sizeof(buf), NULL, 0, &nfds, &ctrunc,
                                MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            continue;
        if (n <= 0)
            return 1;
    }
}
