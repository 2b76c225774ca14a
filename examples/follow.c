/* follow.c -- a C server that follows a model: a watch thread maps
 * each new version and swaps it in, the serving loop reads under a mutex,
 * and a signal or the end of the run cancels the watch.
 *
 *   follow [--socket PATH] [--model NAME] [--until VERSION]
 *
 * The watch thread has a handle of its own and waits in a blocking
 * wb_watch() (no polling); for each new version it maps the whole version
 * read-only (wb_map), swaps the pointer the server reads under the mutex,
 * and only then unmaps the previous one, so that no reader ever sees a
 * mapping go away under it, and the daemon can free the version left
 * behind.  The serving loop checks that every float32 element of every tensor
 * holds the same value (a publisher such as the tests' fills every tensor of
 * version v with v) and prints a line whenever the version it serves
 * changes.  SIGINT or SIGTERM, or serving --until, ends the run:
 * wb_watch_cancel(), which is async-signal-safe, wakes the watch thread at
 * once with WB_ECANCELED.  When the daemon restarts, the watch fails once
 * and the next call reconnects; the thread goes on after a short pause.
 * Without --socket it uses $WBROKER_SOCKET, else the default path.  Exit
 * status 0 after a clean stop, 1 on an error, 2 on bad usage.
 *
 * Build: `make examples` (build/examples/follow), or against an
 * installed libwbroker:
 *
 *   cc follow.c $(pkg-config --cflags --libs wbroker) -pthread
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <wbroker.h>

static wb_client *watch_client;       /* The watch thread's handle. */
static volatile sig_atomic_t stopped; /* A signal asked to stop. */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static wb_mapping *current; /* The version served, under current_lock. */

static const char *model = "trainer";

static void on_signal(int sig) {
    (void)sig;
    stopped = 1;
    wb_watch_cancel(watch_client); /* Async-signal-safe. */
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Maps version v and makes it the one served; unmaps the one it replaces
 * once no reader can hold it. */
static int switch_to(uint64_t v) {
    wb_mapping *m = NULL;
    int rc = wb_map(watch_client, model, v, WB_MAP_SHARED, &m);
    if (rc) {
        fprintf(stderr, "follow: map %s@%llu: %s\n", model,
                (unsigned long long)v, wb_errmsg(watch_client));
        return rc;
    }
    pthread_mutex_lock(&current_lock);
    wb_mapping *old = current;
    current = m;
    pthread_mutex_unlock(&current_lock);
    wb_unmap(old);
    return 0;
}

static void *watch_thread(void *arg) {
    (void)arg;
    uint64_t after = 0, v = 0;
    /* The latest version first, if there is one (timeout 0: no wait). */
    if (wb_watch(watch_client, model, 0, 0, &v) == 0 && v > 0 &&
        switch_to(v) == 0)
        after = v;
    for (;;) {
        int rc = wb_watch(watch_client, model, after, -1, &v);
        if (rc == WB_ECANCELED)
            break;
        if (rc) { /* The daemon went away: the next call reconnects. */
            fprintf(stderr, "follow: watch: %s\n", wb_errmsg(watch_client));
            pause_ms(200);
            continue;
        }
        if (v > after && switch_to(v) == 0)
            after = v;
        else if (v > after)
            after = v; /* Gone already, or unreadable: wait for the next. */
    }
    printf("watch cancelled\n");
    fflush(stdout);
    return NULL;
}

static int usage(FILE *f) {
    fprintf(f, "usage: follow [--socket PATH] [--model NAME] "
               "[--until VERSION]\n");
    return f == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL; /* NULL: $WBROKER_SOCKET or default */
    uint64_t until = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
            socket_path = argv[++i];
        else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            model = argv[++i];
        else if (strcmp(argv[i], "--until") == 0 && i + 1 < argc)
            until = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--help") == 0)
            return usage(stdout);
        else
            return usage(stderr);
    }
    int rc = wb_connect(socket_path, &watch_client);
    if (rc) {
        fprintf(stderr, "follow: %s\n", wb_errmsg(watch_client));
        wb_close(watch_client);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, watch_thread, NULL) != 0) {
        fprintf(stderr, "follow: cannot start the watch thread\n");
        return 1;
    }
    printf("following %s\n", model);
    fflush(stdout);
    uint64_t serving = 0;
    int status = 0;
    while (!stopped && !(until && serving >= until)) {
        pthread_mutex_lock(&current_lock); /* One version per pass. */
        uint64_t v = wb_map_version(current);
        size_t n = wb_map_count(current);
        float first = 0;
        int mixed = 0;
        for (size_t i = 0; i < n; i++) {
            wb_tensor tt;
            if (wb_map_tensor(current, i, &tt) != 0 || tt.dtype != WB_F32)
                continue;
            const unsigned char *p = tt.data; /* Every element. */
            for (size_t k = 0; k + sizeof(float) <= tt.nbytes;
                 k += sizeof(float)) {
                float f;
                memcpy(&f, p + k, sizeof(f));
                if (i == 0 && k == 0)
                    first = f;
                else if (f != first)
                    mixed = 1;
            }
        }
        pthread_mutex_unlock(&current_lock);
        if (mixed) {
            fprintf(stderr, "follow: %s@%llu holds several values\n", model,
                    (unsigned long long)v);
            status = 1;
        }
        if (v != serving) {
            serving = v;
            printf("serving %s@%llu: %zu tensors, first value %g\n", model,
                   (unsigned long long)v, n, (double)first);
            fflush(stdout);
        }
        pause_ms(1);
    }
    wb_watch_cancel(watch_client); /* Thread-safe: ends the wait. */
    pthread_join(t, NULL);
    wb_unmap(current);
    wb_close(watch_client);
    printf("stopped, last on %s@%llu\n", model, (unsigned long long)serving);
    return status;
}
