/* test_resolve_vectors.c -- Runs resolver cases written as JSON lines, so
 * that tests/python/test_resolve_torch.py can compare wb__resolve() with
 * what torch.nn.Module.load_state_dict really does.
 *
 *   test_resolve_vectors            runs its own cmocka tests
 *   test_resolve_vectors FILE       reads one case per line of FILE and
 *                                  prints one result per line on stdout
 *
 * A case: {"id": ..., "target": "Net", "source": [[name, dtype, shape]...],
 * "schema": [[name, dtype, shape]...] or null, "rules": [[kind, a, b]...]
 * (kind: include exclude rename prefix regex; cast takes [kind, glob,
 * dtype]) or "rules_text": "...", "strict": bool, "ignore": bool}.
 * A result: {"id", "rc" (error name, "OK"), "errmsg" (only for errors
 * other than ELOAD), "resolved": [[target, source, dtype, cast]...],
 * "missing", "unexpected", "mismatched", "cast", "aliased", "error_text"
 * (string or null)}. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../client/rules_internal.h"
#include "../../daemon/resolve.h"

/* Reads [[name, dtype, shape]...] into s.  Returns 0 or -1. */
static int read_table(json_t *arr, wb__schema *s) {
    size_t i;
    json_t *row;
    if (!json_is_array(arr))
        return -1;
    json_array_foreach(arr, i, row) {
        json_t *shp = json_array_get(row, 2);
        int64_t dims[WB_MAX_DIMS];
        size_t nd = json_array_size(shp);
        if (nd > WB_MAX_DIMS)
            return -1;
        for (size_t d = 0; d < nd; d++)
            dims[d] = json_integer_value(json_array_get(shp, d));
        int dt = wb_dtype_from_name(json_string_value(json_array_get(row, 1)));
        if (wb__schema_push(s, json_string_value(json_array_get(row, 0)), dt,
                            (int)nd, dims) != 0)
            return -1;
    }
    return 0;
}

/* Adds the rules of a case to r.  Returns 0 or the failing call's code. */
static int read_rules(json_t *c, wb_rules *r, char *err, size_t errlen) {
    json_t *text = json_object_get(c, "rules_text");
    if (json_is_string(text))
        return wb_rules_parse(r, json_string_value(text), err, errlen);
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(c, "rules"), i, row) {
        const char *kind = json_string_value(json_array_get(row, 0));
        const char *a = json_string_value(json_array_get(row, 1));
        const char *b = json_string_value(json_array_get(row, 2));
        int rc = WB_EINVAL;
        if (kind == NULL)
            rc = WB_EINVAL;
        else if (strcmp(kind, "include") == 0)
            rc = wb_rules_include(r, a);
        else if (strcmp(kind, "exclude") == 0)
            rc = wb_rules_exclude(r, a);
        else if (strcmp(kind, "rename") == 0)
            rc = wb_rules_rename(r, a, b);
        else if (strcmp(kind, "prefix") == 0)
            rc = wb_rules_rename_prefix(r, a, b);
        else if (strcmp(kind, "regex") == 0)
            rc = wb_rules_rename_regex(r, a, b);
        else if (strcmp(kind, "cast") == 0)
            rc = wb_rules_cast(r, a, wb_dtype_from_name(b));
        if (rc != 0) {
            snprintf(err, errlen, "%s", r->errmsg);
            return rc;
        }
    }
    return 0;
}

static json_t *keys_json(const wb__keylist *kl) {
    json_t *a = json_array();
    for (size_t i = 0; i < kl->n; i++)
        json_array_append_new(a, json_string(kl->v[i]));
    return a;
}

/* Runs one case and returns its result object (NULL on a malformed
 * case). */
