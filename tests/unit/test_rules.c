/* test_rules.c -- Unit tests of mapping rules: rule and schema arrays, the
 * rules-file parser, glob/regex/template checks and the wb_rules_* API. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../client/rules_internal.h"
#include "rules.h"
#include "rules_match.h"
#include "wire.h"

#define ERRLEN 256 /* Bytes of an error buffer in these tests. */

/* Adding a rule copies both operands and turns a NULL b into "". */
static void test_rules_add_copies(void **state) {
    (void)state;
    wb__ruleset rs = {0};
    char a[] = "x.*";
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_INCLUDE, a, NULL, 3, 7), 0);
    a[0] = 'y';
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.v[0].a, "x.*");
    assert_string_equal(rs.v[0].b, "");
    assert_int_equal(rs.v[0].dtype, -1);
    assert_int_equal(rs.v[0].line, 7);
    for (int i = 0; i < 100; i++)
        assert_int_equal(
            wb__ruleset_add(&rs, WB__RULE_CAST, "*", "", WB_F16, 0), 0);
    assert_int_equal(rs.n, 101);
    assert_int_equal(rs.v[100].dtype, WB_F16);
    wb__ruleset_clear(&rs);
    assert_int_equal(rs.n, 0);
    assert_null(rs.v);
    wb__ruleset_clear(NULL);
}

/* Schema pushes validate name, dtype and shape and leave the schema as it
 * was on failure. */
static void test_rules_schema_push_validates(void **state) {
    (void)state;
    wb__schema s = {0};
    int64_t shp[2] = {3, 4}, neg[1] = {-1};
    char longname[WB_MAX_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(wb__schema_push(&s, "w", WB_F32, 2, shp), 0);
    assert_int_equal(wb__schema_push(&s, "", WB_F32, 0, NULL), WB_ENAME);
    assert_int_equal(wb__schema_push(&s, NULL, WB_F32, 0, NULL), WB_ENAME);
    assert_int_equal(wb__schema_push(&s, longname, WB_F32, 0, NULL), WB_ENAME);
    assert_int_equal(wb__schema_push(&s, "x", WB_DTYPE_COUNT, 0, NULL),
                     WB_EDTYPE);
    assert_int_equal(wb__schema_push(&s, "x", WB_F32, WB_MAX_DIMS + 1, shp),
                     WB_ESHAPE);
    assert_int_equal(wb__schema_push(&s, "x", WB_F32, 1, neg), WB_ESHAPE);
    assert_int_equal(wb__schema_push(&s, "x", WB_F32, 1, NULL), WB_ESHAPE);
    assert_int_equal(wb__schema_push(NULL, "x", WB_F32, 0, NULL), WB_EINVAL);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.v[0].name, "w");
    assert_int_equal(s.v[0].ndim, 2);
    assert_int_equal(s.v[0].shape[1], 4);
    s.target = strdup("Net");
    wb__schema_clear(&s);
    assert_null(s.target);
    assert_int_equal(s.n, 0);
    wb__schema_clear(NULL);
}

/* Globs with unclosed brackets or a trailing backslash are rejected;
 * bracket classes and a leading ']' are accepted. */
static void test_rules_glob_check(void **state) {
    (void)state;
    assert_int_equal(wb__glob_check("*.weight"), 0);
    assert_int_equal(wb__glob_check("[]a]x"), 0);
    assert_int_equal(wb__glob_check("[![:digit:]]"), 0);
    assert_int_equal(wb__glob_check("a\\*"), 0);
    assert_int_equal(wb__glob_check("[abc"), WB_ERULE);
    assert_int_equal(wb__glob_check("[[:alpha:"), WB_ERULE);
    assert_int_equal(wb__glob_check("a\\"), WB_ERULE);
    assert_int_equal(wb__glob_check(""), WB_ERULE);
    assert_int_equal(wb__glob_check(NULL), WB_ERULE);
    assert_int_equal(wb__glob_has_magic("a.b"), 0);
    assert_int_equal(wb__glob_has_magic("a.?"), 1);
}

