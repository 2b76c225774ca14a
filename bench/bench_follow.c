/* bench_follow.c -- A trainer publishing a model every few seconds while
 * follower processes switch to each new version: resident shared memory
 * against (keep + 2) x model size, and the time from commit to "every
 * follower serves the new version", next to the publish time of the same
 * run.
 *
 *   build/bench/bench_follow [--size 1G] [--seconds 60] [--every 3]
 *                            [--followers 4] [--keep 2]
 *
 * Each follower is a process of its own with one connection: it waits in
 * wb_watch() for a version newer than the one it serves, maps it, checks
 * that every tensor carries that version's stamp (first and last element),
 * then unmaps the version it served before, which ends its hold.  The
 * trainer (this process) publishes through wb_publish_data(), filling
 * every byte, and commits.  Shmem of /proc/meminfo is sampled every 10 ms
 * and its growth over the run's start is compared with the bound: the
 * daemon retires versions beyond --keep, one version is being published
 * and one may still be held by a follower that has not switched yet. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define NTENSORS 8        /* Tensors of the model, equal parts of --size. */
#define MAX_FOLLOWERS 64  /* Most --followers. */
#define MAX_VERSIONS 4096 /* Most versions one run publishes. */
#define SAMPLE_MS 10      /* Shmem sampling period while waiting. */

/* What a follower reports once it serves a version. */
typedef struct report {
    uint64_t version; /* Version now served (0: failed). */
    double t;         /* wbt_now() when it was ready. */
} report;

static void usage(void) {
    fprintf(stderr, "usage: bench_follow [--size 1G] [--seconds 60] "
                    "[--every 3] [--followers 4] [--keep 2]\n");
    exit(2);
}

/* 1 if every tensor of m starts and ends with stamp. */
static int stamped(const wb_mapping *m, float stamp) {
    size_t n = wb_map_count(m);
    for (size_t i = 0; i < n; i++) {
        wb_tensor t;
        if (wb_map_tensor(m, i, &t) != 0 || t.nbytes < sizeof(float))
            return 0;
        const float *x = t.data;
        if (x[0] != stamp || x[t.nbytes / sizeof(float) - 1] != stamp)
            return 0;
    }
    return n == NTENSORS;
}

/* A follower: serves each new version of "m" until killed, reporting on
 * fd.  Returns only on failure. */
static int follow(const wbt_daemon *d, int fd) {
    wb_client *c = NULL;
    if (wb_connect(d->sock, &c) != 0)
        return 1;
    wb_mapping *cur = NULL;
    uint64_t have = 0;
    for (;;) {
        uint64_t v = have;
        if (wb_watch(c, "m", have, -1, &v) != 0)
            return 2;
        if (v <= have)
            continue;
        wb_mapping *next = NULL;
        int rc = wb_map(c, "m", v, WB_MAP_SHARED, &next);
        if (rc == WB_ENOVERSION) /* Already retired: take the next one. */
            continue;
        report r = {0, wbt_now()};
        if (rc == 0 && stamped(next, (float)v)) {
            r.version = v;
            r.t = wbt_now();
        }
        wb_unmap(cur); /* The previous version's hold ends here. */
        cur = next;
        have = v;
        if (write(fd, &r, sizeof(r)) != (ssize_t)sizeof(r) || r.version == 0)
            return 3;
    }
}

/* Publishes version tag of "m": NTENSORS F32 tensors of part bytes each,
 * every byte written, stamped with tag at both ends.  Returns the version
 * number or 0. */
