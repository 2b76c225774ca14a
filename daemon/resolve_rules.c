/* resolve_rules.c -- The rules half of the resolver: the time budget, the
 * compiled rules, and the source keys filtered and renamed.
 *
 * Checks and prepares the rules of one request (exact globs and renames in
 * hash tables, the other globs in lists, every regex compiled with its
 * replacement template), then runs each source key through the filters
 * (include/exclude, exclude wins) and the renames in order, and hands the
 * kept keys to resolve.c, which matches them against the target schema.
 * A key is renamed in a fixed buffer of WB_MAX_NAME bytes, so renaming
 * never allocates and no step makes a key longer; every regex match is
 * bounded by PCRE2's limits, and the time budget of the whole wb__resolve()
 * call, kept here, is looked at as the work goes.  No I/O. */
#include <assert.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "resolve.h"
#include "resolve_internal.h"
#include "rules_match.h"

#define WB_REGEX_DEPTH_LIMIT 10000 /* PCRE2 backtracking depth per match. */
#define WB_REGEX_HEAP_LIMIT 8192   /* PCRE2 heap per match, in KiB. */
#define WB_ERRMSG_WHY_MAX 320      /* Bytes of a regex/template reason. */
#define WB_ERRMSG_KEY_MAX 96       /* Bytes of a key quoted in an errmsg. */
#define WB_ERRMSG_OPERAND_MAX 64   /* Bytes of a rule operand in an errmsg. */

/* ---------------------------------------------------------------- strings */

/* A key being renamed.  Fixed size: no rename may make a key longer than
 * WB_MAX_NAME bytes, so renaming never allocates. */
typedef struct kbuf {
    size_t len;              /* Bytes before the NUL, <= WB_MAX_NAME. */
    char p[WB_MAX_NAME + 1]; /* The key, NUL-terminated. */
} kbuf;

/* Appends len bytes of s to k.  Returns 0, or -1 with k unchanged when
 * the key would grow past WB_MAX_NAME bytes. */
static int kb_add(kbuf *k, const char *s, size_t len) {
    assert(k->len <= WB_MAX_NAME);
    if (len > WB_MAX_NAME - k->len)
        return -1;
    memcpy(k->p + k->len, s, len);
    k->len += len;
    k->p[k->len] = '\0';
    return 0;
}

/* Room for a shortened string: max bytes, "..." and the NUL. */
#define WB_SHORT_BUF(max) ((max) + 4)

/* Copies at most max bytes of s (len bytes) into out, which holds
 * WB_SHORT_BUF(max) bytes, cutting at a UTF-8 character boundary and
 * marking a cut with "...".  Returns out, for messages. */
static const char *shorten(char *out, size_t max, const char *s, size_t len) {
    size_t n = len;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* s[n] continues a character: cut before it. */
    }
    memcpy(out, s, n);
    strcpy(out + n, n < len ? "..." : "");
    return out;
}

/* ---------------------------------------------------------------- budget */

/* The clock the budget is checked against: CLOCK_MONOTONIC as of the
 * last timer tick.  It costs a few ns a read where CLOCK_MONOTONIC costs
 * about 25, and is never ahead of CLOCK_MONOTONIC, so the budget is never
 * found spent early, and late by at most one tick (1 to 10 ms). */
#ifdef CLOCK_MONOTONIC_COARSE
#define WB_BUDGET_CLOCK CLOCK_MONOTONIC_COARSE
#else
#define WB_BUDGET_CLOCK CLOCK_MONOTONIC
#endif

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void wb__budget_start(budget *b, unsigned ms) {
    memset(b, 0, sizeof *b);
    if (ms > 0)
        b->deadline = clock_ns(CLOCK_MONOTONIC) + (uint64_t)ms * 1000000u;
}

int wb__budget_check(budget *b) {
    b->work = 0;
    if (b->deadline != 0 && !b->spent &&
        clock_ns(WB_BUDGET_CLOCK) >= b->deadline)
        b->spent = 1;
    return b->spent;
}

/* ---------------------------------------------------------------- rules */

