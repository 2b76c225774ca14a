/* test_safetensors.c -- Unit tests of client/safetensors.c, the header parser.
 *
 * Builds safetensors images in memory (and files in a temporary directory
 * for the fd reader): valid ones of every shape the format allows, one
 * byte-for-byte as the reference Python writer lays it out, and one per
 * refusal, plus truncated files and random garbage. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../client/safetensors.h"
#include "wbroker.h"

#define ERR_LEN 512 /* Bytes of the error buffers. */

/* An image under construction: prefix, header, data. */
typedef struct image {
    uint8_t *buf; /* The bytes. */
    size_t len;   /* Their number. */
} image;

/* Builds an image whose header is json followed by pad spaces and whose
 * data buffer has data_len bytes (a counting pattern). */
static image build(const char *json, size_t pad, size_t data_len) {
    size_t n = strlen(json) + pad;
    image im = {malloc(8 + n + data_len + 1), 8 + n + data_len};
    assert_non_null(im.buf);
    for (int i = 0; i < 8; i++)
        im.buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(im.buf + 8, json, strlen(json));
    memset(im.buf + 8 + strlen(json), ' ', pad);
    for (size_t i = 0; i < data_len; i++)
        im.buf[8 + n + i] = (uint8_t)i;
    return im;
}

/* Parses json (no padding) with data_len data bytes into *f. */
static int parse(const char *json, size_t data_len, wb__st_file *f, char *err) {
    image im = build(json, 0, data_len);
    int rc = wb__st_parse_header(im.buf, im.len, im.len, f, err, ERR_LEN);
    free(im.buf);
    return rc;
}

/* Asserts that parsing json with data_len data bytes is refused with code
 * and a reason containing why, and leaves the output zeroed. */
static void refuse(const char *json, size_t data_len, int code,
                   const char *why) {
    wb__st_file f, zero;
    char err[ERR_LEN];
    memset(&f, 0x5A, sizeof f);
    memset(&zero, 0, sizeof zero);
    int rc = parse(json, data_len, &f, err);
    if (rc != code)
        fail_msg("%s: got %d (%s), want %d", json, rc, err, code);
    if (strstr(err, why) == NULL)
        fail_msg("%s: reason '%s' lacks '%s'", json, err, why);
    assert_memory_equal(&f, &zero, sizeof f);
    wb__st_file_free(&f);
}

/* Checks the invariants of any successful parse: the tensors tile the
 * data buffer in order and each spans its shape's bytes. */
static void check_invariants(const wb__st_file *f) {
    uint64_t pos = 0;
    assert_int_equal(f->data_start, 8 + f->header_len);
    for (size_t i = 0; i < f->n; i++) {
        const wb__st_tensor *t = &f->t[i];
        uint64_t bytes = wb_dtype_size(t->dtype);
        assert_true(bytes > 0);
        assert_in_range(t->ndim, 0, WB_MAX_DIMS);
        for (int d = 0; d < t->ndim; d++)
            bytes *= (uint64_t)t->shape[d];
        assert_int_equal(t->begin, pos);
        assert_int_equal(t->end - t->begin, bytes);
        assert_true(strlen(t->name) > 0 && strlen(t->name) <= WB_MAX_NAME);
        pos = t->end;
    }
    assert_int_equal(pos, f->data_len);
}

/* A plain file: tensors come back in data order, whatever the JSON order. */
static void test_safetensors_parses_valid_file(void **state) {
    wb__st_file f;
    char err[ERR_LEN];
    const char *json =
        "{\"b\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[24,36]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[1,1,2],"
        "\"data_offsets\":[36,40]}}";
    (void)state;
    assert_int_equal(parse(json, 40, &f, err), 0);
    assert_string_equal(err, "");
    check_invariants(&f);
    assert_int_equal(f.n, 3);
    assert_int_equal(f.n_meta, 0);
    assert_int_equal(f.header_len, strlen(json));
    assert_int_equal(f.data_start, 8 + strlen(json));
    assert_int_equal(f.data_len, 40);
    assert_string_equal(f.t[0].name, "a");
    assert_int_equal(f.t[0].dtype, WB_F32);
    assert_int_equal(f.t[0].ndim, 2);
    assert_int_equal(f.t[0].shape[0], 2);
    assert_int_equal(f.t[0].shape[1], 3);
    assert_int_equal(f.t[0].begin, 0);
    assert_int_equal(f.t[0].end, 24);
    assert_string_equal(f.t[1].name, "b");
    assert_int_equal(f.t[1].dtype, WB_I32);
    assert_string_equal(f.t[2].name, "c");
    assert_int_equal(f.t[2].dtype, WB_BF16);
    assert_int_equal(f.t[2].ndim, 3);
    wb__st_file_free(&f);
    wb__st_file_free(&f); /* Zeroed: freeing again is harmless. */
    wb__st_file_free(NULL);
}

