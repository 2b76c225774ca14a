/* test_resolve.c -- Unit tests of the resolver: filters, renames,
 * collisions, regex limits, schema matching and the PyTorch-format load
 * report. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "../../daemon/resolve.h"

#define BIG_KEYS 100000 /* Keys of the performance tests. */
#define BIG_SECONDS 2.0 /* Wall-clock budget of one big resolve. */
/* Rules of the budget tests: as many as a request may carry
 * (WB_MAX_RULES). */
#define MANY_RULES 4096

/* A test table: a schema reused as a source table. */
typedef struct table {
    wb__schema s; /* Tensors in order. */
} table;

/* Adds "name" with a shape of up to 3 sizes (-1 ends the list). */
static void add(table *t, const char *name, int dtype, int64_t d0, int64_t d1,
                int64_t d2) {
    int64_t shp[3] = {d0, d1, d2};
    int nd = d0 < 0 ? 0 : d1 < 0 ? 1 : d2 < 0 ? 2 : 3;
    assert_int_equal(wb__schema_push(&t->s, name, dtype, nd, shp), 0);
}

/* Adds a 1-dim F32 tensor of size 4. */
static void add1(table *t, const char *name) {
    add(t, name, WB_F32, 4, -1, -1);
}

/* Parses rules text into rs. */
static void rules(wb__ruleset *rs, const char *text) {
    char err[256];
    int rc = wb__rules_parse_text(rs, text, NULL, NULL, err, sizeof err);
    if (rc != 0)
        fail_msg("rules: %s", err);
}

/* Runs the resolver. */
static int run(const table *src, const wb__ruleset *rs, const table *tgt,
               int strict, int ignore, wb__resolve_out *out) {
    wb__resolve_req req = {.src = src->s.v,
                           .nsrc = src->s.n,
                           .rules = rs,
                           .schema = tgt ? &tgt->s : NULL,
                           .strict = strict,
                           .ignore_mismatch = ignore,
                           .budget_ms = WB_RULES_BUDGET_MS};
    return wb__resolve(&req, out);
}

/* Joins a key list with commas, for compact asserts. */
static const char *joined(const wb__keylist *kl) {
    static char buf[4096];
    buf[0] = '\0';
    for (size_t i = 0; i < kl->n; i++) {
        strcat(buf, i ? "," : "");
        strcat(buf, kl->v[i]);
    }
    return buf;
}

/* Joins the resolved target names with commas. */
static const char *targets(const wb__resolve_out *o) {
    static char buf[4096];
    buf[0] = '\0';
    for (size_t i = 0; i < o->n; i++) {
        strcat(buf, i ? "," : "");
        strcat(buf, o->v[i].target);
    }
    return buf;
}

static void done(table *a, table *b, wb__ruleset *rs, wb__resolve_out *o) {
    if (a)
        wb__schema_clear(&a->s);
    if (b)
        wb__schema_clear(&b->s);
    wb__ruleset_clear(rs);
    wb__resolve_out_free(o);
}

/* Without rules or schema the source table comes back unchanged. */
static void test_resolve_passthrough(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "b");
    add(&src, "a", WB_I64, -1, -1, -1);
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "b,a");
    assert_int_equal(o.v[1].src, 1);
    assert_int_equal(o.v[1].dtype, WB_I64);
    assert_int_equal(o.v[1].cast, 0);
    assert_null(o.error_text);
    done(&src, NULL, NULL, &o);
}

/* Includes keep matching keys, excludes win over includes, and '*'
 * matches across dots. */
static void test_resolve_filters(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "enc.l1.weight");
    add1(&src, "enc.l1.bias");
    add1(&src, "dec.weight");
    add1(&src, "head.weight");
    wb__ruleset rs = {0};
    rules(&rs, "include enc.* head.weight\nexclude *.bias\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "enc.l1.weight,head.weight");
    done(&src, NULL, &rs, &o);
}

