/* test_convert.c -- Unit tests of daemon/convert.c, the dtype conversions.
 *
 * Checks the conversions exhaustively where that is cheap (every F16 and
 * BF16 bit pattern), on hand-picked boundary values, and bit for bit
 * against torch's own outputs recorded by tests/python/gen_convert_vectors.py
 * in convert_vectors.h: explicit vectors, hashes over a million generated
 * inputs per pair, and hashes over every F32 bit pattern for F32 -> F16 and
 * F32 -> BF16 (a sample of blocks by default; all of them with
 * WB_TEST_EXHAUSTIVE=1 in the environment). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../daemon/convert.h"
#include "convert_vectors.h"
#include "wbroker.h"

#define CV_GOLDEN UINT64_C(0x9E3779B97F4A7C15) /* splitmix64 increment. */
#define CV_CHUNK 65536 /* Elements converted per call in the hash loops. */

typedef int (*convert_fn)(int from, int to, const void *src, void *dst,
                          size_t count);

/* Both entry points: the dispatching one and the portable one. */
static const convert_fn convert_fns[] = {wb__convert, wb__convert_portable};

static uint32_t bits32(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

static uint64_t bits64(double d) {
    uint64_t w;
    memcpy(&w, &d, sizeof w);
    return w;
}

/* Converts one value given as bit patterns, through fn. */
static uint64_t conv1(convert_fn fn, int from, int to, uint64_t in) {
    unsigned char s[8], d[8] = {0};
    uint64_t out = 0;
    memcpy(s, &in, sizeof s); /* Little-endian: low bytes first. */
    assert_int_equal(fn(from, to, s, d, 1), 0);
    memcpy(&out, d, wb_dtype_size(to));
    return out;
}

/* Converts one value through both entry points and checks they agree. */
static uint64_t conv(int from, int to, uint64_t in) {
    uint64_t a = conv1(wb__convert, from, to, in);
    uint64_t b = conv1(wb__convert_portable, from, to, in);
    assert_int_equal(a, b);
    return a;
}

/* Reads element i of an array of unsigned bit patterns of size bytes. */
static uint64_t load_bits(const void *p, size_t size, size_t i) {
    uint64_t v = 0;
    memcpy(&v, (const unsigned char *)p + i * size, size);
    return v;
}

static void store_bits(void *p, size_t size, size_t i, uint64_t v) {
    memcpy((unsigned char *)p + i * size, &v, size);
}

/* splitmix64's finaliser, as mix() in the generator. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Input bit pattern i of dtype for the hashed random tests; mirrors
 * cv_input() in gen_convert_vectors.py. */
static uint64_t cv_input(int dtype, uint64_t i) {
    unsigned bits = (unsigned)wb_dtype_size(dtype) * 8, ebits, mbits;
    uint64_t state = WB_CV_SEED + (uint64_t)dtype * UINT64_C(0x100000001B3) +
                     (i + 1) * CV_GOLDEN;
    uint64_t z1 = mix64(state);
    uint64_t z2 = mix64(state ^ UINT64_C(0xA5A5A5A5A5A5A5A5));
    uint64_t mask = bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
    switch (dtype) {
    case WB_F64:
        ebits = 11, mbits = 52;
        break;
    case WB_F32:
        ebits = 8, mbits = 23;
        break;
    case WB_F16:
        ebits = 5, mbits = 10;
        break;
    case WB_BF16:
        ebits = 8, mbits = 7;
        break;
    case WB_BOOL:
        return z1 & 1;
    default:
        return z1 & mask;
    }
    uint64_t mode = z2 & 3;
    if (mode == 0)
        return z1 & mask;
    uint64_t sign = z1 >> 63;
    int64_t emax = ((int64_t)1 << ebits) - 1, bias = emax >> 1, e;
    if (mode == 1) {
        e = (int64_t)((z2 >> 8) % (uint64_t)(emax + 1));
    } else {
        e = (int64_t)((z2 >> 8) % 80) + bias - 50;
        e = e < 0 ? 0 : e > emax ? emax : e;
    }
    uint64_t mant = z1 & ((UINT64_C(1) << mbits) - 1);
    uint64_t p = (z2 >> 20) % (mbits + 1);
    uint64_t low = (UINT64_C(1) << p) - 1;
    uint64_t half = p > 0 ? UINT64_C(1) << (p - 1) : 0;
    uint64_t t;
    switch ((z2 >> 30) & 3) {
    case 0:
        t = 0;
        break;
    case 1:
        t = low;
        break;
    case 2:
        t = half;
        break;
    default:
        t = half | (p > 1 ? 1 : 0);
        break;
    }
    mant = (mant & ~low) | t;
    return (sign << (bits - 1)) | ((uint64_t)e << mbits) | mant;
}

/* Order-dependent hash of n output bit patterns of size bytes at the
 * (aligned) out; mirrors block_hash() in the generator.  start is the index
 * of the first one, so that an array can be hashed in chunks. */
static uint64_t cv_hash(const void *out, size_t size, size_t n,
                        uint64_t start) {
    uint64_t h = 0, g = start * CV_GOLDEN;
    const uint8_t *p1 = out;
    const uint16_t *p2 = out;
    const uint32_t *p4 = out;
    const uint64_t *p8 = out;
    for (size_t i = 0; i < n; i++, g += CV_GOLDEN) {
        uint64_t v = size == 1   ? p1[i]
                     : size == 2 ? p2[i]
                     : size == 4 ? p4[i]
                                 : p8[i];
        h += mix64(v + g);
    }
    return h;
}

/* The identity generator: input i is the bit pattern i. */
static uint64_t every_input(int dtype, uint64_t i) {
    (void)dtype;
    return i;
}

/* Converts count generated inputs (input(i) for i in 0..count-1) from ->
 * to with fn in chunks, and returns the hash of the outputs. */
static uint64_t hash_conversion(convert_fn fn, int from, int to,
                                uint64_t (*input)(int dtype, uint64_t i),
                                uint64_t first, uint64_t count) {
    size_t fs = wb_dtype_size(from), ts = wb_dtype_size(to);
    unsigned char *src = malloc(CV_CHUNK * fs), *dst = malloc(CV_CHUNK * ts);
    uint64_t h = 0;
    assert_non_null(src);
    assert_non_null(dst);
    for (uint64_t off = 0; off < count; off += CV_CHUNK) {
        size_t n = count - off < CV_CHUNK ? (size_t)(count - off) : CV_CHUNK;
        if (input == every_input && fs == 4) /* The F32 blocks: fast. */
            for (size_t i = 0; i < n; i++)
                ((uint32_t *)(void *)src)[i] = (uint32_t)(first + off + i);
        else
            for (size_t i = 0; i < n; i++)
                store_bits(src, fs, i, input(from, first + off + i));
        assert_int_equal(fn(from, to, src, dst, n), 0);
        h += cv_hash(dst, ts, n, off);
    }
    free(src);
    free(dst);
    return h;
}

/* Every pair the module promises is supported, and narrowing is not. */
static void test_convert_supported_pairs(void **state) {
    static const int floats[] = {WB_F64, WB_F32, WB_F16, WB_BF16};
    static const int widen[][2] = {
        {WB_I8, WB_I16},   {WB_I8, WB_I32},  {WB_I8, WB_I64},  {WB_I16, WB_I32},
        {WB_I16, WB_I64},  {WB_I32, WB_I64}, {WB_U8, WB_I16},  {WB_U8, WB_I32},
        {WB_U8, WB_I64},   {WB_U8, WB_U16},  {WB_U8, WB_U32},  {WB_U8, WB_U64},
        {WB_U16, WB_U32},  {WB_U16, WB_U64}, {WB_U16, WB_I32}, {WB_U16, WB_I64},
        {WB_U32, WB_U64},  {WB_U32, WB_I64}, {WB_BOOL, WB_U8}, {WB_BOOL, WB_I8},
        {WB_BOOL, WB_I64},
    };
    static const int refused[][2] = {
        {WB_I64, WB_I32}, {WB_I8, WB_U8},       {WB_U8, WB_I8},
        {WB_I16, WB_U16}, {WB_U16, WB_I16},     {WB_U32, WB_I32},
        {WB_I8, WB_U64},  {WB_F32, WB_I32},     {WB_I32, WB_F32},
        {WB_U8, WB_BOOL}, {WB_F8_E4M3, WB_F32}, {WB_F32, WB_F8_E5M2},
        {WB_U64, WB_I64}, {WB_I64, WB_U64},
    };
    (void)state;
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            assert_true(wb__convert_supported(floats[i], floats[j]));
    for (size_t i = 0; i < sizeof widen / sizeof widen[0]; i++)
        assert_true(wb__convert_supported(widen[i][0], widen[i][1]));
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        assert_false(wb__convert_supported(refused[i][0], refused[i][1]));
    for (int d = 0; d < WB_DTYPE_COUNT; d++)
        assert_true(wb__convert_supported(d, d));
    assert_false(wb__convert_supported(-1, WB_F32));
    assert_false(wb__convert_supported(WB_F32, WB_DTYPE_COUNT));
    assert_false(wb__convert_supported(WB_DTYPE_COUNT, WB_DTYPE_COUNT));
}

/* An unsupported pair is refused with WB_EDTYPE and writes nothing. */
static void test_convert_refuses_unsupported(void **state) {
    uint32_t src[4] = {1, 2, 3, 4}, dst[4] = {9, 9, 9, 9};
    (void)state;
    assert_int_equal(wb__convert(WB_I64, WB_I32, src, dst, 2), WB_EDTYPE);
    assert_int_equal(wb__convert(WB_F32, WB_I32, src, dst, 4), WB_EDTYPE);
    assert_int_equal(wb__convert(-3, WB_F32, src, dst, 4), WB_EDTYPE);
    assert_int_equal(wb__convert(WB_F32, 99, src, dst, 4), WB_EDTYPE);
    assert_int_equal(wb__convert_portable(WB_U8, WB_I8, src, dst, 4),
                     WB_EDTYPE);
    for (int i = 0; i < 4; i++)
        assert_int_equal(dst[i], 9);
    /* Zero elements: success, nothing touched, NULL buffers allowed. */
    assert_int_equal(wb__convert(WB_F32, WB_BF16, NULL, NULL, 0), 0);
    assert_int_equal(wb__convert(WB_F32, WB_F16, NULL, NULL, 0), 0);
    assert_int_equal(wb__convert(WB_F8_E4M3, WB_F8_E4M3, NULL, NULL, 0), 0);
}

/* A dtype converted to itself is copied byte for byte, NaN payloads too;
 * BOOL alone comes out as 0 or 1. */
static void test_convert_same_dtype_copies(void **state) {
    unsigned char src[64], dst[64];
    (void)state;
    for (int d = 0; d < WB_DTYPE_COUNT; d++) {
        for (size_t i = 0; i < sizeof src; i++)
            src[i] = (unsigned char)(i * 37 + (size_t)d);
        memset(dst, 0, sizeof dst);
        size_t n = sizeof src / wb_dtype_size(d);
        assert_int_equal(wb__convert(d, d, src, dst, n), 0);
        if (d != WB_BOOL) {
            assert_memory_equal(src, dst, n * wb_dtype_size(d));
            continue;
        }
        for (size_t i = 0; i < n; i++)
            assert_int_equal(dst[i], src[i] != 0);
    }
}

/* Every conversion from BOOL, BOOL to BOOL included, reads each of the 256
 * byte values as false (0) or true (any other) and writes 0 or 1, through
 * both entry points, at every alignment and for the vector loops' tails. */
static void test_convert_bool_normalised(void **state) {
    static const int to[] = {WB_BOOL, WB_U8,  WB_I8,  WB_I16, WB_I32,
                             WB_I64,  WB_U16, WB_U32, WB_U64};
    unsigned char src[256 + 8], dst[(256 + 8) * 8];
    (void)state;
    for (size_t t = 0; t < sizeof to / sizeof to[0]; t++) {
        size_t es = wb_dtype_size(to[t]);
        assert_true(wb__convert_supported(WB_BOOL, to[t]));
        for (size_t k = 0; k < 2; k++)
            for (size_t off = 0; off < 8; off++) {
                for (size_t i = 0; i < 256; i++)
                    src[off + i] = (unsigned char)(i * 167 + 13 * off);
                size_t n = 256 - off * 3; /* Tails of every length mod 8. */
                memset(dst, 0xAA, sizeof dst);
                assert_int_equal(
                    convert_fns[k](WB_BOOL, to[t], src + off, dst + off, n), 0);
                for (size_t i = 0; i < n; i++) {
                    uint64_t v = 0;
                    memcpy(&v, dst + off + i * es, es);
                    if (v != (src[off + i] != 0))
                        fail_msg("BOOL byte 0x%02x -> %s gave %llu",
                                 src[off + i], wb_dtype_name(to[t]),
                                 (unsigned long long)v);
                }
                /* Nothing written past the last element. */
                assert_int_equal(dst[off + n * es], 0xAA);
            }
    }
}

/* wb__bool_valid accepts exactly the buffers whose every byte is 0 or 1:
 * one bad byte (any value from 2 to 255) is found at every position of
 * buffers of every length up to a few blocks, at every alignment. */
static void test_convert_bool_valid(void **state) {
    static const unsigned char bad[] = {2,    3,    0x10, 0x7F,
                                        0x80, 0x81, 0xFE, 0xFF};
    enum { MAXN = 200 };
    unsigned char buf[MAXN + 8];
    (void)state;
    assert_int_equal(wb__bool_valid(NULL, 0), 1);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n <= MAXN; n++) {
            for (size_t i = 0; i < n; i++)
                buf[off + i] = (unsigned char)((i * 7 + n) % 3 == 0);
            buf[off + n] = 0xFF; /* Past the end: must not be read. */
            if (off > 0)
                buf[off - 1] = 0xFF;
            if (wb__bool_valid(buf + off, n) != 1)
                fail_msg("valid buffer of %zu bytes at +%zu refused", n, off);
            for (size_t at = 0; at < n; at++) {
                unsigned char keep = buf[off + at];
                buf[off + at] = bad[(at + n) % sizeof bad];
                if (wb__bool_valid(buf + off, n) != 0)
                    fail_msg("byte 0x%02x at %zu of %zu (+%zu) accepted",
                             buf[off + at], at, n, off);
                buf[off + at] = keep;
            }
        }
    /* A large buffer, valid, then with one bad byte near its end. */
    size_t big = (16u << 20) + 5;
    unsigned char *v = calloc(big, 1);
    assert_non_null(v);
    for (size_t i = 0; i < big; i += 3)
        v[i] = 1;
    assert_int_equal(wb__bool_valid(v, big), 1);
    v[big - 2] = 0x40;
    assert_int_equal(wb__bool_valid(v, big), 0);
    free(v);
}