int wb__rule_err(wb__resolve_out *out, const wb__rule *r, int rc,
                 const char *fmt, ...) {
    size_t n = 0;
    if (r != NULL && r->line > 0) {
        int k = snprintf(out->errmsg, sizeof out->errmsg, "line %d: ", r->line);
        n = k > 0 && (size_t)k < sizeof out->errmsg ? (size_t)k : 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->errmsg + n, sizeof out->errmsg - n, fmt, ap);
    va_end(ap);
    return rc;
}

void wb__compiled_free(compiled *c) {
    for (size_t i = 0; i < c->n; i++) {
        pcre2_code_free(c->v[i].re);
        wb__template_free(&c->v[i].tpl);
    }
    free(c->v);
    free(c->inc_glob);
    free(c->exc_glob);
    free(c->casts);
    free(c->hit);
    wb__ht_free(&c->inc_exact);
    wb__ht_free(&c->exc_exact);
    wb__ht_free(&c->rename_first);
    pcre2_match_context_free(c->mctx);
    pcre2_match_data_free(c->md);
    memset(c, 0, sizeof *c);
}

int wb__compile_rules(const wb__ruleset *rs, compiled *c, budget *b,
                      unsigned ms, wb__resolve_out *out) {
    memset(c, 0, sizeof *c);
    size_t n = rs ? rs->n : 0;
    uint32_t max_pairs = 1;
    if (wb__ht_init(&c->inc_exact, 0) || wb__ht_init(&c->exc_exact, 0) ||
        wb__ht_init(&c->rename_first, 0))
        goto nomem;
    if (n == 0)
        return 0;
    c->v = calloc(n, sizeof *c->v);
    c->inc_glob = calloc(n, sizeof(size_t));
    c->exc_glob = calloc(n, sizeof(size_t));
    c->casts = calloc(n, sizeof(size_t));
    c->hit = calloc(n, 1);
    if (!c->v || !c->inc_glob || !c->exc_glob || !c->casts || !c->hit)
        goto nomem;
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        const wb__rule *r = &rs->v[i];
        crule *cr = &c->v[i];
        cr->r = r;
        cr->run_end = cr->next_same = NONE;
        if (r->a == NULL || r->b == NULL)
            return wb__rule_err(out, r, WB_ERULE, "rule %zu has no operand", i);
        cr->alen = strlen(r->a);
        cr->blen = strlen(r->b);
        switch (r->kind) {
        case WB__RULE_INCLUDE:
        case WB__RULE_EXCLUDE:
        case WB__RULE_CAST: {
            if (wb__glob_check(r->a) != 0)
                return wb__rule_err(out, r, WB_ERULE, "bad glob \"%s\"", r->a);
            if (r->kind == WB__RULE_CAST) {
                if (r->dtype < 0 || r->dtype >= WB_DTYPE_COUNT)
                    return wb__rule_err(out, r, WB_ERULE,
                                        "cast \"%s\": unknown dtype %d", r->a,
                                        r->dtype);
                c->casts[c->n_casts++] = i;
                break;
            }
            int inc = r->kind == WB__RULE_INCLUDE;
            c->has_include |= inc;
            if (!wb__glob_has_magic(r->a)) {
                if (wb__ht_put(inc ? &c->inc_exact : &c->exc_exact, r->a,
                               cr->alen, i, NULL) < 0)
                    goto nomem;
            } else if (inc) {
                c->inc_glob[c->n_inc_glob++] = i;
            } else {
                c->exc_glob[c->n_exc_glob++] = i;
            }
            break;
        }
        case WB__RULE_RENAME: {
            if (cr->alen == 0)
                return wb__rule_err(out, r, WB_ERULE, "rename of an empty key");
            size_t first;
            int put = wb__ht_put(&c->rename_first, r->a, cr->alen, i, &first);
            if (put < 0)
                goto nomem;
            if (put == 0) {
                /* Walk to the chain's tail; chains are short in practice,
                 * and a long one costs only while compiling. */
                size_t k = first;
                while (c->v[k].next_same != NONE)
                    k = c->v[k].next_same;
                c->v[k].next_same = i;
            }
            if (i == 0 || rs->v[i - 1].kind != WB__RULE_RENAME) {
                size_t j = i;
                while (j < n && rs->v[j].kind == WB__RULE_RENAME)
                    j++;
                cr->run_end = j;
            }
            break;
        }
        case WB__RULE_PREFIX:
            break;
        case WB__RULE_REGEX: {
            char why[WB_ERRMSG_WHY_MAX];
            int crc = wb__regex_compile(r->a, &cr->re, why, sizeof why);
            if (crc) {
                if (crc == WB_ENOMEM)
                    goto nomem;
                return wb__rule_err(out, r, WB_ERULE, "regex \"%s\" %s", r->a,
                                    why);
            }
            int rc =
                wb__template_parse(cr->re, r->b, &cr->tpl, why, sizeof why);
            if (rc == WB_ENOMEM)
                goto nomem;
            if (rc != 0)
                return wb__rule_err(out, r, WB_ERULE,
                                    "regex \"%s\": bad replacement \"%s\": %s",
                                    r->a, r->b, why);
            uint32_t groups = 0;
            pcre2_pattern_info(cr->re, PCRE2_INFO_CAPTURECOUNT, &groups);
            if (groups + 1 > max_pairs)
                max_pairs = groups + 1;
            break;
        }
        default:
            return wb__rule_err(out, r, WB_ERULE, "unknown rule kind %d",
                                r->kind);
        }
        /* Compiling a long pattern takes tens of microseconds. */
        if (r->kind == WB__RULE_REGEX ? wb__budget_check(b)
                                      : budget_charge(b, cr->alen + cr->blen))
            return wb__rule_err(out, r, WB_EREGEX,
                                "the rules took longer than %u ms; stopped "
                                "compiling rule %zu of %zu",
                                ms, i + 1, n);
    }
    c->mctx = pcre2_match_context_create(NULL);
    c->md = pcre2_match_data_create(max_pairs, NULL);
    if (c->mctx == NULL || c->md == NULL)
        goto nomem;
    pcre2_set_match_limit(c->mctx, WB_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(c->mctx, WB_REGEX_DEPTH_LIMIT);
    pcre2_set_heap_limit(c->mctx, WB_REGEX_HEAP_LIMIT);
    return 0;
nomem:
    snprintf(out->errmsg, sizeof out->errmsg, "out of memory");
    return WB_ENOMEM;
}