/* Scalars (shape []), zero-sized tensors, an empty header and a tensor
 * entry with extra fields are all valid. */
static void test_safetensors_zero_dim_and_empty_tensors(void **state) {
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    assert_int_equal(parse("{\"s\":{\"dtype\":\"F64\",\"shape\":[],"
                           "\"data_offsets\":[0,8]},"
                           "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],"
                           "\"data_offsets\":[8,8]},"
                           "\"z\":{\"dtype\":\"I8\",\"shape\":[5,0],"
                           "\"data_offsets\":[8,8]},"
                           "\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],"
                           "\"data_offsets\":[8,10],\"extra\":[1,2]},"
                           "\"a\":{\"dtype\":\"U8\",\"shape\":[0],"
                           "\"data_offsets\":[0,0]}}",
                           10, &f, err),
                     0);
    check_invariants(&f);
    assert_int_equal(f.n, 5);
    assert_string_equal(f.t[0].name, "a"); /* [0,0) sorts before [0,8). */
    assert_string_equal(f.t[1].name, "s");
    assert_int_equal(f.t[1].ndim, 0);
    assert_string_equal(f.t[2].name, "e"); /* Ties on [8,8): by name. */
    assert_string_equal(f.t[3].name, "z");
    assert_string_equal(f.t[4].name, "b");
    wb__st_file_free(&f);

    assert_int_equal(parse("{}", 0, &f, err), 0);
    assert_int_equal(f.n, 0);
    assert_int_equal(f.data_len, 0);
    wb__st_file_free(&f);

    /* Every dtype the public header knows, 16 dimensions of size 1. */
    for (int d = 0; d < WB_DTYPE_COUNT; d++) {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,"
                 "1,1,1,1,2],\"data_offsets\":[0,%zu]}}",
                 wb_dtype_name(d), 2 * wb_dtype_size(d));
        assert_int_equal(parse(json, 2 * wb_dtype_size(d), &f, err), 0);
        assert_int_equal(f.t[0].dtype, d);
        assert_int_equal(f.t[0].ndim, WB_MAX_DIMS);
        wb__st_file_free(&f);
    }
}

/* Metadata strings come back in file order; a metadata-only file works. */
static void test_safetensors_metadata(void **state) {
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    assert_int_equal(
        parse("{\"w\":{\"dtype\":\"F16\",\"shape\":[2],"
              "\"data_offsets\":[0,4]},"
              "\"__metadata__\":{\"format\":\"pt\",\"step\":\"100\","
              "\"note\":\"caf\\u00e9 \\\"q\\\"\",\"empty\":\"\"}}",
              4, &f, err),
        0);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.n_meta, 4);
    assert_string_equal(f.meta_keys[0], "format");
    assert_string_equal(f.meta_vals[0], "pt");
    assert_string_equal(f.meta_keys[1], "step");
    assert_string_equal(f.meta_vals[1], "100");
    assert_string_equal(f.meta_keys[2], "note");
    assert_string_equal(f.meta_vals[2], "caf\xc3\xa9 \"q\"");
    assert_string_equal(f.meta_keys[3], "empty");
    assert_string_equal(f.meta_vals[3], "");
    wb__st_file_free(&f);

    assert_int_equal(parse("{\"__metadata__\":{}}", 0, &f, err), 0);
    assert_int_equal(f.n, 0);
    assert_int_equal(f.n_meta, 0);
    wb__st_file_free(&f);
}

/* A header padded with trailing spaces (to an 8-byte boundary and far
 * beyond) parses; the data starts after the padding. */