/* Renames apply in order, each to the result of the previous one. */
static void test_resolve_rename_order(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "a");
    add1(&src, "x");
    wb__ruleset rs = {0}, rs2 = {0};
    rules(&rs, "rename a -> b\nrename b -> c\nrename x -> y\n");
    rules(&rs2,
          "rename b -> c\nrename a -> b\nprefix -> p.\nrename p.b -> q\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "c,y");
    wb__resolve_out_free(&o);
    assert_int_equal(run(&src, &rs2, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "q,p.x");
    wb__ruleset_clear(&rs2);
    done(&src, NULL, &rs, &o);
}

/* Prefix rules strip, replace and add prefixes, and leave other keys. */
static void test_resolve_prefix(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "module.fc.weight");
    add1(&src, "other");
    wb__ruleset rs = {0};
    rules(&rs, "prefix module. ->\nprefix fc. -> head.\nprefix -> net.\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "net.head.weight,net.other");
    done(&src, NULL, &rs, &o);
}

/* Regexes must match the whole key, expand Python-style references, treat
 * groups that did not take part as "", and pass other keys unchanged. */
static void test_resolve_regex(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "layer12.weight");
    add1(&src, "layer");
    add1(&src, "xlayer1.bias");
    add1(&src, "opt.w");
    wb__ruleset rs = {0};
    rules(&rs, "regex layer(\\d+)\\.(?P<rest>.*) -> fc\\1.\\g<rest>\n"
               "regex layer -> L\n"
               "regex (opt\\.)?(w)(z)? -> [\\1|\\2|\\3]\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "fc12.weight,L,xlayer1.bias,[opt.|w|]");
    done(&src, NULL, &rs, &o);
}

/* A large number of exact renames is applied through one table: 100,000
 * keys through 100,000 renames (chained pairwise) take well under the
 * budget and give the right names. */
static void test_resolve_many_renames_fast(void **state) {
    (void)state;
    table src = {0};
    wb__ruleset rs = {0};
    char a[64], b[64];
    for (int i = 0; i < BIG_KEYS; i++) {
        snprintf(a, sizeof a, "k%d", i);
        add1(&src, a);
        snprintf(b, sizeof b, "m%d", i);
        assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, a, b, -1, 0), 0);
    }
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, "m7", "k7", -1, 0),
                     0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(dt < BIG_SECONDS);
    assert_int_equal(o.n, BIG_KEYS);
    assert_string_equal(o.v[5].target, "m5");
    assert_string_equal(o.v[7].target, "k7");
    done(&src, NULL, &rs, &o);
}

/* 100,000 keys through a prefix, a regex and a schema resolve within the
 * budget, with every key matched. */
