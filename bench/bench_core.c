/* bench_core.c -- Publish, map and memory figures of wbrokerd, each next to
 * a baseline measured in the same run.
 *
 *   build/bench/bench_core [--sizes 64M,1G,4G] [--tensors 300] [--runs 9]
 *
 * publish: copy every tensor into the broker and commit, through the
 *          mapping wb_publish_data() gives and with wb_publish_write(), as
 *          ratios to a single-threaded memcpy of the same bytes (into a
 *          pre-faulted private buffer) measured in the same run;
 * map:     median latency from request to usable pointers for every tensor;
 * memory:  four consumer processes map the model and read every byte; the
 *          sum of their PSS and the growth of Shmem in /proc/meminfo.
 * The page size the mappings got is read from /proc/self/smaps. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* A transformer-like model of about total bytes in ntensors float32
 * tensors: per layer a square attention block, two MLP matrices (4x) and
 * small vectors. */
typedef struct model {
    size_t n;             /* Tensors. */
    char (*names)[48];    /* Names. */
    int64_t (*shapes)[2]; /* Shapes. */
    int *ndim;            /* Dimensions. */
    size_t *nbytes;       /* Bytes per tensor. */
    size_t total;         /* Sum of nbytes. */
} model;

static void model_make(model *m, size_t total, size_t ntensors) {
    size_t layers = ntensors / 6;
    /* Per layer: qkv (d x 3d), out (d x d), up (d x 4d), down (4d x d),
     * 2 norms of d: 12 d^2 + 2d floats. */
    size_t d = 64;
    while (layers * (12 * (d + 64) * (d + 64) + 2 * (d + 64)) * 4 <= total)
        d += 64;
    m->n = layers * 6;
    m->names = calloc(m->n, sizeof(*m->names));
    m->shapes = calloc(m->n, sizeof(*m->shapes));
    m->ndim = calloc(m->n, sizeof(int));
    m->nbytes = calloc(m->n, sizeof(size_t));
    m->total = 0;
    static const char *parts[6] = {"attn.qkv.weight", "attn.out.weight",
                                   "mlp.up.weight",   "mlp.down.weight",
                                   "ln1.weight",      "ln2.weight"};
    int64_t dd = (int64_t)d;
    int64_t shapes[6][2] = {{3 * dd, dd}, {dd, dd}, {4 * dd, dd},
                            {dd, 4 * dd}, {dd, 1},  {dd, 1}};
    for (size_t l = 0; l < layers; l++)
        for (int k = 0; k < 6; k++) {
            size_t i = l * 6 + (size_t)k;
            snprintf(m->names[i], sizeof(m->names[i]), "layers.%zu.%s", l,
                     parts[k]);
            m->shapes[i][0] = shapes[k][0];
            m->shapes[i][1] = shapes[k][1];
            m->ndim[i] = k >= 4 ? 1 : 2;
            m->nbytes[i] = (size_t)(shapes[k][0] * shapes[k][1]) * 4;
            m->total += m->nbytes[i];
        }
}

static void model_free(model *m) {
    free(m->names);
    free(m->shapes);
    free(m->ndim);
    free(m->nbytes);
}

/* Publishes m from src (one buffer, tensors back to back), copying
 * through the mapping or, with by_write, with wb_publish_write(). */
static int publish(wb_client *c, const char *name, const model *m,
                   const uint8_t *src, int by_write) {
    wb_tensor_spec *specs = calloc(m->n, sizeof(*specs));
    for (size_t i = 0; i < m->n; i++)
        specs[i] = (wb_tensor_spec){m->names[i], WB_F32, m->ndim[i],
                                    m->shapes[i], NULL};
    wb_publish *p;
    int rc = wb_publish_begin(c, name, specs, m->n, NULL, 0, &p);
    free(specs);
    if (rc)
        return rc;
    size_t off = 0;
    for (size_t i = 0; i < m->n && rc == 0; i++) {
        if (by_write) {
            rc = wb_publish_write(p, i, src + off, m->nbytes[i], 0);
        } else {
            void *dst = wb_publish_data(p, i, NULL);
            if (dst == NULL)
                rc = WB_ESYS;
            else
                memcpy(dst, src + off, m->nbytes[i]);
        }
        off += m->nbytes[i];
    }
    if (rc) {
        wb_publish_abort(p);
        return rc;
    }
    return wb_publish_commit(p, NULL);
}

