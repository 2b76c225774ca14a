/* test_state.c -- The state record's encoding and its hostile-input-safe
 * decoding, and the descriptor store's names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <cmocka.h>

#include "../../daemon/fdstore.h"
#include "../../daemon/state.h"
#include "wbroker.h"

/* A record of two models (one a remembered name) and a retired version. */
static void sample(wb__state *st) {
    static wb__state_version v[2] = {
        {0x1234, 3, 1, 1000, {1, 2, 3}},
        {0x5678, 5, 0, 1001, {9, 9, 9}},
    };
    static wb__state_model m[2] = {
        {"llama", 5, 1000, v, 2},
        {"dropped", 7, 1002, NULL, 0},
    };
    static wb__state_retired r[1] = {{0x9abc, "llama", 4, 4194304, 1000}};
    memset(st, 0, sizeof(*st));
    st->seq = 42;
    st->m = m;
    st->nm = 2;
    st->r = r;
    st->nr = 1;
}

/* A record decodes to what was encoded. */
static void test_state_roundtrip(void **state) {
    wb__state st, out;
    sample(&st);
    wb__buf b = {0};
    wb__state_encode(&st, &b);
    assert_false(b.oom);
    char err[256];
    assert_int_equal(
        wb__state_decode((uint8_t *)b.p, b.len, &out, err, sizeof(err)), 0);
    assert_int_equal(out.seq, 42);
    assert_int_equal(out.nm, 2);
    assert_string_equal(out.m[0].name, "llama");
    assert_int_equal(out.m[0].last_number, 5);
    assert_int_equal(out.m[0].owner, 1000);
    assert_int_equal(out.m[0].nv, 2);
    assert_int_equal(out.m[0].v[0].id, 0x1234);
    assert_int_equal(out.m[0].v[0].pinned, 1);
    assert_int_equal(out.m[0].v[1].charged_to, 1001);
    assert_memory_equal(out.m[0].v[1].digest, st.m[0].v[1].digest, 16);
    assert_string_equal(out.m[1].name, "dropped");
    assert_int_equal(out.m[1].nv, 0);
    assert_int_equal(out.nr, 1);
    assert_string_equal(out.r[0].model, "llama");
    assert_int_equal(out.r[0].bytes, 4194304);
    const wb__state_model *m = NULL;
    assert_non_null(wb__state_version_find(&out, 0x5678, &m));
    assert_ptr_equal(m, &out.m[0]);
    assert_null(wb__state_version_find(&out, 0x9abc, NULL));
    assert_non_null(wb__state_model_find(&out, "dropped"));
    wb__state_free(&out);
    wb__buf_free(&b);
}

/* Re-seals a mutated record's checksum, so that the decoder's structural
 * checks are what refuse it. */
static void reseal(uint8_t *p, size_t len) {
    uint64_t sum = XXH3_64bits(p, len - 8);
    for (int i = 0; i < 8; i++)
        p[len - 8 + i] = (uint8_t)(sum >> (8 * i));
}

/* Every truncation, every single flipped byte (with and without a valid
 * checksum) and absurd counts are refused or decode to a valid record;
 * none reads out of bounds (run under ASan) or leaks. */
static void test_state_hostile(void **state) {
    wb__state st, out;
    sample(&st);
    wb__buf b = {0};
    wb__state_encode(&st, &b);
    char err[256];
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(
            wb__state_decode((uint8_t *)b.p, n, &out, err, sizeof(err)),
            WB_EFORMAT);
    uint8_t *p = malloc(b.len);
    for (size_t i = 0; i < b.len; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(p, b.p, b.len);
            p[i] ^= (uint8_t)(1u << bit);
            /* A flip alone fails the checksum. */
            assert_int_equal(wb__state_decode(p, b.len, &out, err, sizeof(err)),
                             WB_EFORMAT);
            reseal(p, b.len);
            if (wb__state_decode(p, b.len, &out, err, sizeof(err)) == 0)
                wb__state_free(&out);
        }
    /* A model count of 2^32 - 1 with a valid checksum. */
    memcpy(p, b.p, b.len);
    memset(p + 20, 0xff, 4);
    reseal(p, b.len);
    assert_int_equal(wb__state_decode(p, b.len, &out, err, sizeof(err)),
                     WB_EFORMAT);
    /* Another format. */
    memcpy(p, b.p, b.len);
    p[8] = 2;
    reseal(p, b.len);
    assert_int_equal(wb__state_decode(p, b.len, &out, err, sizeof(err)),
                     WB_EFORMAT);
    assert_non_null(strstr(err, "format 2"));
    free(p);
    wb__buf_free(&b);
}

/* The store's names parse back, and anything else is not the daemon's. */
static void test_state_fdnames(void **state) {
    char buf[WB_FDNAME_MAX];
    wb__fdname w;
    wb__fdname_version(buf, 0x00ab00000000cdefull, 17);
    assert_string_equal(buf, "v-00ab00000000cdef-17");
    assert_int_equal(wb__fdname_parse(buf, &w), 0);
    assert_int_equal(w.kind, WB_FD_VERSION);
    assert_int_equal(w.id, 0x00ab00000000cdefull);
    assert_int_equal(w.number, 17);
    wb__fdname_hold(buf, 0xffffffffffffffffull, 1000, 4242, 7);
    assert_string_equal(buf, "h-ffffffffffffffff-1000-4242-0000000000000007");
    assert_int_equal(wb__fdname_parse(buf, &w), 0);
    assert_int_equal(w.kind, WB_FD_HOLD);
    assert_int_equal(w.uid, 1000);
    assert_int_equal(w.pid, 4242);
    assert_int_equal(w.serial, 7);
    wb__fdname_state(buf, 99);
    assert_string_equal(buf, "state-99");
    assert_int_equal(wb__fdname_parse(buf, &w), 0);
    assert_int_equal(w.kind, WB_FD_STATE);
    assert_int_equal(w.number, 99);
    static const char *const bad[] = {
        "",
        "wbrokerd.socket",
        "stored",
        "v-",
        "v-00ab00000000cdef",
        "v-00ab00000000cdef-",
        "v-00ab00000000cdef-0",
        "v-00ab00000000cdef-017",
        "v-00AB00000000CDEF-17",
        "v-00ab00000000cde-17",
        "v-00ab00000000cdef-17-",
        "v-00ab00000000cdef-18446744073709551616",
        "v-0000000000000000-1",
        "v-00ab00000000cdef--17",
        "v-00ab00000000cdef-+17",
        "h-ffffffffffffffff-1000-4242",
        "h-ffffffffffffffff-4294967296-1-0000000000000007",
        "h-ffffffffffffffff-1-1-7",
        "state-",
        "state-x",
        "state-1x",
        NULL,
    };
    for (int i = 0; bad[i]; i++)
        assert_int_equal(wb__fdname_parse(bad[i], &w), -1);
    assert_int_equal(wb__fdname_parse(NULL, &w), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_state_hostile),
        cmocka_unit_test(test_state_fdnames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
