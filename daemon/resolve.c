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
 * and the same error text byte for byte.
 *
 * This file builds the module tree, matches the renamed keys against the
 * schema and lists the report's keys; resolve_rules.c keeps the budget,
 * compiles the rules and filters and renames the source keys,
 * resolve_report.c writes the error text, and resolve_internal.h holds
 * what the three share. */
#include <assert.h>
#include <fnmatch.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "resolve.h"
#include "resolve_internal.h"

#define WB_KEYLIST_MIN_CAP 8 /* First allocation of a key list. */
/* Bytes of one block of module tree keys. */
#define WB_TREE_BLOCK 65536

/* ---------------------------------------------------------------- key lists */

/* Appends a copy of key (len bytes) to a key list. */
int wb__kl_push(wb__keylist *kl, const char *key, size_t len) {
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
    size_t module; /* Module number (preorder of first
                      appearance, from 1), or 0 if no target
                      key lies below this path. */
    size_t target; /* Schema index of the target key with
                      this path, or NONE. */
} mnode;

/* A block of child keys: each is the parent's node index (TREE_KEY_HEAD
 * bytes) followed by the component's bytes. */
typedef struct tblock {
    struct tblock *next; /* The block filled before this one. */
    size_t used;         /* Bytes of data in use. */
    char data[];         /* WB_TREE_BLOCK bytes. */
} tblock;

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
static size_t tree_key(char *buf, size_t parent, const char *comp, size_t len) {
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
        mnode *v =
            cap <= SIZE_MAX / sizeof *v ? realloc(t->v, cap * sizeof *v) : NULL;
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
static size_t tpath_resume(tpath *w, const char *key, size_t len, size_t *node,
                           size_t *p) {
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

/* ---------------------------------------------------------------- resolve */

/* Appends a resolved tensor to out->v (sized by the caller). */
static int push_resolved(wb__resolve_out *out, const char *target, size_t src,
                         int dtype, int cast) {
    char *t = strdup(target);
    if (t == NULL)
        return WB_ENOMEM;
    out->v[out->n++] = (wb__resolved){t, src, dtype, cast};
    return 0;
}

/* wb__over_budget() while the target schema was matched, at target key i. */
static int schema_over_budget(rstate *st, size_t i) {
    const wb__schema *s = st->req->schema;
    return wb__over_budget(st, NULL, "matching the target schema", "target key",
                           i, s->n, s->v[i].name);
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
                return wb__over_budget(st, cr, "the cast rules", "key", k->src,
                                       req->nsrc, k->name);
        }
        if (budget_charge(&st->budget, k->len))
            return wb__over_budget(st, NULL, "listing the tensors", "key",
                                   k->src, req->nsrc, k->name);
        if (push_resolved(out, k->name, k->src, dt, dt != sdt) != 0)
            return WB_ENOMEM;
        if (dt != sdt && wb__kl_push(&out->cast, k->name, k->len) != 0)
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
            return wb__rule_err(st->out, NULL, WB_EINVAL,
                                "target key %zu has no name", i);
        size_t len = strnlen(name, WB_MAX_NAME + 1);
        if (len > WB_MAX_NAME)
            return wb__rule_err(st->out, NULL, WB_EINVAL,
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
            return wb__rule_err(st->out, NULL, WB_EEXIST,
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
            rc = wb__over_budget(st, NULL, "matching the target schema",
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
        if (wb__kl_push(&st->out->unexpected, k->name, k->len) != 0)
            goto done;
    }
    for (size_t i = 0; i < st->nkept; i++) {
        const kent *k = &st->kept[i];
        if (k->target == NONE && where[i] == NONE &&
            wb__kl_push(&st->out->unexpected, k->name, k->len) != 0)
            goto done;
    }
    rc = 0;
done:
    free(where);
    free(count);
    free(order);
    return rc;
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
            rc = wb__kl_push(&out->missing, t->name, len);
            continue;
        }
        kent *k = &st->kept[h->val];
        k->target = i;
        const wb__tinfo *src = &req->src[k->src];
        if (!shape_eq(src, t)) {
            rc = wb__kl_push(&out->mismatched, t->name, len);
            continue;
        }
        int cast = t->dtype != src->dtype;
        rc = push_resolved(out, t->name, k->src, t->dtype, cast);
        if (rc == 0 && cast)
            rc = wb__kl_push(&out->cast, t->name, len);
        size_t root = req->tie ? req->tie[k->src] : k->src;
        if (rc == 0 && used[root])
            rc = wb__kl_push(&out->aliased, t->name, len);
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
    rc = wb__error_text(st);
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
        (req->schema != NULL && req->schema->n > 0 && req->schema->v == NULL)) {
        snprintf(out->errmsg, sizeof out->errmsg, "invalid request");
        return WB_EINVAL;
    }
    rstate st;
    memset(&st, 0, sizeof st);
    st.req = req;
    st.out = out;
    wb__budget_start(&st.budget, req->budget_ms);
    int rc = wb__compile_rules(req->rules, &st.rules, &st.budget,
                               req->budget_ms, out);
    if (rc == 0)
        rc = wb__collect(&st);
    if (rc == 0)
        rc = req->schema ? resolve_schema(&st) : resolve_plain(&st);
    if (rc == 0 || rc == WB_ELOAD) {
        int urc = wb__report_unused(&st);
        if (urc)
            rc = urc;
    }
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
    wb__compiled_free(&st.rules);
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
    kl_free(&out->unused_rules);
    free(out->error_text);
    memset(out, 0, sizeof *out);
}
