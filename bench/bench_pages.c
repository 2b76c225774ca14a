/* bench_pages.c -- wbrokerd on one page backend, each figure next to its
 * baseline measured in the same run (medians):
 *
 *   build/bench/bench_pages [--huge-pages auto|hugetlb|thp|off]
 *       [--sizes 64M,1G] [--tensors 300] [--runs 5] [--clients 2]
 *       [--seconds 2]
 *
 * - publish (wb_publish_data + memcpy + commit) against backing a fresh
 *   memfd of the same kind and memcpy into it through a shared mapping;
 * - a second, fresh process: request to usable pointers (wb_map), and to
 *   every weight resident (a read of each 4 KiB), against the C limit:
 *   mmap of a sealed memfd of the same kind plus the same reads;
 * - map requests per second from --clients processes, each mapping and
 *   unmapping the whole model (WB_MAP_SHARED) in a loop.
 *
 * The host's settings decide what each backend gets (see the README's
 * "2 MiB pages"); this program changes none of them.  Memory: about three
 * times the largest size. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "wbroker.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

#define HUGE (2ull << 20)

typedef struct model {
    size_t n;
    char (*names)[48];
    int64_t (*shapes)[2];
    size_t *nbytes;
    size_t total;
} model;

/* n tensors of about total bytes: 2-D float32 matrices of equal size. */
static void model_make(model *m, size_t total, size_t n) {
    m->n = n;
    m->names = calloc(n, sizeof(*m->names));
    m->shapes = calloc(n, sizeof(*m->shapes));
    m->nbytes = calloc(n, sizeof(size_t));
    int64_t cols = 1024, rows = (int64_t)(total / n / 4 / (size_t)cols);
    if (rows < 1)
        rows = 1;
    m->total = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(m->names[i], sizeof(m->names[i]), "layers.%zu.weight", i);
        m->shapes[i][0] = rows;
        m->shapes[i][1] = cols;
        m->nbytes[i] = (size_t)(rows * cols) * 4;
        m->total += m->nbytes[i];
    }
}

static void model_free(model *m) {
    free(m->names);
    free(m->shapes);
    free(m->nbytes);
}

static int publish(wb_client *c, const char *name, const model *m,
                   const uint8_t *src) {
    wb_tensor_spec *specs = calloc(m->n, sizeof(*specs));
    for (size_t i = 0; i < m->n; i++)
        specs[i] = (wb_tensor_spec){m->names[i], WB_F32, 2, m->shapes[i], NULL};
    wb_publish *p;
    int rc = wb_publish_begin(c, name, specs, m->n, NULL, 0, &p);
    free(specs);
    if (rc)
        return rc;
    size_t off = 0;
    for (size_t i = 0; i < m->n; i++) {
        void *dst = wb_publish_data(p, i, NULL);
        if (dst == NULL) {
            wb_publish_abort(p);
            return WB_ESYS;
        }
        memcpy(dst, src + off, m->nbytes[i]);
        off += m->nbytes[i];
    }
    return wb_publish_commit(p, NULL);
}

/* A fresh memfd of kind ("hugetlb", "thp", "4k") and size bytes, backed
 * as the daemon backs its segments; -1 on failure. */
