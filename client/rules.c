/* rules.c -- Public wb_rules_* and wb_schema_* calls of libwbroker.
 *
 * Builds mapping rules and target schemas on the client side.  Every rule
 * is checked here (globs, regex syntax, replacement group references,
 * name lengths) so that a bad rule fails at the call that made it, not
 * later at the daemon.  The daemon checks again: it trusts nobody. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules_internal.h"
#include "rules_match.h"

/* Records the detail of a failure in r->errmsg and returns rc. */
static int fail(wb_rules *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(wb_rules *r, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof r->errmsg, fmt, ap);
    va_end(ap);
    return rc;
}

/* Returns 1 if s is longer than WB_MAX_NAME bytes. */
static int too_long(const char *s) {
    return strnlen(s, WB_MAX_NAME + 1) > WB_MAX_NAME;
}

/* Allocates an empty rule list.  Returns NULL when out of memory. */
wb_rules *wb_rules_new(void) {
    return calloc(1, sizeof(wb_rules));
}

/* Frees r and its rules.  Accepts NULL. */
void wb_rules_free(wb_rules *r) {
    if (r == NULL)
        return;
    wb__ruleset_clear(&r->rs);
    free(r);
}

const char *wb_rules_errmsg(const wb_rules *r) {
    return r ? r->errmsg : "";
}

/* Appends an include or exclude filter after checking the glob. */
static int add_glob(wb_rules *r, int kind, const char *glob) {
    if (r == NULL)
        return WB_EINVAL;
    if (glob == NULL)
        return fail(r, WB_EINVAL, "glob is NULL");
    if (too_long(glob))
        return fail(r, WB_ENAME, "glob longer than %d bytes", WB_MAX_NAME);
    if (wb__glob_check(glob) != 0)
        return fail(r, WB_ERULE, "bad glob \"%s\"", glob);
    if (wb__ruleset_add(&r->rs, kind, glob, "", -1, 0) != 0)
        return fail(r, WB_ENOMEM, "out of memory");
    return 0;
}

/* Keeps only source keys that match glob (or another include glob).
 * Returns 0, WB_EINVAL, WB_ENAME, WB_ERULE (empty or bad glob) or
 * WB_ENOMEM; nothing is added on failure. */
int wb_rules_include(wb_rules *r, const char *glob) {
    return add_glob(r, WB__RULE_INCLUDE, glob);
}

/* Drops source keys that match glob; an exclude wins over an include.
 * Same errors as wb_rules_include(). */
int wb_rules_exclude(wb_rules *r, const char *glob) {
    return add_glob(r, WB__RULE_EXCLUDE, glob);
}

/* Checks the two operands of a rename-like rule; empty_ok says whether
 * they may be "" (prefix rules). */
static int check_pair(wb_rules *r, const char *a, const char *b, int empty_ok) {
    if (r == NULL)
        return WB_EINVAL;
    if (a == NULL || b == NULL)
        return fail(r, WB_EINVAL, "rule operand is NULL");
    if (too_long(a) || too_long(b))
        return fail(r, WB_ENAME, "rule operand longer than %d bytes",
                    WB_MAX_NAME);
    if (!empty_ok && (a[0] == '\0' || b[0] == '\0'))
        return fail(r, WB_ERULE, "rule operand is empty");
    return 0;
}

/* Renames the key exactly equal to from into to.  Returns 0, WB_EINVAL,
 * WB_ENAME, WB_ERULE (an empty name) or WB_ENOMEM. */
int wb_rules_rename(wb_rules *r, const char *from, const char *to) {
    int rc = check_pair(r, from, to, 0);
    if (rc != 0)
        return rc;
    if (wb__ruleset_add(&r->rs, WB__RULE_RENAME, from, to, -1, 0) != 0)
        return fail(r, WB_ENOMEM, "out of memory");
    return 0;
}

/* Replaces the prefix from of every key that has it by to; from "" adds
 * to in front of every key and to "" strips from.  Same errors as
 * wb_rules_rename(), but empty operands are allowed. */
int wb_rules_rename_prefix(wb_rules *r, const char *from, const char *to) {
    int rc = check_pair(r, from, to, 1);
    if (rc != 0)
        return rc;
    if (wb__ruleset_add(&r->rs, WB__RULE_PREFIX, from, to, -1, 0) != 0)
        return fail(r, WB_ENOMEM, "out of memory");
    return 0;
}

