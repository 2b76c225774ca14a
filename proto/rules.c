/* rules.c -- Mapping rules, target schemas and the rules-file parser.
 *
 * Plain data shared by the client and the daemon: growing arrays of rules
 * and of target tensors, the parser for the rules-file text, and the glob,
 * regex and replacement-template checks of rules_match.h.  No I/O.
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
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"
#include "rules_match.h"

#define WB_RULES_MIN_CAP 8      /* First allocation of a rule array. */
#define WB_SCHEMA_MIN_CAP 16    /* First allocation of a schema array. */
#define WB_PCRE2_ERRMSG_MAX 256 /* Bytes of a PCRE2 error message. */

/* ---------------------------------------------------------------- arrays */

/* Makes room for one more element in *v (cap elements of size sz, n in
 * use).  Returns 0 or WB_ENOMEM, leaving *v untouched on failure. */
static int grow(void **v, size_t *cap, size_t n, size_t sz, size_t min) {
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : min;
    if (ncap < *cap || ncap > SIZE_MAX / sz)
        return WB_ENOMEM;
    void *p = realloc(*v, ncap * sz);
    if (p == NULL)
        return WB_ENOMEM;
    *v = p;
    *cap = ncap;
    return 0;
}

int wb__ruleset_add(wb__ruleset *rs, int kind, const char *a, const char *b,
                    int dtype, int line) {
    if (rs == NULL)
        return WB_EINVAL;
    if (grow((void **)&rs->v, &rs->cap, rs->n, sizeof *rs->v,
             WB_RULES_MIN_CAP) != 0)
        return WB_ENOMEM;
    char *ca = strdup(a ? a : "");
    char *cb = strdup(b ? b : "");
    if (ca == NULL || cb == NULL) {
        free(ca);
        free(cb);
        return WB_ENOMEM;
    }
    wb__rule *r = &rs->v[rs->n++];
    r->kind = kind;
    r->a = ca;
    r->b = cb;
    r->dtype = kind == WB__RULE_CAST ? dtype : -1;
    r->line = line;
    return 0;
}

void wb__ruleset_clear(wb__ruleset *rs) {
    if (rs == NULL)
        return;
    for (size_t i = 0; i < rs->n; i++) {
        free(rs->v[i].a);
        free(rs->v[i].b);
    }
    free(rs->v);
    rs->v = NULL;
    rs->n = rs->cap = 0;
}

/* Appends a tensor to the schema, copying its name.  Returns 0, WB_EINVAL
 * for a NULL schema, WB_ENAME for a name that is NULL, empty or longer than
 * WB_MAX_NAME, WB_EDTYPE, WB_ESHAPE for a bad ndim or a negative size, or
 * WB_ENOMEM; the schema is unchanged on failure. */
int wb__schema_push(wb__schema *s, const char *name, int dtype, int ndim,
                    const int64_t *shape) {
    if (s == NULL)
        return WB_EINVAL;
    if (name == NULL || name[0] == '\0' ||
        strnlen(name, WB_MAX_NAME + 1) > WB_MAX_NAME)
        return WB_ENAME;
    if (dtype < 0 || dtype >= WB_DTYPE_COUNT)
        return WB_EDTYPE;
    if (ndim < 0 || ndim > WB_MAX_DIMS || (ndim > 0 && shape == NULL))
        return WB_ESHAPE;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return WB_ESHAPE;
    if (grow((void **)&s->v, &s->cap, s->n, sizeof *s->v,
             WB_SCHEMA_MIN_CAP) != 0)
        return WB_ENOMEM;
    char *copy = strdup(name);
    if (copy == NULL)
        return WB_ENOMEM;
    wb__tinfo *t = &s->v[s->n++];
    memset(t, 0, sizeof *t);
    t->name = copy;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    return 0;
}

/* Frees the tensors and the target name and resets s to empty.  Accepts
 * NULL. */
void wb__schema_clear(wb__schema *s) {
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].name);
    free(s->v);
    free(s->target);
    s->v = NULL;
    s->target = NULL;
    s->n = s->cap = 0;
}

/* ---------------------------------------------------------------- globs */

int wb__glob_has_magic(const char *glob) {
    return strpbrk(glob, "*?[\\") != NULL;
}

/* Returns a pointer past the ']' closing the bracket expression that
 * starts at p (p points after the '['), or NULL when it is not closed.
 * Follows fnmatch(3): a leading '!' or '^' negates, a ']' right after the
 * opening (and negation) is literal, and [:class:], [.x.], [=x=] nest. */