static int fresh_fd(const char *kind, size_t size) {
    int huge = strcmp(kind, "hugetlb") == 0;
    int fd = memfd_create("bench", MFD_CLOEXEC | MFD_ALLOW_SEALING |
                                       (huge ? MFD_HUGETLB : 0));
    if (fd < 0)
        return -1;
    if ((!huge && ftruncate(fd, (off_t)size) < 0) ||
        fallocate(fd, 0, 0, (off_t)size) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Backing plus memcpy into fresh pages of kind; seconds, or -1. */
static double baseline_publish(const char *kind, const uint8_t *src, size_t len,
                               size_t size) {
    double t0 = wbt_now();
    int fd = fresh_fd(kind, size);
    if (fd < 0)
        return -1;
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return -1;
    }
    madvise(p, size, MADV_HUGEPAGE);
    memcpy(p, src, len);
    munmap(p, size);
    double dt = wbt_now() - t0;
    close(fd);
    return dt;
}

static uint64_t touch(const uint8_t *p, size_t len) {
    uint64_t s = 0;
    for (size_t o = 0; o < len; o += 4096)
        s += p[o];
    return s;
}

/* In a fresh child: request to usable and to resident (seconds, in
 * out[0..1]); with fd >= 0 the C limit instead: mmap of fd and touch. */
static int second_process(const char *sock, const char *name, int fd,
                          size_t size, double out[2]) {
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        double r[2] = {-1, -1};
        uint64_t sum = 0;
        if (fd >= 0) {
            double t0 = wbt_now();
            uint8_t *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                madvise(p, size, MADV_HUGEPAGE);
                r[0] = wbt_now() - t0;
                sum = touch(p, size);
                r[1] = wbt_now() - t0;
            }
        } else {
            wb_client *c;
            wb_mapping *m;
            if (wb_connect(sock, &c) == 0) {
                double t0 = wbt_now();
                if (wb_map(c, name, 0, WB_MAP_SHARED, &m) == 0) {
                    r[0] = wbt_now() - t0;
                    for (size_t i = 0; i < wb_map_count(m); i++) {
                        wb_tensor t;
                        wb_map_tensor(m, i, &t);
                        sum += touch(t.data, t.nbytes);
                    }
                    r[1] = wbt_now() - t0;
                }
            }
        }
        if (sum == 42)
            r[1] += 0; /* Keeps the reads. */
        _exit(write(pfd[1], r, sizeof(r)) == sizeof(r) ? 0 : 1);
    }
    close(pfd[1]);
    ssize_t n = read(pfd[0], out, 2 * sizeof(double));
    close(pfd[0]);
    waitpid(pid, NULL, 0);
    return n == 2 * sizeof(double) && out[1] >= 0 ? 0 : -1;
}

/* Map requests per second from nclients processes for secs seconds. */
static double map_rate(const char *sock, const char *name, int nclients,
                       double secs) {
    int pfd[2];
    if (pipe(pfd) < 0)
        return -1;
    pid_t pids[64];
    if (nclients < 1 || nclients > 64)
        nclients = 2;
    for (int k = 0; k < nclients; k++)
        if ((pids[k] = fork()) == 0) {
            wb_client *c;
            uint64_t count = 0;
            if (wb_connect(sock, &c) == 0) {
                double end = wbt_now() + secs;
                while (wbt_now() < end) {
                    wb_mapping *m;
                    if (wb_map(c, name, 0, WB_MAP_SHARED, &m))
                        break;
                    wb_unmap(m);
                    count++;
                }
            }
            _exit(write(pfd[1], &count, sizeof(count)) == sizeof(count) ? 0
                                                                        : 1);
        }
    close(pfd[1]);
    uint64_t total = 0, c;
    while (read(pfd[0], &c, sizeof(c)) == sizeof(c))
        total += c;
    close(pfd[0]);
    for (int k = 0; k < nclients; k++)
        waitpid(pids[k], NULL, 0);
    return (double)total / secs;
}