/* The exact F32 value of F16 bits h, computed independently with ldexp. */
static float f16_reference(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float mag =
        e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -mag : mag;
}

/* Every F16 bit pattern widens to F32 exactly (NaNs quietened, payload
 * kept) and narrows back to itself; NaNs come back as sign | 0x7E00. */
static void test_convert_f16_exhaustive(void **state) {
    static uint16_t h[65536], back[65536];
    static uint32_t f[2][65536];
    (void)state;
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    for (int k = 0; k < 2; k++)
        assert_int_equal(convert_fns[k](WB_F16, WB_F32, h, f[k], 65536), 0);
    assert_memory_equal(f[0], f[1], sizeof f[0]);
    for (uint32_t i = 0; i < 65536; i++) {
        int nan = (i & 0x7C00) == 0x7C00 && (i & 0x3FF) != 0;
        if (nan) {
            uint32_t want = ((i & 0x8000u) << 16) | 0x7F800000u | 0x00400000u |
                            ((i & 0x3FFu) << 13);
            assert_int_equal(f[0][i], want);
        } else if ((i & 0x7C00) == 0x7C00) {
            assert_int_equal(f[0][i],
                             (i & 0x8000u) ? 0xFF800000u : 0x7F800000u);
        } else {
            assert_int_equal(f[0][i], bits32(f16_reference((uint16_t)i)));
        }
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(convert_fns[k](WB_F32, WB_F16, f[0], back, 65536), 0);
        for (uint32_t i = 0; i < 65536; i++) {
            int nan = (i & 0x7C00) == 0x7C00 && (i & 0x3FF) != 0;
            assert_int_equal(back[i], nan ? (i & 0x8000u) | 0x7E00u : i);
        }
    }
}

