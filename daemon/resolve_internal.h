/* resolve_internal.h -- What the files of the resolver share.
 *
 * resolve_rules.c keeps the time budget, compiles the rules and filters
 * and renames the source keys; resolve.c builds the target's module tree,
 * matches the renamed keys against the schema and lists the report's keys;
 * resolve_report.c writes the error text of a failed load.  Calls run one
 * way: resolve.c calls resolve_report.c and resolve_rules.c, and
 * resolve_report.c calls resolve_rules.c, never back.  Only these files
 * include this header; the rest of the daemon sees resolve.h. */
#ifndef WB_DAEMON_RESOLVE_INTERNAL_H
#define WB_DAEMON_RESOLVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "resolve.h"
#include "rules_match.h"

/* Key bytes handled between two looks at the clock (tens of microseconds). */
#define WB_BUDGET_CHECK_BYTES 65536
#define NONE SIZE_MAX /* "No index" in index fields. */

/* ---------------------------------------------------------------- budget */

/* The time budget of one wb__resolve() call.  Every step that may take
 * long (a regex match) looks at the clock when it is done; cheap steps
 * count the key bytes they handle, and the clock is read after every
 * WB_BUDGET_CHECK_BYTES of them. */
typedef struct budget {
    uint64_t deadline; /* CLOCK_MONOTONIC in ns; 0: no limit. */
    size_t work;       /* Key bytes handled since the last look. */
    int spent;         /* 1 once the deadline has passed. */
} budget;

/* Starts a budget of ms milliseconds from now; 0 means no limit. */
void wb__budget_start(budget *b, unsigned ms);

/* Looks at the clock.  Returns 1 (and stays spent) once the deadline has
 * passed, else 0. */
int wb__budget_check(budget *b);

/* Counts bytes of cheap work, looking at the clock once enough has been
 * done since the last look.  Returns 1 if the budget is spent. */
static inline int budget_charge(budget *b, size_t bytes) {
    b->work += bytes;
    if (b->work >= WB_BUDGET_CHECK_BYTES)
        return wb__budget_check(b);
    return b->spent;
}

/* ---------------------------------------------------------------- rules */

/* One rule, ready to apply. */
typedef struct crule {
    const wb__rule *r; /* The rule as given. */
    size_t alen;       /* strlen(r->a). */
    size_t blen;       /* strlen(r->b). */
    pcre2_code *re;    /* REGEX: compiled pattern. */
    wb__template tpl;  /* REGEX: parsed replacement. */
    size_t run_end;    /* RENAME opening a run: index past it. */
    size_t next_same;  /* RENAME: next rename with the same a. */
} crule;

/* The whole rule list, ready to apply. */
typedef struct compiled {
    crule *v;                  /* Rules in order. */
    size_t n;                  /* Rules in v. */
    int has_include;           /* 1 if any include rule exists. */
    wb__htab inc_exact;        /* Include globs without metacharacters. */
    wb__htab exc_exact;        /* Exclude globs without metacharacters. */
    size_t *inc_glob;          /* Indices of the other include rules. */
    size_t n_inc_glob;         /* Entries in inc_glob. */
    size_t *exc_glob;          /* Indices of the other exclude rules. */
    size_t n_exc_glob;         /* Entries in exc_glob. */
    size_t *casts;             /* Indices of the cast rules. */
    size_t n_casts;            /* Entries in casts. */
    wb__htab rename_first;     /* RENAME a -> index of its first rule. */
    pcre2_match_context *mctx; /* Match limits for every regex. */
    pcre2_match_data *md;      /* Ovector big enough for every regex. */
    unsigned char *hit;        /* Per rule, 1 once it matched a key. */
} compiled;

/* Writes "line N: " (or nothing) and the formatted text into out->errmsg.
 * Returns rc. */
int wb__rule_err(wb__resolve_out *out, const wb__rule *r, int rc,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Checks and prepares every rule, within budget b of ms milliseconds.
 * Returns 0, WB_ERULE (errmsg says which rule and why), WB_EREGEX when the
 * budget runs out, or WB_ENOMEM. */
int wb__compile_rules(const wb__ruleset *rs, compiled *c, budget *b,
                      unsigned ms, wb__resolve_out *out);

/* Appends len bytes of key to kl (a copy).  Returns 0 or WB_ENOMEM. */
int wb__kl_push(wb__keylist *kl, const char *key, size_t len);

/* Lists in out->unused_rules every rule of c that matched no key (the
 * cast rules are tried against the kept keys of st first).  Returns 0,
 * WB_EREGEX when the budget runs out, or WB_ENOMEM. */
struct rstate;
int wb__report_unused(struct rstate *st);

/* Frees what wb__compile_rules() prepared and zeroes c. */
void wb__compiled_free(compiled *c);

/* ---------------------------------------------------------------- state */

/* The target's module tree and the last walk down it (built and walked in
 * resolve.c, which defines struct mnode and struct tblock); declared here
 * because the working state holds them. */

/* The module tree of a schema.  Node 0 is the root (the target itself). */
typedef struct mtree {
    wb__htab children;   /* Child key -> node index. */
    struct mnode *v;     /* Nodes. */
    size_t n;            /* Nodes in v. */
    size_t cap;          /* Allocated slots in v. */
    size_t nmodules;     /* Module numbers given out. */
    struct tblock *keys; /* Newest block of child keys (the hash
                            table borrows them). */
} mtree;

/* The module nodes a walk down the tree went past for the key walked
 * last, so that the next key only looks up the components after the
 * modules the two share: consecutive keys of a state_dict mostly share
 * all but their last component. */
typedef struct tpath {
    const char *key; /* The key walked last (borrowed), or
                        NULL. */
    size_t len;      /* Bytes of key. */
    size_t depth;    /* Modules of key in node and dot. */
    size_t *node;    /* WB_MAX_NAME slots: node of module j. */
    size_t *dot;     /* WB_MAX_NAME slots: offset of the dot
                        after module j's component. */
} tpath;

/* One source key that passed the filters, after renaming. */
typedef struct kent {
    char *name;    /* Renamed key (owned). */
    size_t len;    /* Bytes of name. */
    size_t src;    /* Index in the source table. */
    size_t target; /* Index in the schema, or NONE. */
} kent;

/* Working state of one wb__resolve() call. */
typedef struct rstate {
    const wb__resolve_req *req; /* The request. */
    wb__resolve_out *out;       /* The answer being built. */
    budget budget;              /* Time left for the whole call. */
    compiled rules;             /* Prepared rules. */
    kent *kept;                 /* Kept source keys, in source order. */
    size_t nkept;               /* Entries in kept. */
    wb__htab renamed;           /* Renamed key -> index in kept. */
    mtree tree;                 /* Module tree of the schema. */
    tpath path;                 /* Last walk down the tree. */
} rstate;

/* Fails the request because its time budget ran out: what took too long
 * ("the rules", ...), stopped at the unit ("key", "target key") numbered
 * i (from 0) of n, named key; cr is the rule just applied, or NULL.
 * Returns WB_EREGEX. */
int wb__over_budget(rstate *st, const crule *cr, const char *what,
                    const char *unit, size_t i, size_t n, const char *key);

/* Filters and renames every source key into st->kept, checking for
 * collisions and the time budget. */
int wb__collect(rstate *st);

/* 1 if a and b have the same shape, else 0. */
static inline int shape_eq(const wb__tinfo *a, const wb__tinfo *b) {
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- report */

/* Builds out->error_text in PyTorch's format.  Returns 0, WB_EREGEX when
 * the budget runs out, or WB_ENOMEM. */
int wb__error_text(rstate *st);

#endif