static void test_safetensors_padded_header(void **state) {
    const char *json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],"
                       "\"data_offsets\":[0,4]}}";
    (void)state;
    for (size_t pad = 0; pad < 80; pad += 7) {
        wb__st_file f;
        char err[ERR_LEN];
        image im = build(json, pad, 4);
        assert_int_equal(
            wb__st_parse_header(im.buf, im.len, im.len, &f, err, ERR_LEN), 0);
        assert_int_equal(f.header_len, strlen(json) + pad);
        assert_int_equal(f.data_start, 8 + strlen(json) + pad);
        assert_int_equal(f.data_len, 4);
        wb__st_file_free(&f);
        free(im.buf);
    }
}

/* The exact bytes that the reference writer (Python safetensors 0.4,
 * save_file({"a": zeros(2, 2), "b": zeros(3, dtype=int32)},
 * metadata={"format": "pt"})) produces: metadata first, tensors sorted by
 * dtype alignment then name, header padded with spaces to 8 bytes. */
static void test_safetensors_reference_writer_bytes(void **state) {
    static const char header[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"b\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[16,28]}}";
    size_t n = sizeof header - 1, padded = (n + 7) & ~(size_t)7;
    uint8_t file[8 + 256 + 28];
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    assert_true(padded <= 256);
    memset(file, 0, sizeof file);
    file[0] = (uint8_t)padded; /* Little-endian u64, < 256. */
    memcpy(file + 8, header, n);
    memset(file + 8 + n, ' ', padded - n);
    size_t total = 8 + padded + 28;
    assert_int_equal(wb__st_parse_header(file, total, total, &f, err, ERR_LEN),
                     0);
    assert_int_equal(f.header_len, padded);
    assert_int_equal(f.data_start, 8 + padded);
    assert_int_equal(f.n, 2);
    assert_string_equal(f.t[0].name, "a");
    assert_string_equal(f.t[1].name, "b");
    assert_int_equal(f.t[1].begin, 16);
    assert_int_equal(f.n_meta, 1);
    assert_string_equal(f.meta_vals[0], "pt");
    wb__st_file_free(&f);
}

/* Files shorter than the 8-byte length are refused; so is a buffer that
 * holds less than the header it announces (a caller error). */
static void test_safetensors_refuses_short_file(void **state) {
    uint8_t buf[16] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    for (size_t len = 0; len < 8; len++) {
        assert_int_equal(wb__st_parse_header(buf, len, len, &f, err, ERR_LEN),
                         WB_EFORMAT);
        assert_non_null(strstr(err, "shorter than"));
    }
    assert_int_equal(wb__st_parse_header(buf, 9, 10, &f, err, ERR_LEN),
                     WB_EINVAL);
    assert_int_equal(wb__st_parse_header(buf, 10, 10, &f, err, ERR_LEN), 0);
    wb__st_file_free(&f);
    assert_int_equal(wb__st_parse_header(buf, 10, 10, NULL, err, ERR_LEN),
                     WB_EINVAL);
    /* A NULL err is allowed. */
    assert_int_equal(wb__st_parse_header(buf, 4, 4, &f, NULL, 0), WB_EFORMAT);
}

/* Header lengths over the limit, past the end of the file, or zero. */
static void test_safetensors_refuses_bad_header_length(void **state) {
    uint8_t buf[64] = {0};
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    uint64_t lens[] = {WB_ST_MAX_HEADER + 1, UINT64_MAX, UINT64_MAX - 7,
                       UINT64_C(1) << 40};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int b = 0; b < 8; b++)
            buf[b] = (uint8_t)(lens[i] >> (8 * b));
        assert_int_equal(
            wb__st_parse_header(buf, sizeof buf, UINT64_MAX, &f, err, ERR_LEN),
            WB_EFORMAT);
        assert_non_null(strstr(err, "exceeds the limit"));
    }
    /* Exactly the limit is not refused for its size but for the file's. */
    for (int b = 0; b < 8; b++)
        buf[b] = (uint8_t)(WB_ST_MAX_HEADER >> (8 * b));
    assert_int_equal(
        wb__st_parse_header(buf, sizeof buf, sizeof buf, &f, err, ERR_LEN),
        WB_EFORMAT);
    assert_non_null(strstr(err, "past the end"));
    memset(buf, 0, 8);
    buf[0] = 57; /* One more than the 56 bytes after the prefix. */
    assert_int_equal(
        wb__st_parse_header(buf, sizeof buf, sizeof buf, &f, err, ERR_LEN),
        WB_EFORMAT);
    assert_non_null(strstr(err, "past the end"));
    buf[0] = 0;
    assert_int_equal(
        wb__st_parse_header(buf, sizeof buf, sizeof buf, &f, err, ERR_LEN),
        WB_EFORMAT);
}

