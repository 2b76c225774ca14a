/* resolve.c -- Turns mapping rules, a source table and a target schema into
 * a load plan and a PyTorch-style load report.
 *
 * Source keys go through the filters (include/exclude globs), then through
 * the renames in order; the renamed keys are matched against the target
 * schema by name and shape.  Lookups use small open-addressing hash tables,
 * runs of exact renames are applied through one table rather than rule by
 * rule, every regex match is bounded by PCRE2 limits and every key by
 * WB_MAX_NAME bytes, and the schema's modules form a tree walked one
 * component at a time, so a request costs about O(keys x rules) plus time
 * linear in the bytes of the keys.  A time budget covers the whole call,
 * with or without rules: it stops a request whose rules are legal but slow
 * on every key (a pattern just under the match limit, applied to 100,000
 * keys), or on one key through many rules, or whose schema is huge.
 *
 * The report mirrors torch.nn.Module.load_state_dict (torch 1.13): missing
 * keys and size mismatches in target order, unexpected keys in the order
 * PyTorch's module walk flags them (rebuilt from the flat target schema),
 * and the same error text byte for byte. */
#include <assert.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "resolve.h"
#include "rules_match.h"

#define WB_REGEX_DEPTH_LIMIT 10000 /* PCRE2 backtracking depth per match. */
#define WB_REGEX_HEAP_LIMIT 8192   /* PCRE2 heap per match, in KiB. */
#define WB_KEYLIST_MIN_CAP 8       /* First allocation of a key list. */
#define WB_ERRMSG_WHY_MAX 320      /* Bytes of a regex/template reason. */
#define WB_ERRMSG_KEY_MAX 96       /* Bytes of a key quoted in an errmsg. */
#define WB_ERRMSG_OPERAND_MAX 64   /* Bytes of a rule operand in an errmsg. */
#define WB_TREE_BLOCK 65536        /* Bytes of one block of module tree
                                      keys. */
#define WB_BUDGET_CHECK_BYTES 65536 /* Key bytes handled between two looks
                                      at the clock (tens of microseconds). */
#define NONE SIZE_MAX              /* "No index" in index fields. */

/* ---------------------------------------------------------------- strings */

/* A growing NUL-terminated byte string. */
typedef struct sbuf {
    char *p;                    /* Bytes, NUL-terminated (NULL if unused). */
    size_t len;                 /* Bytes before the NUL. */
    size_t cap;                 /* Allocated bytes. */
} sbuf;

/* Makes room for extra more bytes plus the NUL. */
static int sb_reserve(sbuf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len)
        return WB_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return WB_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sb_add(sbuf *b, const char *s, size_t len) {
    if (sb_reserve(b, len) != 0)
        return WB_ENOMEM;
    memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
    return 0;
}

static int sb_adds(sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }

static int sb_printf(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_reserve(b, (size_t)n) != 0)
        return WB_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* Appends torch.Size([a, b, ...]) for a shape. */
static int sb_shape(sbuf *b, int ndim, const int64_t *shape) {
    int rc = sb_adds(b, "torch.Size([");
    for (int i = 0; i < ndim && rc == 0; i++)
        rc = sb_printf(b, i ? ", %" PRId64 : "%" PRId64, shape[i]);
    return rc ? rc : sb_adds(b, "])");
}

/* A key being renamed.  Fixed size: no rename may make a key longer than
 * WB_MAX_NAME bytes, so renaming never allocates. */
