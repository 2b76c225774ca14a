/* bench_maps.c -- map requests per second and CPU per map request, the
 * daemon's and the client's, for a whole-version map without rules:
 *
 *   build/bench/bench_maps [--tensors 300] [--clients 2] [--seconds 2]
 *       [--runs 5] [--maps 10000]
 *   build/bench/bench_maps --socket PATH --loop N [--tensors 300]
 *
 * The first form starts wbrokerd (--huge-pages off, --keep 1), publishes
 * a model of --tensors float32 tensors and prints, medians of --runs:
 * the CPU time (user + system) of the daemon and of one client per map
 * over --maps maps (WB_MAP_SHARED, map + unmap), and the map requests
 * per second of --clients processes mapping in a loop for --seconds.
 *
 * The second form runs one client's loop of N maps against a daemon
 * already listening at PATH (publishing the model first if it is not
 * there), with nothing else in the process: what to run under
 * `valgrind --tool=callgrind` or `strace -c`. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "wbroker.h"

#define MODEL "bench"

/* CPU seconds (user + system) of process pid so far, from /proc. */
static double proc_cpu(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* comm may hold spaces. */
    unsigned long ut = 0, st = 0;
    if (p == NULL || sscanf(p + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                            "%*u %lu %lu",
                            &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* n maps of the model through c; returns how many succeeded. */
static uint64_t map_loop(wb_client *c, uint64_t n, double until) {
    uint64_t k = 0;
    for (; k < n && (until == 0 || wbt_now() < until); k++) {
        wb_mapping *m;
        if (wb_map(c, MODEL, 0, WB_MAP_SHARED, &m)) {
            fprintf(stderr, "map: %s\n", wb_errmsg(c));
            break;
        }
        wb_unmap(m);
    }
    return k;
}

/* Publishes the model unless the daemon has it.  Returns 0 or -1. */
static int ensure_model(wb_client *c, size_t ntensors) {
    wb_mapping *m;
    if (wb_map(c, MODEL, 0, WB_MAP_PLAN, &m) == 0) {
        wb_unmap(m);
        return 0;
    }
    return wbt_publish_f32(c, MODEL, ntensors, 4096) ? 0 : -1;
}

/* Map requests per second from nclients processes for secs seconds. */
static double map_rate(const char *sock, int nclients, double secs) {
    int pfd[2];
    pid_t pids[64];
    if (pipe(pfd) < 0)
        return -1;
    for (int k = 0; k < nclients; k++)
        if ((pids[k] = fork()) == 0) {
            wb_client *c;
            uint64_t count = 0;
            if (wb_connect(sock, &c) == 0)
                count = map_loop(c, UINT64_MAX, wbt_now() + secs);
            _exit(write(pfd[1], &count, sizeof(count)) == sizeof(count) ? 0
                                                                        : 1);
        }
    close(pfd[1]);
    uint64_t total = 0, got;
    while (read(pfd[0], &got, sizeof(got)) == sizeof(got))
        total += got;
    close(pfd[0]);
    for (int k = 0; k < nclients; k++)
        waitpid(pids[k], NULL, 0);
    return (double)total / secs;
}

int main(int argc, char **argv) {
    const char *sock = NULL;
    size_t ntensors = 300;
    int runs = 5, clients = 2;
    double seconds = 2;
    uint64_t maps = 10000, loop = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--tensors") == 0)
            ntensors = (size_t)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--clients") == 0)
            clients = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--maps") == 0)
            maps = (uint64_t)atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--socket") == 0)
            sock = argv[i + 1];
        else if (strcmp(argv[i], "--loop") == 0)
            loop = (uint64_t)atoll(argv[i + 1]);
    }
    if (runs < 1 || runs > 15)
        runs = 5;
    if (clients < 1 || clients > 64)
        clients = 2;
    if (sock) {
        wb_client *c;
        if (wb_connect(sock, &c) || ensure_model(c, ntensors)) {
            fprintf(stderr, "cannot use the daemon at %s\n", sock);
            return 1;
        }
        uint64_t done = map_loop(c, loop ? loop : maps, 0);
        wb_close(c);
        printf("%" PRIu64 " maps\n", done);
        return 0;
    }
    wbt_daemon d;
    const char *const extra[] = {
        "--log-level", "warn", "--huge-pages", "off", "--keep", "1", NULL};
    if (wbt_start(&d, extra)) {
        fprintf(stderr, "cannot start wbrokerd\n");
        return 1;
    }
    wb_client *c = wbt_connect(&d);
    if (c == NULL || ensure_model(c, ntensors))
        return 1;
    map_loop(c, 200, 0); /* Warm: the daemon packs its reply once. */
    double dcpu[16], ccpu[16], rate[16];
    for (int r = 0; r < runs; r++) {
        double d0 = proc_cpu(d.pid), c0 = self_cpu();
        uint64_t done = map_loop(c, maps, 0);
        double c1 = self_cpu(), d1 = proc_cpu(d.pid);
        if (done != maps)
            return 1;
        dcpu[r] = (d1 - d0) / (double)maps;
        ccpu[r] = (c1 - c0) / (double)maps;
        rate[r] = map_rate(d.sock, clients, seconds);
    }
    printf("# wbroker map benchmark: %zu tensors, whole version, "
           "WB_MAP_SHARED, map + unmap, median of %d runs\n",
           ntensors, runs);
    printf("CPU per map, 1 client, %" PRIu64 " maps: daemon %.1f us, "
           "client %.1f us\n",
           maps, wbt_median(dcpu, runs) * 1e6, wbt_median(ccpu, runs) * 1e6);
    printf("maps/s, %d clients, %.0f s: %.0f\n", clients, seconds,
           wbt_median(rate, runs));
    printf("reproduce: %s/bench/bench_maps --tensors %zu --clients %d\n",
           wbt_build_dir(), ntensors, clients);
    wb_close(c);
    wbt_stop(&d);
    return 0;
}