static json_t *run_case(json_t *c) {
    wb__schema src = {0}, tgt = {0};
    wb_rules *r = wb_rules_new();
    json_t *res = json_object();
    char err[512] = "";
    json_object_set(res, "id", json_object_get(c, "id"));
    json_t *schema = json_object_get(c, "schema");
    int has_schema = json_is_array(schema);
    const char *target = json_string_value(json_object_get(c, "target"));
    if (r == NULL || read_table(json_object_get(c, "source"), &src) != 0 ||
        (has_schema && read_table(schema, &tgt) != 0)) {
        json_decref(res);
        res = NULL;
        goto out;
    }
    tgt.target = strdup(target ? target : "");
    int rc = read_rules(c, r, err, sizeof err);
    if (rc != 0) {
        json_object_set_new(res, "rc", json_string(wb_err_name(rc)));
        json_object_set_new(res, "errmsg", json_string(err));
        goto out;
    }
    int strict = json_is_true(json_object_get(c, "strict"));
    int ignore = json_is_true(json_object_get(c, "ignore"));
    if (r->has_strict)
        strict = r->strict;
    if (r->has_ignore)
        ignore = r->ignore;
    wb__resolve_req req = {.src = src.v,
                           .nsrc = src.n,
                           .rules = &r->rs,
                           .schema = has_schema ? &tgt : NULL,
                           .strict = strict,
                           .ignore_mismatch = ignore,
                           .budget_ms = WB_RULES_BUDGET_MS};
    wb__resolve_out o;
    rc = wb__resolve(&req, &o);
    json_object_set_new(res, "rc", json_string(wb_err_name(rc)));
    if (rc != 0 && rc != WB_ELOAD)
        json_object_set_new(res, "errmsg", json_string(o.errmsg));
    json_t *rv = json_array();
    for (size_t i = 0; i < o.n; i++)
        json_array_append_new(
            rv, json_pack("[sssb]", o.v[i].target, src.v[o.v[i].src].name,
                          wb_dtype_name(o.v[i].dtype), o.v[i].cast));
    json_object_set_new(res, "resolved", rv);
    json_object_set_new(res, "missing", keys_json(&o.missing));
    json_object_set_new(res, "unexpected", keys_json(&o.unexpected));
    json_object_set_new(res, "mismatched", keys_json(&o.mismatched));
    json_object_set_new(res, "cast", keys_json(&o.cast));
    json_object_set_new(res, "aliased", keys_json(&o.aliased));
    json_object_set_new(res, "error_text",
                        o.error_text ? json_string(o.error_text) : json_null());
    wb__resolve_out_free(&o);
out:
    wb__schema_clear(&src);
    wb__schema_clear(&tgt);
    wb_rules_free(r);
    return res;
}

/* Runs every case of file, printing one result line each.  Returns the
 * process exit status. */
static int run_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        perror(path);
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    int status = 0;
    long lineno = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        if (line[0] == '\n' || line[0] == '\0')
            continue;
        json_error_t jerr;
        json_t *c = json_loads(line, 0, &jerr);
        json_t *res = c ? run_case(c) : NULL;
        if (res == NULL) {
            fprintf(stderr, "%s:%ld: bad case %s\n", path, lineno,
                    c ? "" : jerr.text);
            status = 2;
        } else {
            char *s = json_dumps(res, JSON_COMPACT | JSON_SORT_KEYS);
            if (s != NULL)
                puts(s);
            free(s);
        }
        json_decref(res);
        json_decref(c);
    }
    free(line);
    fclose(f);
    return status;
}

/* Runs a case given as JSON text and returns its result as JSON text. */
static char *run_text(const char *text) {
    json_error_t jerr;
    json_t *c = json_loads(text, 0, &jerr);
    assert_non_null(c);
    json_t *res = run_case(c);
    assert_non_null(res);
    char *s = json_dumps(res, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(res);
    json_decref(c);
    return s;
}

/* A case with rules given as a list resolves and prints every field. */
static void test_resolve_vectors_list_rules(void **state) {
    (void)state;
    char *s = run_text(
        "{\"id\":1,\"target\":\"Net\",\"source\":[[\"module.w\",\"F32\",[2]],"
        "[\"x\",\"F16\",[]]],\"schema\":[[\"w\",\"F16\",[2]],[\"y\",\"F32\",[]]"
        "],"
        "\"rules\":[[\"prefix\",\"module.\",\"\"]],\"strict\":false,"
        "\"ignore\":false}");
    assert_string_equal(
        s, "{\"aliased\":[],\"cast\":[\"w\"],\"error_text\":null,"
           "\"id\":1,\"mismatched\":[],\"missing\":[\"y\"],"
           "\"rc\":\"OK\",\"resolved\":[[\"w\",\"module.w\",\"F16\","
           "true]],\"unexpected\":[\"x\"]}");
    free(s);
}

/* A case with a rules text takes the options the text sets. */
static void test_resolve_vectors_rules_text(void **state) {
    (void)state;
    char *s = run_text(
        "{\"id\":\"t\",\"target\":\"M\",\"source\":[[\"a\",\"F32\",[1]]],"
        "\"schema\":[[\"b\",\"F32\",[1]]],\"rules_text\":\"strict true\\n\","
        "\"strict\":false,\"ignore\":false}");
    assert_non_null(strstr(s, "\"rc\":\"ELOAD\""));
    assert_non_null(strstr(s, "Missing key(s) in state_dict: \\\"b\\\". "));
    free(s);
    s = run_text(
        "{\"id\":2,\"source\":[],\"schema\":null,\"rules_text\":\"bogus\","
        "\"strict\":true}");
    assert_non_null(
        strstr(s, "\"errmsg\":\"line 1: unknown directive 'bogus'\""));
    assert_non_null(strstr(s, "\"rc\":\"ERULE\""));
    free(s);
}

int main(int argc, char **argv) {
    if (argc > 1)
        return run_file(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_vectors_list_rules),
        cmocka_unit_test(test_resolve_vectors_rules_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