/* Renames every key that pattern matches as a whole into replacement
 * (Python re.sub syntax: \1, \g<name>).  The pattern is compiled and the
 * replacement's group references checked now: a bad one returns WB_ERULE
 * and nothing is added.  Other errors as wb_rules_rename(). */
int wb_rules_rename_regex(wb_rules *r, const char *pattern,
                          const char *replacement) {
    int rc = check_pair(r, pattern, replacement, 1);
    if (rc != 0)
        return rc;
    if (pattern[0] == '\0')
        return fail(r, WB_ERULE, "regex is empty");
    rc =
        wb__regex_rule_check(pattern, replacement, r->errmsg, sizeof r->errmsg);
    if (rc != 0)
        return rc;
    if (wb__ruleset_add(&r->rs, WB__RULE_REGEX, pattern, replacement, -1, 0) !=
        0)
        return fail(r, WB_ENOMEM, "out of memory");
    return 0;
}

/* Asks for dtype on renamed keys matching glob when the target schema does
 * not give one (the last matching cast rule wins).  Returns 0, WB_EINVAL,
 * WB_ENAME, WB_ERULE (bad glob), WB_EDTYPE or WB_ENOMEM. */
int wb_rules_cast(wb_rules *r, const char *glob, int dtype) {
    if (r == NULL)
        return WB_EINVAL;
    if (glob == NULL)
        return fail(r, WB_EINVAL, "glob is NULL");
    if (too_long(glob))
        return fail(r, WB_ENAME, "glob longer than %d bytes", WB_MAX_NAME);
    if (wb__glob_check(glob) != 0)
        return fail(r, WB_ERULE, "bad glob \"%s\"", glob);
    if (dtype < 0 || dtype >= WB_DTYPE_COUNT)
        return fail(r, WB_EDTYPE, "unknown dtype %d", dtype);
    if (wb__ruleset_add(&r->rs, WB__RULE_CAST, glob, "", dtype, 0) != 0)
        return fail(r, WB_ENOMEM, "out of memory");
    return 0;
}

/* Appends the rules of a rules-file text, and takes the strict and
 * ignore-mismatched-sizes options it sets.  On failure nothing changes and
 * err (if not NULL) receives "line N: why".  Returns 0, WB_EINVAL,
 * WB_ERULE or WB_ENOMEM. */
int wb_rules_parse(wb_rules *r, const char *text, char *err, size_t errlen) {
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (r == NULL)
        return WB_EINVAL;
    if (text == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "rules text is NULL");
        return fail(r, WB_EINVAL, "rules text is NULL");
    }
    int strict = -1, ignore = -1;
    int rc = wb__rules_parse_text(&r->rs, text, &strict, &ignore, r->errmsg,
                                  sizeof r->errmsg);
    if (rc != 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", r->errmsg);
        return rc;
    }
    if (strict >= 0) {
        r->strict = strict;
        r->has_strict = 1;
    }
    if (ignore >= 0) {
        r->ignore = ignore;
        r->has_ignore = 1;
    }
    return 0;
}

/* Allocates an empty schema for a target called target_name (its class
 * name in error texts; NULL means "").  Returns NULL when out of memory or
 * when the name is longer than WB_MAX_NAME. */
wb_schema *wb_schema_new(const char *target_name) {
    if (target_name == NULL)
        target_name = "";
    if (too_long(target_name))
        return NULL;
    wb_schema *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->s.target = strdup(target_name);
    if (s->s.target == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

/* Frees s and its tensors.  Accepts NULL. */
void wb_schema_free(wb_schema *s) {
    if (s == NULL)
        return;
    wb__schema_clear(&s->s);
    free(s);
}

/* Appends a target tensor, in the target's state_dict order.  Returns 0,
 * WB_EINVAL, WB_ENAME, WB_EDTYPE, WB_ESHAPE or WB_ENOMEM.  Duplicate names
 * are caught when the daemon resolves the schema. */
int wb_schema_add(wb_schema *s, const char *name, int dtype, int ndim,
                  const int64_t *shape) {
    if (s == NULL)
        return WB_EINVAL;
    return wb__schema_push(&s->s, name, dtype, ndim, shape);
}