/* Every BF16 bit pattern widens to F32 by a shift (NaNs copied as they
 * are) and narrows back to itself; NaNs come back as 0xFFFF. */
static void test_convert_bf16_exhaustive(void **state) {
    static uint16_t b[65536], back[65536];
    static uint32_t f[2][65536];
    (void)state;
    for (uint32_t i = 0; i < 65536; i++)
        b[i] = (uint16_t)i;
    for (int k = 0; k < 2; k++)
        assert_int_equal(convert_fns[k](WB_BF16, WB_F32, b, f[k], 65536), 0);
    for (uint32_t i = 0; i < 65536; i++) {
        assert_int_equal(f[0][i], i << 16);
        assert_int_equal(f[1][i], i << 16);
    }
    assert_int_equal(wb__convert(WB_F32, WB_BF16, f[0], back, 65536), 0);
    for (uint32_t i = 0; i < 65536; i++) {
        int nan = (i & 0x7F80) == 0x7F80 && (i & 0x7F) != 0;
        assert_int_equal(back[i], nan ? 0xFFFFu : i);
    }
}

/* F32 -> F16 and F32 -> BF16 round to nearest even at the boundaries:
 * halfway cases, the largest finite values, subnormals, zeros, NaNs. */
static void test_convert_f32_boundaries(void **state) {
    static const struct {
        uint32_t in;  /* F32 bits. */
        uint16_t f16; /* Expected F16 bits. */
        uint16_t bf;  /* Expected BF16 bits. */
    } c[] = {
        {0x00000000, 0x0000, 0x0000}, /* +0 */
        {0x80000000, 0x8000, 0x8000}, /* -0 */
        {0x7F800000, 0x7C00, 0x7F80}, /* +inf */
        {0xFF800000, 0xFC00, 0xFF80}, /* -inf */
        {0x3F800000, 0x3C00, 0x3F80}, /* 1.0 */
        {0x3F801000, 0x3C00, 0x3F80}, /* 1 + 2^-11: F16 tie, to even */
        {0x3F803000, 0x3C02, 0x3F80}, /* 1 + 3 * 2^-11: F16 tie, up */
        {0x3F801001, 0x3C01, 0x3F80}, /* just above the F16 tie */
        {0x3F808000, 0x3C04, 0x3F80}, /* 1 + 2^-8: BF16 tie, to even */
        {0x3F818000, 0x3C0C, 0x3F82}, /* 1 + 3 * 2^-8: BF16 tie, up */
        {0x3F808001, 0x3C04, 0x3F81}, /* just above the BF16 tie */
        {0x477FE000, 0x7BFF, 0x4780}, /* 65504, F16 max */
        {0x477FEFFF, 0x7BFF, 0x4780}, /* just below the F16 overflow tie */
        {0x477FF000, 0x7C00, 0x4780}, /* 65520: rounds to F16 inf */
        {0x7F7FFFFF, 0x7C00, 0x7F80}, /* F32 max: inf in both */
        {0x7F7F7FFF, 0x7C00, 0x7F7F}, /* BF16 max stays */
        {0x7F7F8000, 0x7C00, 0x7F80}, /* BF16 tie at the top: to inf */
        {0x33800000, 0x0001, 0x3380}, /* 2^-24: smallest F16 subnormal */
        {0x33000000, 0x0000, 0x3300}, /* 2^-25: F16 tie, to even 0 */
        {0x33000001, 0x0001, 0x3300}, /* just above: up */
        {0x33C00000, 0x0002, 0x33C0}, /* 1.5 * 2^-24: tie, to even 2 */
        {0x387FC000, 0x03FF, 0x3880}, /* largest F16 subnormal */
        {0x38800000, 0x0400, 0x3880}, /* 2^-14: smallest F16 normal */
        {0x00000001, 0x0000, 0x0000}, /* smallest F32 subnormal */
        {0x80000001, 0x8000, 0x8000}, /* its negative */
        {0x00008000, 0x0000, 0x0000}, /* BF16 subnormal tie: to even 0 */
        {0x00018000, 0x0000, 0x0002}, /* BF16 subnormal tie: to even 2 */
        {0x00010000, 0x0000, 0x0001}, /* smallest BF16 subnormal */
        {0x807FFFFF, 0x8000, 0x8080}, /* largest F32 subnormal, rounds up */
        {0x7FC00000, 0x7E00, 0xFFFF}, /* quiet NaN */
        {0xFFC00000, 0xFE00, 0xFFFF}, /* negative quiet NaN */
        {0x7F800001, 0x7E00, 0xFFFF}, /* signalling NaN, payload 1 */
        {0x7FBFFFFF, 0x7E00, 0xFFFF}, /* signalling NaN, full payload */
        {0xFF812345, 0xFE00, 0xFFFF}, /* negative signalling NaN */
        {0x7FFFFFFF, 0x7E00, 0xFFFF}, /* all ones */
        {0xC0490FDB, 0xC248, 0xC049}, /* -pi */
    };
    (void)state;
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        assert_int_equal(conv(WB_F32, WB_F16, c[i].in), c[i].f16);
        assert_int_equal(conv(WB_F32, WB_BF16, c[i].in), c[i].bf);
    }
}