/* ---------------------------------------------------------------- errors */

/* Writes "line N: " for rule cr, or "rule N: " (its place in the request,
 * from 1) when it came from a call, into out->errmsg.  Returns the bytes
 * written. */
static size_t rule_where(const compiled *c, const crule *cr,
                         wb__resolve_out *out) {
    int n = cr->r->line > 0 ? snprintf(out->errmsg, sizeof out->errmsg,
                                       "line %d: ", cr->r->line)
                            : snprintf(out->errmsg, sizeof out->errmsg,
                                       "rule %zu: ", (size_t)(cr - c->v) + 1);
    assert(n > 0 && (size_t)n < sizeof out->errmsg);
    return (size_t)n;
}

int wb__over_budget(rstate *st, const crule *cr, const char *what,
                    const char *unit, size_t i, size_t n, const char *key) {
    size_t at = cr ? rule_where(&st->rules, cr, st->out) : 0;
    char k[WB_SHORT_BUF(WB_ERRMSG_KEY_MAX)];
    key = key ? key : "";
    shorten(k, WB_ERRMSG_KEY_MAX, key, strnlen(key, WB_MAX_NAME));
    snprintf(st->out->errmsg + at, sizeof st->out->errmsg - at,
             "%s took longer than %u ms; stopped at %s %zu of %zu (\"%s\")",
             what, st->req->budget_ms, unit, i, n, k);
    return WB_EREGEX;
}

/* wb__over_budget() while the filters and renames handled source key i. */
static int rules_over_budget(rstate *st, const crule *cr, size_t i) {
    const wb__resolve_req *req = st->req;
    return wb__over_budget(
        st, cr, st->rules.n ? "the rules" : "reading the source keys", "key", i,
        req->nsrc, req->src[i].name);
}

/* ---------------------------------------------------------------- renames */

/* Returns 1 if the filters keep source key name (len bytes), else 0; also
 * 0 when the budget ran out meanwhile. */