int main(int argc, char **argv) {
    const char *sizes = "64M,1G", *mode = "auto";
    size_t ntensors = 300;
    int runs = 5, clients = 2;
    double seconds = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            sizes = argv[i + 1];
        else if (strcmp(argv[i], "--tensors") == 0)
            ntensors = (size_t)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--huge-pages") == 0)
            mode = argv[i + 1];
        else if (strcmp(argv[i], "--clients") == 0)
            clients = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
    }
    if (runs < 1 || runs > 15)
        runs = 5;
    wbt_daemon d;
    const char *const extra[] = {
        "--log-level", "warn", "--huge-pages", mode, "--keep", "1", NULL};
    if (wbt_start(&d, extra)) {
        fprintf(stderr, "cannot start wbrokerd --huge-pages %s\n", mode);
        return 1;
    }
    wb_client *c = wbt_connect(&d);
    if (c == NULL)
        return 1;
    printf("# wbroker pages benchmark: --huge-pages %s, %zu tensors, median "
           "of %d runs\n",
           mode, ntensors, runs);
    printf("%-5s %-8s %9s %9s %6s %9s %9s %9s %9s %6s %10s\n", "size", "pages",
           "base(ms)", "pub(ms)", "ratio", "usable", "resident", "C-limit",
           "C-usable", "ratio", "maps/s");
    char list[256];
    snprintf(list, sizeof(list), "%s", sizes);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        model m;
        model_make(&m, wbt_parse_size(tok), ntensors);
        uint8_t *src = malloc(m.total);
        memset(src, 0x3c, m.total);
        double tb[16], tp[16], tu[16], tr[16], cu[16], cr[16];
        char kind[16] = "?";
        uint64_t huge = 0;
        size_t segsize = 0;
        int ok = 1;
        for (int r = 0; r < runs && ok; r++) {
            double t0 = wbt_now();
            if (publish(c, "bench", &m, src) != 0) {
                fprintf(stderr, "publish: %s\n", wb_errmsg(c));
                ok = 0;
                break;
            }
            tp[r] = wbt_now() - t0;
            wb_mapping *mp;
            if (wb_map(c, "bench", 0, WB_MAP_PLAN, &mp) == 0) {
                snprintf(kind, sizeof(kind), "%s", wb_map_pages(mp, &huge));
                wb_unmap(mp);
            }
            segsize = (m.total + 4096 * 4 + HUGE - 1) / HUGE * HUGE;
            double res[2];
            if (second_process(d.sock, "bench", -1, 0, res) != 0)
                ok = 0;
            tu[r] = res[0], tr[r] = res[1];
            /* The C limit: a sealed memfd of the same kind, filled. */
            int fd = fresh_fd(kind, segsize);
            uint8_t *p = fd < 0 ? MAP_FAILED
                                : mmap(NULL, segsize, PROT_READ | PROT_WRITE,
                                       MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) {
                fprintf(stderr, "baseline memfd of %s: %s\n", kind,
                        strerror(errno));
                ok = 0;
            } else {
                memcpy(p, src, m.total);
                munmap(p, segsize);
                if (second_process(NULL, NULL, fd, segsize, res) != 0)
                    ok = 0;
                cu[r] = res[0], cr[r] = res[1];
            }
            if (fd >= 0)
                close(fd);
            tb[r] = baseline_publish(kind, src, m.total, segsize);
            if (tb[r] < 0)
                ok = 0;
        }
        double rate = ok ? map_rate(d.sock, "bench", clients, seconds) : 0;
        if (ok) {
            double b = wbt_median(tb, runs), pu = wbt_median(tp, runs);
            double u = wbt_median(tu, runs), re = wbt_median(tr, runs);
            double lu = wbt_median(cu, runs), lr = wbt_median(cr, runs);
            printf("%-5s %-8s %9.1f %9.1f %5.2fx %9.2f %9.1f %9.1f %9.2f "
                   "%5.2fx %10.0f\n",
                   tok, kind, b * 1e3, pu * 1e3, b / pu, u * 1e3, re * 1e3,
                   lr * 1e3, lu * 1e3, re / lr, rate);
            printf("      %" PRIu64 " of %zu bytes in 2 MiB pages\n", huge,
                   segsize);
        }
        wb_drop(c, "bench", 0);
        free(src);
        model_free(&m);
    }
    printf("ratio: publish = baseline/publish (goal >= 0.8); resident = "
           "wbroker/C-limit (goal <= 1.2); usable/resident/C in ms\n");
    printf("reproduce: %s/bench/bench_pages --huge-pages %s --sizes %s\n",
           wbt_build_dir(), mode, sizes);
    wb_close(c);
    wbt_stop(&d);
    return 0;
}