/* F64 narrows to F16 and BF16 through F32 (two roundings), as torch does,
 * and keeps what the hardware keeps of NaN payloads. */
static void test_convert_f64_rounding_and_nans(void **state) {
    double twice = 1 + ldexp(1, -11) + ldexp(1, -40);   /* direct: 0x3C01 */
    double twice_bf = 1 + ldexp(1, -8) + ldexp(1, -40); /* direct: 0x3F81 */
    (void)state;
    assert_int_equal(conv(WB_F64, WB_F16, bits64(twice)), 0x3C00);
    assert_int_equal(conv(WB_F64, WB_BF16, bits64(twice_bf)), 0x3F80);
    assert_int_equal(conv(WB_F64, WB_F16, bits64(65519.99)), 0x7BFF);
    assert_int_equal(conv(WB_F64, WB_F16, bits64(1e300)), 0x7C00);
    assert_int_equal(conv(WB_F64, WB_BF16, bits64(-1e300)), 0xFF80);
    assert_int_equal(conv(WB_F64, WB_F32, bits64(1e-300)), 0);
    assert_int_equal(conv(WB_F64, WB_F32, UINT64_C(0x7FF0000000000001)),
                     0x7FC00000);
    assert_int_equal(conv(WB_F64, WB_F32, UINT64_C(0xFFF8000020000000)),
                     0xFFC00001);
    assert_int_equal(conv(WB_F64, WB_F16, UINT64_C(0xFFF0000000000001)),
                     0xFE00);
    assert_int_equal(conv(WB_F64, WB_BF16, UINT64_C(0x7FF8000000000000)),
                     0xFFFF);
    assert_int_equal(conv(WB_F32, WB_F64, 0x7F800001),
                     UINT64_C(0x7FF8000020000000));
    assert_int_equal(conv(WB_F16, WB_F64, 0xFE01),
                     UINT64_C(0xFFF8040000000000));
    assert_int_equal(conv(WB_BF16, WB_F64, 0x7F81),
                     UINT64_C(0x7FF8200000000000));
    assert_int_equal(conv(WB_F16, WB_F64, 0x0001), bits64(ldexp(1, -24)));
    assert_int_equal(conv(WB_BF16, WB_F64, 0x0001), bits64(ldexp(1, -133)));
    /* Between the half types: NaNs as torch's scalar paths make them. */
    assert_int_equal(conv(WB_F16, WB_BF16, 0xFE01), 0x7FC0);
    assert_int_equal(conv(WB_BF16, WB_F16, 0xFFC1), 0xFE00);
    assert_int_equal(conv(WB_F16, WB_BF16, 0x3C01), 0x3F80);
    assert_int_equal(conv(WB_F16, WB_BF16, 0x0001), 0x3380);
    assert_int_equal(conv(WB_BF16, WB_F16, 0x4780), 0x7C00); /* 65536 */
    assert_int_equal(conv(WB_BF16, WB_F16, 0x3380), 0x0001);
}