/* Invalid JSON, a non-object root, leading whitespace, duplicate keys and
 * invalid UTF-8 are refused. */
static void test_safetensors_refuses_bad_json(void **state) {
    (void)state;
    refuse("{", 0, WB_EFORMAT, "not valid JSON");
    refuse("{\"a\":}", 0, WB_EFORMAT, "not valid JSON");
    refuse("{} x", 0, WB_EFORMAT, "not valid JSON");
    refuse("{}{}", 0, WB_EFORMAT, "not valid JSON");
    refuse("[]", 0, WB_EFORMAT, "start with '{'");
    refuse("\"str\"", 0, WB_EFORMAT, "start with '{'");
    refuse(" {}", 0, WB_EFORMAT, "start with '{'");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
           2, WB_EFORMAT, "duplicate");
    refuse("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, WB_EFORMAT,
           "duplicate");
    refuse("{\"__metadata__\":{},\"__metadata__\":{}}", 0, WB_EFORMAT,
           "duplicate");
    refuse("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[0,1]}}",
           1, WB_EFORMAT, "not valid JSON");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],"
           "\"data_offsets\":[0,1]}}",
           1, WB_EFORMAT, "not valid JSON");
    /* A NUL byte inside the header. */
    image im = build("{\"a\" :1}", 0, 0);
    im.buf[8 + 4] = '\0';
    wb__st_file f;
    char err[ERR_LEN];
    assert_int_equal(
        wb__st_parse_header(im.buf, im.len, im.len, &f, err, ERR_LEN),
        WB_EFORMAT);
    free(im.buf);
}

/* Unknown, missing or non-string dtypes are refused. */
static void test_safetensors_refuses_bad_dtype(void **state) {
    (void)state;
    refuse("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
           WB_EFORMAT, "unknown dtype 'Q4'");
    refuse("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
           4, WB_EFORMAT, "unknown dtype");
    refuse("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
           WB_EFORMAT, "\"dtype\" missing or not a string");
    refuse("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, WB_EFORMAT,
           "\"dtype\" missing");
    refuse("{\"a\":[1,2]}", 0, WB_EFORMAT, "not an object");
    refuse("{\"a\":null}", 0, WB_EFORMAT, "not an object");
}

/* Shapes that are not arrays of non-negative integers, or have too many
 * dimensions, are refused. */
static void test_safetensors_refuses_bad_shape(void **state) {
    (void)state;
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":3,\"data_offsets\":[0,3]}}", 3,
           WB_EFORMAT, "\"shape\" missing or not an array");
    refuse("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,3]}}", 3, WB_EFORMAT,
           "\"shape\" missing");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "shape[0] is not a non-negative integer");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,2.0],"
           "\"data_offsets\":[0,2]}}",
           2, WB_EFORMAT, "shape[1]");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[\"2\"],"
           "\"data_offsets\":[0,2]}}",
           2, WB_EFORMAT, "shape[0]");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[null],"
           "\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "shape[0]");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
           "1,1,1],\"data_offsets\":[0,1]}}",
           1, WB_EFORMAT, "17 dimensions exceed 16");
}

/* Empty names, names over WB_MAX_NAME bytes and names with NUL. */
static void test_safetensors_refuses_bad_name(void **state) {
    char json[2 * WB_MAX_NAME];
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    refuse("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
           WB_EFORMAT, "empty tensor name");
    refuse("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[0,1]}}",
           1, WB_EFORMAT, "JSON"); /* jansson refuses \u0000 itself. */
    for (int len = WB_MAX_NAME; len <= WB_MAX_NAME + 1; len++) {
        int k = snprintf(json, sizeof json, "{\"");
        memset(json + k, 'n', (size_t)len);
        snprintf(json + k + len, sizeof json - (size_t)(k + len),
                 "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        if (len == WB_MAX_NAME) {
            assert_int_equal(parse(json, 1, &f, err), 0);
            assert_int_equal(strlen(f.t[0].name), WB_MAX_NAME);
            wb__st_file_free(&f);
        } else {
            refuse(json, 1, WB_EFORMAT, "exceeds 1024");
        }
    }
}

