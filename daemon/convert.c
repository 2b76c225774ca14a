/* convert.c -- Element-wise dtype conversion, bit-identical to PyTorch.
 *
 * Every pair has its own loop over unaligned bytes (memcpy loads and
 * stores, which compile to plain moves) around a branch-free element
 * function, so that gcc vectorises the hot pairs (F32 <-> F16, F32 <-> BF16)
 * at -O2 already.  The half-precision routines are those of the FP16
 * library that PyTorch's c10::Half uses; the BF16 rounding is the one of
 * torch's AVX2 kernel.  See convert.h for the NaN rules. */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "convert.h"
#include "wbroker.h"

/* Every loop gets the full vectoriser (-O2 only runs its cheapest mode)
 * and an AVX2 clone, chosen at load time, next to the SSE2 default. */
#if defined(__GNUC__) && !defined(__clang__)
#define WB__HOT                                                                \
    __attribute__((optimize("O3"), target_clones("avx2", "default")))
#else
#define WB__HOT
#endif

typedef void (*wb__convert_fn)(const unsigned char *src, unsigned char *dst,
                               size_t count);

static inline float f32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

/* Widens F16 bits to F32 exactly.  A signalling NaN comes out quiet with
 * its payload (the multiplication quietens it), as in c10::Half. */
static inline float f16_to_f32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized =
        f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float magic_bias = 0.5f;
    const float denormalized =
        f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    /* A mask, not a branch: gcc does not if-convert float arithmetic. */
    const uint32_t sub = -(uint32_t)((h & 0x7FFF) < 0x0400);
    return f32_from_bits(sign | (f32_to_bits(denormalized) & sub) |
                         (f32_to_bits(normalized) & ~sub));
}

/* Rounds F32 to F16 to nearest even.  Overflow gives infinity and a NaN
 * gives sign | 0x7E00, as in c10::Half.  The comparisons are written on
 * signed values below 2^31 so that SSE2 can vectorise them. */
static inline uint16_t f32_to_f16(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    const uint32_t w = f32_to_bits(f);
    const uint32_t sign = w & UINT32_C(0x80000000);
    const int32_t mag = (int32_t)(w & UINT32_C(0x7FFFFFFF));
    float base = (f32_from_bits((uint32_t)mag) * scale_to_inf) * scale_to_zero;
    const int32_t e0 = mag & INT32_C(0x7F800000);
    const int32_t e = e0 < INT32_C(0x38800000) ? INT32_C(0x38800000) : e0;
    base = f32_from_bits((uint32_t)e + UINT32_C(0x07800000)) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x7C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x0FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    const uint32_t nan = -(uint32_t)(mag > INT32_C(0x7F800000));
    return (uint16_t)((sign >> 16) | (UINT32_C(0x7E00) & nan) |
                      (nonsign & ~nan));
}

/* Rounds F32 bits to BF16 to nearest even, with the rounding bias of
 * torch's vectorised kernel; every NaN gives nan_bits. */
static inline uint16_t f32_to_bf16(uint32_t w, uint16_t nan_bits) {
    const uint32_t rounded = (w + UINT32_C(0x7FFF) + ((w >> 16) & 1)) >> 16;
    const int nan = (int32_t)(w & UINT32_C(0x7FFFFFFF)) > INT32_C(0x7F800000);
    return nan ? nan_bits : (uint16_t)rounded;
}

#define WB__BOOL_BLOCK 64 /* Bytes wb__bool_valid() checks between exits. */

#define WB__BF16_NAN_VEC 0xFFFF    /* torch's AVX2 kernel: F32/F64 -> BF16. */
#define WB__BF16_NAN_SCALAR 0x7FC0 /* c10::BFloat16: F16 -> BF16. */

/* Defines a loop converting count elements from type TIN to TOUT, with the
 * expression EXPR computing the output `o` from the input `v`. */
#define WB__LOOP(fname, TIN, TOUT, EXPR)                                       \
    static WB__HOT void fname(const unsigned char *restrict src,               \
                              unsigned char *restrict dst, size_t count) {     \
        for (size_t i = 0; i < count; i++) {                                   \
            TIN v;                                                             \
            TOUT o;                                                            \
            memcpy(&v, src + i * sizeof(TIN), sizeof(TIN));                    \
            o = (EXPR);                                                        \
            memcpy(dst + i * sizeof(TOUT), &o, sizeof(TOUT));                  \
        }                                                                      \
    }

/* Floating point: the four hot loops first. */
WB__LOOP(cv_f32_bf16, uint32_t, uint16_t, f32_to_bf16(v, WB__BF16_NAN_VEC))
WB__LOOP(cv_f32_f16, float, uint16_t, f32_to_f16(v))
WB__LOOP(cv_f16_f32, uint16_t, float, f16_to_f32(v))
WB__LOOP(cv_bf16_f32, uint16_t, uint32_t, (uint32_t)v << 16)
WB__LOOP(cv_f64_f32, double, float, (float)v)
WB__LOOP(cv_f32_f64, float, double, (double)v)
WB__LOOP(cv_f64_f16, double, uint16_t, f32_to_f16((float)v))
WB__LOOP(cv_f64_bf16, double, uint16_t,
         f32_to_bf16(f32_to_bits((float)v), WB__BF16_NAN_VEC))