/* Integers widen with sign or zero extension; BOOL becomes 0 or 1. */
static void test_convert_integer_widening(void **state) {
    int8_t i8[] = {-128, -1, 0, 1, 127};
    int64_t i64[5];
    int16_t i16[5];
    uint8_t u8[] = {0, 1, 127, 128, 255};
    uint16_t u16[] = {0, 1, 0x7FFF, 0x8000, 0xFFFF};
    uint32_t u32[] = {0, 1, 0x7FFFFFFF, 0x80000000u, 0xFFFFFFFFu};
    int32_t i32[5];
    uint64_t u64[5];
    uint8_t b[] = {0, 1, 2, 0x80, 0xFF};
    (void)state;
    assert_int_equal(wb__convert(WB_I8, WB_I64, i8, i64, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i64[i] == i8[i]);
    assert_int_equal(wb__convert(WB_I8, WB_I16, i8, i16, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i16[i] == i8[i]);
    assert_int_equal(wb__convert(WB_U8, WB_I16, u8, i16, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i16[i] == u8[i]);
    assert_int_equal(wb__convert(WB_U16, WB_I32, u16, i32, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i32[i] == u16[i]);
    assert_int_equal(wb__convert(WB_U32, WB_I64, u32, i64, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i64[i] == (int64_t)u32[i]);
    assert_int_equal(wb__convert(WB_U32, WB_U64, u32, u64, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(u64[i] == u32[i]);
    int32_t neg[] = {INT32_MIN, -2, -1, 0, INT32_MAX};
    assert_int_equal(wb__convert(WB_I32, WB_I64, neg, i64, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i64[i] == neg[i]);
    int16_t neg16[] = {INT16_MIN, -300, -1, 0, INT16_MAX};
    assert_int_equal(wb__convert(WB_I16, WB_I32, neg16, i32, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(i32[i] == neg16[i]);
    uint8_t out8[5];
    assert_int_equal(wb__convert(WB_BOOL, WB_U8, b, out8, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(out8[i], b[i] != 0);
    assert_int_equal(wb__convert(WB_BOOL, WB_U64, b, u64, 5), 0);
    for (int i = 0; i < 5; i++)
        assert_true(u64[i] == (b[i] != 0));
}

/* Unaligned buffers and every length up to 40 (the vector loops' tails)
 * give the same results as one aligned conversion. */
static void test_convert_unaligned_and_tails(void **state) {
    static const int pairs[][2] = {
        {WB_F32, WB_F16},  {WB_F16, WB_F32},  {WB_F32, WB_BF16},
        {WB_BF16, WB_F32}, {WB_F64, WB_F16},  {WB_I8, WB_I64},
        {WB_F64, WB_F32},  {WB_BF16, WB_F16},
    };
    uint64_t aligned[41];
    unsigned char src[8 * 41 + 1], ref[8 * 41], dst[8 * 41 + 1];
    (void)state;
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        int from = pairs[p][0], to = pairs[p][1];
        size_t fs = wb_dtype_size(from), ts = wb_dtype_size(to);
        for (size_t i = 0; i < 40; i++)
            store_bits(aligned, fs, i, cv_input(from, i + 7 * p));
        memcpy(src + 1, aligned, 40 * fs); /* Unaligned copy at src + 1. */
        assert_int_equal(wb__convert_portable(from, to, aligned, ref, 40), 0);
        for (size_t n = 0; n <= 40; n++) {
            for (int k = 0; k < 2; k++) {
                memset(dst, 0xAB, sizeof dst);
                assert_int_equal(convert_fns[k](from, to, src + 1, dst + 1, n),
                                 0);
                assert_memory_equal(dst + 1, ref, n * ts);
                assert_int_equal(dst[0], 0xAB);
                assert_int_equal(dst[1 + n * ts], 0xAB);
            }
        }
    }
}

/* torch's outputs on the explicit vectors, pair by pair. */
static void test_convert_torch_vectors(void **state) {
    (void)state;
    for (size_t p = 0; p < sizeof cv_pairs / sizeof cv_pairs[0]; p++) {
        const cv_pair *c = &cv_pairs[p];
        size_t fs = wb_dtype_size(c->from), ts = wb_dtype_size(c->to);
        for (size_t i = 0; i < c->n; i++) {
            uint64_t in = load_bits(c->in, fs, i);
            uint64_t want = load_bits(c->out, ts, i);
            uint64_t got = conv(c->from, c->to, in);
            if (got != want)
                fail_msg("%s -> %s: input 0x%llx gave 0x%llx, torch 0x%llx",
                         wb_dtype_name(c->from), wb_dtype_name(c->to),
                         (unsigned long long)in, (unsigned long long)got,
                         (unsigned long long)want);
        }
    }
}

/* torch's outputs on a million generated inputs per pair, and on every
 * input bit pattern of the 8- and 16-bit sources, through both paths. */
static void test_convert_torch_hashes(void **state) {
    (void)state;
    for (size_t p = 0; p < sizeof cv_pairs / sizeof cv_pairs[0]; p++) {
        const cv_pair *c = &cv_pairs[p];
        for (int k = 0; k < 2; k++) {
            uint64_t h = hash_conversion(convert_fns[k], c->from, c->to,
                                         cv_input, 0, WB_CV_RANDOM_COUNT);
            if (h != c->random_hash)
                fail_msg("%s -> %s (%s): random inputs differ from torch",
                         wb_dtype_name(c->from), wb_dtype_name(c->to),
                         k ? "portable" : "dispatch");
            if (c->all_hash == 0)
                continue;
            uint64_t n = c->from == WB_BOOL
                             ? 2
                             : UINT64_C(1) << (8 * wb_dtype_size(c->from));
            h = hash_conversion(convert_fns[k], c->from, c->to, every_input, 0,
                                n);
            if (h != c->all_hash)
                fail_msg("%s -> %s (%s): some bit pattern differs from torch",
                         wb_dtype_name(c->from), wb_dtype_name(c->to),
                         k ? "portable" : "dispatch");
        }
    }
}

/* Returns 1 if block k of the F32 patterns is checked in this run. */
static int f32_block_selected(size_t k, int all) {
    /* Zero/subnormals, F16 subnormal and normal edges, 1.0, the F16 and
     * F32 overflow edges, inf/NaN, each with its negative twin. */
    static const size_t edges[] = {0x00, 0x33, 0x38, 0x3F, 0x47, 0x7F};
    if (all)
        return 1;
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        if ((k & 0x7F) == edges[i])
            return 1;
    return 0;
}

/* torch's F32 -> F16 and F32 -> BF16 on blocks of 2^24 F32 bit patterns:
 * a sample by default, all 2^32 patterns with WB_TEST_EXHAUSTIVE=1. */
static void test_convert_torch_f32_blocks(void **state) {
    const char *env = getenv("WB_TEST_EXHAUSTIVE");
    int all = env != NULL && *env != '\0' && strcmp(env, "0") != 0;
    size_t nblocks = sizeof cv_f32_f16_blocks / sizeof cv_f32_f16_blocks[0];
    uint64_t block = UINT64_C(1) << WB_CV_F32_BLOCK_BITS;
    (void)state;
    for (size_t k = 0; k < nblocks; k++) {
        if (!f32_block_selected(k, all))
            continue;
        for (int kk = 0; kk < 2; kk++) {
            uint64_t h = hash_conversion(convert_fns[kk], WB_F32, WB_F16,
                                         every_input, k * block, block);
            if (h != cv_f32_f16_blocks[k])
                fail_msg("F32 -> F16 (%s) differs from torch in block "
                         "0x%02zx",
                         kk ? "portable" : "dispatch", k);
        }
        uint64_t h = hash_conversion(wb__convert, WB_F32, WB_BF16, every_input,
                                     k * block, block);
        if (h != cv_f32_bf16_blocks[k])
            fail_msg("F32 -> BF16 differs from torch in block 0x%02zx", k);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_supported_pairs),
        cmocka_unit_test(test_convert_refuses_unsupported),
        cmocka_unit_test(test_convert_same_dtype_copies),
        cmocka_unit_test(test_convert_bool_normalised),
        cmocka_unit_test(test_convert_bool_valid),
        cmocka_unit_test(test_convert_f16_exhaustive),
        cmocka_unit_test(test_convert_bf16_exhaustive),
        cmocka_unit_test(test_convert_f32_boundaries),
        cmocka_unit_test(test_convert_f64_rounding_and_nans),
        cmocka_unit_test(test_convert_integer_widening),
        cmocka_unit_test(test_convert_unaligned_and_tails),
        cmocka_unit_test(test_convert_torch_vectors),
        cmocka_unit_test(test_convert_torch_hashes),
        cmocka_unit_test(test_convert_torch_f32_blocks),
    };
    if (getenv("WB_TEST_FILTER") != NULL) /* e.g. "*torch*" */
        cmocka_set_test_filter(getenv("WB_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