/* data_offsets that are not two non-negative integers with begin <= end. */
static void test_safetensors_refuses_bad_offsets(void **state) {
    (void)state;
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, WB_EFORMAT,
           "not an array of two integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
           WB_EFORMAT, "not an array of two integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[0,1,2]}}",
           2, WB_EFORMAT, "not an array of two integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0,1\"}}",
           1, WB_EFORMAT, "not an array of two integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[-1,0]}}",
           1, WB_EFORMAT, "not two non-negative integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[0,1.0]}}",
           1, WB_EFORMAT, "not two non-negative integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
           "\"data_offsets\":[null,1]}}",
           1, WB_EFORMAT, "not two non-negative integers");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],"
           "\"data_offsets\":[1,0]}}",
           1, WB_EFORMAT, "end before they begin");
}

/* The byte range must equal product(shape) * dtype size, computed without
 * overflow. */
static void test_safetensors_refuses_size_mismatch(void **state) {
    (void)state;
    refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],"
           "\"data_offsets\":[0,23]}}",
           23, WB_EFORMAT, "span 23 bytes but F32 shape needs 24");
    refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],"
           "\"data_offsets\":[0,25]}}",
           25, WB_EFORMAT, "needs 24");
    refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 0,
           WB_EFORMAT, "needs 4");
    /* 2^32 * 2^32 elements: the element count overflows. */
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
           "\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "overflows");
    /* 2^62 elements of 8 bytes: the byte count overflows. */
    refuse("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
           "\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "overflows");
    /* Overflow then a zero dimension: still refused, never wraps to 0. */
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,"
           "4294967296,0],\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "overflows");
    /* 2^61 F64 = 2^64 bytes: wraps exactly to 0 without the check. */
    refuse("{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],"
           "\"data_offsets\":[0,0]}}",
           0, WB_EFORMAT, "overflows");
}

/* Sorted ranges must tile the data buffer, which must end the file. */
static void test_safetensors_refuses_bad_layout(void **state) {
    (void)state;
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
           WB_EFORMAT, "hole in the data buffer: [0, 4)");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[5,9]}}",
           9, WB_EFORMAT, "hole in the data buffer: [4, 5)");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[3,7]}}",
           7, WB_EFORMAT, "overlaps 'a'");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
           4, WB_EFORMAT, "overlaps");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
           4, WB_EFORMAT, "overlaps");
    /* Trailing bytes after the last tensor, and a file cut short. */
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 5,
           WB_EFORMAT, "tensors cover 4 bytes but the data buffer");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 3,
           WB_EFORMAT, "tensors cover 4 bytes");
    refuse("{}", 1, WB_EFORMAT, "tensors cover 0 bytes");
    refuse("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[3,3]}}", 3,
           WB_EFORMAT, "hole");
}

/* Metadata must be an object of strings. */
static void test_safetensors_refuses_bad_metadata(void **state) {
    (void)state;
    refuse("{\"__metadata__\":{\"k\":1}}", 0, WB_EFORMAT,
           "metadata value of 'k' is not a string");
    refuse("{\"__metadata__\":{\"a\":\"x\",\"k\":null}}", 0, WB_EFORMAT,
           "metadata value of 'k'");
    refuse("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, WB_EFORMAT,
           "not a string");
    refuse("{\"__metadata__\":[\"k\",\"v\"]}", 0, WB_EFORMAT,
           "\"__metadata__\" is not an object");
    refuse("{\"__metadata__\":\"x\"}", 0, WB_EFORMAT, "not an object");
}

/* The WB_TIED_KEY entry becomes ties (and leaves the metadata); a bad one
 * is refused. */
