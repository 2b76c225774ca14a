/* rules_parse.c -- The parser for the text of a rules file.
 *
 * wb__rules_parse_text() reads the text line by line into rules appended
 * to a wb__ruleset, checking every glob, regex and replacement with the
 * checks of rules_match.h, so that a rules file is judged as the same
 * rules given through calls are; the first error is reported as
 * "line N: why".  No I/O.
 *
 * Rules-file format, one rule per line ('#' at the start of a line or after
 * whitespace starts a comment, blank lines are ignored):
 *
 *   include GLOB [GLOB...]          keep only source keys matching a glob
 *   exclude GLOB [GLOB...]          drop source keys matching a glob
 *   rename OLD -> NEW               exact rename
 *   prefix OLD -> NEW               prefix rename; either side may be empty
 *   regex PATTERN -> REPLACEMENT    full-match regex, Python-style \1 \g<n>
 *   cast GLOB DTYPE                 dtype for renamed keys without a schema
 *   strict true|false
 *   ignore-mismatched-sizes true|false
 *
 * The two sides of "->" are the trimmed text around the first "->" that
 * stands between whitespace (or at an end).  Any operand may be written in
 * double quotes to hold spaces, '#' or "->"; inside quotes \" is a quote
 * and every other backslash is kept as written. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"
#include "rules_match.h"

/* ---------------------------------------------------------------- parser */

/* State of one wb__rules_parse_text() call. */
typedef struct parser {
    wb__ruleset tmp; /* Rules parsed so far (moved on success). */
    int line;        /* Current line number, from 1. */
    char *err;       /* Caller's error buffer (may be NULL). */
    size_t errlen;   /* Size of err. */
} parser;

/* Skips spaces and tabs. */
static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\v' || *p == '\f')
        p++;
    return p;
}

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\v' || c == '\f';
}

/* Reads a double-quoted string starting at *p (on the opening quote) into
 * a new string; \" is a quote, other backslash pairs are kept verbatim.
 * Advances *p past the closing quote.  Returns the string, or NULL with
 * *rc set to WB_ERULE (unterminated) or WB_ENOMEM. */