static void test_resolve_big_schema_fast(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    char name[64];
    for (int i = 0; i < BIG_KEYS; i++) {
        snprintf(name, sizeof name, "module.layers.%d.w", i);
        add1(&src, name);
        snprintf(name, sizeof name, "net.blocks.%d.w", i);
        add1(&tgt, name);
    }
    wb__ruleset rs = {0};
    rules(&rs,
          "prefix module. ->\nregex layers\\.(\\d+)\\.(.*) -> blocks.\\1.\\2\n"
          "prefix -> net.\n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, &tgt, 1, 0, &o), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(dt < BIG_SECONDS);
    assert_int_equal(o.n, BIG_KEYS);
    assert_int_equal(o.missing.n + o.unexpected.n + o.mismatched.n, 0);
    done(&src, &tgt, &rs, &o);
}

/* Key i of the long-key tests: 450 one-letter module levels, the first
 * 300 shared by every key and the rest by groups of keys, then a leaf
 * (about 1 KiB). */
static void long_key(char *buf, int i, const char *leaf) {
    size_t n = 0;
    for (int j = 0; j < 450; j++)
        n += (size_t)sprintf(buf + n, "%c.",
                             j < 300 ? 'm' : 'a' + (i / 16 + j) % 3);
    sprintf(buf + n, "%s%04d", leaf, i);
}

/* Matching long keys costs time linear in the bytes of the keys: 4,000
 * target keys of 1 KiB with 450 module levels each, and 4,000 source
 * keys, half of them unexpected (under the deepest module), resolve well
 * within a second with the right report.  Looking up every module prefix
 * of every key as a string took seconds. */
static void test_resolve_long_keys_fast(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    char name[WB_MAX_NAME + 1];
    for (int i = 0; i < 4000; i++) {
        long_key(name, i, "w");
        assert_true(strlen(name) > 900 && strlen(name) <= WB_MAX_NAME);
        add1(&tgt, name);
        long_key(name, i, i % 2 ? "u" : "w");
        add1(&src, name);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 0, 0, &o), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(dt < BIG_SECONDS / 2);
    assert_int_equal(o.n, 2000);
    assert_int_equal(o.missing.n, 2000);
    assert_int_equal(o.unexpected.n, 2000);
    long_key(name, 1, "w");
    assert_string_equal(o.missing.v[0], name);
    /* Flagged by module, each module's keys in source order: the 672 odd
     * keys of group 0 (i / 16 % 3 == 0, whose modules come first in the
     * schema), then group 1's from key 17, last group 2's up to 3983. */
    long_key(name, 1, "u");
    assert_string_equal(o.unexpected.v[0], name);
    long_key(name, 17, "u");
    assert_string_equal(o.unexpected.v[672], name);
    long_key(name, 3983, "u");
    assert_string_equal(o.unexpected.v[1999], name);
    long_key(name, 3998, "w");
    assert_string_equal(o.v[1999].target, name);
    done(&src, &tgt, NULL, &o);
}

/* A missing and an unexpected key next to each other in a deep schema:
 * walks that share modules with the key before them, and walks that
 * leave them, flag each key where PyTorch does. */
static void test_resolve_unexpected_shared_prefixes(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add1(&tgt, "a.b.c.w");
    add1(&tgt, "a.b.d.w");
    add1(&tgt, "a.x");
    add1(&tgt, "e.w");
    add1(&src, "a.b.c.u");   /* Under a.b.c. */
    add1(&src, "a.b.c.w.z"); /* Past the local tensor w: never flagged. */
    add1(&src, "a.b.u");     /* Under a.b, sharing a.b with the key before. */
    add1(&src, "a.b.d.w.q"); /* Never flagged. */
    add1(&src, "a.b.d.u");   /* Under a.b.d. */
    add1(&src, "a.x.y");     /* Past the local tensor a.x. */
    add1(&src, "a.u");       /* Under a. */
    add1(&src, "e.w");
    add1(&src, "e");       /* Names the submodule e: never flagged. */
    add1(&src, "a.b.c.v"); /* Under a.b.c again, after other walks. */
    add1(&src, "q.r");     /* At the root. */
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 0, 0, &o), 0);
    assert_string_equal(joined(&o.unexpected),
                        "q.r,a.u,a.b.u,a.b.c.u,a.b.c.v,a.b.d.u,a.b.c.w.z,"
                        "a.b.d.w.q,a.x.y,e");
    assert_string_equal(joined(&o.missing), "a.b.c.w,a.b.d.w,a.x");
    assert_string_equal(targets(&o), "e.w");
    done(&src, &tgt, NULL, &o);
}

/* Two source keys renamed onto one key fail with both names and the
 * target in the message. */
static void test_resolve_collision(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "module.w");
    add1(&src, "w");
    wb__ruleset rs = {0};
    rules(&rs, "prefix module. ->\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ECOLLISION);
    assert_string_equal(o.errmsg,
                        "source keys \"module.w\" and \"w\" both map to \"w\"");
    assert_int_equal(o.n, 0);
    done(&src, NULL, &rs, &o);
}

/* Bad rules fail with WB_ERULE and a message naming the rule (and its
 * line when it came from a file). */
