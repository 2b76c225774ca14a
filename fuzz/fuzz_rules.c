/* fuzz_rules.c -- libFuzzer harness of the rules-file parser and of the
 * compilation and application of the rules it yields.
 *
 * The input is the text of a rules file (wbroker map --rules FILE,
 * wb_rules_parse()).  Parsing must succeed or fail with WB_ERULE and a
 * "line N: why" sentence, leaving the rule list untouched on failure; the
 * rules it yields are then resolved against the fixed source table of
 * fuzz_common.h, once without a target schema and once with the table
 * itself as the target, so that renames, casts and the report all run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 64 * 1024)
        return -1; /* Rules files are small; long ones only cost time. */
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    wb__ruleset rs = {0};
    char err[256];
    int strict = 1, ignore = 0;
    int rc =
        wb__rules_parse_text(&rs, text, &strict, &ignore, err, sizeof(err));
    if (rc != 0 && (rc != WB_ERULE && rc != WB_ENOMEM))
        abort();
    if (rc != 0 && rs.n != 0)
        abort(); /* A failed parse leaves the list as it was (empty). */
    if (rc == 0 && rs.n > 0) {
        wb__schema src;
        size_t tie[FZ_NSRC];
        fz_src_table(&src, tie);
        fz_resolve(src.v, src.n, tie, &rs, NULL, strict, ignore);
        fz_resolve(src.v, src.n, tie, &rs, &src, strict, ignore);
        wb__schema_clear(&src);
    }
    wb__ruleset_clear(&rs);
    free(text);
    return 0;
}