/* Parses template t against pattern p; returns the code and fills why. */
static int tpl(const char *p, const char *t, wb__template *out, char *why) {
    pcre2_code *re = NULL;
    assert_int_equal(wb__regex_compile(p, &re, why, ERRLEN), 0);
    assert_non_null(re);
    int rc = wb__template_parse(re, t, out, why, ERRLEN);
    pcre2_code_free(re);
    return rc;
}

/* Replacement templates follow Python: group numbers and names are
 * checked, \\ is a backslash, unknown letter escapes are errors. */
static void test_rules_template_parse(void **state) {
    (void)state;
    wb__template t;
    char why[ERRLEN];
    assert_int_equal(tpl("(?P<n>a)(b)", "x\\g<n>\\2\\g<0>\\\\\\.", &t, why), 0);
    assert_int_equal(t.n, 5);
    assert_int_equal(t.v[0].group, -1);
    assert_int_equal(t.v[1].group, 1);
    assert_int_equal(t.v[2].group, 2);
    assert_int_equal(t.v[3].group, 0);
    assert_int_equal(t.v[4].group, -1);
    assert_memory_equal(t.text + t.v[4].off, "\\\\.", 3);
    assert_int_equal(t.v[4].len, 3);
    wb__template_free(&t);
    assert_int_equal(tpl("(a)", "\\2", &t, why), WB_ERULE);
    assert_string_equal(why, "invalid group reference 2");
    assert_null(t.v);
    assert_int_equal(tpl("(a)", "\\g<zz>", &t, why), WB_ERULE);
    assert_string_equal(why, "unknown group name 'zz'");
    assert_int_equal(tpl("(a)", "\\q", &t, why), WB_ERULE);
    assert_string_equal(why, "bad escape \\q");
    assert_int_equal(tpl("(a)", "x\\", &t, why), WB_ERULE);
    assert_int_equal(tpl("(a)", "\\g<1", &t, why), WB_ERULE);
    assert_int_equal(tpl("(a)", "\\g1", &t, why), WB_ERULE);
    assert_int_equal(tpl("(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)", "\\11", &t, why),
                     0);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.v[0].group, 11);
    wb__template_free(&t);
    wb__template_free(NULL);
}

/* A rules file with every directive parses into rules in order, with line
 * numbers, and sets both options. */