typedef struct kbuf {
    size_t len;                 /* Bytes before the NUL, <= WB_MAX_NAME. */
    char p[WB_MAX_NAME + 1];    /* The key, NUL-terminated. */
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

/* Appends a copy of key (len bytes) to a key list. */
static int kl_push(wb__keylist *kl, const char *key, size_t len) {
    if (kl->n == kl->cap) {
        size_t cap = kl->cap ? kl->cap * 2 : WB_KEYLIST_MIN_CAP;
        char **v = cap <= SIZE_MAX / sizeof *v ? realloc(kl->v, cap * sizeof *v)
                                               : NULL;
        if (v == NULL)
            return WB_ENOMEM;
        kl->v = v;
        kl->cap = cap;
    }
    char *c = strndup(key, len);
    if (c == NULL)
        return WB_ENOMEM;
    kl->v[kl->n++] = c;
    return 0;
}

static void kl_free(wb__keylist *kl) {
    for (size_t i = 0; i < kl->n; i++)
        free(kl->v[i]);
    free(kl->v);
    memset(kl, 0, sizeof *kl);
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

/* The time budget of one wb__resolve() call.  Every step that may take
 * long (a regex match) looks at the clock when it is done; cheap steps
 * count the key bytes they handle, and the clock is read after every
 * WB_BUDGET_CHECK_BYTES of them. */
typedef struct budget {
    uint64_t deadline;          /* CLOCK_MONOTONIC in ns; 0: no limit. */
    size_t work;                /* Key bytes handled since the last look. */
    int spent;                  /* 1 once the deadline has passed. */
} budget;

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Starts a budget of ms milliseconds from now; 0 means no limit. */
static void budget_start(budget *b, unsigned ms) {
    memset(b, 0, sizeof *b);
    if (ms > 0)
        b->deadline = clock_ns(CLOCK_MONOTONIC) + (uint64_t)ms * 1000000u;
}

/* Looks at the clock.  Returns 1 (and stays spent) once the deadline has
 * passed, else 0. */
static int budget_check(budget *b) {
    b->work = 0;
    if (b->deadline != 0 && !b->spent &&
        clock_ns(WB_BUDGET_CLOCK) >= b->deadline)
        b->spent = 1;
    return b->spent;
}

/* Counts bytes of cheap work, looking at the clock once enough has been
 * done since the last look.  Returns 1 if the budget is spent. */
static inline int budget_charge(budget *b, size_t bytes) {
    b->work += bytes;
    if (b->work >= WB_BUDGET_CHECK_BYTES)
        return budget_check(b);
    return b->spent;
}

/* ---------------------------------------------------------------- rules */

/* One rule, ready to apply. */
typedef struct crule {
    const wb__rule *r;          /* The rule as given. */
    size_t alen;                /* strlen(r->a). */
    size_t blen;                /* strlen(r->b). */
    pcre2_code *re;             /* REGEX: compiled pattern. */
    wb__template tpl;           /* REGEX: parsed replacement. */
    size_t run_end;             /* RENAME opening a run: index past it. */
    size_t next_same;           /* RENAME: next rename with the same a. */
} crule;

/* The whole rule list, ready to apply. */
typedef struct compiled {
    crule *v;                   /* Rules in order. */
    size_t n;                   /* Rules in v. */
    int has_include;            /* 1 if any include rule exists. */
    wb__htab inc_exact;             /* Include globs without metacharacters. */
    wb__htab exc_exact;             /* Exclude globs without metacharacters. */
    size_t *inc_glob;           /* Indices of the other include rules. */
    size_t n_inc_glob;          /* Entries in inc_glob. */
    size_t *exc_glob;           /* Indices of the other exclude rules. */
    size_t n_exc_glob;          /* Entries in exc_glob. */
    size_t *casts;              /* Indices of the cast rules. */
    size_t n_casts;             /* Entries in casts. */
    wb__htab rename_first;          /* RENAME a -> index of its first rule. */
    pcre2_match_context *mctx;  /* Match limits for every regex. */
    pcre2_match_data *md;       /* Ovector big enough for every regex. */
} compiled;

/* Writes "line N: " (or nothing) and the formatted text into out->errmsg.
 * Returns rc. */
static int rule_err(wb__resolve_out *out, const wb__rule *r, int rc,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int rule_err(wb__resolve_out *out, const wb__rule *r, int rc,
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

static void compiled_free(compiled *c) {
    for (size_t i = 0; i < c->n; i++) {
        pcre2_code_free(c->v[i].re);
        wb__template_free(&c->v[i].tpl);
    }
    free(c->v);
    free(c->inc_glob);
    free(c->exc_glob);
    free(c->casts);
    wb__ht_free(&c->inc_exact);
    wb__ht_free(&c->exc_exact);
    wb__ht_free(&c->rename_first);
    pcre2_match_context_free(c->mctx);
    pcre2_match_data_free(c->md);
    memset(c, 0, sizeof *c);
}

/* Checks and prepares every rule, within budget b of ms milliseconds.
 * Returns 0, WB_ERULE (errmsg says which rule and why), WB_EREGEX when the
 * budget runs out, or WB_ENOMEM. */
static int compile_rules(const wb__ruleset *rs, compiled *c, budget *b,
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
    if (!c->v || !c->inc_glob || !c->exc_glob || !c->casts)
        goto nomem;
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        const wb__rule *r = &rs->v[i];
        crule *cr = &c->v[i];
        cr->r = r;
        cr->run_end = cr->next_same = NONE;
        if (r->a == NULL || r->b == NULL)
            return rule_err(out, r, WB_ERULE, "rule %zu has no operand", i);
        cr->alen = strlen(r->a);
        cr->blen = strlen(r->b);
        switch (r->kind) {
        case WB__RULE_INCLUDE:
        case WB__RULE_EXCLUDE:
        case WB__RULE_CAST: {
            if (wb__glob_check(r->a) != 0)
                return rule_err(out, r, WB_ERULE, "bad glob \"%s\"", r->a);
            if (r->kind == WB__RULE_CAST) {
                if (r->dtype < 0 || r->dtype >= WB_DTYPE_COUNT)
                    return rule_err(out, r, WB_ERULE,
                                    "cast \"%s\": unknown dtype %d", r->a,
                                    r->dtype);
                c->casts[c->n_casts++] = i;
                break;
            }
            int inc = r->kind == WB__RULE_INCLUDE;
            c->has_include |= inc;
            if (!wb__glob_has_magic(r->a)) {
                if (wb__ht_put(inc ? &c->inc_exact : &c->exc_exact, r->a, cr->alen,
                           i, NULL) < 0)
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
                return rule_err(out, r, WB_ERULE, "rename of an empty key");
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
            cr->re = wb__regex_compile(r->a, why, sizeof why);
            if (cr->re == NULL) {
                if (strcmp(why, "out of memory") == 0)
                    goto nomem;
                return rule_err(out, r, WB_ERULE, "regex \"%s\" %s", r->a, why);
            }
            int rc = wb__template_parse(cr->re, r->b, &cr->tpl, why, sizeof why);
            if (rc == WB_ENOMEM)
                goto nomem;
            if (rc != 0)
                return rule_err(out, r, WB_ERULE,
                                "regex \"%s\": bad replacement \"%s\": %s",
                                r->a, r->b, why);
            uint32_t groups = 0;
            pcre2_pattern_info(cr->re, PCRE2_INFO_CAPTURECOUNT, &groups);
            if (groups + 1 > max_pairs)
                max_pairs = groups + 1;
            break;
        }
        default:
            return rule_err(out, r, WB_ERULE, "unknown rule kind %d", r->kind);
        }
        /* Compiling a long pattern takes tens of microseconds. */
        if (r->kind == WB__RULE_REGEX ? budget_check(b)
                                      : budget_charge(b, cr->alen + cr->blen))
            return rule_err(out, r, WB_EREGEX,
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

/* ---------------------------------------------------------------- modules */

/* The target's module tree, to rebuild the order in which PyTorch's module
 * walk flags unexpected keys.  A node is a dotted path of the schema ("a",
 * "a.b", "a.b.weight"): a module (a proper prefix of some target key), a
 * target key, or both.  Children are found by (parent node, component), so
 * walking a key costs one short lookup per component and the whole tree
 * costs O(bytes of the schema); looking every prefix up as a string, as
 * before, cost O(length x components) per key (0.5 s for 4,000 keys of
 * 1 KiB). */

/* One node of the module tree. */
typedef struct mnode {
    size_t module;              /* Module number (preorder of first
                                   appearance, from 1), or 0 if no target
                                   key lies below this path. */
    size_t target;              /* Schema index of the target key with
                                   this path, or NONE. */
} mnode;

/* A block of child keys: each is the parent's node index (TREE_KEY_HEAD
 * bytes) followed by the component's bytes. */
typedef struct tblock {
    struct tblock *next;        /* The block filled before this one. */
    size_t used;                /* Bytes of data in use. */
    char data[];                /* WB_TREE_BLOCK bytes. */
} tblock;

/* The module tree of a schema.  Node 0 is the root (the target itself). */
typedef struct mtree {
    wb__htab children;          /* Child key -> node index. */
    mnode *v;                   /* Nodes. */
    size_t n;                   /* Nodes in v. */
    size_t cap;                 /* Allocated slots in v. */
    size_t nmodules;            /* Module numbers given out. */
    tblock *keys;               /* Newest block of child keys (the hash
                                   table borrows them). */
} mtree;

#define TREE_KEY_HEAD sizeof(size_t)

static void tree_free(mtree *t) {
    while (t->keys != NULL) {
        tblock *b = t->keys;
        t->keys = b->next;
        free(b);
    }
    wb__ht_free(&t->children);
    free(t->v);
    memset(t, 0, sizeof *t);
}

/* Writes the child key of (parent, comp) into buf, which holds
 * TREE_KEY_HEAD + WB_MAX_NAME bytes.  Returns its length. */
static size_t tree_key(char *buf, size_t parent, const char *comp,
                       size_t len) {
    assert(len <= WB_MAX_NAME);
    memcpy(buf, &parent, TREE_KEY_HEAD);
    memcpy(buf + TREE_KEY_HEAD, comp, len);
    return TREE_KEY_HEAD + len;
}

/* Returns the child of node parent named by comp (len bytes), or NONE. */
static size_t tree_find(const mtree *t, size_t parent, const char *comp,
                        size_t len) {
    char key[TREE_KEY_HEAD + WB_MAX_NAME];
    size_t klen = tree_key(key, parent, comp, len);
    const wb__hslot *s = wb__ht_find(&t->children, key, klen);
    return s ? s->val : NONE;
}

/* Finds or adds the child of node parent named by comp (len bytes) into
 * *node.  Returns 0 or WB_ENOMEM. */
static int tree_child(mtree *t, size_t parent, const char *comp, size_t len,
                      size_t *node) {
    *node = tree_find(t, parent, comp, len);
    if (*node != NONE)
        return 0;
    size_t klen = TREE_KEY_HEAD + len;
    assert(klen <= WB_TREE_BLOCK);
    if (t->keys == NULL || WB_TREE_BLOCK - t->keys->used < klen) {
        tblock *b = malloc(sizeof *b + WB_TREE_BLOCK);
        if (b == NULL)
            return WB_ENOMEM;
        b->next = t->keys;
        b->used = 0;
        t->keys = b;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap * 2;
        mnode *v = cap <= SIZE_MAX / sizeof *v ? realloc(t->v, cap * sizeof *v)
                                               : NULL;
        if (v == NULL)
            return WB_ENOMEM;
        t->v = v;
        t->cap = cap;
    }
    char *key = t->keys->data + t->keys->used;
    tree_key(key, parent, comp, len);
    if (wb__ht_put(&t->children, key, klen, t->n, NULL) < 0)
        return WB_ENOMEM;
    t->keys->used += klen;
    t->v[t->n] = (mnode){0, NONE};
    *node = t->n++;
    return 0;
}

/* The module nodes a walk down the tree went past for the key walked
 * last, so that the next key only looks up the components after the
 * modules the two share: consecutive keys of a state_dict mostly share
 * all but their last component. */
typedef struct tpath {
    const char *key;            /* The key walked last (borrowed), or
                                   NULL. */
    size_t len;                 /* Bytes of key. */
    size_t depth;               /* Modules of key in node and dot. */
    size_t *node;               /* WB_MAX_NAME slots: node of module j. */
    size_t *dot;                /* WB_MAX_NAME slots: offset of the dot
                                   after module j's component. */
} tpath;

/* Returns the number of leading bytes a and b have in common. */
static size_t common_prefix(const char *a, size_t alen, const char *b,
                            size_t blen) {
    size_t n = alen < blen ? alen : blen, i = 0;
    while (n - i >= sizeof(uint64_t) &&
           memcmp(a + i, b + i, sizeof(uint64_t)) == 0)
        i += sizeof(uint64_t);
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* Starts a walk of key (len bytes) where the walk of the previous key
 * went through the modules they share: returns the number of those
 * modules, with the last one's node in *node and the offset of the
 * component after it in *p (0 and 0 when none is shared). */
static size_t tpath_resume(tpath *w, const char *key, size_t len,
                           size_t *node, size_t *p) {
    size_t d = 0;
    if (w->key != NULL) {
        size_t same = common_prefix(w->key, w->len, key, len);
        while (d < w->depth && w->dot[d] < same)
            d++; /* Module d's path and its dot are in both keys. */
    }
    w->key = key;
    w->len = len;
    w->depth = d;
    *node = d ? w->node[d - 1] : 0;
    *p = d ? w->dot[d - 1] + 1 : 0;
    return d;
}

/* Records that the walk of the current key went past module node, whose
 * component ends at the dot at offset dot. */
static void tpath_push(tpath *w, size_t node, size_t dot) {
    assert(w->depth < WB_MAX_NAME);
    w->node[w->depth] = node;
    w->dot[w->depth] = dot;
    w->depth++;
}

/* ---------------------------------------------------------------- state */

/* One source key that passed the filters, after renaming. */
typedef struct kent {
    char *name;                 /* Renamed key (owned). */
    size_t len;                 /* Bytes of name. */
    size_t src;                 /* Index in the source table. */
    size_t target;              /* Index in the schema, or NONE. */
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

/* Writes "line N: " for rule cr, or "rule N: " (its place in the request,
 * from 1) when it came from a call, into out->errmsg.  Returns the bytes
 * written. */
static size_t rule_where(const compiled *c, const crule *cr,
                         wb__resolve_out *out) {
    int n = cr->r->line > 0
                ? snprintf(out->errmsg, sizeof out->errmsg, "line %d: ",
                           cr->r->line)
                : snprintf(out->errmsg, sizeof out->errmsg, "rule %zu: ",
                           (size_t)(cr - c->v) + 1);
    assert(n > 0 && (size_t)n < sizeof out->errmsg);
    return (size_t)n;
}

/* Fails the request because its time budget ran out: what took too long
 * ("the rules", ...), stopped at the unit ("key", "target key") numbered
 * i (from 0) of n, named key; cr is the rule just applied, or NULL.
 * Returns WB_EREGEX. */
static int over_budget(rstate *st, const crule *cr, const char *what,
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

/* over_budget() while the filters and renames handled source key i. */
static int rules_over_budget(rstate *st, const crule *cr, size_t i) {
    const wb__resolve_req *req = st->req;
    return over_budget(st, cr,
                       st->rules.n ? "the rules" : "reading the source keys",
                       "key", i, req->nsrc, req->src[i].name);
}

/* over_budget() while the target schema was matched, at target key i. */
static int schema_over_budget(rstate *st, size_t i) {
    const wb__schema *s = st->req->schema;
    return over_budget(st, NULL, "matching the target schema", "target key",
                       i, s->n, s->v[i].name);
}

/* ---------------------------------------------------------------- renames */

/* Returns 1 if the filters keep source key name (len bytes), else 0; also
 * 0 when the budget ran out meanwhile. */
static int keep_key(rstate *st, const char *name, size_t len) {
    const compiled *c = &st->rules;
    if (c->exc_exact.n > 0 && wb__ht_find(&c->exc_exact, name, len))
        return 0;
    for (size_t i = 0; i < c->n_exc_glob; i++)
        if (fnmatch(c->v[c->exc_glob[i]].r->a, name, 0) == 0 ||
            budget_charge(&st->budget, len))
            return 0;
    if (!c->has_include ||
        (c->inc_exact.n > 0 && wb__ht_find(&c->inc_exact, name, len)))
        return 1;
    for (size_t i = 0; i < c->n_inc_glob; i++) {
        if (fnmatch(c->v[c->inc_glob[i]].r->a, name, 0) == 0)
            return 1;
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
    int rc = pcre2_match(cr->re, (PCRE2_SPTR)in->p, in->len, 0, 0, c->md,
                         c->mctx);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
        rc == PCRE2_ERROR_HEAPLIMIT)
        return rule_err(out, cr->r, WB_EREGEX,
                        "regex \"%s\" hit the match limit on key \"%s\"",
                        cr->r->a, in->p);
    if (rc == PCRE2_ERROR_NOMEMORY)
        return WB_ENOMEM;
    if (rc < 0) {
        PCRE2_UCHAR why[WB_ERRMSG_WHY_MAX];
        pcre2_get_error_message(rc, why, sizeof why);
        return rule_err(out, cr->r, WB_ERULE, "regex \"%s\" on key \"%s\": %s",
                        cr->r->a, in->p, (const char *)why);
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
            if (budget_check(&st->budget))
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

/* ---------------------------------------------------------------- resolve */

static int shape_eq(const wb__tinfo *a, const wb__tinfo *b) {
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* Appends a resolved tensor to out->v (sized by the caller). */
static int push_resolved(wb__resolve_out *out, const char *target, size_t src,
                         int dtype, int cast) {
    char *t = strdup(target);
    if (t == NULL)
        return WB_ENOMEM;
    out->v[out->n++] = (wb__resolved){t, src, dtype, cast};
    return 0;
}

/* Filters and renames every source key into st->kept, checking for
 * collisions and the time budget. */
static int collect(rstate *st) {
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
            rc = rule_err(st->out, NULL, WB_EINVAL,
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
            rc = rule_err(st->out, NULL, WB_ERULE,
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
        int put = wb__ht_put(&st->renamed, k->name, k->len, st->nkept - 1, &old);
        if (put < 0) {
            rc = WB_ENOMEM;
        } else if (put == 0) {
            rc = rule_err(st->out, NULL, WB_ECOLLISION,
                          "source keys \"%s\" and \"%s\" both map to \"%s\"",
                          req->src[st->kept[old].src].name, name, k->name);
        }
    }
    free(cur);
    free(tmp);
    return rc;
}

/* Without a schema: every kept key, in source order, with its cast (the
 * last cast rule whose glob matches).  Returns 0, WB_EREGEX when the
 * budget runs out, or WB_ENOMEM. */
static int resolve_plain(rstate *st) {
    const wb__resolve_req *req = st->req;
    wb__resolve_out *out = st->out;
    out->v = calloc(st->nkept ? st->nkept : 1, sizeof *out->v);
    if (out->v == NULL)
        return WB_ENOMEM;
    for (size_t i = 0; i < st->nkept; i++) {
        const kent *k = &st->kept[i];
        int sdt = req->src[k->src].dtype, dt = sdt;
        for (size_t j = st->rules.n_casts; j-- > 0;) {
            const crule *cr = &st->rules.v[st->rules.casts[j]];
            if (fnmatch(cr->r->a, k->name, 0) == 0) {
                dt = cr->r->dtype;
                break;
            }
            if (budget_charge(&st->budget, k->len))
                return over_budget(st, cr, "the cast rules", "key", k->src,
                                   req->nsrc, k->name);
        }
        if (budget_charge(&st->budget, k->len))
            return over_budget(st, NULL, "listing the tensors", "key", k->src,
                               req->nsrc, k->name);
        if (push_resolved(out, k->name, k->src, dt, dt != sdt) != 0)
            return WB_ENOMEM;
        if (dt != sdt && kl_push(&out->cast, k->name, k->len) != 0)
            return WB_ENOMEM;
    }
    return 0;
}

/* Builds the module tree of the schema and checks its keys: each has a
 * name of at most WB_MAX_NAME bytes, listed once.  Returns 0, WB_EINVAL,
 * WB_EEXIST (errmsg names the key), WB_EREGEX when the budget runs out,
 * or WB_ENOMEM. */
static int build_tree(rstate *st) {
    const wb__schema *s = st->req->schema;
    mtree *t = &st->tree;
    tpath *w = &st->path;
    t->cap = WB_KEYLIST_MIN_CAP;
    t->v = malloc(t->cap * sizeof *t->v);
    w->node = malloc(WB_MAX_NAME * sizeof *w->node);
    w->dot = malloc(WB_MAX_NAME * sizeof *w->dot);
    if (t->v == NULL || w->node == NULL || w->dot == NULL ||
        wb__ht_init(&t->children, s->n) != 0)
        return WB_ENOMEM;
    t->v[0] = (mnode){0, NONE};
    t->n = 1;
    for (size_t i = 0; i < s->n; i++) {
        const char *name = s->v[i].name;
        if (name == NULL)
            return rule_err(st->out, NULL, WB_EINVAL,
                            "target key %zu has no name", i);
        size_t len = strnlen(name, WB_MAX_NAME + 1);
        if (len > WB_MAX_NAME)
            return rule_err(st->out, NULL, WB_EINVAL,
                            "target key %zu is longer than %d bytes", i,
                            WB_MAX_NAME);
        size_t node, p;
        tpath_resume(w, name, len, &node, &p);
        for (;;) {
            const char *dot = memchr(name + p, '.', len - p);
            size_t end = dot ? (size_t)(dot - name) : len;
            if (tree_child(t, node, name + p, end - p, &node) != 0)
                return WB_ENOMEM;
            if (dot == NULL)
                break;
            if (t->v[node].module == 0)
                t->v[node].module = ++t->nmodules;
            tpath_push(w, node, end);
            p = end + 1;
        }
        if (t->v[node].target != NONE)
            return rule_err(st->out, NULL, WB_EEXIST,
                            "target schema lists \"%s\" twice", name);
        t->v[node].target = i;
        if (budget_charge(&st->budget, len))
            return schema_over_budget(st, i);
    }
    w->key = NULL;
    return 0;
}

/* Module where PyTorch's walk flags unmatched key k as unexpected, or NONE
 * when the walk never flags it (k names a submodule, or continues past a
 * local tensor as in "fc.weight.x"). */
static size_t flag_module(rstate *st, const kent *k) {
    const mtree *t = &st->tree;
    size_t node, p;
    tpath_resume(&st->path, k->name, k->len, &node, &p);
    size_t mod = t->v[node].module;
    for (;;) {
        const char *dot = memchr(k->name + p, '.', k->len - p);
        size_t end = dot ? (size_t)(dot - k->name) : k->len;
        node = tree_find(t, node, k->name + p, end - p);
        if (node == NONE)
            return mod; /* Neither a local tensor nor a submodule. */
        assert(t->v[node].module != 0 || t->v[node].target != NONE);
        if (t->v[node].module == 0 || dot == NULL)
            return NONE;
        mod = t->v[node].module;
        tpath_push(&st->path, node, end);
        p = end + 1;
    }
}

/* Fills out->unexpected: the keys PyTorch flags, ordered by the module
 * that flags them (preorder) and then by source order; after them the
 * other unmatched keys, which PyTorch silently ignores, in source order.
 * Returns 0, WB_EREGEX when the budget runs out, or WB_ENOMEM. */
static int list_unexpected(rstate *st) {
    size_t nmod = st->tree.nmodules + 1;
    size_t *where = malloc((st->nkept ? st->nkept : 1) * sizeof *where);
    size_t *count = calloc(nmod + 1, sizeof *count);
    size_t *order = malloc((st->nkept ? st->nkept : 1) * sizeof *order);
    int rc = WB_ENOMEM;
    if (where == NULL || count == NULL || order == NULL)
        goto done;
    size_t nflag = 0;
    for (size_t i = 0; i < st->nkept; i++) {
        where[i] = NONE;
        if (st->kept[i].target != NONE)
            continue;
        const kent *k = &st->kept[i];
        where[i] = flag_module(st, k);
        if (where[i] != NONE) {
            count[where[i] + 1]++;
            nflag++;
        }
        if (budget_charge(&st->budget, k->len)) {
            rc = over_budget(st, NULL, "matching the target schema",
                             "source key", k->src, st->req->nsrc, k->name);
            goto done;
        }
    }
    for (size_t m = 1; m <= nmod; m++)
        count[m] += count[m - 1];
    for (size_t i = 0; i < st->nkept; i++)
        if (where[i] != NONE && st->kept[i].target == NONE)
            order[count[where[i]]++] = i;
    for (size_t j = 0; j < nflag; j++) {
        const kent *k = &st->kept[order[j]];
        if (kl_push(&st->out->unexpected, k->name, k->len) != 0)
            goto done;
    }
    for (size_t i = 0; i < st->nkept; i++) {
        const kent *k = &st->kept[i];
        if (k->target == NONE && where[i] == NONE &&
            kl_push(&st->out->unexpected, k->name, k->len) != 0)
            goto done;
    }
    rc = 0;
done:
    free(where);
    free(count);
    free(order);
    return rc;
}

/* Appends "\"a\", \"b\"" for a key list.  Returns 0, WB_EREGEX when the
 * budget runs out, or WB_ENOMEM. */
static int sb_keys(rstate *st, sbuf *b, const wb__keylist *kl) {
    for (size_t i = 0; i < kl->n; i++) {
        size_t len = b->len;
        if (sb_printf(b, i ? ", \"%s\"" : "\"%s\"", kl->v[i]) != 0)
            return WB_ENOMEM;
        if (budget_charge(&st->budget, b->len - len))
            return over_budget(st, NULL, "writing the load report", "key", i,
                               kl->n, kl->v[i]);
    }
    return 0;
}

/* Builds out->error_text in PyTorch's format.  Returns 0, WB_EREGEX when
 * the budget runs out, or WB_ENOMEM. */
static int error_text(rstate *st) {
    const wb__resolve_req *req = st->req;
    const wb__resolve_out *out = st->out;
    const wb__schema *s = req->schema;
    sbuf b = {0};
    int first = 1, rc;
    rc = sb_printf(&b, "Error(s) in loading state_dict for %s:\n\t",
                   s->target ? s->target : "");
    if (rc == 0 && req->strict && out->missing.n > 0) {
        rc = sb_adds(&b, "Missing key(s) in state_dict: ");
        rc = rc ? rc : sb_keys(st, &b, &out->missing);
        rc = rc ? rc : sb_adds(&b, ". ");
        first = 0;
    }
    if (rc == 0 && req->strict && out->unexpected.n > 0) {
        rc = sb_adds(&b, first ? "" : "\n\t");
        rc = rc ? rc : sb_adds(&b, "Unexpected key(s) in state_dict: ");
        rc = rc ? rc : sb_keys(st, &b, &out->unexpected);
        rc = rc ? rc : sb_adds(&b, ". ");
        first = 0;
    }
    for (size_t i = 0; rc == 0 && !req->ignore_mismatch && i < s->n; i++) {
        const wb__tinfo *t = &s->v[i];
        size_t len = strlen(t->name);
        if (budget_charge(&st->budget, len)) {
            rc = over_budget(st, NULL, "writing the load report",
                             "target key", i, s->n, t->name);
            break;
        }
        wb__hslot *h = wb__ht_find(&st->renamed, t->name, len);
        if (h == NULL)
            continue;
        const wb__tinfo *src = &req->src[st->kept[h->val].src];
        if (shape_eq(src, t))
            continue;
        rc = sb_printf(&b, "%ssize mismatch for %s: copying a param with shape ",
                       first ? "" : "\n\t", t->name);
        rc = rc ? rc : sb_shape(&b, src->ndim, src->shape);
        rc = rc ? rc : sb_adds(&b, " from checkpoint, the shape in current "
                                   "model is ");
        rc = rc ? rc : sb_shape(&b, t->ndim, t->shape);
        rc = rc ? rc : sb_adds(&b, ".");
        first = 0;
    }
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    st->out->error_text = b.p;
    return 0;
}

/* With a schema: matches kept keys to target keys and writes the report.
 * Returns 0, WB_ELOAD, WB_EEXIST (a target key listed twice), WB_EINVAL
 * (a target key without a name or too long), WB_EREGEX when the budget
 * runs out, or WB_ENOMEM. */
static int resolve_schema(rstate *st) {
    const wb__resolve_req *req = st->req;
    const wb__schema *s = req->schema;
    wb__resolve_out *out = st->out;
    int rc = build_tree(st);
    if (rc != 0)
        return rc;
    out->v = calloc(s->n ? s->n : 1, sizeof *out->v);
    unsigned char *used = calloc(req->nsrc ? req->nsrc : 1, 1);
    if (out->v == NULL || used == NULL) {
        free(used);
        return WB_ENOMEM;
    }
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        const wb__tinfo *t = &s->v[i];
        size_t len = strlen(t->name);
        if (budget_charge(&st->budget, len)) {
            rc = schema_over_budget(st, i);
            break;
        }
        wb__hslot *h = wb__ht_find(&st->renamed, t->name, len);
        if (h == NULL) {
            rc = kl_push(&out->missing, t->name, len);
            continue;
        }
        kent *k = &st->kept[h->val];
        k->target = i;
        const wb__tinfo *src = &req->src[k->src];
        if (!shape_eq(src, t)) {
            rc = kl_push(&out->mismatched, t->name, len);
            continue;
        }
        int cast = t->dtype != src->dtype;
        rc = push_resolved(out, t->name, k->src, t->dtype, cast);
        if (rc == 0 && cast)
            rc = kl_push(&out->cast, t->name, len);
        size_t root = req->tie ? req->tie[k->src] : k->src;
        if (rc == 0 && used[root])
            rc = kl_push(&out->aliased, t->name, len);
        used[root] = 1;
    }
    free(used);
    if (rc == 0)
        rc = list_unexpected(st);
    if (rc != 0)
        return rc;
    int bad_size = out->mismatched.n > 0 && !req->ignore_mismatch;
    int bad_keys = req->strict && (out->missing.n > 0 || out->unexpected.n > 0);
    if (!bad_size && !bad_keys)
        return 0;
    for (size_t i = 0; i < out->n; i++)
        free(out->v[i].target);
    out->n = 0;
    rc = error_text(st);
    if (rc != 0)
        return rc;
    snprintf(out->errmsg, sizeof out->errmsg, "%s", wb_strerror(WB_ELOAD));
    return WB_ELOAD;
}

int wb__resolve(const wb__resolve_req *req, wb__resolve_out *out) {
    if (out == NULL)
        return WB_EINVAL;
    memset(out, 0, sizeof *out);
    if (req == NULL || (req->nsrc > 0 && req->src == NULL) ||
        (req->schema != NULL && req->schema->n > 0 &&
         req->schema->v == NULL)) {
        snprintf(out->errmsg, sizeof out->errmsg, "invalid request");
        return WB_EINVAL;
    }
    rstate st;
    memset(&st, 0, sizeof st);
    st.req = req;
    st.out = out;
    budget_start(&st.budget, req->budget_ms);
    int rc = compile_rules(req->rules, &st.rules, &st.budget, req->budget_ms,
                           out);
    if (rc == 0)
        rc = collect(&st);
    if (rc == 0)
        rc = req->schema ? resolve_schema(&st) : resolve_plain(&st);
    if (rc == WB_ENOMEM)
        snprintf(out->errmsg, sizeof out->errmsg, "out of memory");
    if (rc != 0 && rc != WB_ELOAD) {
        /* Keep errmsg, drop any partial result. */
        char msg[sizeof out->errmsg];
        memcpy(msg, out->errmsg, sizeof msg);
        wb__resolve_out_free(out);
        memcpy(out->errmsg, msg, sizeof msg);
    }
    for (size_t i = 0; i < st.nkept; i++)
        free(st.kept[i].name);
    free(st.kept);
    wb__ht_free(&st.renamed);
    tree_free(&st.tree);
    free(st.path.node);
    free(st.path.dot);
    compiled_free(&st.rules);
    return rc;
}

/* Frees everything *out holds and zeroes it.  Accepts NULL. */
void wb__resolve_out_free(wb__resolve_out *out) {
    if (out == NULL)
        return;
    for (size_t i = 0; i < out->n; i++)
        free(out->v[i].target);
    free(out->v);
    kl_free(&out->missing);
    kl_free(&out->unexpected);
    kl_free(&out->mismatched);
    kl_free(&out->cast);
    kl_free(&out->aliased);
    free(out->error_text);
    memset(out, 0, sizeof *out);
}