/* Maps name and resolves every tensor to a pointer. */
static double map_once(wb_client *c, const char *name, const model *m) {
    double t0 = wbt_now();
    wb_mapping *mp;
    if (wb_map(c, name, 0, WB_MAP_SHARED, &mp))
        return -1;
    volatile uintptr_t sink = 0;
    for (size_t i = 0; i < m->n; i++) {
        wb_tensor t;
        wb_map_tensor(mp, (size_t)wb_map_find(mp, m->names[i]), &t);
        sink += (uintptr_t)t.data;
    }
    double dt = wbt_now() - t0;
    wb_unmap(mp);
    (void)sink;
    return dt;
}

/* Reads "Key: N kB" from a file, in kB. */
static long read_kb(const char *path, const char *key) {
    FILE *f = fopen(path, "re");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = atol(line + kl + 1);
            break;
        }
    if (f)
        fclose(f);
    return v;
}

/* Page size the first wbroker mapping of this process got. */
static const char *page_size_seen(void) {
    FILE *f = fopen("/proc/self/smaps", "re");
    char line[512];
    int in = 0;
    long kps = -1, pmd = 0;
    while (f && fgets(line, sizeof(line), f)) {
        if (strchr(line, '-') && strstr(line, " /memfd:wbroker:")) {
            in = 1;
            continue;
        }
        if (!in)
            continue;
        if (strncmp(line, "KernelPageSize:", 15) == 0)
            kps = atol(line + 15);
        if (strncmp(line, "FilePmdMapped:", 14) == 0 ||
            strncmp(line, "ShmemPmdMapped:", 15) == 0)
            pmd += atol(strchr(line, ':') + 1);
        if (strncmp(line, "VmFlags:", 8) == 0)
            break;
    }
    if (f)
        fclose(f);
    static char out[64];
    snprintf(out, sizeof(out), "%ld KiB pages, %ld KiB PMD-mapped", kps, pmd);
    return out;
}

/* Consumer: maps the model, reads every byte, reports, waits. */
static void consumer(const char *sock, const char *name, int ready_fd,
                     int go_fd) {
    wb_client *c;
    if (wb_connect(sock, &c))
        _exit(1);
    wb_mapping *mp;
    if (wb_map(c, name, 0, WB_MAP_SHARED, &mp))
        _exit(2);
    volatile uint64_t sum = 0;
    for (size_t i = 0; i < wb_map_count(mp); i++) {
        wb_tensor t;
        wb_map_tensor(mp, i, &t);
        const uint64_t *p = t.data;
        for (size_t k = 0; k < t.nbytes / 8; k += 512)
            sum += p[k];
    }
    char b = 1;
    if (write(ready_fd, &b, 1) != 1 || read(go_fd, &b, 1) < 0)
        _exit(3);
    (void)sum;
    wb_unmap(mp);
    wb_close(c);
    _exit(0);
}

