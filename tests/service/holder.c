/* holder.c -- a client that holds a mapping while the service restarts,
 * for tests/python/test_service.py.  Uses only the public API of an
 * installed libwbroker (the test builds it inside the container's tree
 * with `pkg-config wbroker`, for this release and for the previous one).
 *
 *   holder MODEL VERSION
 *
 * Connects, maps MODEL@VERSION shared (a hold the daemon lists) and prints
 * "held VERSION LENGTH SUM PID", SUM being FNV-1a 64 of the version's
 * safetensors image (its own length, not the segment's), PID its own (as
 * the daemon's holders list shows it).  Then reads one
 * command a line from standard input and answers one line each:
 *
 *   sum          "sum SUM" of the held mapping, read again now
 *   ls           "ls N" (models wb_list() returns) on the same handle, which
 *                reconnects by itself when the daemon has restarted
 *   map V        "map V LENGTH SUM" of a new mapping of MODEL@V, let go
 *   quit         exits 0 (also at end of input)
 *
 * A call that fails answers "error CODE_NAME message".  A hold ends when
 * the process does. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <wbroker.h>

static uint64_t fnv1a(const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Prints "LENGTH SUM" of m's image; 0, or -1 with an error line. */
static int print_image(const wb_mapping *m) {
    const void *data = NULL;
    size_t len = 0;
    int rc = wb_map_image(m, &data, &len);
    if (rc < 0) {
        printf("error %s wb_map_image failed\n", wb_err_name(rc));
        return -1;
    }
    printf("%zu %016" PRIx64 "\n", len, fnv1a(data, len));
    return 0;
}

static void print_error(wb_client *c, int rc) {
    printf("error %s %s\n", wb_err_name(rc), wb_errmsg(c));
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: holder MODEL VERSION\n");
        return 2;
    }
    const char *model = argv[1];
    uint64_t version = strtoull(argv[2], NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);

    wb_client *c = NULL;
    int rc = wb_connect(NULL, &c);
    if (rc < 0) {
        print_error(c, rc);
        wb_close(c);
        return 1;
    }
    wb_mapping *held = NULL;
    rc = wb_map(c, model, version, WB_MAP_SHARED, &held);
    if (rc < 0) {
        print_error(c, rc);
        wb_close(c);
        return 1;
    }
    const void *data = NULL;
    size_t len = 0;
    rc = wb_map_image(held, &data, &len);
    if (rc < 0) {
        printf("error %s wb_map_image failed\n", wb_err_name(rc));
        return 1;
    }
    printf("held %" PRIu64 " %zu %016" PRIx64 " %ld\n", wb_map_version(held),
           len, fnv1a(data, len), (long)getpid());

    char line[256];
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strcmp(line, "sum") == 0) {
            printf("sum ");
            const void *data = NULL;
            size_t len = 0;
            if (wb_map_image(held, &data, &len) == 0)
                printf("%016" PRIx64 "\n", fnv1a(data, len));
            else
                printf("error\n");
        } else if (strcmp(line, "ls") == 0) {
            wb_model_info *v = NULL;
            size_t n = 0;
            rc = wb_list(c, &v, &n);
            if (rc < 0)
                print_error(c, rc);
            else
                printf("ls %zu\n", n);
            wb_model_info_free(v, n);
        } else if (strncmp(line, "map ", 4) == 0) {
            wb_mapping *m = NULL;
            rc = wb_map(c, model, strtoull(line + 4, NULL, 10), WB_MAP_SHARED,
                        &m);
            if (rc < 0) {
                print_error(c, rc);
            } else {
                printf("map %" PRIu64 " ", wb_map_version(m));
                print_image(m);
            }
            wb_unmap(m);
        } else if (strcmp(line, "quit") == 0) {
            break;
        } else {
            printf("error EINVAL unknown command\n");
        }
    }
    wb_unmap(held);
    wb_close(c);
    return 0;
}