static void test_safetensors_ties(void **state) {
    (void)state;
    wb__st_file f;
    char err[ERR_LEN];
    const char *ok = "{\"__metadata__\":{\"a\":\"b\",\"wbroker.tied\":"
                     "\"{\\\"head\\\":\\\"emb\\\"}\"},"
                     "\"emb\":{\"dtype\":\"U8\",\"shape\":[4],"
                     "\"data_offsets\":[0,4]}}";
    assert_int_equal(parse(ok, 4, &f, err), 0);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.n_meta, 1);
    assert_string_equal(f.meta_keys[0], "a");
    assert_int_equal(f.n_ties, 1);
    assert_string_equal(f.tie_alias[0], "head");
    assert_int_equal(f.tie_of[0], 0);
    wb__st_file_free(&f);
    static const char *const bad[] = {
        "\"[1]\"",                         /* Not an object. */
        "\"{\\\"head\\\":\\\"nope\\\"}\"", /* Unknown tensor. */
        "\"{\\\"emb\\\":\\\"emb\\\"}\"",   /* Alias is a tensor. */
        "\"{\\\"head\\\":3}\"",            /* Not a name. */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[512];
        snprintf(json, sizeof(json),
                 "{\"__metadata__\":{\"wbroker.tied\":%s},\"emb\":{"
                 "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                 bad[i]);
        refuse(json, 4, WB_EFORMAT, "wbroker.tied");
    }
}

/* Directory for the file tests, made by the group setup. */
static char tmpdir[] = "/tmp/wb-test-st-XXXXXX";

static int group_setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
    (void)state;
    return rmdir(tmpdir);
}

/* Writes len bytes to a new file in tmpdir and returns it opened for
 * reading; the name is unlinked at once. */
static int temp_file(const void *bytes, size_t len) {
    char path[sizeof tmpdir + 16];
    snprintf(path, sizeof path, "%s/f.safetensors", tmpdir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    assert_int_equal(unlink(path), 0);
    return fd;
}

/* The fd reader parses a real file, leaves the offset alone, and refuses
 * empty, truncated and non-regular files. */
static void test_safetensors_reads_file(void **state) {
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"w\":{\"dtype\":\"F32\",\"shape\":[4,4],"
                       "\"data_offsets\":[0,64]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[4],"
                       "\"data_offsets\":[64,80]}}";
    wb__st_file f;
    char err[ERR_LEN];
    (void)state;
    image im = build(json, (8 - strlen(json) % 8) % 8, 80);
    int fd = temp_file(im.buf, im.len);
    assert_int_equal(lseek(fd, 3, SEEK_SET), 3);
    assert_int_equal(wb__st_read_file_header(fd, &f, err, ERR_LEN), 0);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 3);
    assert_int_equal(f.n, 2);
    assert_string_equal(f.t[0].name, "w");
    assert_int_equal(f.data_start % 8, 0);
    assert_int_equal(f.data_start + f.data_len, im.len);
    assert_int_equal(f.n_meta, 1);
    uint64_t data_start = f.data_start;
    wb__st_file_free(&f);

    /* Every truncation of the file is refused, never read past. */
    for (size_t cut = 0; cut < im.len; cut++) {
        assert_int_equal(pwrite(fd, im.buf, im.len, 0), (ssize_t)im.len);
        assert_int_equal(ftruncate(fd, (off_t)cut), 0);
        assert_int_equal(wb__st_read_file_header(fd, &f, err, ERR_LEN),
                         WB_EFORMAT);
        if (cut < 8)
            assert_non_null(strstr(err, "shorter than"));
        else if (cut < data_start)
            assert_non_null(strstr(err, "past the end"));
        else
            assert_non_null(strstr(err, "tensors cover 80 bytes"));
    }
    /* One byte too many is refused too. */
    assert_int_equal(pwrite(fd, im.buf, im.len, 0), (ssize_t)im.len);
    assert_int_equal(ftruncate(fd, (off_t)im.len + 1), 0);
    assert_int_equal(wb__st_read_file_header(fd, &f, err, ERR_LEN), WB_EFORMAT);
    close(fd);
    free(im.buf);

    int dir = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dir >= 0);
    assert_int_equal(wb__st_read_file_header(dir, &f, err, ERR_LEN), WB_EIO);
    assert_non_null(strstr(err, "not a regular file"));
    close(dir);
    assert_int_equal(wb__st_read_file_header(-1, &f, err, ERR_LEN), WB_EIO);
}