static void test_resolve_bad_rules(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "w");
    wb__ruleset rs = {0};
    wb__resolve_out o;
    assert_int_equal(
        wb__ruleset_add(&rs, WB__RULE_REGEX, "layer(\\d+", "x", -1, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(
        o.errmsg,
        "regex \"layer(\\d+\" at offset 9: missing closing parenthesis");
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_EXCLUDE, "[abc", "", -1, 4),
                     0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(o.errmsg, "line 4: bad glob \"[abc\"");
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_REGEX, "(a)", "\\2", -1, 2),
                     0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(o.errmsg, "line 2: regex \"(a)\": bad replacement "
                                  "\"\\2\": invalid group reference 2");
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    assert_int_equal(wb__ruleset_add(&rs, 42, "x", "", -1, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_CAST, "*", "", 99, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, "w", "", -1, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(o.errmsg, "the rules rename \"w\" to an empty key");
    done(&src, NULL, &rs, &o);
}

/* Catastrophic backtracking stops at the match limit with WB_EREGEX
 * naming the pattern and the key. */
static void test_resolve_regex_limit(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab!");
    wb__ruleset rs = {0};
    rules(&rs, "regex (a+)+b -> x\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_EREGEX);
    assert_non_null(
        strstr(o.errmsg, "regex \"(a+)+b\" hit the match limit on key \"aaaa"));
    assert_string_equal(o.errmsg + 8,
                        "regex \"(a+)+b\" hit the match limit on key "
                        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab!\"");
    assert_memory_equal(o.errmsg, "line 1: ", 8);
    done(&src, NULL, &rs, &o);
}

/* The time budget is looked at after every rule, not only between keys:
 * one key through 400 regexes that each backtrack for milliseconds (under
 * the match limit, about a second in all) stops once the budget of 100 ms
 * is spent, naming the rule it stopped after and the key. */
static void test_resolve_budget_per_rule(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "aaaaaaaaaaaaaaa000000");
    wb__ruleset rs = {0};
    for (int i = 0; i < 400; i++)
        assert_int_equal(
            wb__ruleset_add(&rs, WB__RULE_REGEX, "(a+)+[bc]", "x", -1, i + 1),
            0);
    wb__resolve_req req = {.src = src.s.v,
                           .nsrc = src.s.n,
                           .rules = &rs,
                           .strict = 1,
                           .budget_ms = 100};
    wb__resolve_out o;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(wb__resolve(&req, &o), WB_EREGEX);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(dt >= 0.1); /* The budget ran out, not the work. */
    int line = 0;
    char tail[256] = "";
    assert_int_equal(sscanf(o.errmsg, "line %d: %255[^\n]", &line, tail), 2);
    assert_true(line > 1 && line < 400);
    assert_string_equal(tail, "the rules took longer than 100 ms; stopped at "
                              "key 0 of 1 (\"aaaaaaaaaaaaaaa000000\")");
    done(&src, NULL, &rs, &o);
}

/* Runs the resolver with a budget of ms milliseconds. */
static int run_budget(const table *src, const wb__ruleset *rs, const table *tgt,
                      unsigned ms, wb__resolve_out *out) {
    wb__resolve_req req = {.src = src->s.v,
                           .nsrc = src->s.n,
                           .rules = rs,
                           .schema = tgt ? &tgt->s : NULL,
                           .strict = 0,
                           .budget_ms = ms};
    return wb__resolve(&req, out);
}

/* The budget covers matching the target schema too, without any rule: a
 * schema of 100,000 keys cannot be matched in 1 ms, and the request stops
 * with WB_EREGEX saying where; without a budget it resolves. */
static void test_resolve_budget_schema(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    char name[160];
    add1(&src, "encoder.w");
    for (int i = 0; i < BIG_KEYS; i++) {
        snprintf(name, sizeof name,
                 "encoder.layers.%d.attention.output.dense.weight_with_a_"
                 "rather_long_name_to_hash",
                 i);
        add1(&tgt, name);
    }
    wb__resolve_out o;
    assert_int_equal(run_budget(&src, NULL, &tgt, 1, &o), WB_EREGEX);
    assert_non_null(strstr(o.errmsg, "matching the target schema took longer "
                                     "than 1 ms; stopped at "));
    assert_int_equal(o.n, 0);
    wb__resolve_out_free(&o);
    assert_int_equal(run_budget(&src, NULL, &tgt, 0, &o), 0);
    assert_int_equal(o.missing.n, BIG_KEYS);
    done(&src, &tgt, NULL, &o);
}

/* The budget covers the cast rules: 2,000 keys against 4,096 cast globs
 * that match none (about a second of fnmatch) stop after 50 ms, naming
 * the cast rule, the key and its place. */
static void test_resolve_budget_cast_rules(void **state) {
    (void)state;
    table src = {0};
    wb__ruleset rs = {0};
    char name[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", i);
        add1(&src, name);
    }
    for (int i = 0; i < MANY_RULES; i++) {
        snprintf(name, sizeof name, "*.no_such_tensor_%d", i);
        assert_int_equal(
            wb__ruleset_add(&rs, WB__RULE_CAST, name, "", WB_F16, i + 1), 0);
    }
    wb__resolve_out o;
    assert_int_equal(run_budget(&src, &rs, NULL, 50, &o), WB_EREGEX);
    int line = 0;
    size_t at = 0;
    char tail[256] = "";
    assert_int_equal(sscanf(o.errmsg,
                            "line %d: the cast rules took longer "
                            "than 50 ms; stopped at key %zu of "
                            "2000 %255[^\n]",
                            &line, &at, tail),
                     3);
    assert_true(line >= 1 && line <= MANY_RULES);
    assert_true(at < 2000);
    snprintf(name, sizeof name, "(\"model.layers.%zu.mlp.up_proj.weight\")",
             at);
    assert_string_equal(tail, name);
    done(&src, NULL, &rs, &o);
}

/* The budget covers compiling the rules: 4,096 regexes of 1 KiB take
 * tens of milliseconds to compile. */
static void test_resolve_budget_compile(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "w");
    wb__ruleset rs = {0};
    char pat[WB_MAX_NAME + 64];
    for (int i = 0; i < MANY_RULES; i++) {
        size_t n = 0;
        while (n < 1000)
            n += (size_t)snprintf(pat + n, sizeof pat - n,
                                  "(?:x%d_%zu|[a-z]{1,3}\\d+)", i, n);
        assert_int_equal(
            wb__ruleset_add(&rs, WB__RULE_REGEX, pat, "y", -1, i + 1), 0);
    }
    wb__resolve_out o;
    assert_int_equal(run_budget(&src, &rs, NULL, 10, &o), WB_EREGEX);
    assert_non_null(strstr(o.errmsg, ": the rules took longer than 10 ms; "
                                     "stopped compiling rule "));
    assert_non_null(strstr(o.errmsg, " of 4096"));
    done(&src, NULL, &rs, &o);
}