static uint64_t publish(wb_client *c, size_t part, float tag) {
    int64_t shape[NTENSORS][1];
    char names[NTENSORS][16];
    wb_tensor_spec spec[NTENSORS];
    for (int i = 0; i < NTENSORS; i++) {
        shape[i][0] = (int64_t)(part / sizeof(float));
        snprintf(names[i], sizeof(names[i]), "layer%d.weight", i);
        spec[i] = (wb_tensor_spec){names[i], WB_F32, 1, shape[i], NULL};
    }
    wb_publish *p;
    if (wb_publish_begin(c, "m", spec, NTENSORS, NULL, 0, &p) != 0)
        return 0;
    for (int i = 0; i < NTENSORS; i++) {
        size_t nb = 0;
        float *x = wb_publish_data(p, (size_t)i, &nb);
        if (x == NULL) {
            wb_publish_abort(p);
            return 0;
        }
        memset(x, 0x3f, nb);
        x[0] = tag;
        x[nb / sizeof(float) - 1] = tag;
    }
    uint64_t v = 0;
    return wb_publish_commit(p, &v) == 0 ? v : 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    size_t size = (size_t)1 << 30;
    double seconds = 60, every = 3;
    int followers = 4;
    unsigned keep = 2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--size") == 0)
            size = wbt_parse_size(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--every") == 0)
            every = atof(argv[++i]);
        else if (strcmp(argv[i], "--followers") == 0)
            followers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--keep") == 0)
            keep = (unsigned)atoi(argv[++i]);
        else
            usage();
    }
    if (size < NTENSORS * 4096 || seconds <= 0 || every <= 0 || followers < 1 ||
        followers > MAX_FOLLOWERS || keep < 1)
        usage();
    size_t part = size / NTENSORS / 4096 * 4096;
    size = part * NTENSORS;

    char keeps[16], limit[32];
    snprintf(keeps, sizeof(keeps), "%u", keep);
    /* Room for keep + 2 versions and a margin: a bound the run must keep
     * anyway, and a daemon that ran out would say so. */
    snprintf(limit, sizeof(limit), "%zu", (size + (4u << 20)) * (keep + 4));
    const char *const extra[] = {"--memory-limit", limit,  "--keep", keeps,
                                 "--log-level",    "warn", NULL};
    wbt_daemon d;
    if (wbt_start(&d, extra) != 0) {
        fprintf(stderr, "bench_follow: cannot start wbrokerd\n");
        return 1;
    }
    wb_client *c = wbt_connect(&d);
    if (c == NULL)
        return 1;
    uint64_t shmem0 = wbt_shmem_bytes();

    int rep[2];
    if (pipe(rep) != 0)
        return 1;
    pid_t pids[MAX_FOLLOWERS];
    for (int f = 0; f < followers; f++) {
        pids[f] = fork();
        if (pids[f] == 0) {
            close(rep[0]);
            _exit(follow(&d, rep[1]));
        }
    }
    close(rep[1]);
    fcntl(rep[0], F_SETFL, O_NONBLOCK);

    static double t_commit[MAX_VERSIONS + 1], t_all[MAX_VERSIONS + 1];
    static double pub_s[MAX_VERSIONS];
    static int served[MAX_VERSIONS + 1];
    int npub = 0, failed = 0;
    uint64_t shmem_max = 0, last = 0;
    double start = wbt_now(), next = start;
    while (wbt_now() - start < seconds || (last && served[last] < followers &&
                                           wbt_now() - start < seconds + 30)) {
        double now = wbt_now();
        if (now >= next && now - start < seconds && npub < MAX_VERSIONS) {
            double t0 = wbt_now();
            uint64_t v = publish(c, part, (float)(npub + 1));
            double t1 = wbt_now();
            if (v == 0 || v > MAX_VERSIONS) {
                fprintf(stderr, "bench_follow: publish failed: %s\n",
                        wb_errmsg(c));
                failed = 1;
                break;
            }
            pub_s[npub++] = t1 - t0;
            t_commit[v] = t1;
            last = v;
            next += every;
        }
        uint64_t sh = wbt_shmem_bytes();
        if (sh > shmem_max)
            shmem_max = sh;
        struct pollfd pfd = {rep[0], POLLIN, 0};
        poll(&pfd, 1, SAMPLE_MS);
        report r;
        while (read(rep[0], &r, sizeof(r)) == (ssize_t)sizeof(r)) {
            if (r.version == 0 || r.version > MAX_VERSIONS) {
                fprintf(stderr, "bench_follow: a follower failed\n");
                failed = 1;
                continue;
            }
            if (++served[r.version] == followers)
                t_all[r.version] = r.t;
        }
    }
    for (int f = 0; f < followers; f++) {
        kill(pids[f], SIGTERM);
        waitpid(pids[f], NULL, 0);
    }
    close(rep[0]);

    double lat[MAX_VERSIONS];
    int nlat = 0, skipped = 0;
    for (uint64_t v = 1; v <= last; v++) {
        if (served[v] == followers)
            lat[nlat++] =
                t_all[v] - t_commit[v] > 0 ? t_all[v] - t_commit[v] : 0;
        else
            skipped++; /* Some follower went straight to a newer one. */
    }
    qsort(pub_s, (size_t)npub, sizeof(double), cmp_double);
    qsort(lat, (size_t)nlat, sizeof(double), cmp_double);
    uint64_t grown = shmem_max > shmem0 ? shmem_max - shmem0 : 0;
    uint64_t bound = (uint64_t)(keep + 2) * size;
    printf("follow: %.0f MiB model, %d publishes every %.1f s for %.0f s, %d "
           "followers, --keep %u\n",
           (double)size / (1 << 20), npub, every, seconds, followers, keep);
    if (npub)
        printf("  publish            median %8.1f ms   worst %8.1f ms\n",
               1e3 * pub_s[npub / 2], 1e3 * pub_s[npub - 1]);
    if (nlat)
        printf("  commit -> all serve median %7.1f ms   worst %8.1f ms   "
               "(%d versions; %d skipped by a follower)\n",
               1e3 * lat[nlat / 2], 1e3 * lat[nlat - 1], nlat, skipped);
    printf("  shmem growth       max %8.0f MiB   bound (keep + 2) x size "
           "%.0f MiB: %s\n",
           (double)grown / (1 << 20), (double)bound / (1 << 20),
           grown <= bound ? "within"
                          : "EXCEEDED (other processes on this "
                            "host count in Shmem too)");
    wb_close(c);
    int st = wbt_stop(&d);
    return failed || nlat == 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0;
}
