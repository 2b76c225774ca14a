/* rules_internal.h -- Layout of the public wb_rules and wb_schema handles.
 *
 * The client library encodes these into map requests: it reads r->rs (the
 * rules in order), the strict / ignore options a rules file set, and s->s
 * (the target schema).  Only client code includes this header. */
#ifndef WB_CLIENT_RULES_INTERNAL_H
#define WB_CLIENT_RULES_INTERNAL_H

#include "rules.h"
#include "wbroker.h"

#define WB_RULES_ERRMSG_MAX 512 /* Bytes of the last failure's detail. */

struct wb_rules {
    wb__ruleset rs; /* Rules in the order they were given. */
    int strict;     /* strict option of a rules file (has_strict). */
    int ignore;     /* ignore-mismatched-sizes option (has_ignore). */
    int has_strict; /* 1 once a rules file said "strict". */
    int has_ignore; /* 1 once a rules file said "ignore-...". */
    char errmsg[WB_RULES_ERRMSG_MAX]; /* Detail of the last failure. */
};

struct wb_schema {
    wb__schema s; /* Target name and tensors in order. */
};

#endif