/* "ab" doubled by rule after rule: 2 << k bytes after k rules. */
static void doubled(char *buf, size_t len) {
    for (size_t i = 0; i < len; i++)
        buf[i] = "ab"[i % 2];
    buf[len] = '\0';
}

/* Rules that matched no key are listed, in rule order, described with
 * their line; rules that did something are not. */
static void test_resolve_unused_rules_reported(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "module.layer1.weight");
    add1(&src, "module.layer1.bias");
    wb__ruleset rs = {0};
    rules(&rs, "include module.*\n"
               "exclude *.running_mean\n"
               "prefix module. -> \"\"\n"
               "rename layer1. -> fc1.\n"
               "regex layer(\\d+)\\.(.*) -> fc\\1.\\2\n"
               "regex nomatch(.*) -> x\\1\n"
               "cast *.scale F16\n"
               "cast *.weight BF16\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_int_equal(o.unused_rules.n, 4);
    assert_string_equal(o.unused_rules.v[0],
                        "line 2: exclude \"*.running_mean\"");
    assert_string_equal(o.unused_rules.v[1],
                        "line 4: rename \"layer1.\" -> \"fc1.\"");
    assert_string_equal(o.unused_rules.v[2],
                        "line 6: regex \"nomatch(.*)\" -> \"x\\1\"");
    assert_string_equal(o.unused_rules.v[3], "line 7: cast \"*.scale\" F16");
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    wb__schema_clear(&src.s);
}

/* No rename makes a key longer than WB_MAX_NAME bytes: 40 regexes that
 * each double the key (which would ask for 2 TiB) stop at the rule that
 * passes 1024 bytes, with WB_ERULE naming that rule (its line, or its
 * place in the request) and quoting the start of the key it applied to;
 * a key of exactly 1024 bytes is kept. */