WB__LOOP(cv_f16_f64, uint16_t, double, (double)f16_to_f32(v))
WB__LOOP(cv_bf16_f64, uint16_t, double,
         (double)f32_from_bits((uint32_t)v << 16))
WB__LOOP(cv_f16_bf16, uint16_t, uint16_t,
         f32_to_bf16(f32_to_bits(f16_to_f32(v)), WB__BF16_NAN_SCALAR))
WB__LOOP(cv_bf16_f16, uint16_t, uint16_t,
         f32_to_f16(f32_from_bits((uint32_t)v << 16)))

/* Integer widening: C's conversions sign- or zero-extend as torch does. */
WB__LOOP(cv_i8_i16, int8_t, int16_t, v)
WB__LOOP(cv_i8_i32, int8_t, int32_t, v)
WB__LOOP(cv_i8_i64, int8_t, int64_t, v)
WB__LOOP(cv_i16_i32, int16_t, int32_t, v)
WB__LOOP(cv_i16_i64, int16_t, int64_t, v)
WB__LOOP(cv_i32_i64, int32_t, int64_t, v)
WB__LOOP(cv_u8_i16, uint8_t, int16_t, v)
WB__LOOP(cv_u8_i32, uint8_t, int32_t, v)
WB__LOOP(cv_u8_i64, uint8_t, int64_t, v)
WB__LOOP(cv_u8_u16, uint8_t, uint16_t, v)
WB__LOOP(cv_u8_u32, uint8_t, uint32_t, v)
WB__LOOP(cv_u8_u64, uint8_t, uint64_t, v)
WB__LOOP(cv_u16_i32, uint16_t, int32_t, v)
WB__LOOP(cv_u16_i64, uint16_t, int64_t, v)
WB__LOOP(cv_u16_u32, uint16_t, uint32_t, v)
WB__LOOP(cv_u16_u64, uint16_t, uint64_t, v)
WB__LOOP(cv_u32_i64, uint32_t, int64_t, v)
WB__LOOP(cv_u32_u64, uint32_t, uint64_t, v)

/* BOOL: any non-zero byte is true and becomes 1 (torch leaves a byte other
 * than 0 and 1 undefined), also when BOOL is copied to BOOL.  The byte is
 * read as uint8_t, never as _Bool, which the compiler may assume 0 or 1. */
WB__LOOP(cv_bool_bool, uint8_t, uint8_t, v != 0)
WB__LOOP(cv_bool_u8, uint8_t, uint8_t, v != 0)
WB__LOOP(cv_bool_i8, uint8_t, int8_t, v != 0)
WB__LOOP(cv_bool_i16, uint8_t, int16_t, v != 0)
WB__LOOP(cv_bool_i32, uint8_t, int32_t, v != 0)
WB__LOOP(cv_bool_i64, uint8_t, int64_t, v != 0)
WB__LOOP(cv_bool_u16, uint8_t, uint16_t, v != 0)
WB__LOOP(cv_bool_u32, uint8_t, uint32_t, v != 0)
WB__LOOP(cv_bool_u64, uint8_t, uint64_t, v != 0)

/* The loop for each supported pair of distinct dtypes and for BOOL to
 * BOOL, NULL elsewhere (another dtype to itself is a plain copy). */
static const wb__convert_fn convert_table[WB_DTYPE_COUNT][WB_DTYPE_COUNT] = {
    [WB_F32][WB_BF16] = cv_f32_bf16,   [WB_F32][WB_F16] = cv_f32_f16,
    [WB_F16][WB_F32] = cv_f16_f32,     [WB_BF16][WB_F32] = cv_bf16_f32,
    [WB_F64][WB_F32] = cv_f64_f32,     [WB_F32][WB_F64] = cv_f32_f64,
    [WB_F64][WB_F16] = cv_f64_f16,     [WB_F64][WB_BF16] = cv_f64_bf16,
    [WB_F16][WB_F64] = cv_f16_f64,     [WB_BF16][WB_F64] = cv_bf16_f64,
    [WB_F16][WB_BF16] = cv_f16_bf16,   [WB_BF16][WB_F16] = cv_bf16_f16,
    [WB_I8][WB_I16] = cv_i8_i16,       [WB_I8][WB_I32] = cv_i8_i32,
    [WB_I8][WB_I64] = cv_i8_i64,       [WB_I16][WB_I32] = cv_i16_i32,
    [WB_I16][WB_I64] = cv_i16_i64,     [WB_I32][WB_I64] = cv_i32_i64,
    [WB_U8][WB_I16] = cv_u8_i16,       [WB_U8][WB_I32] = cv_u8_i32,
    [WB_U8][WB_I64] = cv_u8_i64,       [WB_U8][WB_U16] = cv_u8_u16,
    [WB_U8][WB_U32] = cv_u8_u32,       [WB_U8][WB_U64] = cv_u8_u64,
    [WB_U16][WB_I32] = cv_u16_i32,     [WB_U16][WB_I64] = cv_u16_i64,
    [WB_U16][WB_U32] = cv_u16_u32,     [WB_U16][WB_U64] = cv_u16_u64,
    [WB_U32][WB_I64] = cv_u32_i64,     [WB_U32][WB_U64] = cv_u32_u64,
    [WB_BOOL][WB_BOOL] = cv_bool_bool, [WB_BOOL][WB_U8] = cv_bool_u8,
    [WB_BOOL][WB_I8] = cv_bool_i8,     [WB_BOOL][WB_I16] = cv_bool_i16,
    [WB_BOOL][WB_I32] = cv_bool_i32,   [WB_BOOL][WB_I64] = cv_bool_i64,
    [WB_BOOL][WB_U16] = cv_bool_u16,   [WB_BOOL][WB_U32] = cv_bool_u32,
    [WB_BOOL][WB_U64] = cv_bool_u64,
};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WB__HAVE_F16C_PATH 1

