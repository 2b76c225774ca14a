/* follow.c -- a server that follows a model: it serves from one version
 * while a follower thread maps each new one and switches to it.
 *
 *   follow [--socket PATH] [--model NAME] [--until VERSION] [--timeout S]
 *
 * The main thread plays the server: in a loop it runs a "forward pass"
 * that reads every tensor of the version it serves, under a read lock.
 * A follower thread with its own connection waits in wb_watch() for a
 * newer version, maps it and checks it, switches the server to it under
 * the write lock (one pointer swap: every pass sees exactly one version),
 * and only then unmaps the version it replaces, which lets the daemon
 * free a version that retention (wbrokerd --keep) has retired.  Every
 * element of every tensor of version V is expected to equal V, as a
 * trainer stamping its versions would publish them; a pass that sees
 * anything else fails.  It stops once it serves version --until (default
 * 3), or after --timeout seconds (default 60) with exit status 1.
 * Without --socket it uses $WBROKER_SOCKET, else the default path.
 * Exit status 0 when every pass saw one whole version, 1 otherwise, 2 on
 * bad usage.
 *
 * Build: `make examples` (build/examples/follow), or against an installed
 * libwbroker:
 *
 *   cc follow.c $(pkg-config --cflags --libs wbroker) -pthread
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <wbroker.h>

#define WATCH_MS 200 /* A watch returns this often to look at the clock. */

/* What the server and the follower share. */
typedef struct shared {
    pthread_rwlock_t lock; /* Held for reading by a pass, for writing by a
                              switch. */
    wb_mapping *cur;       /* Version served (NULL before the first). */
    int done;              /* 1 once the follower stopped. */
    int failed;            /* 1 if the follower failed. */
    const char *socket;    /* --socket, or NULL. */
    const char *model;     /* --model. */
    uint64_t until;        /* --until. */
    double deadline;       /* Monotonic time to give up at. */
} shared;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A forward pass over m: 1 if every F32 element of every tensor equals
 * the version number, else 0. */
static int forward(const wb_mapping *m) {
    float want = (float)wb_map_version(m);
    size_t n = wb_map_count(m);
    for (size_t i = 0; i < n; i++) {
        wb_tensor t;
        if (wb_map_tensor(m, i, &t) != 0 || t.dtype != WB_F32)
            return 0;
        const float *x = t.data;
        for (size_t j = 0; j < t.nbytes / sizeof(float); j++)
            if (x[j] != want)
                return 0;
    }
    return n > 0;
}

/* The follower thread: maps each new version and switches the server to
 * it; stops at --until or the deadline. */
static void *follower(void *arg) {
    shared *sh = arg;
    wb_client *c = NULL;
    int rc = wb_connect(sh->socket, &c);
    uint64_t have = 0;
    while (rc == 0 && have < sh->until && now() < sh->deadline) {
        uint64_t v = have;
        rc = wb_watch(c, sh->model, have, WATCH_MS, &v);
        if (rc || v <= have)
            continue;
        wb_mapping *next = NULL;
        rc = wb_map(c, sh->model, v, WB_MAP_SHARED, &next);
        if (rc == WB_ENOVERSION) { /* Retired meanwhile: take a newer. */
            rc = 0;
            continue;
        }
        if (rc)
            break;
        /* Build first, switch in one step, release the old one after. */
        pthread_rwlock_wrlock(&sh->lock);
        wb_mapping *old = sh->cur;
        sh->cur = next;
        pthread_rwlock_unlock(&sh->lock);
        wb_unmap(old);
        have = v;
        printf("serving %s@%llu\n", sh->model, (unsigned long long)v);
        fflush(stdout);
    }
    if (rc)
        fprintf(stderr, "follow: %s (%s)\n",
                wb_errmsg(c)[0] ? wb_errmsg(c) : wb_strerror(rc),
                wb_err_name(rc));
    wb_close(c); /* The mapping served stays valid. */
    pthread_rwlock_wrlock(&sh->lock);
    sh->failed = rc != 0 || have < sh->until;
    sh->done = 1;
    pthread_rwlock_unlock(&sh->lock);
    return NULL;
}

int main(int argc, char **argv) {
    shared sh = {.model = "follow", .until = 3};
    double timeout = 60;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--socket") == 0 && v)
            sh.socket = v;
        else if (strcmp(argv[i], "--model") == 0 && v)
            sh.model = v;
        else if (strcmp(argv[i], "--until") == 0 && v)
            sh.until = strtoull(v, NULL, 10);
        else if (strcmp(argv[i], "--timeout") == 0 && v)
            timeout = atof(v);
        else {
            fprintf(stderr, "usage: follow [--socket PATH] [--model NAME] "
                            "[--until VERSION] [--timeout S]\n");
            return 2;
        }
        i++;
    }
    if (sh.until == 0 || timeout <= 0) {
        fprintf(stderr, "follow: --until and --timeout must be > 0\n");
        return 2;
    }
    sh.deadline = now() + timeout;
    pthread_rwlock_init(&sh.lock, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, follower, &sh) != 0) {
        fprintf(stderr, "follow: cannot start the follower thread\n");
        return 1;
    }
    unsigned long passes = 0, bad = 0;
    uint64_t first = 0, last = 0;
    for (;;) {
        pthread_rwlock_rdlock(&sh.lock);
        int done = sh.done;
        if (sh.cur) {
            passes++;
            bad += !forward(sh.cur);
            last = wb_map_version(sh.cur);
            if (first == 0)
                first = last;
        }
        pthread_rwlock_unlock(&sh.lock);
        if (done)
            break;
        /* Between requests: a server waits for work, and the follower
         * gets the lock (glibc's rwlock lets readers go first). */
        struct timespec gap = {0, 1000000};
        nanosleep(&gap, NULL);
    }
    pthread_join(t, NULL);
    printf("followed %s from version %llu to %llu: %lu forward passes, %lu "
           "saw more than one version\n",
           sh.model, (unsigned long long)first, (unsigned long long)last,
           passes, bad);
    wb_unmap(sh.cur);
    pthread_rwlock_destroy(&sh.lock);
    return sh.failed || bad || passes == 0;
}