static void test_resolve_key_growth_capped(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "ab");
    add1(&src, "w");
    wb__ruleset rs = {0};
    char text[40 * 24] = "";
    for (int i = 0; i < 40; i++)
        strcat(text, "regex (.*) -> \\1\\1\n");
    rules(&rs, text);
    char key[WB_MAX_NAME + 1], want[WB_MAX_NAME + 512];
    doubled(key, 96);
    snprintf(want, sizeof want,
             "line 10: regex \"(.*)\" -> \"\\1\\1\" makes key \"%.96s...\" "
             "longer than 1024 bytes (source key \"ab\")",
             key);
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(o.errmsg, want);
    assert_int_equal(o.n, 0);
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);

    /* The same rules from calls: named by their place, from 1. */
    for (int i = 0; i < 40; i++)
        assert_int_equal(
            wb__ruleset_add(&rs, WB__RULE_REGEX, "(.*)", "\\1\\1", -1, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    memcpy(want, "rule", 4);
    assert_string_equal(o.errmsg, want);
    wb__resolve_out_free(&o);

    /* Nine doublings reach exactly 1024 bytes, which is allowed. */
    rs.n = 9;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_int_equal(o.n, 2);
    doubled(key, WB_MAX_NAME);
    assert_string_equal(o.v[0].target, key);
    assert_int_equal(strlen(o.v[1].target), 512);
    rs.n = 40;
    done(&src, NULL, &rs, &o);
}

/* Exact and prefix renames are capped the same way, and a source key
 * that is itself longer than WB_MAX_NAME is refused. */
static void test_resolve_key_growth_other_renames(void **state) {
    (void)state;
    table src = {0};
    char big[WB_MAX_NAME + 2], want[512];
    memset(big, 'k', 1000);
    big[1000] = '\0';
    add1(&src, "w");
    add1(&src, big);
    wb__ruleset rs = {0};
    wb__resolve_out o;

    /* A 25-byte prefix on a 1000-byte key: 1025 bytes. */
    rules(&rs, "prefix -> 0123456789abcdefghijklmno\n");
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    snprintf(want, sizeof want,
             "line 1: prefix \"\" -> \"0123456789abcdefghijklmno\" makes key "
             "\"%.96s...\" longer than 1024 bytes (source key \"%.96s...\")",
             big, big);
    assert_string_equal(o.errmsg, want);
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);

    /* 24 bytes fit exactly. */
    rules(&rs, "prefix -> 0123456789abcdefghijklmn\n");
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_int_equal(strlen(o.v[1].target), WB_MAX_NAME);
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);

    /* An exact rename to 1025 bytes (possible from a call or the wire),
     * after a rename that keeps the key short. */
    memset(big, 'n', WB_MAX_NAME + 1);
    big[WB_MAX_NAME + 1] = '\0';
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, "w", "v", -1, 0), 0);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, "v", big, -1, 0), 0);
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), WB_ERULE);
    assert_string_equal(o.errmsg, "rule 2: rename \"v\" -> \"nnnnnnnnnnnnnnnn"
                                  "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
                                  "nnnnn...\" makes key \"v\" longer than "
                                  "1024 bytes (source key \"w\")");
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);

    /* Quoted keys are cut at a character boundary: 95 ASCII bytes, then
     * a two-byte character across the 96-byte mark. */
    char utf[WB_MAX_NAME + 1];
    memset(utf, 'u', 95);
    memcpy(utf + 95, "\xc3\xa9", 2);
    memset(utf + 97, 'u', 1000 - 97);
    utf[1000] = '\0';
    table src2 = {0};
    add1(&src2, utf);
    rules(&rs, "prefix -> 0123456789abcdefghijklmno\n");
    assert_int_equal(run(&src2, &rs, NULL, 1, 0, &o), WB_ERULE);
    snprintf(want, sizeof want, "makes key \"%.95s...\" longer", utf);
    assert_non_null(strstr(o.errmsg, want));
    wb__resolve_out_free(&o);
    wb__ruleset_clear(&rs);
    wb__schema_clear(&src2.s);

    /* A source key longer than a name may be (not from the daemon, which
     * checks names, but from any caller). */
    wb__tinfo *t = &src.s.v[0];
    free(t->name);
    t->name = strdup(big);
    assert_non_null(t->name);
    assert_int_equal(run(&src, NULL, NULL, 1, 0, &o), WB_EINVAL);
    assert_string_equal(o.errmsg, "source key 0 is longer than 1024 bytes");
    done(&src, NULL, &rs, &o);
}

/* Cast rules set the dtype without a schema (the last match wins) and
 * report converted keys. */