/* F32 -> F16 with the F16C instruction, 8 elements at a time.  The hardware
 * rounds to nearest even like f32_to_f16() but keeps NaN payloads, so NaN
 * lanes are cut back to sign | 0x7E00 afterwards. */
__attribute__((target("avx,f16c"))) static void
cv_f32_f16_f16c(const unsigned char *restrict src, unsigned char *restrict dst,
                size_t count) {
    const __m128i abs_mask = _mm_set1_epi16(0x7FFF);
    const __m128i inf = _mm_set1_epi16(0x7C00);
    const __m128i payload = _mm_set1_epi16(0x01FF);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 x = _mm256_loadu_ps((const float *)(const void *)(src + 4 * i));
        __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
        __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, abs_mask), inf);
        h = _mm_andnot_si128(_mm_and_si128(nan, payload), h);
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), h);
    }
    cv_f32_f16(src + 4 * i, dst + 2 * i, count - i);
}

/* F16 -> F32 with the F16C instruction, which is exact and quietens a
 * signalling NaN keeping its payload, as f16_to_f32() does. */
__attribute__((target("avx,f16c"))) static void
cv_f16_f32_f16c(const unsigned char *restrict src, unsigned char *restrict dst,
                size_t count) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m128i h =
            _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        _mm256_storeu_ps((float *)(void *)(dst + 4 * i), _mm256_cvtph_ps(h));
    }
    cv_f16_f32(src + 2 * i, dst + 4 * i, count - i);
}

/* Returns 1 if this CPU (and OS) can run the F16C loops. */
static int have_f16c(void) {
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

/* Returns 1 for a known dtype, 0 otherwise. */
static int dtype_valid(int dtype) {
    return dtype >= 0 && dtype < WB_DTYPE_COUNT;
}

int wb__convert_supported(int from, int to) {
    if (!dtype_valid(from) || !dtype_valid(to))
        return 0;
    return from == to || convert_table[from][to] != NULL;
}

int wb__convert_portable(int from, int to, const void *src, void *dst,
                         size_t count) {
    if (!wb__convert_supported(from, to))
        return WB_EDTYPE;
    if (count == 0)
        return 0;
    if (convert_table[from][to] == NULL) {
        assert(from == to);
        memcpy(dst, src, count * wb_dtype_size(from));
        return 0;
    }
    convert_table[from][to](src, dst, count);
    return 0;
}

int wb__convert(int from, int to, const void *src, void *dst, size_t count) {
#ifdef WB__HAVE_F16C_PATH
    if (from == WB_F32 && to == WB_F16 && have_f16c()) {
        cv_f32_f16_f16c(src, dst, count);
        return 0;
    }
    if (from == WB_F16 && to == WB_F32 && have_f16c()) {
        cv_f16_f32_f16c(src, dst, count);
        return 0;
    }
#endif
    return wb__convert_portable(from, to, src, dst, count);
}

/* Eight bytes at a time: a byte is 0 or 1 exactly when no bit but its
 * lowest is set, so the bytes of a block are ORed together and tested
 * once; the loop over whole blocks vectorises. */
WB__HOT int wb__bool_valid(const void *p, size_t n) {
    const uint64_t high = ~UINT64_C(0x0101010101010101);
    const unsigned char *b = p;
    size_t i = 0;
    for (; n - i >= WB__BOOL_BLOCK; i += WB__BOOL_BLOCK) {
        uint64_t acc = 0;
        for (size_t k = 0; k < WB__BOOL_BLOCK; k += sizeof acc) {
            uint64_t w;
            memcpy(&w, b + i + k, sizeof w);
            acc |= w;
        }
        if (acc & high)
            return 0;
    }
    uint64_t acc = 0;
    for (; n - i >= sizeof acc; i += sizeof acc) {
        uint64_t w;
        memcpy(&w, b + i, sizeof w);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= b[i];
    return (acc & high) == 0;
}
