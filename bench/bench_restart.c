/* bench_restart.c -- --persist DIR: the background write rate next to a
 * plain sequential write of the same bytes to the same disk, and the time a
 * SIGKILLed daemon takes to serve every version again from DIR.
 *
 *   build/bench/bench_restart [--versions 100] [--size 4G] [--dir DIR]
 *
 * --size is the total over --versions versions (each of 8 float32
 * tensors).  The write rate is the bytes over the time from the first
 * commit until the backlog is empty; the baseline writes files of the same
 * sizes to the same directory the same way (write, fsync, rename, fsync of
 * the directory).  Before the restart the page cache is dropped when this
 * process may (root), so that recovery reads the disk.  The descriptor
 * store's recovery needs a real systemd: the service container test
 * (tests/service/) times it. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define NTENSORS 8 /* Tensors per version. */

/* Writes n files of bytes each into dir as --persist does; returns seconds. */
static double plain_write(const char *dir, int n, size_t bytes) {
    char *buf = malloc(8u << 20);
    memset(buf, 0x3c, 8u << 20);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    double t0 = wbt_now();
    for (int i = 0; i < n; i++) {
        char tmp[64], name[64];
        snprintf(tmp, sizeof(tmp), "plain-%d.tmp", i);
        snprintf(name, sizeof(name), "plain-%d", i);
        int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        for (size_t done = 0; done < bytes;) {
            size_t k = bytes - done < (8u << 20) ? bytes - done : (8u << 20);
            ssize_t w = write(fd, buf, k);
            if (w <= 0)
                break;
            done += (size_t)w;
        }
        fsync(fd);
        close(fd);
        renameat(dfd, tmp, dfd, name);
        fsync(dfd);
    }
    double t = wbt_now() - t0;
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof(name), "plain-%d", i);
        unlinkat(dfd, name, 0);
    }
    close(dfd);
    free(buf);
    return t;
}

static void drop_caches(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0 || write(fd, "3\n", 2) != 2)
        printf("  (page cache not dropped: recovery may read from memory)\n");
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv) {
    int versions = 100;
    size_t total = wbt_parse_size("4G");
    const char *base = "/var/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--versions") == 0)
            versions = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--size") == 0)
            total = wbt_parse_size(argv[i + 1]);
        else if (strcmp(argv[i], "--dir") == 0)
            base = argv[i + 1];
    }
    if (versions < 1)
        versions = 1;
    size_t len = total / (size_t)versions / NTENSORS / 4;
    if (len == 0)
        len = 1;
    size_t each = len * 4 * NTENSORS;
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/wbt-bench-restart-XXXXXX", base);
    if (mkdtemp(dir) == NULL) {
        perror(dir);
        return 1;
    }
    printf("bench_restart: %d versions of %.1f MiB (%.2f GiB) in %s\n",
           versions, (double)each / (1 << 20),
           (double)each * versions / (1 << 30), dir);
    wbt_daemon d;
    const char *extra[] = {"--persist",   dir,    "--keep", "0",
                           "--log-level", "info", NULL};
    if (wbt_start(&d, extra) != 0) {
        fprintf(stderr, "cannot start the daemon\n");
        return 1;
    }
    wb_client *c = wbt_connect(&d);
    double t0 = wbt_now();
    for (int i = 0; i < versions; i++) {
        char model[32];
        snprintf(model, sizeof(model), "m%d", i % 10);
        if (wbt_publish_f32(c, model, NTENSORS, len) == 0)
            return 1;
    }
    double published = wbt_now() - t0;
    while (wbt_counter(&d, "persist.backlog") != 0)
        wbt_sleep_ms(5);
    double written = wbt_now() - t0;
    double bytes = (double)each * versions;
    printf("  publish           %8.2f s  %8.0f MiB/s\n", published,
           bytes / published / (1 << 20));
    printf("  --persist write   %8.2f s  %8.0f MiB/s (commit to backlog "
           "empty, %llu failed)\n",
           written, bytes / written / (1 << 20),
           (unsigned long long)wbt_counter(&d, "persist.failed"));
    double plain = plain_write(dir, versions, each);
    printf("  plain write       %8.2f s  %8.0f MiB/s (same sizes, same "
           "directory, write+fsync+rename)\n",
           plain, bytes / plain / (1 << 20));
    wb_close(c);
    kill(d.pid, SIGKILL);
    waitpid(d.pid, NULL, 0);
    d.pid = 0;
    wbt_stop(&d);
    drop_caches();
    double r0 = wbt_now();
    /* wbt_start gives up waiting after 5 s; a large set takes longer. */
    if (wbt_start(&d, extra) != 0) {
        int fd = -1;
        while (d.pid > 0 && wbt_running(&d) && (fd = wbt_raw_connect(&d)) < 0)
            wbt_sleep_ms(10);
        if (fd < 0) {
            fprintf(stderr, "cannot restart the daemon\n");
            return 1;
        }
        close(fd);
    }
    double rec = wbt_now() - r0;
    wb_model_info *v;
    size_t n;
    uint64_t back = 0;
    c = wbt_connect(&d);
    if (wb_list(c, &v, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            back += v[i].nversions;
        wb_model_info_free(v, n);
    }
    printf("  recovery          %8.2f s  %8.0f MiB/s (%llu of %d versions "
           "back, start to serving)\n",
           rec, bytes / rec / (1 << 20), (unsigned long long)back, versions);
    wb_close(c);
    wbt_stop(&d);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 && back == (uint64_t)versions ? 0 : 1;
}