static void test_resolve_cast_rules(void **state) {
    (void)state;
    table src = {0};
    add1(&src, "a.weight");
    add1(&src, "a.bias");
    add(&src, "steps", WB_I64, -1, -1, -1);
    wb__ruleset rs = {0};
    rules(&rs,
          "prefix a. -> b.\ncast b.* F16\ncast *.bias BF16\ncast a.* I8\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, NULL, 1, 0, &o), 0);
    assert_int_equal(o.v[0].dtype, WB_F16);
    assert_int_equal(o.v[1].dtype, WB_BF16);
    assert_int_equal(o.v[2].dtype, WB_I64);
    assert_int_equal(o.v[2].cast, 0);
    assert_string_equal(joined(&o.cast), "b.weight,b.bias");
    done(&src, NULL, &rs, &o);
}

/* The example of the product page: strict load with missing, unexpected
 * and mismatched keys gives PyTorch's text, an empty table, and the
 * lists. */
static void test_resolve_strict_error_text(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add(&src, "layer1.weight", WB_F32, 10, 20, -1);
    add(&src, "layer1.bias", WB_F32, 10, -1, -1);
    add(&src, "fc2.weight", WB_F32, 10, 20, -1);
    add(&tgt, "fc1.weight", WB_F32, 10, 20, -1);
    add(&tgt, "fc1.bias", WB_F32, 10, -1, -1);
    add(&tgt, "fc2.weight", WB_F32, 10, 30, -1);
    tgt.s.target = strdup("Net");
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 1, 0, &o), WB_ELOAD);
    assert_string_equal(
        o.error_text,
        "Error(s) in loading state_dict for Net:\n"
        "\tMissing key(s) in state_dict: \"fc1.weight\", \"fc1.bias\". \n"
        "\tUnexpected key(s) in state_dict: \"layer1.weight\", "
        "\"layer1.bias\". \n"
        "\tsize mismatch for fc2.weight: copying a param with shape "
        "torch.Size([10, 20]) from checkpoint, the shape in current model is "
        "torch.Size([10, 30]).");
    assert_int_equal(o.n, 0);
    assert_string_equal(joined(&o.missing), "fc1.weight,fc1.bias");
    assert_string_equal(joined(&o.unexpected), "layer1.weight,layer1.bias");
    assert_string_equal(joined(&o.mismatched), "fc2.weight");
    done(&src, &tgt, NULL, &o);
}

/* Non-strict loads skip missing and unexpected keys; a size mismatch is
 * still an error unless ignored, and then it is reported and skipped. */
static void test_resolve_nonstrict_and_ignore(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add(&src, "a", WB_F32, 2, -1, -1);
    add(&src, "b", WB_F32, 3, -1, -1);
    add(&src, "extra", WB_F32, 3, -1, -1);
    add(&tgt, "a", WB_F16, 2, -1, -1);
    add(&tgt, "b", WB_F32, -1, -1, -1);
    add(&tgt, "gone", WB_F32, 1, -1, -1);
    tgt.s.target = strdup("M");
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 0, 0, &o), WB_ELOAD);
    assert_string_equal(o.error_text, "Error(s) in loading state_dict for "
                                      "M:\n\tsize mismatch for b: copying a "
                                      "param with shape torch.Size([3]) from "
                                      "checkpoint, the shape in current "
                                      "model is torch.Size([]).");
    assert_string_equal(joined(&o.missing), "gone");
    assert_string_equal(joined(&o.unexpected), "extra");
    wb__resolve_out_free(&o);
    assert_int_equal(run(&src, NULL, &tgt, 0, 1, &o), 0);
    assert_null(o.error_text);
    assert_string_equal(targets(&o), "a");
    assert_int_equal(o.v[0].dtype, WB_F16);
    assert_int_equal(o.v[0].cast, 1);
    assert_string_equal(joined(&o.cast), "a");
    assert_string_equal(joined(&o.mismatched), "b");
    wb__resolve_out_free(&o);
    /* Strict with ignore: the text lists keys but no size mismatch. */
    assert_int_equal(run(&src, NULL, &tgt, 1, 1, &o), WB_ELOAD);
    assert_string_equal(o.error_text,
                        "Error(s) in loading state_dict for M:\n"
                        "\tMissing key(s) in state_dict: \"gone\". \n"
                        "\tUnexpected key(s) in state_dict: \"extra\". ");
    done(&src, &tgt, NULL, &o);
}

/* Unexpected keys come in PyTorch's module-walk order; keys the walk never
 * flags (a submodule's own name, a key below a tensor) follow. */
