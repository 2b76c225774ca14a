/* rules.c -- Mapping rules and target schemas as plain data, and the glob,
 * regex and replacement-template checks.
 *
 * Shared by the client and the daemon: growing arrays of rules and of
 * target tensors, and the checks of rules_match.h (globs as fnmatch(3)
 * reads them, regexes compiled with PCRE2, Python-style replacement
 * templates).  The parser for the rules-file text, which builds on them,
 * is in rules_parse.c.  No I/O. */
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

#define WB_RULES_MIN_CAP 8   /* First allocation of a rule array. */
#define WB_SCHEMA_MIN_CAP 16 /* First allocation of a schema array. */

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
    if (grow((void **)&s->v, &s->cap, s->n, sizeof *s->v, WB_SCHEMA_MIN_CAP) !=
        0)
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

void wb__set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int wb__regex_compile(const char *pattern, pcre2_code **out, char *err,
                      size_t errlen) {
    int code = 0;
    PCRE2_SIZE off = 0;
    *out = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                         WB_REGEX_COMPILE_FLAGS, &code, &off, NULL);
    if (*out != NULL)
        return 0;
    PCRE2_UCHAR msg[WB_PCRE2_ERRMSG_MAX];
    if (code == PCRE2_ERROR_NOMEMORY) {
        wb__set_err(err, errlen, "out of memory");
        return WB_ENOMEM;
    }
    if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
        wb__set_err(err, errlen, "at offset %zu: error %d", (size_t)off, code);
    else
        wb__set_err(err, errlen, "at offset %zu: %s", (size_t)off,
                    (const char *)msg);
    return WB_ERULE;
}

/* Growing template under construction. */
typedef struct tpl_build {
    wb__template *t; /* Template being filled. */
    size_t text_cap; /* Allocated bytes of t->text. */
    size_t text_len; /* Used bytes of t->text. */
    size_t cap;      /* Allocated pieces of t->v. */
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
        wb__set_err(err, errlen, "missing group name");
        return -1;
    }
    int digits = 1;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]))
            digits = 0;
    if (digits) {
        unsigned long g = len > 9 ? ULONG_MAX : strtoul(s, NULL, 10);
        if (g > ngroups) {
            wb__set_err(err, errlen, "invalid group reference %.*s", (int)len,
                        s);
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
        wb__set_err(err, errlen, "unknown group name '%s'", name);
        return -1;
    }
    return g;
}

int wb__template_parse(const pcre2_code *re, const char *repl, wb__template *t,
                       char *err, size_t errlen) {
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
            wb__set_err(err, errlen, "bad escape (end of pattern)");
            rc = WB_ERULE;
        } else if (c == 'g') {
            const char *close = p[2] == '<' ? strchr(p + 3, '>') : NULL;
            if (p[2] != '<') {
                wb__set_err(err, errlen, "missing <");
                rc = WB_ERULE;
            } else if (close == NULL) {
                wb__set_err(err, errlen, "missing >, unterminated name");
                rc = WB_ERULE;
            } else {
                int g = tpl_gref(re, ngroups, p + 3, (size_t)(close - p - 3),
                                 err, errlen);
                rc = g < 0 ? WB_ERULE : tpl_group(&b, g);
                p = close + 1;
            }
        } else if (c == '0') {
            wb__set_err(err, errlen, "bad escape \\0: names cannot hold NUL");
            rc = WB_ERULE;
        } else if (isdigit((unsigned char)c)) {
            int g = c - '0';
            size_t used = 2;
            if (isdigit((unsigned char)p[2])) {
                if (c <= '7' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
                    wb__set_err(err, errlen,
                                "octal escape \\%.3s not supported", p + 1);
                    rc = WB_ERULE;
                    break;
                }
                g = g * 10 + (p[2] - '0');
                used = 3;
            }
            if ((uint32_t)g > ngroups) {
                wb__set_err(err, errlen, "invalid group reference %d", g);
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
                wb__set_err(err, errlen, "bad escape \\%c", c);
                rc = WB_ERULE;
            } else {
                rc = tpl_lit(&b, p, 2); /* Python keeps unknown escapes. */
            }
            p += 2;
        }
    }
    if (rc == WB_ENOMEM)
        wb__set_err(err, errlen, "out of memory");
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
    pcre2_code *re;
    int rc = wb__regex_compile(pattern, &re, why, sizeof why);
    if (rc == WB_ENOMEM) {
        wb__set_err(err, errlen, "out of memory");
        return rc;
    }
    if (rc) {
        wb__set_err(err, errlen, "regex \"%s\" %s", pattern, why);
        return rc;
    }
    wb__template t;
    rc = wb__template_parse(re, repl ? repl : "", &t, why, sizeof why);
    pcre2_code_free(re);
    wb__template_free(&t);
    if (rc == WB_ERULE)
        wb__set_err(err, errlen, "regex \"%s\": bad replacement \"%s\": %s",
                    pattern, repl, why);
    else if (rc != 0)
        wb__set_err(err, errlen, "out of memory");
    return rc;
}
