/* rules_match.h -- Glob checks, regex compilation and replacement templates
 * for mapping rules.
 *
 * Shared by the rules-file parser (proto/rules_parse.c), the client's
 * argument checks (client/rules.c) and the resolver
 * (daemon/resolve_rules.c), so that a pattern is judged the same way
 * everywhere.  Implemented in proto/rules.c.  Regexes are PCRE2 patterns
 * that must match a whole key; replacements use Python re.sub syntax
 * (\1..\99, \g<name>, \g<0>, \\ and \n-style escapes). */
#ifndef WB_PROTO_RULES_MATCH_H
#define WB_PROTO_RULES_MATCH_H

#include <stddef.h>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include "rules.h"

/* Options every rule regex is compiled with: UTF-8 keys, Unicode classes as
 * in Python's re, and a match that must span the whole key. */
#define WB_REGEX_COMPILE_FLAGS                                                 \
    (PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED | PCRE2_ENDANCHORED |              \
     PCRE2_NEVER_BACKSLASH_C)

/* One piece of a parsed replacement template. */
typedef struct wb__tpl_piece {
    int group;  /* Capture group to copy, or -1: literal. */
    size_t off; /* Literal: offset of its bytes in text. */
    size_t len; /* Literal: number of bytes. */
} wb__tpl_piece;

/* A replacement template parsed against one compiled pattern. */
typedef struct wb__template {
    char *text;       /* Literal bytes of every piece (owned). */
    wb__tpl_piece *v; /* Pieces in output order (owned). */
    size_t n;         /* Pieces in v. */
} wb__template;

/* Returns 1 if glob has an fnmatch(3) metacharacter (* ? [ \), else 0: a
 * glob without one matches exactly one name. */
int wb__glob_has_magic(const char *glob);

/* Checks that glob is non-empty, at most WB_MAX_NAME bytes, has every '['
 * closed and does not end in a lone backslash.  Returns 0 or WB_ERULE. */
int wb__glob_check(const char *glob);

/* snprintf into err when there is room for it; a NULL err is ignored. */
void wb__set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define WB_PCRE2_ERRMSG_MAX 256 /* Bytes of a PCRE2 error message. */

/* Compiles pattern with WB_REGEX_COMPILE_FLAGS into *out.  Returns 0,
 * WB_ERULE with err set to "at offset N: why", or WB_ENOMEM (*out is NULL
 * on failure). */
int wb__regex_compile(const char *pattern, pcre2_code **out, char *err,
                      size_t errlen);

/* Parses a Python-style replacement template for the compiled pattern re:
 * checks every group reference against the pattern's groups and names.
 * On success fills *t (free with wb__template_free()) and returns 0; on a
 * bad template returns WB_ERULE with the reason in err ("invalid group
 * reference 3", "bad escape \q", ...); WB_ENOMEM when out of memory.  *t is
 * empty after a failure. */
int wb__template_parse(const pcre2_code *re, const char *repl, wb__template *t,
                       char *err, size_t errlen);

/* Frees the template's memory and empties it.  Accepts NULL. */
void wb__template_free(wb__template *t);

/* Checks one regex rule (pattern and replacement) without keeping anything.
 * Returns 0, or WB_ERULE with err set to "regex \"P\" at offset N: why" or
 * "regex \"P\": bad replacement \"R\": why", or WB_ENOMEM. */
int wb__regex_rule_check(const char *pattern, const char *repl, char *err,
                         size_t errlen);

#endif
