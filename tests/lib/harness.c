/* harness.c -- Starts and inspects a real wbrokerd for the tests. */
#include "harness.h"

#include <msgpack.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *wbt_build_dir(void) {
    const char *b = getenv("WB_BUILD");
    return b && *b ? b : "build";
}

int wbt_start(wbt_daemon *d, const char *const *extra) {
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
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 500; i++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            return 0;
        }
        if (fd >= 0)
            close(fd);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            d->pid = 0;
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
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

int wbt_fd_count(const wbt_daemon *d) { return scan_fds(d->pid, NULL); }
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

uint64_t wbt_publish_f32(wb_client *c, const char *model, size_t n,
                         size_t len) {
    wb_tensor_spec *specs = calloc(n, sizeof(*specs));
    char (*names)[32] = calloc(n, 32);
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
    unsigned char h[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                          (unsigned char)(len >> 8), (unsigned char)len};
    if (wbt_raw_send(fd, h, 4))
        return -1;
    return wbt_raw_send(fd, body, len);
}

/* Reads exactly len bytes; -1 on EOF or error. */
static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int wbt_raw_reply(int fd) {
    unsigned char h[4];
    if (read_full(fd, h, 4))
        return 1;
    size_t len = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                 ((size_t)h[2] << 8) | h[3];
    char *body = malloc(len ? len : 1);
    if (body == NULL || read_full(fd, body, len)) {
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
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 3 &&
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
    msgpack_pack_int(&pk, 1);
    int rc = wbt_raw_frame(fd, sb.data, sb.size) ? -1 : wbt_raw_reply(fd);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int wbt_setup(void **state, const char *const *extra) {
    wbt_daemon *d = calloc(1, sizeof(*d));
    if (d == NULL || wbt_start(d, extra) != 0) {
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

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int wbt_wait_fds(const wbt_daemon *d, int n) {
    for (int i = 0; i < 500 && wbt_fd_count(d) != n; i++)
        nap_ms(10);
    return wbt_fd_count(d);
}

int wbt_wait_segments(const wbt_daemon *d, int n) {
    for (int i = 0; i < 500 && wbt_segment_count(d) != n; i++)
        nap_ms(10);
    return wbt_segment_count(d);
}

void wbt_wait_clean(const wbt_daemon *d) {
    for (int i = 0; i < 500; i++) {
        if (wbt_segment_count(d) == 0 && wbt_mem_used(d) == 0)
            return;
        nap_ms(10);
    }
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