static char *read_quoted(const char **p, int *rc) {
    const char *s = *p + 1;
    size_t cap = strlen(s) + 1;
    char *out = malloc(cap);
    if (out == NULL) {
        *rc = WB_ENOMEM;
        return NULL;
    }
    size_t n = 0;
    while (*s != '"') {
        if (*s == '\0') {
            free(out);
            *rc = WB_ERULE;
            return NULL;
        }
        if (s[0] == '\\' && s[1] == '"') {
            out[n++] = '"';
            s += 2;
        } else if (s[0] == '\\' && s[1] != '\0') {
            out[n++] = *s++;
            out[n++] = *s++;
        } else {
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    *p = s + 1;
    return out;
}

/* Copies len bytes of s into a new string, trimming whitespace at both
 * ends.  Returns NULL when out of memory. */
static char *dup_trimmed(const char *s, size_t len) {
    while (len > 0 && is_ws(*s)) {
        s++;
        len--;
    }
    while (len > 0 && is_ws(s[len - 1]))
        len--;
    return strndup(s, len);
}

/* Reads the next whitespace-separated (or quoted) token at *p.  Returns 1
 * and a new string in *tok, 0 at the end of the line, or a negative error
 * (WB_ERULE for an unterminated quote, WB_ENOMEM). */
static int next_token(const char **p, char **tok) {
    const char *s = skip_ws(*p);
    *tok = NULL;
    if (*s == '\0')
        return 0;
    if (*s == '"') {
        int rc = 0;
        *tok = read_quoted(&s, &rc);
        if (*tok == NULL)
            return rc;
        if (*s != '\0' && !is_ws(*s)) {
            free(*tok);
            *tok = NULL;
            return WB_ERULE;
        }
    } else {
        const char *e = s;
        while (*e != '\0' && !is_ws(*e))
            e++;
        *tok = strndup(s, (size_t)(e - s));
        if (*tok == NULL)
            return WB_ENOMEM;
        s = e;
    }
    *p = s;
    return 1;
}

/* Splits "LEFT -> RIGHT" (already comment-free) into two new strings.
 * Returns 0, WB_ERULE when there is no arrow or a quote is unterminated,
 * or WB_ENOMEM. */
static int split_arrow(const char *s, char **left, char **right) {
    int rc = 0;
    *left = *right = NULL;
    s = skip_ws(s);
    const char *after;
    if (*s == '"') {
        *left = read_quoted(&s, &rc);
        if (*left == NULL)
            return rc;
        s = skip_ws(s);
        if (s[0] != '-' || s[1] != '>' || (s[2] != '\0' && !is_ws(s[2])))
            goto bad;
        after = s + 2;
    } else {
        const char *a = NULL;
        for (const char *q = s; *q != '\0'; q++) {
            if (q[0] == '-' && q[1] == '>' && (q == s || is_ws(q[-1])) &&
                (q[2] == '\0' || is_ws(q[2]))) {
                a = q;
                break;
            }
        }
        if (a == NULL)
            return WB_ERULE;
        *left = dup_trimmed(s, (size_t)(a - s));
        if (*left == NULL)
            return WB_ENOMEM;
        after = a + 2;
    }
    after = skip_ws(after);
    if (*after == '"') {
        *right = read_quoted(&after, &rc);
        if (*right == NULL)
            goto fail;
        if (*skip_ws(after) != '\0')
            goto bad;
    } else {
        *right = dup_trimmed(after, strlen(after));
        if (*right == NULL) {
            rc = WB_ENOMEM;
            goto fail;
        }
    }
    return 0;
bad:
    rc = WB_ERULE;
fail:
    free(*left);
    free(*right);
    *left = *right = NULL;
    return rc;
}

/* Reports a parse error for the current line.  Returns WB_ERULE. */
static int perr(parser *ps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int perr(parser *ps, const char *fmt, ...) {
    if (ps->err == NULL || ps->errlen == 0)
        return WB_ERULE;
    int n = snprintf(ps->err, ps->errlen, "line %d: ", ps->line);
    if (n >= 0 && (size_t)n < ps->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return WB_ERULE;
}

/* Reports out-of-memory for the current line.  Returns WB_ENOMEM. */
static int pnomem(parser *ps) {
    perr(ps, "out of memory");
    return WB_ENOMEM;
}

/* Parses the operands of include/exclude. */
static int parse_globs(parser *ps, int kind, const char *rest) {
    int count = 0;
    for (;;) {
        char *g;
        int rc = next_token(&rest, &g);
        if (rc == 0)
            break;
        if (rc == WB_ENOMEM)
            return pnomem(ps);
        if (rc < 0)
            return perr(ps, "unterminated quote");
        if (wb__glob_check(g) != 0) {
            rc = perr(ps, "bad glob '%s'", g);
            free(g);
            return rc;
        }
        rc = wb__ruleset_add(&ps->tmp, kind, g, "", -1, ps->line);
        free(g);
        if (rc != 0)
            return pnomem(ps);
        count++;
    }
    if (count == 0)
        return perr(ps, "expected at least one glob");
    return 0;
}

/* Parses the operands of rename, prefix and regex. */
static int parse_arrow_rule(parser *ps, int kind, const char *rest) {
    char *l, *r;
    const char *usage =
        kind == WB__RULE_REGEX ? "PATTERN -> REPLACEMENT" : "OLD -> NEW";
    int rc = split_arrow(rest, &l, &r);
    if (rc == WB_ENOMEM)
        return pnomem(ps);
    if (rc != 0)
        return perr(ps, "expected '%s'", usage);
    if ((kind != WB__RULE_PREFIX && l[0] == '\0') ||
        (kind == WB__RULE_RENAME && r[0] == '\0')) {
        rc = perr(ps, "expected '%s'", usage);
    } else if (strlen(l) > WB_MAX_NAME || strlen(r) > WB_MAX_NAME) {
        rc = perr(ps, "operand longer than %d bytes", WB_MAX_NAME);
    } else if (kind == WB__RULE_REGEX) {
        char why[WB_PCRE2_ERRMSG_MAX + 64];
        pcre2_code *re;
        int crc = wb__regex_compile(l, &re, why, sizeof why);
        if (crc) {
            rc = crc == WB_ENOMEM ? pnomem(ps)
                                  : perr(ps, "bad regex '%s' %s", l, why);
        } else {
            wb__template t;
            rc = wb__template_parse(re, r, &t, why, sizeof why);
            wb__template_free(&t);
            pcre2_code_free(re);
            if (rc == WB_ENOMEM)
                rc = pnomem(ps);
            else if (rc != 0)
                rc = perr(ps, "bad replacement '%s': %s", r, why);
        }
    }
    if (rc == 0 && wb__ruleset_add(&ps->tmp, kind, l, r, -1, ps->line) != 0)
        rc = pnomem(ps);
    free(l);
    free(r);
    return rc;
}

/* Parses "cast GLOB DTYPE". */
static int parse_cast(parser *ps, const char *rest) {
    char *g = NULL, *d = NULL, *extra = NULL;
    int rc = next_token(&rest, &g);
    if (rc == 1)
        rc = next_token(&rest, &d);
    if (rc == 1)
        rc = next_token(&rest, &extra) == 0 ? 1 : WB_ERULE;
    if (rc == WB_ENOMEM) {
        rc = pnomem(ps);
    } else if (rc != 1) {
        rc = perr(ps, "expected 'cast GLOB DTYPE'");
    } else if (wb__glob_check(g) != 0) {
        rc = perr(ps, "bad glob '%s'", g);
    } else {
        int dt = wb_dtype_from_name(d);
        if (dt < 0)
            rc = perr(ps, "unknown dtype '%s'", d);
        else if (wb__ruleset_add(&ps->tmp, WB__RULE_CAST, g, "", dt,
                                 ps->line) != 0)
            rc = pnomem(ps);
        else
            rc = 0;
    }
    free(g);
    free(d);
    free(extra);
    return rc;
}

/* Parses "true" or "false" after an option name into *val. */
static int parse_bool(parser *ps, const char *name, const char *rest,
                      int *val) {
    char *v = NULL, *extra = NULL;
    int rc = next_token(&rest, &v);
    if (rc == 1)
        rc = next_token(&rest, &extra) == 0 ? 1 : WB_ERULE;
    if (rc == WB_ENOMEM) {
        rc = pnomem(ps);
    } else if (rc == 1 && strcasecmp(v, "true") == 0) {
        *val = 1;
        rc = 0;
    } else if (rc == 1 && strcasecmp(v, "false") == 0) {
        *val = 0;
        rc = 0;
    } else {
        rc = perr(ps, "expected '%s true|false'", name);
    }
    free(v);
    free(extra);
    return rc;
}

/* Cuts a comment off line: a '#' at the start or after whitespace, outside
 * double quotes. */
static void strip_comment(char *line) {
    int quoted = 0;
    for (char *p = line; *p != '\0'; p++) {
        if (quoted) {
            if (p[0] == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                quoted = 0;
        } else if (*p == '"') {
            quoted = 1;
        } else if (*p == '#' && (p == line || is_ws(p[-1]))) {
            *p = '\0';
            return;
        }
    }
}

/* Parses one line (modified in place). */
static int parse_line(parser *ps, char *line, int *strict, int *ignore) {
    strip_comment(line);
    char *s = (char *)skip_ws(line);
    if (*s == '\0')
        return 0;
    char *e = s;
    while (*e != '\0' && !is_ws(*e))
        e++;
    size_t dlen = (size_t)(e - s);
    const char *rest = e;
#define IS(word) (dlen == strlen(word) && memcmp(s, word, dlen) == 0)
    if (IS("include"))
        return parse_globs(ps, WB__RULE_INCLUDE, rest);
    if (IS("exclude"))
        return parse_globs(ps, WB__RULE_EXCLUDE, rest);
    if (IS("rename"))
        return parse_arrow_rule(ps, WB__RULE_RENAME, rest);
    if (IS("prefix"))
        return parse_arrow_rule(ps, WB__RULE_PREFIX, rest);
    if (IS("regex"))
        return parse_arrow_rule(ps, WB__RULE_REGEX, rest);
    if (IS("cast"))
        return parse_cast(ps, rest);
    if (IS("strict"))
        return parse_bool(ps, "strict", rest, strict);
    if (IS("ignore-mismatched-sizes") || IS("ignore_mismatched_sizes"))
        return parse_bool(ps, "ignore-mismatched-sizes", rest, ignore);
#undef IS
    return perr(ps, "unknown directive '%.*s'", (int)(dlen > 64 ? 64 : dlen),
                s);
}

int wb__rules_parse_text(wb__ruleset *rs, const char *text, int *strict,
                         int *ignore, char *err, size_t errlen) {
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (rs == NULL || text == NULL) {
        wb__set_err(err, errlen, "invalid argument");
        return WB_EINVAL;
    }
    parser ps = {{NULL, 0, 0}, 0, err, errlen};
    int st = -1, ig = -1;
    int rc = 0;
    const char *p = text;
    while (*p != '\0' && rc == 0) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        ps.line++;
        char *line = strndup(p, len);
        if (line == NULL) {
            rc = pnomem(&ps);
            break;
        }
        if (len > 0 && line[len - 1] == '\r')
            line[len - 1] = '\0';
        rc = parse_line(&ps, line, &st, &ig);
        free(line);
        p += len + (eol != NULL);
    }
    /* Move the parsed rules over only when all of them fit. */
    if (rc == 0 && ps.tmp.n > 0) {
        size_t need = rs->n + ps.tmp.n;
        if (need > rs->cap) {
            wb__rule *v = need <= SIZE_MAX / sizeof *v
                              ? realloc(rs->v, need * sizeof *v)
                              : NULL;
            if (v == NULL) {
                wb__set_err(err, errlen, "out of memory");
                rc = WB_ENOMEM;
            } else {
                rs->v = v;
                rs->cap = need;
            }
        }
        if (rc == 0) {
            memcpy(rs->v + rs->n, ps.tmp.v, ps.tmp.n * sizeof *ps.tmp.v);
            rs->n = need;
            free(ps.tmp.v);
            ps.tmp.v = NULL;
            ps.tmp.n = ps.tmp.cap = 0;
        }
    }
    wb__ruleset_clear(&ps.tmp);
    if (rc == 0) {
        if (st >= 0 && strict != NULL)
            *strict = st;
        if (ig >= 0 && ignore != NULL)
            *ignore = ig;
    }
    return rc;
}