static const char *bracket_end(const char *p) {
    if (*p == '!' || *p == '^')
        p++;
    if (*p == ']')
        p++;
    while (*p != '\0') {
        if (*p == ']')
            return p + 1;
        if (*p == '[' && (p[1] == ':' || p[1] == '.' || p[1] == '=')) {
            char kind = p[1];
            const char *q = p + 2;
            while (*q != '\0' && !(q[0] == kind && q[1] == ']'))
                q++;
            if (*q == '\0')
                return NULL;
            p = q + 2;
            continue;
        }
        if (*p == '\\' && p[1] != '\0')
            p++;
        p++;
    }
    return NULL;
}

int wb__glob_check(const char *glob) {
    if (glob == NULL || glob[0] == '\0' ||
        strnlen(glob, WB_MAX_NAME + 1) > WB_MAX_NAME)
        return WB_ERULE;
    for (const char *p = glob; *p != '\0';) {
        if (*p == '\\') {
            if (p[1] == '\0')
                return WB_ERULE;
            p += 2;
        } else if (*p == '[') {
            p = bracket_end(p + 1);
            if (p == NULL)
                return WB_ERULE;
        } else {
            p++;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- regexes */

/* snprintf into err when there is room for it; a NULL err is ignored. */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

pcre2_code *wb__regex_compile(const char *pattern, char *err, size_t errlen) {
    int code = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   WB_REGEX_COMPILE_FLAGS, &code, &off, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[WB_PCRE2_ERRMSG_MAX];
        if (code == PCRE2_ERROR_NOMEMORY)
            set_err(err, errlen, "out of memory");
        else if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            set_err(err, errlen, "at offset %zu: error %d", (size_t)off, code);
        else
            set_err(err, errlen, "at offset %zu: %s", (size_t)off,
                    (const char *)msg);
    }
    return re;
}

/* Growing template under construction. */
typedef struct tpl_build {
    wb__template *t;            /* Template being filled. */
    size_t text_cap;            /* Allocated bytes of t->text. */
    size_t text_len;            /* Used bytes of t->text. */
    size_t cap;                 /* Allocated pieces of t->v. */
} tpl_build;

/* Appends len literal bytes, merging with a literal piece just before. */
static int tpl_lit(tpl_build *b, const char *s, size_t len) {
    while (b->text_len + len > b->text_cap) {
        size_t ncap = b->text_cap ? b->text_cap * 2 : 64;
        char *p = realloc(b->t->text, ncap);
        if (p == NULL)
            return WB_ENOMEM;
        b->t->text = p;
        b->text_cap = ncap;
    }
    memcpy(b->t->text + b->text_len, s, len);
    wb__template *t = b->t;
    if (t->n > 0 && t->v[t->n - 1].group < 0) {
        t->v[t->n - 1].len += len;
    } else {
        if (grow((void **)&t->v, &b->cap, t->n, sizeof *t->v, 8) != 0)
            return WB_ENOMEM;
        t->v[t->n++] = (wb__tpl_piece){-1, b->text_len, len};
    }
    b->text_len += len;
    return 0;
}

/* Appends a reference to capture group g. */
static int tpl_group(tpl_build *b, int g) {
    wb__template *t = b->t;
    if (grow((void **)&t->v, &b->cap, t->n, sizeof *t->v, 8) != 0)
        return WB_ENOMEM;
    t->v[t->n++] = (wb__tpl_piece){g, 0, 0};
    return 0;
}

/* Parses the body of \g<...> (name or number, len bytes) into a group
 * number, or returns -1 with err set. */
static int tpl_gref(const pcre2_code *re, uint32_t ngroups, const char *s,
                    size_t len, char *err, size_t errlen) {
    if (len == 0) {
        set_err(err, errlen, "missing group name");
        return -1;
    }
    int digits = 1;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]))
            digits = 0;
    if (digits) {
        unsigned long g = len > 9 ? ULONG_MAX : strtoul(s, NULL, 10);
        if (g > ngroups) {
            set_err(err, errlen, "invalid group reference %.*s", (int)len, s);
            return -1;
        }
        return (int)g;
    }
    char name[WB_MAX_NAME + 1];
    if (len > WB_MAX_NAME)
        len = WB_MAX_NAME;
    memcpy(name, s, len);
    name[len] = '\0';
    int g = pcre2_substring_number_from_name(re, (PCRE2_SPTR)name);
    if (g < 0) {
        set_err(err, errlen, "unknown group name '%s'", name);
        return -1;
    }
    return g;
}

