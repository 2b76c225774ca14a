/* rules.h -- Mapping rules and target schemas as plain data.
 *
 * The client builds a wb__ruleset (from C calls or a rules file), the
 * protocol carries it, and the daemon resolves it against a source table
 * and an optional target schema (daemon/resolve.h).  No I/O here.
 * Implemented in rules.c; the rules-file parser in rules_parse.c. */
#ifndef WB_PROTO_RULES_H
#define WB_PROTO_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "wbroker.h"

typedef enum {
    WB__RULE_INCLUDE = 1, /* a = glob on source names. */
    WB__RULE_EXCLUDE = 2, /* a = glob on source names. */
    WB__RULE_RENAME = 3,  /* a = exact old name, b = new name. */
    WB__RULE_PREFIX = 4,  /* a = old prefix ("" adds), b = new prefix. */
    WB__RULE_REGEX = 5,   /* a = full-match pattern, b = replacement. */
    WB__RULE_CAST = 6     /* a = glob on renamed names, dtype. */
} wb__rule_kind;

typedef struct wb__rule {
    int kind;  /* A wb__rule_kind. */
    char *a;   /* First operand (owned, never NULL). */
    char *b;   /* Second operand (owned, "" if unused). */
    int dtype; /* WB__RULE_CAST: the wb_dtype; else -1. */
    int line;  /* Line in the rules file, 0 if from a call. */
} wb__rule;

typedef struct wb__ruleset {
    wb__rule *v; /* Rules in the order given. */
    size_t n;    /* Rules in v. */
    size_t cap;  /* Allocated slots in v. */
} wb__ruleset;

/* Appends a rule, copying a and b (b may be NULL for "").  Returns 0 or
 * WB_ENOMEM. */
int wb__ruleset_add(wb__ruleset *rs, int kind, const char *a, const char *b,
                    int dtype, int line);
/* Frees the rules and resets rs to empty.  Accepts NULL. */
void wb__ruleset_clear(wb__ruleset *rs);

/* One tensor of a target schema or of a source table. */
typedef struct wb__tinfo {
    char *name;                 /* Owned name. */
    int dtype;                  /* A wb_dtype. */
    int ndim;                   /* 0..WB_MAX_DIMS. */
    int64_t shape[WB_MAX_DIMS]; /* Sizes. */
} wb__tinfo;

typedef struct wb__schema {
    char *target; /* Target's class name for messages ("" ok). */
    wb__tinfo *v; /* Tensors in the target's state_dict order. */
    size_t n;     /* Tensors in v. */
    size_t cap;   /* Allocated slots in v. */
} wb__schema;

int wb__schema_push(wb__schema *s, const char *name, int dtype, int ndim,
                    const int64_t *shape);
void wb__schema_clear(wb__schema *s);

/* Parses the text of a rules file and appends its rules to rs; the options
 * it sets (strict, ignore-mismatched-sizes) go to *strict and *ignore when
 * those are not NULL and the file names them (else they are untouched).
 * On failure rs is unchanged, and err receives "line N: why".
 * Returns 0 or WB_ERULE. */
int wb__rules_parse_text(wb__ruleset *rs, const char *text, int *strict,
                         int *ignore, char *err, size_t errlen);

#endif