static int keep_key(rstate *st, const char *name, size_t len) {
    compiled *c = &st->rules;
    wb__hslot *h;
    if (c->exc_exact.n > 0 && (h = wb__ht_find(&c->exc_exact, name, len))) {
        c->hit[h->val] = 1;
        return 0;
    }
    for (size_t i = 0; i < c->n_exc_glob; i++) {
        if (fnmatch(c->v[c->exc_glob[i]].r->a, name, 0) == 0) {
            c->hit[c->exc_glob[i]] = 1;
            return 0;
        }
        if (budget_charge(&st->budget, len))
            return 0;
    }
    if (!c->has_include)
        return 1;
    if (c->inc_exact.n > 0 && (h = wb__ht_find(&c->inc_exact, name, len))) {
        c->hit[h->val] = 1;
        return 1;
    }
    for (size_t i = 0; i < c->n_inc_glob; i++) {
        if (fnmatch(c->v[c->inc_glob[i]].r->a, name, 0) == 0) {
            c->hit[c->inc_glob[i]] = 1;
            return 1;
        }
        if (budget_charge(&st->budget, len))
            return 0;
    }
    return 0;
}

/* Fails a rename that would make key (the key rule cr applies to, renamed
 * from source key src) longer than WB_MAX_NAME bytes.  The message names
 * the rule (rule_where()) and quotes the start of each string.  Returns
 * WB_ERULE. */
static int key_too_long(const compiled *c, const crule *cr, const kbuf *key,
                        const char *src, wb__resolve_out *out) {
    static const char *const kind[] = {[WB__RULE_RENAME] = "rename",
                                       [WB__RULE_PREFIX] = "prefix",
                                       [WB__RULE_REGEX] = "regex"};
    assert(cr->r->kind >= WB__RULE_RENAME && cr->r->kind <= WB__RULE_REGEX);
    char a[WB_SHORT_BUF(WB_ERRMSG_OPERAND_MAX)];
    char b[WB_SHORT_BUF(WB_ERRMSG_OPERAND_MAX)];
    char k[WB_SHORT_BUF(WB_ERRMSG_KEY_MAX)];
    char sk[WB_SHORT_BUF(WB_ERRMSG_KEY_MAX)];
    shorten(a, WB_ERRMSG_OPERAND_MAX, cr->r->a, cr->alen);
    shorten(b, WB_ERRMSG_OPERAND_MAX, cr->r->b, cr->blen);
    shorten(k, WB_ERRMSG_KEY_MAX, key->p, key->len);
    shorten(sk, WB_ERRMSG_KEY_MAX, src, strlen(src));
    size_t n = rule_where(c, cr, out);
    snprintf(out->errmsg + n, sizeof out->errmsg - n,
             "%s \"%s\" -> \"%s\" makes key \"%s\" longer than %d bytes "
             "(source key \"%s\")",
             kind[cr->r->kind], a, b, k, WB_MAX_NAME, sk);
    return WB_ERULE;
}

/* Applies regex rule cr to **cur, expanding the replacement into **tmp
 * and swapping the two.  The expansion stops at WB_MAX_NAME bytes.
 * Returns 0 (also when the pattern does not match), WB_EREGEX on a match
 * limit, WB_ERULE on another match error or a key too long, or
 * WB_ENOMEM. */
static int apply_regex(compiled *c, const crule *cr, const char *src,
                       kbuf **cur, kbuf **tmp, wb__resolve_out *out) {
    const kbuf *in = *cur;
    kbuf *res = *tmp;
    int rc =
        pcre2_match(cr->re, (PCRE2_SPTR)in->p, in->len, 0, 0, c->md, c->mctx);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc >= 0)
        c->hit[cr - c->v] = 1;
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
        rc == PCRE2_ERROR_HEAPLIMIT)
        return wb__rule_err(out, cr->r, WB_EREGEX,
                            "regex \"%s\" hit the match limit on key \"%s\"",
                            cr->r->a, in->p);
    if (rc == PCRE2_ERROR_NOMEMORY)
        return WB_ENOMEM;
    if (rc < 0) {
        PCRE2_UCHAR why[WB_ERRMSG_WHY_MAX];
        pcre2_get_error_message(rc, why, sizeof why);
        return wb__rule_err(out, cr->r, WB_ERULE,
                            "regex \"%s\" on key \"%s\": %s", cr->r->a, in->p,
                            (const char *)why);
    }
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    res->len = 0;
    res->p[0] = '\0';
    for (size_t i = 0; i < cr->tpl.n; i++) {
        const wb__tpl_piece *pc = &cr->tpl.v[i];
        int r = 0;
        if (pc->group < 0)
            r = kb_add(res, cr->tpl.text + pc->off, pc->len);
        else if (pc->group < rc && ov[2 * pc->group] != PCRE2_UNSET)
            r = kb_add(res, in->p + ov[2 * pc->group],
                       ov[2 * pc->group + 1] - ov[2 * pc->group]);
        /* else a group that did not take part gives "". */
        if (r != 0)
            return key_too_long(c, cr, in, src, out);
    }
    *tmp = *cur;
    *cur = res;
    return 0;
}