static void test_rules_parse_all_directives(void **state) {
    (void)state;
    const char *text = "# header comment\n"
                       "include *.weight  encoder.*   # two globs\n"
                       "exclude *.bias\n"
                       "\n"
                       "rename old.name -> new.name\n"
                       "prefix module. ->\n"
                       "prefix -> backbone.\n"
                       "regex layer(\\d+)\\.(.*) -> fc\\1.\\2\n"
                       "cast *.weight F16\n"
                       "strict false\n"
                       "ignore-mismatched-sizes true\r\n";
    wb__ruleset rs = {0};
    int strict = 1, ignore = 0;
    char err[ERRLEN];
    assert_int_equal(
        wb__rules_parse_text(&rs, text, &strict, &ignore, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_int_equal(strict, 0);
    assert_int_equal(ignore, 1);
    assert_int_equal(rs.n, 8);
    assert_int_equal(rs.v[0].kind, WB__RULE_INCLUDE);
    assert_string_equal(rs.v[0].a, "*.weight");
    assert_int_equal(rs.v[0].line, 2);
    assert_string_equal(rs.v[1].a, "encoder.*");
    assert_int_equal(rs.v[2].kind, WB__RULE_EXCLUDE);
    assert_int_equal(rs.v[3].kind, WB__RULE_RENAME);
    assert_string_equal(rs.v[3].a, "old.name");
    assert_string_equal(rs.v[3].b, "new.name");
    assert_int_equal(rs.v[3].line, 5);
    assert_int_equal(rs.v[4].kind, WB__RULE_PREFIX);
    assert_string_equal(rs.v[4].a, "module.");
    assert_string_equal(rs.v[4].b, "");
    assert_string_equal(rs.v[5].a, "");
    assert_string_equal(rs.v[5].b, "backbone.");
    assert_int_equal(rs.v[6].kind, WB__RULE_REGEX);
    assert_string_equal(rs.v[6].a, "layer(\\d+)\\.(.*)");
    assert_string_equal(rs.v[6].b, "fc\\1.\\2");
    assert_int_equal(rs.v[7].kind, WB__RULE_CAST);
    assert_int_equal(rs.v[7].dtype, WB_F16);
    wb__ruleset_clear(&rs);
}

/* Quoted operands may hold spaces, '#', "->" and escaped quotes; a '#'
 * inside a word is not a comment. */
static void test_rules_parse_quotes_and_comments(void **state) {
    (void)state;
    const char *text = "regex \"a b->(\\d) #x\" -> \"c \\\"\\1\\\"\"  # note\n"
                       "rename a#b -> c#d\n"
                       "include \"with space\" x\n"
                       "regex p->q -> r\n";
    wb__ruleset rs = {0};
    char err[ERRLEN];
    assert_int_equal(
        wb__rules_parse_text(&rs, text, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(rs.n, 5);
    assert_string_equal(rs.v[0].a, "a b->(\\d) #x");
    assert_string_equal(rs.v[0].b, "c \"\\1\"");
    assert_string_equal(rs.v[1].a, "a#b");
    assert_string_equal(rs.v[1].b, "c#d");
    assert_string_equal(rs.v[2].a, "with space");
    assert_string_equal(rs.v[3].a, "x");
    assert_string_equal(rs.v[4].a, "p->q");
    assert_string_equal(rs.v[4].b, "r");
    wb__ruleset_clear(&rs);
}

/* Parses text into a ruleset already holding one rule and checks that a
 * failure leaves it, and the options, untouched; returns the error. */
static const char *parse_fail(const char *text, char *err) {
    wb__ruleset rs = {0};
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_RENAME, "k", "v", -1, 0), 0);
    int strict = 7, ignore = 7;
    assert_int_equal(
        wb__rules_parse_text(&rs, text, &strict, &ignore, err, ERRLEN),
        WB_ERULE);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.v[0].a, "k");
    assert_int_equal(strict, 7);
    assert_int_equal(ignore, 7);
    wb__ruleset_clear(&rs);
    return err;
}

/* Each kind of bad line gives "line N: why" and appends nothing. */
static void test_rules_parse_errors(void **state) {
    (void)state;
    char err[ERRLEN];
    assert_string_equal(parse_fail("strict true\nfoo bar\n", err),
                        "line 2: unknown directive 'foo'");
    assert_string_equal(parse_fail("include a [abc\n", err),
                        "line 1: bad glob '[abc'");
    assert_string_equal(
        parse_fail("include *\n\nregex x( -> y\n", err),
        "line 3: bad regex 'x(' at offset 2: missing closing parenthesis");
    assert_string_equal(parse_fail("cast * F17\n", err),
                        "line 1: unknown dtype 'F17'");
    assert_string_equal(parse_fail("rename a b\n", err),
                        "line 1: expected 'OLD -> NEW'");
    assert_string_equal(parse_fail("rename -> b\n", err),
                        "line 1: expected 'OLD -> NEW'");
    assert_string_equal(parse_fail("regex -> b\n", err),
                        "line 1: expected 'PATTERN -> REPLACEMENT'");
    assert_string_equal(
        parse_fail("regex (a) -> \\2\n", err),
        "line 1: bad replacement '\\2': invalid group reference 2");
    assert_string_equal(parse_fail("include\n", err),
                        "line 1: expected at least one glob");
    assert_string_equal(parse_fail("cast *\n", err),
                        "line 1: expected 'cast GLOB DTYPE'");
    assert_string_equal(parse_fail("strict maybe\n", err),
                        "line 1: expected 'strict true|false'");
    assert_string_equal(parse_fail("include \"abc\n", err),
                        "line 1: unterminated quote");
    assert_int_equal(
        wb__rules_parse_text(NULL, "", NULL, NULL, err, sizeof err), WB_EINVAL);
}

/* Empty text and comment-only text parse to nothing and succeed. */
static void test_rules_parse_empty(void **state) {
    (void)state;
    wb__ruleset rs = {0};
    assert_int_equal(wb__rules_parse_text(&rs, "", NULL, NULL, NULL, 0), 0);
    assert_int_equal(
        wb__rules_parse_text(&rs, "  # only\n\t\n#x", NULL, NULL, NULL, 0), 0);
    assert_int_equal(rs.n, 0);
}

/* The public calls check their arguments and add valid rules. */
static void test_rules_api_validates(void **state) {
    (void)state;
    wb_rules *r = wb_rules_new();
    assert_non_null(r);
    char longname[WB_MAX_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(wb_rules_include(NULL, "*"), WB_EINVAL);
    assert_int_equal(wb_rules_include(r, NULL), WB_EINVAL);
    assert_int_equal(wb_rules_include(r, ""), WB_ERULE);
    assert_int_equal(wb_rules_exclude(r, "[x"), WB_ERULE);
    assert_int_equal(wb_rules_include(r, longname), WB_ENAME);
    assert_int_equal(wb_rules_rename(r, "", "b"), WB_ERULE);
    assert_int_equal(wb_rules_rename(r, "a", NULL), WB_EINVAL);
    assert_int_equal(wb_rules_rename(r, longname, "b"), WB_ENAME);
    assert_int_equal(wb_rules_rename_regex(r, "layer(\\d+", "x"), WB_ERULE);
    assert_string_equal(
        wb_rules_errmsg(r),
        "regex \"layer(\\d+\" at offset 9: missing closing parenthesis");
    assert_int_equal(wb_rules_rename_regex(r, "(a)", "\\3"), WB_ERULE);
    assert_int_equal(wb_rules_rename_regex(r, "", "x"), WB_ERULE);
    assert_int_equal(wb_rules_cast(r, "*", 99), WB_EDTYPE);
    assert_int_equal(r->rs.n, 0);
    assert_int_equal(wb_rules_include(r, "*.weight"), 0);
    assert_int_equal(wb_rules_exclude(r, "head.*"), 0);
    assert_int_equal(wb_rules_rename(r, "a", "b"), 0);
    assert_int_equal(wb_rules_rename_prefix(r, "module.", ""), 0);
    assert_int_equal(wb_rules_rename_regex(r, "module\\.(.*)", "\\1"), 0);
    assert_int_equal(wb_rules_cast(r, "*", WB_BF16), 0);
    assert_int_equal(r->rs.n, 6);
    assert_int_equal(r->rs.v[5].kind, WB__RULE_CAST);
    assert_int_equal(r->rs.v[5].dtype, WB_BF16);
    assert_int_equal(r->rs.v[4].line, 0);
    wb_rules_free(r);
    wb_rules_free(NULL);
}

/* wb_rules_parse appends rules, records the options the text set, and
 * reports "line N: why" through err on failure. */
static void test_rules_api_parse(void **state) {
    (void)state;
    wb_rules *r = wb_rules_new();
    char err[ERRLEN];
    assert_int_equal(wb_rules_parse(r, "include *\n", err, sizeof err), 0);
    assert_int_equal(r->has_strict, 0);
    assert_int_equal(
        wb_rules_parse(r, "strict false\nprefix a. -> b.\n", err, sizeof err),
        0);
    assert_int_equal(r->has_strict, 1);
    assert_int_equal(r->strict, 0);
    assert_int_equal(r->has_ignore, 0);
    assert_int_equal(r->rs.n, 2);
    assert_int_equal(wb_rules_parse(r, "ignore-mismatched-sizes true\nbogus\n",
                                    err, sizeof err),
                     WB_ERULE);
    assert_string_equal(err, "line 2: unknown directive 'bogus'");
    assert_int_equal(r->has_ignore, 0);
    assert_int_equal(r->rs.n, 2);
    assert_int_equal(wb_rules_parse(r, NULL, err, sizeof err), WB_EINVAL);
    wb_rules_free(r);
}

/* Packs r's rules as a map request carries them, without the line
 * numbers (diagnostics only). */
static msgpack_sbuffer pack_without_lines(wb_rules *r) {
    for (size_t i = 0; i < r->rs.n; i++)
        r->rs.v[i].line = 0;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wb__pack_rules(&pk, &r->rs);
    return sb;
}

/* The same rules built with C calls (which the Python keyword arguments
 * use) and from a rules file put the same rules on the wire. */
static void test_rules_calls_and_file_agree(void **state) {
    (void)state;
    wb_rules *calls = wb_rules_new(), *file = wb_rules_new();
    assert_int_equal(wb_rules_include(calls, "encoder.*"), 0);
    assert_int_equal(wb_rules_exclude(calls, "*.bias"), 0);
    assert_int_equal(wb_rules_rename(calls, "emb", "tok_emb"), 0);
    assert_int_equal(wb_rules_rename_prefix(calls, "module.", ""), 0);
    assert_int_equal(
        wb_rules_rename_regex(calls, "layer(\\d+)\\.(.*)", "fc\\1.\\2"), 0);
    assert_int_equal(wb_rules_cast(calls, "*", WB_F16), 0);
    char err[ERRLEN];
    assert_int_equal(wb_rules_parse(file,
                                    "# the same, from a file\n"
                                    "include encoder.*\n"
                                    "exclude *.bias\n"
                                    "rename emb -> tok_emb\n"
                                    "prefix module. ->\n"
                                    "regex layer(\\d+)\\.(.*) -> fc\\1.\\2\n"
                                    "cast * F16\n",
                                    err, sizeof err),
                     0);
    msgpack_sbuffer a = pack_without_lines(calls);
    msgpack_sbuffer b = pack_without_lines(file);
    assert_int_equal(a.size, b.size);
    assert_memory_equal(a.data, b.data, a.size);
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
    wb_rules_free(calls);
    wb_rules_free(file);
}

/* Schemas keep the target name and tensors in order. */
static void test_rules_schema_api(void **state) {
    (void)state;
    wb_schema *s = wb_schema_new("Net");
    int64_t shp[1] = {5};
    assert_non_null(s);
    assert_string_equal(s->s.target, "Net");
    assert_int_equal(wb_schema_add(s, "a", WB_F32, 1, shp), 0);
    assert_int_equal(wb_schema_add(s, "b", WB_I64, 0, NULL), 0);
    assert_int_equal(wb_schema_add(s, "c", -3, 0, NULL), WB_EDTYPE);
    assert_int_equal(wb_schema_add(NULL, "c", WB_F32, 0, NULL), WB_EINVAL);
    assert_int_equal(s->s.n, 2);
    assert_string_equal(s->s.v[1].name, "b");
    wb_schema_free(s);
    s = wb_schema_new(NULL);
    assert_string_equal(s->s.target, "");
    wb_schema_free(s);
    wb_schema_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_add_copies),
        cmocka_unit_test(test_rules_schema_push_validates),
        cmocka_unit_test(test_rules_glob_check),
        cmocka_unit_test(test_rules_template_parse),
        cmocka_unit_test(test_rules_parse_all_directives),
        cmocka_unit_test(test_rules_parse_quotes_and_comments),
        cmocka_unit_test(test_rules_parse_errors),
        cmocka_unit_test(test_rules_parse_empty),
        cmocka_unit_test(test_rules_api_validates),
        cmocka_unit_test(test_rules_api_parse),
        cmocka_unit_test(test_rules_calls_and_file_agree),
        cmocka_unit_test(test_rules_schema_api),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
