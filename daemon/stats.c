/* stats.c -- Counters an operator graphs: requests by op, errors by code. */
#include "stats.h"

#include <stdio.h>
#include <string.h>

#include "wbroker.h"

static struct {
    const char *op[WB_STATS_MAX_OPS];         /* Names of the ops seen. */
    uint64_t requests[WB_STATS_MAX_OPS];      /* Requests per op. */
    size_t nops;                              /* Entries of op in use. */
    uint64_t other;                           /* Requests of unknown ops. */
    uint64_t errors[WB_STATS_MAX_ERRORS + 1]; /* By -code. */
} S;

void wb__stats_request(const char *op) {
    if (op == NULL) {
        S.other++;
        return;
    }
    size_t i = 0;
    while (i < S.nops && S.op[i] != op && strcmp(S.op[i], op) != 0)
        i++;
    if (i == S.nops) {
        if (S.nops == WB_STATS_MAX_OPS) {
            S.other++;
            return;
        }
        S.op[S.nops++] = op;
    }
    S.requests[i]++;
}

void wb__stats_error(int code) {
    if (code < 0 && code >= -WB_STATS_MAX_ERRORS)
        S.errors[-code]++;
}

void wb__stats_each(void (*fn)(void *arg, const char *name, uint64_t count),
                    void *arg) {
    char name[64];
    for (size_t i = 0; i < S.nops; i++) {
        snprintf(name, sizeof(name), "requests.%s", S.op[i]);
        fn(arg, name, S.requests[i]);
    }
    if (S.other)
        fn(arg, "requests.other", S.other);
    for (int e = 1; e <= WB_STATS_MAX_ERRORS; e++)
        if (S.errors[e]) {
            snprintf(name, sizeof(name), "errors.%s", wb_err_name(-e));
            fn(arg, name, S.errors[e]);
        }
}

size_t wb__stats_count(void) {
    size_t n = S.nops + (S.other > 0);
    for (int e = 1; e <= WB_STATS_MAX_ERRORS; e++)
        n += S.errors[e] > 0;
    return n;
}