/* Small deterministic generator for the garbage test. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Random bytes, random headers and mutations of a valid file never crash
 * the parser: each is either refused with WB_EFORMAT or parses to a
 * layout that satisfies every invariant. */
static void test_safetensors_random_garbage(void **state) {
    const char *json = "{\"__metadata__\":{\"k\":\"v\"},"
                       "\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,12]},"
                       "\"b\":{\"dtype\":\"I64\",\"shape\":[],"
                       "\"data_offsets\":[12,20]},"
                       "\"c\":{\"dtype\":\"U8\",\"shape\":[0],"
                       "\"data_offsets\":[20,20]}}";
    static const char alphabet[] = "{}[],:\"0123456789-.e aF32_\\u";
    uint64_t seed = 42;
    size_t ok = 0;
    (void)state;
    image valid = build(json, 3, 20);
    uint8_t *buf = malloc(valid.len + 64);
    assert_non_null(buf);
    for (int iter = 0; iter < 20000; iter++) {
        size_t len;
        int kind = iter % 3;
        if (kind == 0) { /* Pure garbage, sometimes with a sane length. */
            len = rng_next(&seed) % 64;
            for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t)rng_next(&seed);
            if (len >= 8 && (iter & 4))
                memset(buf + 1, 0, 7), buf[0] = (uint8_t)(len - 8);
        } else if (kind == 1) { /* JSON-ish characters. */
            len = 8 + rng_next(&seed) % 48;
            memset(buf, 0, 8);
            buf[0] = (uint8_t)(len - 8);
            buf[8] = '{';
            for (size_t i = 9; i < len; i++)
                buf[i] =
                    (uint8_t)alphabet[rng_next(&seed) % (sizeof alphabet - 1)];
        } else { /* A valid file with a few bytes changed. */
            len = valid.len;
            memcpy(buf, valid.buf, len);
            int flips = 1 + (int)(rng_next(&seed) % 3);
            for (int k = 0; k < flips; k++) {
                size_t at = rng_next(&seed) % len;
                buf[at] =
                    (iter & 8)
                        ? (uint8_t)rng_next(&seed)
                        : (uint8_t)
                              alphabet[rng_next(&seed) % (sizeof alphabet - 1)];
            }
        }
        wb__st_file f;
        char err[ERR_LEN];
        uint8_t *copy = malloc(len ? len : 1); /* Exact size for ASan. */
        assert_non_null(copy);
        memcpy(copy, buf, len);
        int rc = wb__st_parse_header(copy, len, len, &f, err, ERR_LEN);
        free(copy);
        if (rc == 0) {
            check_invariants(&f);
            ok++;
        } else {
            assert_int_equal(rc, WB_EFORMAT);
            assert_true(strlen(err) > 0);
        }
        wb__st_file_free(&f);
    }
    assert_true(ok > 0); /* Some mutations (inside padding...) stay valid. */
    free(buf);
    free(valid.buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_parses_valid_file),
        cmocka_unit_test(test_safetensors_zero_dim_and_empty_tensors),
        cmocka_unit_test(test_safetensors_metadata),
        cmocka_unit_test(test_safetensors_padded_header),
        cmocka_unit_test(test_safetensors_reference_writer_bytes),
        cmocka_unit_test(test_safetensors_refuses_short_file),
        cmocka_unit_test(test_safetensors_refuses_bad_header_length),
        cmocka_unit_test(test_safetensors_refuses_bad_json),
        cmocka_unit_test(test_safetensors_refuses_bad_dtype),
        cmocka_unit_test(test_safetensors_refuses_bad_shape),
        cmocka_unit_test(test_safetensors_refuses_bad_name),
        cmocka_unit_test(test_safetensors_refuses_bad_offsets),
        cmocka_unit_test(test_safetensors_refuses_size_mismatch),
        cmocka_unit_test(test_safetensors_refuses_bad_layout),
        cmocka_unit_test(test_safetensors_refuses_bad_metadata),
        cmocka_unit_test(test_safetensors_ties),
        cmocka_unit_test(test_safetensors_reads_file),
        cmocka_unit_test(test_safetensors_random_garbage),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