/* Runs every rename over **cur, source key i, using **tmp as scratch;
 * either may be swapped.  Every intermediate key stays within WB_MAX_NAME
 * bytes, and the budget is looked at after every regex match and counted
 * for every other rename.  Returns 0 or an error as apply_regex(), or
 * WB_EREGEX when the budget runs out. */
static int rename_key(rstate *st, size_t i, kbuf **cur, kbuf **tmp) {
    compiled *c = &st->rules;
    const char *src = st->req->src[i].name;
    for (size_t r = 0; r < c->n;) {
        const crule *cr = &c->v[r];
        kbuf *k = *cur;
        switch (cr->r->kind) {
        case WB__RULE_RENAME: {
            /* A run of exact renames [r, end): follow the chain of rules
             * whose a equals the current key, in rule order. */
            size_t end = cr->run_end, pos = r;
            for (;;) {
                wb__hslot *s = wb__ht_find(&c->rename_first, k->p, k->len);
                if (s == NULL)
                    break;
                size_t j = s->val;
                while (j != NONE && j < pos)
                    j = c->v[j].next_same;
                if (j == NONE || j >= end)
                    break;
                if (c->v[j].blen > WB_MAX_NAME)
                    return key_too_long(c, &c->v[j], k, src, st->out);
                c->hit[j] = 1;
                k->len = 0;
                kb_add(k, c->v[j].r->b, c->v[j].blen);
                if (budget_charge(&st->budget, k->len))
                    return rules_over_budget(st, &c->v[j], i);
                pos = j + 1;
            }
            r = end;
            continue;
        }
        case WB__RULE_PREFIX:
            if (k->len >= cr->alen && memcmp(k->p, cr->r->a, cr->alen) == 0) {
                c->hit[r] = 1;
                kbuf *t = *tmp;
                t->len = 0;
                if (kb_add(t, cr->r->b, cr->blen) != 0 ||
                    kb_add(t, k->p + cr->alen, k->len - cr->alen) != 0)
                    return key_too_long(c, cr, k, src, st->out);
                *tmp = k;
                *cur = t;
                if (budget_charge(&st->budget, t->len))
                    return rules_over_budget(st, cr, i);
            }
            break;
        case WB__RULE_REGEX: {
            int rc = apply_regex(c, cr, src, cur, tmp, st->out);
            if (rc != 0)
                return rc;
            /* One match may take milliseconds within the match limit. */
            if (wb__budget_check(&st->budget))
                return rules_over_budget(st, cr, i);
            break;
        }
        default:
            break;
        }
        r++;
    }
    return 0;
}