int main(int argc, char **argv) {
    const char *sizes = "64M,1G,4G";
    size_t ntensors = 300;
    int runs = 9;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            sizes = argv[i + 1];
        else if (strcmp(argv[i], "--tensors") == 0)
            ntensors = (size_t)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
    }
    wbt_daemon d;
    wb_client *c = wbt_bench_start(&d);
    if (c == NULL)
        return 1;

    printf("# wbroker core benchmark: %s, %zu tensors, median of %d runs\n",
           sizes, ntensors, runs);
    printf("%-6s %8s %12s %12s %8s %12s %8s %10s %12s\n", "size", "tensors",
           "memcpy", "pub(map)", "ratio", "pub(write)", "ratio", "map(ms)",
           "page size");
    char list[256];
    snprintf(list, sizeof(list), "%s", sizes);
    double map64 = 0;
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        size_t total = wbt_parse_size(tok);
        model m;
        model_make(&m, total, ntensors);
        uint8_t *src = malloc(m.total), *dst = malloc(m.total);
        memset(src, 0x3c, m.total);
        memset(dst, 0, m.total);
        int prun = runs > 5 ? 5 : runs;
        if (m.total > (2ull << 30))
            prun = 3;
        double tm[16], tp[16], tw[16], tmap[64];
        for (int r = 0; r < prun; r++) {
            double t0 = wbt_now();
            memcpy(dst, src, m.total);
            tm[r] = wbt_now() - t0;
            for (int by_write = 0; by_write < 2; by_write++) {
                t0 = wbt_now();
                if (publish(c, "bench", &m, src, by_write)) {
                    fprintf(stderr, "publish: %s\n", wb_errmsg(c));
                    return 1;
                }
                (by_write ? tw : tp)[r] = wbt_now() - t0;
                wb_drop(c, "bench", 0);
            }
        }
        free(dst);
        publish(c, "bench", &m, src, 1);
        free(src);
        for (int r = 0; r < runs && r < 64; r++)
            tmap[r] = map_once(c, "bench", &m);
        wb_mapping *mp;
        wb_map(c, "bench", 0, WB_MAP_SHARED, &mp);
        wb_tensor t;
        wb_map_tensor(mp, 0, &t);
        volatile uint8_t touch = ((const uint8_t *)t.data)[0];
        (void)touch;
        const char *ps = page_size_seen();
        wb_unmap(mp);
        double mm = wbt_median(tm, prun), mp_ = wbt_median(tp, prun);
        double mw = wbt_median(tw, prun);
        double mapms = wbt_median(tmap, runs < 64 ? runs : 64) * 1e3;
        if (map64 == 0)
            map64 = mapms;
        printf(
            "%-6s %8zu %7.2f GB/s %7.2f GB/s %8.2f %7.2f GB/s %8.2f %10.3f   "
            "%s\n",
            tok, m.n, (double)m.total / mm / 1e9, (double)m.total / mp_ / 1e9,
            mm / mp_, (double)m.total / mw / 1e9, mm / mw, mapms, ps);
        printf("       map latency relative to the first size: %.2fx\n",
               mapms / map64);

        if (total >= (1ull << 30) && total < (2ull << 30)) {
            /* Memory: four consumers of this model. */
            long shmem0 = read_kb("/proc/meminfo", "Shmem");
            int ready[2], go[2];
            if (pipe(ready) || pipe(go))
                return 1;
            pid_t pids[4];
            for (int k = 0; k < 4; k++) {
                pids[k] = fork();
                if (pids[k] == 0) {
                    close(go[1]); /* Else no consumer ever sees EOF. */
                    close(ready[0]);
                    consumer(d.sock, "bench", ready[1], go[0]);
                }
            }
            char b;
            for (int k = 0; k < 4; k++)
                if (read(ready[0], &b, 1) != 1)
                    return 1;
            long pss = 0;
            for (int k = 0; k < 4; k++) {
                char path[64];
                snprintf(path, sizeof(path), "/proc/%d/smaps_rollup",
                         (int)pids[k]);
                pss += read_kb(path, "Pss_Shmem") > 0
                           ? read_kb(path, "Pss_Shmem")
                           : read_kb(path, "Pss");
            }
            long shmem1 = read_kb("/proc/meminfo", "Shmem");
            close(go[1]);
            for (int k = 0; k < 4; k++)
                waitpid(pids[k], NULL, 0);
            close(go[0]);
            close(ready[0]);
            close(ready[1]);
            printf("memory: 4 consumers of %s (%.2f GiB of tensors): sum of "
                   "shared PSS %.2f GiB, Shmem growth while mapped %.2f GiB "
                   "(model already held: %.2f copies in total)\n",
                   tok, (double)m.total / (1 << 30), (double)pss / (1 << 20),
                   (double)(shmem1 - shmem0) / (1 << 20),
                   (double)pss * 1024 / (double)m.total);
        }
        wb_drop(c, "bench", 0);
        model_free(&m);
    }
    printf("reproduce: make bench  (or: %s/bench/bench_core --sizes %s)\n",
           wbt_build_dir(), sizes);
    wb_close(c);
    wbt_stop(&d);
    return 0;
}