int wb__template_parse(const pcre2_code *re, const char *repl,
                       wb__template *t, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    uint32_t ngroups = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ngroups);
    tpl_build b = {t, 0, 0, 0};
    int rc = 0;
    const char *p = repl;
    while (*p != '\0' && rc == 0) {
        const char *q = strchr(p, '\\');
        if (q == NULL)
            q = p + strlen(p);
        if (q > p)
            rc = tpl_lit(&b, p, (size_t)(q - p));
        p = q;
        if (*p != '\\' || rc != 0)
            continue;
        char c = p[1];
        if (c == '\0') {
            set_err(err, errlen, "bad escape (end of pattern)");
            rc = WB_ERULE;
        } else if (c == 'g') {
            const char *close = p[2] == '<' ? strchr(p + 3, '>') : NULL;
            if (p[2] != '<') {
                set_err(err, errlen, "missing <");
                rc = WB_ERULE;
            } else if (close == NULL) {
                set_err(err, errlen, "missing >, unterminated name");
                rc = WB_ERULE;
            } else {
                int g = tpl_gref(re, ngroups, p + 3, (size_t)(close - p - 3),
                                 err, errlen);
                rc = g < 0 ? WB_ERULE : tpl_group(&b, g);
                p = close + 1;
            }
        } else if (c == '0') {
            set_err(err, errlen, "bad escape \\0: names cannot hold NUL");
            rc = WB_ERULE;
        } else if (isdigit((unsigned char)c)) {
            int g = c - '0';
            size_t used = 2;
            if (isdigit((unsigned char)p[2])) {
                if (c <= '7' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
                    set_err(err, errlen, "octal escape \\%.3s not supported",
                            p + 1);
                    rc = WB_ERULE;
                    break;
                }
                g = g * 10 + (p[2] - '0');
                used = 3;
            }
            if ((uint32_t)g > ngroups) {
                set_err(err, errlen, "invalid group reference %d", g);
                rc = WB_ERULE;
            } else {
                rc = tpl_group(&b, g);
                p += used;
            }
        } else {
            static const char esc_in[] = "\\abfnrtv";
            static const char esc_out[] = "\\\a\b\f\n\r\t\v";
            const char *e = strchr(esc_in, c);
            if (e != NULL) {
                rc = tpl_lit(&b, &esc_out[e - esc_in], 1);
            } else if (isalpha((unsigned char)c) && !(c & 0x80)) {
                set_err(err, errlen, "bad escape \\%c", c);
                rc = WB_ERULE;
            } else {
                rc = tpl_lit(&b, p, 2); /* Python keeps unknown escapes. */
            }
            p += 2;
        }
    }
    if (rc == WB_ENOMEM)
        set_err(err, errlen, "out of memory");
    if (rc != 0)
        wb__template_free(t);
    return rc;
}

void wb__template_free(wb__template *t) {
    if (t == NULL)
        return;
    free(t->text);
    free(t->v);
    memset(t, 0, sizeof *t);
}

int wb__regex_rule_check(const char *pattern, const char *repl, char *err,
                         size_t errlen) {
    char why[WB_PCRE2_ERRMSG_MAX + 64];
    pcre2_code *re = wb__regex_compile(pattern, why, sizeof why);
    if (re == NULL) {
        if (strcmp(why, "out of memory") == 0) {
            set_err(err, errlen, "out of memory");
            return WB_ENOMEM;
        }
        set_err(err, errlen, "regex \"%s\" %s", pattern, why);
        return WB_ERULE;
    }
    wb__template t;
    int rc = wb__template_parse(re, repl ? repl : "", &t, why, sizeof why);
    pcre2_code_free(re);
    wb__template_free(&t);
    if (rc == WB_ERULE)
        set_err(err, errlen, "regex \"%s\": bad replacement \"%s\": %s",
                pattern, repl, why);
    else if (rc != 0)
        set_err(err, errlen, "out of memory");
    return rc;
}

/* ---------------------------------------------------------------- parser */

/* State of one wb__rules_parse_text() call. */
typedef struct parser {
    wb__ruleset tmp;            /* Rules parsed so far (moved on success). */
    int line;                   /* Current line number, from 1. */
    char *err;                  /* Caller's error buffer (may be NULL). */
    size_t errlen;              /* Size of err. */
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
        pcre2_code *re = wb__regex_compile(l, why, sizeof why);
        if (re == NULL) {
            rc = strcmp(why, "out of memory") == 0
                     ? pnomem(ps)
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
        set_err(err, errlen, "invalid argument");
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
                set_err(err, errlen, "out of memory");
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
