/* resolve.h -- Resolves mapping rules against a source table and a target
 * schema into a load plan and a PyTorch-style load report.
 *
 * Pure computation (no I/O, no daemon state), safe to run on any thread:
 * the daemon runs every resolution on a worker thread of its own
 * (worker.h).  The cost is
 * O(keys x rules) plus time linear in the bytes of the keys; no rename
 * makes a key longer than WB_MAX_NAME bytes, every regex match is bounded
 * by PCRE2's match limit, and the whole call by a time budget, so that the
 * daemon can run any resolution, with rules or without, under it.  The
 * error text is produced here and only here, so that C, Python and CLI
 * users read the same bytes. */
#ifndef WB_DAEMON_RESOLVE_H
#define WB_DAEMON_RESOLVE_H

#include <stddef.h>

#include "../proto/rules.h"

#define WB_REGEX_MATCH_LIMIT 100000 /* PCRE2 match limit per key per rule. */
/* Time for resolving one request, in ms. */
#define WB_RULES_BUDGET_MS 2000

/* One tensor the target receives. */
typedef struct wb__resolved {
    char *target; /* Target key (owned). */
    size_t src;   /* Index into the source table. */
    int dtype;    /* Dtype the target gets (may differ). */
    int cast;     /* 1 if dtype differs from the source's. */
} wb__resolved;

typedef struct wb__keylist {
    char **v;   /* Owned keys, in report order. */
    size_t n;   /* Keys in v. */
    size_t cap; /* Allocated slots in v. */
} wb__keylist;

typedef struct wb__resolve_req {
    const wb__tinfo *src;     /* Source table, in its stored order. */
    size_t nsrc;              /* Entries in src. */
    const size_t *tie;        /* NULL, or per source tensor the index of
                                 the one whose bytes it shares. */
    const wb__ruleset *rules; /* May be NULL or empty. */
    const wb__schema *schema; /* NULL: no target schema. */
    int strict;               /* strict=True. */
    int ignore_mismatch;      /* ignore_mismatched_sizes=True. */
    unsigned budget_ms;       /* Time allowed for the whole call, in ms
                                 (compiling the rules, filtering, renaming
                                 and casting every key, matching the
                                 schema, the report); 0: no limit. */
} wb__resolve_req;

typedef struct wb__resolve_out {
    wb__resolved *v;          /* Tensors to hand out, target order. */
    size_t n;                 /* Entries in v. */
    wb__keylist missing;      /* Target keys no source reached. */
    wb__keylist unexpected;   /* Renamed source keys the target lacks. */
    wb__keylist mismatched;   /* Keys whose shapes differ. */
    wb__keylist cast;         /* Keys converted to the target dtype. */
    wb__keylist aliased;      /* Target keys whose source bytes an earlier
                                 target key also receives (tied). */
    wb__keylist unused_rules; /* Rules that matched no key, described as
                                 "line N: rename \"a\" -> \"b\"". */
    char *error_text;         /* PyTorch-format text, NULL if none. */
    char errmsg[512];         /* Detail for a non-load error. */
} wb__resolve_out;

/* Resolves req into *out (zeroed first).  Returns 0 when the load may go
 * ahead; WB_ELOAD when it must not (error_text set, v empty); WB_ERULE for
 * a bad glob or regex (errmsg names the rule and the position) or a
 * rename that would make a key longer than WB_MAX_NAME bytes (errmsg
 * names the rule by its line, else its place in the request, and the
 * key); WB_ECOLLISION naming both source keys in errmsg; WB_EREGEX when a
 * match limit or the time budget is hit (errmsg says where it stopped);
 * WB_EEXIST for a target key listed twice; WB_EINVAL for a malformed
 * request (a key without a name, or longer than WB_MAX_NAME); WB_ENOMEM.
 * Free *out with wb__resolve_out_free() in every case. */
int wb__resolve(const wb__resolve_req *req, wb__resolve_out *out);
void wb__resolve_out_free(wb__resolve_out *out);

#endif