int wb__collect(rstate *st) {
    const wb__resolve_req *req = st->req;
    kbuf *cur = malloc(sizeof *cur), *tmp = malloc(sizeof *tmp);
    int rc = 0;
    st->kept = calloc(req->nsrc ? req->nsrc : 1, sizeof *st->kept);
    if (cur == NULL || tmp == NULL || st->kept == NULL ||
        wb__ht_init(&st->renamed, req->nsrc) != 0) {
        free(cur);
        free(tmp);
        return WB_ENOMEM;
    }
    for (size_t i = 0; i < req->nsrc && rc == 0; i++) {
        const char *name = req->src[i].name;
        if (name == NULL)
            continue;
        size_t len = strnlen(name, WB_MAX_NAME + 1);
        if (len > WB_MAX_NAME) {
            rc = wb__rule_err(st->out, NULL, WB_EINVAL,
                              "source key %zu is longer than %d bytes", i,
                              WB_MAX_NAME);
            break;
        }
        int keep = keep_key(st, name, len);
        if (budget_charge(&st->budget, len)) {
            rc = rules_over_budget(st, NULL, i);
            break;
        }
        if (!keep)
            continue;
        cur->len = 0;
        kb_add(cur, name, len);
        rc = rename_key(st, i, &cur, &tmp);
        if (rc != 0)
            break;
        assert(cur->len <= WB_MAX_NAME);
        if (cur->len == 0) {
            rc = wb__rule_err(st->out, NULL, WB_ERULE,
                              "the rules rename \"%s\" to an empty key", name);
            break;
        }
        kent *k = &st->kept[st->nkept];
        k->name = strndup(cur->p, cur->len);
        if (k->name == NULL) {
            rc = WB_ENOMEM;
            break;
        }
        k->len = cur->len;
        k->src = i;
        k->target = NONE;
        st->nkept++;
        size_t old;
        int put =
            wb__ht_put(&st->renamed, k->name, k->len, st->nkept - 1, &old);
        if (put < 0) {
            rc = WB_ENOMEM;
        } else if (put == 0) {
            rc =
                wb__rule_err(st->out, NULL, WB_ECOLLISION,
                             "source keys \"%s\" and \"%s\" both map to \"%s\"",
                             req->src[st->kept[old].src].name, name, k->name);
        }
    }
    free(cur);
    free(tmp);
    return rc;
}

/* Describes rule cr ("rename \"a\" -> \"b\"", operands shortened) into
 * buf, after its "line N: " or "rule N: ". */
static void describe_rule(const compiled *c, const crule *cr, char *buf,
                          size_t n) {
    static const char *const kind[] = {
        [WB__RULE_INCLUDE] = "include", [WB__RULE_EXCLUDE] = "exclude",
        [WB__RULE_RENAME] = "rename",   [WB__RULE_PREFIX] = "prefix",
        [WB__RULE_REGEX] = "regex",     [WB__RULE_CAST] = "cast"};
    char a[WB_SHORT_BUF(WB_ERRMSG_OPERAND_MAX)];
    char b[WB_SHORT_BUF(WB_ERRMSG_OPERAND_MAX)];
    shorten(a, WB_ERRMSG_OPERAND_MAX, cr->r->a, cr->alen);
    shorten(b, WB_ERRMSG_OPERAND_MAX, cr->r->b, cr->blen);
    int k = cr->r->line > 0
                ? snprintf(buf, n, "line %d: ", cr->r->line)
                : snprintf(buf, n, "rule %zu: ", (size_t)(cr - c->v) + 1);
    size_t off = k > 0 && (size_t)k < n ? (size_t)k : 0;
    switch (cr->r->kind) {
    case WB__RULE_INCLUDE:
    case WB__RULE_EXCLUDE:
        snprintf(buf + off, n - off, "%s \"%s\"", kind[cr->r->kind], a);
        break;
    case WB__RULE_CAST:
        snprintf(buf + off, n - off, "cast \"%s\" %s", a,
                 wb_dtype_name(cr->r->dtype));
        break;
    default:
        snprintf(buf + off, n - off, "%s \"%s\" -> \"%s\"", kind[cr->r->kind],
                 a, b);
    }
}

int wb__report_unused(rstate *st) {
    compiled *c = &st->rules;
    for (size_t j = 0; j < c->n_casts; j++) {
        size_t r = c->casts[j];
        for (size_t i = 0; !c->hit[r] && i < st->nkept; i++) {
            if (fnmatch(c->v[r].r->a, st->kept[i].name, 0) == 0)
                c->hit[r] = 1;
            else if (budget_charge(&st->budget, st->kept[i].len))
                return wb__over_budget(st, &c->v[r], "the cast rules", "key",
                                       st->kept[i].src, st->req->nsrc,
                                       st->kept[i].name);
        }
    }
    for (size_t r = 0; r < c->n; r++) {
        if (c->hit[r])
            continue;
        char d[3 * WB_ERRMSG_OPERAND_MAX + 64];
        describe_rule(c, &c->v[r], d, sizeof d);
        if (wb__kl_push(&st->out->unused_rules, d, strlen(d)) != 0)
            return WB_ENOMEM;
    }
    return 0;
}