static void test_resolve_unexpected_order(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add1(&tgt, "fc1.weight");
    add1(&tgt, "blk.0.weight");
    add1(&tgt, "blk.1.weight");
    add1(&tgt, "head.weight");
    add1(&src, "blk.1.extra");
    add1(&src, "fc1.weight.x");
    add1(&src, "zzz");
    add1(&src, "fc1.extra");
    add1(&src, "blk");
    add1(&src, "blk.extra");
    add1(&src, "blk.1.weight");
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 0, 0, &o), 0);
    assert_string_equal(joined(&o.unexpected),
                        "zzz,fc1.extra,blk.extra,blk.1.extra,fc1.weight.x,blk");
    assert_string_equal(joined(&o.missing),
                        "fc1.weight,blk.0.weight,head.weight");
    assert_string_equal(targets(&o), "blk.1.weight");
    done(&src, &tgt, NULL, &o);
}

/* A successful strict load returns the target's tensors in target order
 * with the source index of each. */
static void test_resolve_target_order(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add1(&src, "m.b");
    add1(&src, "m.a");
    add1(&tgt, "a");
    add1(&tgt, "b");
    wb__ruleset rs = {0};
    rules(&rs, "prefix m. ->\n");
    wb__resolve_out o;
    assert_int_equal(run(&src, &rs, &tgt, 1, 0, &o), 0);
    assert_string_equal(targets(&o), "a,b");
    assert_int_equal(o.v[0].src, 1);
    assert_int_equal(o.v[1].src, 0);
    assert_int_equal(o.aliased.n, 0);
    done(&src, &tgt, &rs, &o);
}

/* A target schema that names a key twice is refused. */
static void test_resolve_duplicate_target(void **state) {
    (void)state;
    table src = {0}, tgt = {0};
    add1(&src, "a");
    add1(&tgt, "a");
    add1(&tgt, "a");
    wb__resolve_out o;
    assert_int_equal(run(&src, NULL, &tgt, 1, 0, &o), WB_EEXIST);
    assert_string_equal(o.errmsg, "target schema lists \"a\" twice");
    done(&src, &tgt, NULL, &o);
}

/* Bad requests are refused and an output can always be freed twice. */
static void test_resolve_bad_request(void **state) {
    (void)state;
    wb__resolve_out o;
    wb__resolve_req req = {.src = NULL, .nsrc = 3, .strict = 1};
    assert_int_equal(wb__resolve(&req, &o), WB_EINVAL);
    wb__resolve_out_free(&o);
    wb__resolve_out_free(&o);
    wb__resolve_out_free(NULL);
    assert_int_equal(wb__resolve(NULL, &o), WB_EINVAL);
    assert_int_equal(wb__resolve(&req, NULL), WB_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_passthrough),
        cmocka_unit_test(test_resolve_filters),
        cmocka_unit_test(test_resolve_rename_order),
        cmocka_unit_test(test_resolve_prefix),
        cmocka_unit_test(test_resolve_regex),
        cmocka_unit_test(test_resolve_many_renames_fast),
        cmocka_unit_test(test_resolve_big_schema_fast),
        cmocka_unit_test(test_resolve_long_keys_fast),
        cmocka_unit_test(test_resolve_unexpected_shared_prefixes),
        cmocka_unit_test(test_resolve_collision),
        cmocka_unit_test(test_resolve_bad_rules),
        cmocka_unit_test(test_resolve_regex_limit),
        cmocka_unit_test(test_resolve_budget_per_rule),
        cmocka_unit_test(test_resolve_budget_schema),
        cmocka_unit_test(test_resolve_budget_cast_rules),
        cmocka_unit_test(test_resolve_budget_compile),
        cmocka_unit_test(test_resolve_key_growth_capped),
        cmocka_unit_test(test_resolve_unused_rules_reported),
        cmocka_unit_test(test_resolve_key_growth_other_renames),
        cmocka_unit_test(test_resolve_cast_rules),
        cmocka_unit_test(test_resolve_strict_error_text),
        cmocka_unit_test(test_resolve_nonstrict_and_ignore),
        cmocka_unit_test(test_resolve_unexpected_order),
        cmocka_unit_test(test_resolve_target_order),
        cmocka_unit_test(test_resolve_duplicate_target),
        cmocka_unit_test(test_resolve_bad_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
