/* test_wire.c -- Unit tests of the wire protocol: framing, the bounded
 * msgpack check, typed accessors, tensor and rule encodings, names and
 * text values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"

/* Packs a map of a typical publish request into sb. */
static void pack_publish(msgpack_sbuffer *sb) {
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    wb__pack_key(&pk, "op");
    wb__pack_cstr(&pk, "publish");
    wb__pack_key(&pk, "id");
    msgpack_pack_uint64(&pk, 7);
    wb__pack_key(&pk, "model");
    wb__pack_cstr(&pk, "resnet");
    wb__pack_key(&pk, "tensors");
    msgpack_pack_array(&pk, 2);
    int64_t s1[2] = {64, 3};
    wb__pack_tinfo(&pk, "conv1.weight", WB_F32, 2, s1);
    wb__pack_tinfo(&pk, "scalar", WB_BF16, 0, NULL);
}

/* A publish request decodes back to the same fields and tensors. */
static void test_wire_publish_roundtrip(void **state) {
    msgpack_sbuffer sb;
    pack_publish(&sb);
    wb__msg m;
    assert_int_equal(wb__msg_decode(&m, (uint8_t *)sb.data, sb.size), 0);
    uint64_t id;
    assert_int_equal(wb__mp_get_u64(m.root, "id", &id), 0);
    assert_int_equal(id, 7);
    const char *s;
    size_t n;
    assert_int_equal(wb__mp_get_str(m.root, "model", &s, &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(s, "resnet", 6);
    const msgpack_object_array *a;
    assert_int_equal(wb__mp_get_array(m.root, "tensors", &a), 0);
    assert_int_equal(a->size, 2);
    wb__tinfo t;
    assert_int_equal(wb__decode_tinfo(&a->ptr[0], &t), 0);
    assert_string_equal(t.name, "conv1.weight");
    assert_int_equal(t.dtype, WB_F32);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 64);
    assert_int_equal(t.shape[1], 3);
    free(t.name);
    assert_int_equal(wb__decode_tinfo(&a->ptr[1], &t), 0);
    assert_int_equal(t.dtype, WB_BF16);
    assert_int_equal(t.ndim, 0);
    free(t.name);
    /* Absent keys and wrong types are told apart. */
    assert_int_equal(wb__mp_get_u64(m.root, "nope", &id), 1);
    assert_int_equal(wb__mp_get_u64(m.root, "model", &id), WB_EPROTO);
    assert_int_equal(wb__mp_get_str(m.root, "id", &s, &n), WB_EPROTO);
    wb__msg_free(&m);
    msgpack_sbuffer_destroy(&sb);
}

/* Every strict prefix of a valid message is rejected as truncated. */
static void test_wire_truncated_rejected(void **state) {
    msgpack_sbuffer sb;
    pack_publish(&sb);
    for (size_t len = 0; len < sb.size; len++) {
        wb__msg m;
        assert_int_equal(wb__msg_decode(&m, (uint8_t *)sb.data, len),
                         WB_EPROTO);
        wb__msg_free(&m);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* Trailing bytes after the message are rejected. */
static void test_wire_trailing_rejected(void **state) {
    uint8_t buf[] = {0x80, 0xc0};
    wb__msg m;
    assert_int_equal(wb__msg_decode(&m, buf, sizeof(buf)), WB_EPROTO);
    wb__msg_free(&m);
}

/* A 5-byte array32 header declaring a billion elements is refused by the
 * pre-check, before msgpack-c could reserve memory for it. */
static void test_wire_huge_count_rejected(void **state) {
    uint8_t arr[] = {0xdd, 0x3b, 0x9a, 0xca, 0x00};
    uint8_t map[] = {0xdf, 0x3b, 0x9a, 0xca, 0x00};
    uint8_t str[] = {0xdb, 0x3b, 0x9a, 0xca, 0x00};
    assert_int_equal(wb__mp_check(arr, sizeof(arr)), WB_EPROTO);
    assert_int_equal(wb__mp_check(map, sizeof(map)), WB_EPROTO);
    assert_int_equal(wb__mp_check(str, sizeof(str)), WB_EPROTO);
    wb__msg m;
    assert_int_equal(wb__msg_decode(&m, map, sizeof(map)), WB_EPROTO);
    wb__msg_free(&m);
}

/* Nesting deeper than the protocol needs is refused. */
static void test_wire_deep_nesting_rejected(void **state) {
    uint8_t buf[64];
    size_t n = 0;
    buf[n++] = 0x81; /* {"a": [[[[[[...]]]]]]} */
    buf[n++] = 0xa1;
    buf[n++] = 'a';
    for (int i = 0; i < WB_MAX_DEPTH; i++)
        buf[n++] = 0x91;
    buf[n++] = 0xc0;
    assert_int_equal(wb__mp_check(buf, n), WB_EPROTO);
    /* One level less is fine. */
    uint8_t ok[64];
    size_t k = 0;
    ok[k++] = 0x81;
    ok[k++] = 0xa1;
    ok[k++] = 'a';
    for (int i = 0; i < WB_MAX_DEPTH - 2; i++)
        ok[k++] = 0x91;
    ok[k++] = 0xc0;
    assert_int_equal(wb__mp_check(ok, k), 0);
}

/* ext types and the reserved byte 0xc1 are refused. */
static void test_wire_ext_rejected(void **state) {
    uint8_t ext[] = {0xd4, 0x01, 0x00};
    uint8_t bad[] = {0xc1};
    assert_int_equal(wb__mp_check(ext, sizeof(ext)), WB_EPROTO);
    assert_int_equal(wb__mp_check(bad, sizeof(bad)), WB_EPROTO);
}

/* A root that is not a map is refused. */
static void test_wire_root_must_be_map(void **state) {
    uint8_t arr[] = {0x90};
    wb__msg m;
    assert_int_equal(wb__msg_decode(&m, arr, sizeof(arr)), WB_EPROTO);
    wb__msg_free(&m);
}

/* Random bytes never crash the decoder, and whatever it accepts is a
 * complete, valid message. */
static void test_wire_random_inputs(void **state) {
    srand(12345);
    uint8_t buf[256];
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = (size_t)(rand() % (int)sizeof(buf));
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rand();
        if (len > 0 && iter % 2)
            buf[0] = (uint8_t)(0x80 | (buf[0] & 0x0f)); /* Mostly maps. */
        wb__msg m;
        int rc = wb__msg_decode(&m, buf, len);
        assert_true(rc == 0 || rc == WB_EPROTO || rc == WB_ETOOBIG);
        if (rc == 0)
            assert_int_equal(m.root->type, MSGPACK_OBJECT_MAP);
        wb__msg_free(&m);
    }
}

/* Too many objects in one frame are refused even if each is one byte. */
static void test_wire_object_limit(void **state) {
    size_t n = WB_MAX_OBJECTS + 10;
    uint8_t *buf = malloc(n + 5);
    buf[0] = 0xdd;
    uint32_t cnt = (uint32_t)n;
    buf[1] = (uint8_t)(cnt >> 24);
    buf[2] = (uint8_t)(cnt >> 16);
    buf[3] = (uint8_t)(cnt >> 8);
    buf[4] = (uint8_t)cnt;
    memset(buf + 5, 0xc0, n);
    assert_int_equal(wb__mp_check(buf, n + 5), WB_ETOOBIG);
    free(buf);
}

/* Tensor entries with bad dtypes, shapes or names are refused with the
 * matching code. */
static void test_wire_tinfo_errors(void **state) {
    struct {
        const char *name;
        const char *dtype;
        int ndim;
        int64_t dim;
        int want;
    } cases[] = {
        {"w", "F17", 1, 4, WB_EDTYPE},
        {"w", "F32", 17, 1, WB_ESHAPE},
        {"", "F32", 1, 4, WB_ENAME},
        {"w", "F32", 2, (int64_t)1 << 40, WB_ESHAPE}, /* overflow */
        {"w", "U8", 1, 4, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 3);
        wb__pack_cstr(&pk, cases[i].name);
        wb__pack_cstr(&pk, cases[i].dtype);
        msgpack_pack_array(&pk, (size_t)cases[i].ndim);
        for (int d = 0; d < cases[i].ndim; d++)
            msgpack_pack_int64(&pk, cases[i].dim);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off),
                         MSGPACK_UNPACK_SUCCESS);
        wb__tinfo t;
        assert_int_equal(wb__decode_tinfo(&up.data, &t), cases[i].want);
        free(t.name);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Names must be 1..1024 bytes of valid UTF-8 without NUL. */
static void test_wire_names(void **state) {
    assert_int_equal(wb__check_name("layer.0.weight", 14), 0);
    assert_int_equal(wb__check_name("\xc3\xa9t\xc3\xa9", 5), 0);
    assert_int_equal(wb__check_name("", 0), WB_ENAME);
    assert_int_equal(wb__check_name("a\0b", 3), WB_ENAME);
    assert_int_equal(wb__check_name("\xc3", 1), WB_ENAME);     /* cut */
    assert_int_equal(wb__check_name("\xc0\xaf", 2), WB_ENAME); /* overlong */
    assert_int_equal(wb__check_name("\xed\xa0\x80", 3),
                     WB_ENAME); /* surrogate */
    assert_int_equal(wb__check_name("\xff", 1), WB_ENAME);
    char big[WB_MAX_NAME + 1];
    memset(big, 'a', sizeof(big));
    assert_int_equal(wb__check_name(big, WB_MAX_NAME), 0);
    assert_int_equal(wb__check_name(big, WB_MAX_NAME + 1), WB_ENAME);
}

/* Metadata values: any length (even none) of valid UTF-8 without NUL.  A
 * value is refused for an overlong encoding, a surrogate, a code point
 * above U+10FFFF, a cut or broken sequence, or a stray byte, wherever it
 * stands in a long value (inside or after the eight-byte ASCII runs). */
static void test_wire_text(void **state) {
    (void)state;
    static const struct {
        const char *s;
        size_t n;
        int want;
    } cases[] = {
        {"", 0, 0},
        {"resnet50 trained on ImageNet", 28, 0},
        {"\xc3\xa9t\xc3\xa9", 5, 0}, /* U+00E9 */
        {"\xe2\x82\xac", 3, 0},      /* U+20AC */
        {"\xef\xbf\xbf", 3, 0},      /* U+FFFF */
        {"\xf0\x9f\x98\x80", 4, 0},  /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", 4, 0},  /* U+10FFFF */
        {"\xed\x9f\xbf", 3, 0},      /* U+D7FF */
        {"\xee\x80\x80", 3, 0},      /* U+E000 */
        {"a\0b", 3, WB_EINVAL},      /* NUL */
        {"\0", 1, WB_EINVAL},
        {"\xc0\x80", 2, WB_EINVAL},                 /* overlong NUL */
        {"\xc0\xaf", 2, WB_EINVAL},                 /* overlong '/' */
        {"\xc1\xbf", 2, WB_EINVAL},                 /* overlong U+7F */
        {"\xe0\x80\xaf", 3, WB_EINVAL},             /* overlong, 3 bytes */
        {"\xe0\x9f\xbf", 3, WB_EINVAL},             /* overlong U+7FF */
        {"\xf0\x80\x80\xaf", 4, WB_EINVAL},         /* overlong, 4 bytes */
        {"\xf0\x8f\xbf\xbf", 4, WB_EINVAL},         /* overlong U+FFFF */
        {"\xed\xa0\x80", 3, WB_EINVAL},             /* U+D800 */
        {"\xed\xbf\xbf", 3, WB_EINVAL},             /* U+DFFF */
        {"\xed\xa0\xbd\xed\xb8\x80", 6, WB_EINVAL}, /* CESU-8 pair */
        {"\xf4\x90\x80\x80", 4, WB_EINVAL},         /* U+110000 */
        {"\xf7\xbf\xbf\xbf", 4, WB_EINVAL},         /* U+1FFFFF */
        {"\xf8\x88\x80\x80\x80", 5, WB_EINVAL},     /* 5-byte form */
        {"\xfc\x84\x80\x80\x80\x80", 6, WB_EINVAL}, /* 6-byte form */
        {"\xc3", 1, WB_EINVAL},                     /* truncated */
        {"\xe2\x82", 2, WB_EINVAL},
        {"\xf0\x9f\x98", 3, WB_EINVAL},
        {"ab\xe2\x82", 4, WB_EINVAL},
        {"\xe2\x82x", 3, WB_EINVAL}, /* broken */
        {"\xf0\x9f\x98\x28", 4, WB_EINVAL},
        {"\x80", 1, WB_EINVAL}, /* stray continuation */
        {"a\xbf"
         "b",
         3, WB_EINVAL},
        {"\xfe", 1, WB_EINVAL},
        {"\xff", 1, WB_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (wb__check_text(cases[i].s, cases[i].n) != cases[i].want)
            fail_msg("case %zu: want %d", i, cases[i].want);
    assert_int_equal(wb__check_text(NULL, 0), 0);
    assert_int_equal(wb__check_text(NULL, 1), WB_EINVAL);
    /* Longer than any name: 1 MiB of ASCII and of 3-byte characters. */
    size_t big = 1u << 20;
    char *v = malloc(big + 8);
    assert_non_null(v);
    memset(v, 'x', big);
    assert_int_equal(wb__check_text(v, big), 0);
    for (size_t i = 0; i + 3 <= big; i += 3)
        memcpy(v + i, "\xe2\x82\xac", 3);
    assert_int_equal(wb__check_text(v, big / 3 * 3), 0);
    /* Each bad sequence at every offset of an ASCII run, for every
     * alignment against the eight-byte steps. */
    static const char *const bad[] = {
        "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
        "\xe2\x82", "\0",           "\x80"};
    static const size_t badlen[] = {2, 3, 4, 2, 1, 1};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++)
        for (size_t at = 0; at < 40; at++) {
            memset(v, 'a', 64);
            memcpy(v + at, bad[b], badlen[b]);
            if (wb__check_text(v, 64) != WB_EINVAL)
                fail_msg("bad sequence %zu at %zu accepted", b, at);
            /* Cut at the end of the value. */
            if (b == 3 && wb__check_text(v, at + badlen[b]) != WB_EINVAL)
                fail_msg("cut sequence at the end %zu accepted", at);
        }
    free(v);
}

/* Rules survive encoding and decoding, and bad kinds are refused. */
static void test_wire_rules_roundtrip(void **state) {
    wb__ruleset rs = {0}, back = {0};
    assert_int_equal(
        wb__ruleset_add(&rs, WB__RULE_INCLUDE, "enc.*", NULL, -1, 1), 0);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_REGEX, "layer(\\d+)\\.(.*)",
                                     "fc\\1.\\2", -1, 2),
                     0);
    assert_int_equal(wb__ruleset_add(&rs, WB__RULE_CAST, "*", NULL, WB_F16, 0),
                     0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wb__pack_rules(&pk, &rs);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_next(&up, sb.data, sb.size, &off);
    assert_int_equal(wb__decode_rules(&up.data.via.array, &back), 0);
    assert_int_equal(back.n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(back.v[i].kind, rs.v[i].kind);
        assert_string_equal(back.v[i].a, rs.v[i].a);
        assert_string_equal(back.v[i].b, rs.v[i].b);
        assert_int_equal(back.v[i].dtype, rs.v[i].dtype);
        assert_int_equal(back.v[i].line, rs.v[i].line);
    }
    /* A rule kind out of range is a rule error. */
    up.data.via.array.ptr[0].via.array.ptr[0].via.u64 = 99;
    wb__ruleset bad = {0};
    assert_int_equal(wb__decode_rules(&up.data.via.array, &bad), WB_ERULE);
    wb__ruleset_clear(&bad);
    wb__ruleset_clear(&back);
    wb__ruleset_clear(&rs);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

/* Frame headers encode big-endian lengths. */
static void test_wire_frame_header(void **state) {
    uint8_t h[4];
    wb__frame_header(h, 0x01020304);
    assert_int_equal(h[0], 1);
    assert_int_equal(h[3], 4);
    assert_int_equal(wb__frame_length(h), 0x01020304);
}

/* Error names and messages come from one table. */
static void test_wire_error_table(void **state) {
    assert_string_equal(wb_err_name(WB_ENOMODEL), "ENOMODEL");
    assert_string_equal(wb_strerror(WB_ENOSPC),
                        "no space left in shared memory");
    assert_string_equal(wb_err_name(-9999), "EUNKNOWN");
    assert_int_equal(wb_dtype_from_name("BF16"), WB_BF16);
    assert_int_equal(wb_dtype_size(WB_F8_E4M3), 1);
    assert_int_equal(wb_dtype_from_name("float"), WB_EDTYPE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_publish_roundtrip),
        cmocka_unit_test(test_wire_truncated_rejected),
        cmocka_unit_test(test_wire_trailing_rejected),
        cmocka_unit_test(test_wire_huge_count_rejected),
        cmocka_unit_test(test_wire_deep_nesting_rejected),
        cmocka_unit_test(test_wire_ext_rejected),
        cmocka_unit_test(test_wire_root_must_be_map),
        cmocka_unit_test(test_wire_random_inputs),
        cmocka_unit_test(test_wire_object_limit),
        cmocka_unit_test(test_wire_tinfo_errors),
        cmocka_unit_test(test_wire_names),
        cmocka_unit_test(test_wire_text),
        cmocka_unit_test(test_wire_rules_roundtrip),
        cmocka_unit_test(test_wire_frame_header),
        cmocka_unit_test(test_wire_error_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
