#!/usr/bin/python3
"""gen_convert_vectors.py -- Records torch's dtype conversions for test_convert.

Writes tests/unit/convert_vectors.h, which lets the C unit test prove that
daemon/convert.c is bit-identical to torch's CPU `tensor.to(dtype)` without
needing Python at test time.  For every conversion pair that torch can
express it records:

  * explicit vectors: edge cases plus random inputs, with torch's outputs;
  * a hash of torch's outputs on WB_CV_RANDOM_COUNT pseudo-random inputs
    that the C test regenerates with the same generator (cv_input below);
  * for 8- and 16-bit sources, a hash over every input bit pattern;
  * for F32 -> F16 and F32 -> BF16, one hash per block of 2^24 consecutive
    F32 bit patterns, all 2^32 of them.

torch runs single-threaded and on lengths that are multiples of 16, so that
every element goes through the same kernel (torch 1.13 converts F64 -> BF16
NaNs to 0xFFFF in its vectorised loop but to 0x7FC0 in the scalar tail).

Usage: /usr/bin/python3 tests/python/gen_convert_vectors.py [output.h]
"""

import sys
import time

import numpy as np
import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/unit/convert_vectors.h"

RANDOM_COUNT = 1 << 20  # Pseudo-random inputs per source dtype.
EXPLICIT_RANDOM = 256  # Random inputs kept as explicit vectors.
F32_BLOCK_BITS = 24  # log2 of the F32 bit patterns in one hashed block.
SEED = 0x5EED0F7E57C0DE00  # Seed of the input generator.

M64 = (1 << 64) - 1
G = np.uint64(0x9E3779B97F4A7C15)

# name: (torch dtype or None, bits, exponent bits, mantissa bits, kind)
DTYPES = {
    "F64": (torch.float64, 64, 11, 52, "f"),
    "F32": (torch.float32, 32, 8, 23, "f"),
    "F16": (torch.float16, 16, 5, 10, "f"),
    "BF16": (torch.bfloat16, 16, 8, 7, "f"),
    "I64": (torch.int64, 64, 0, 0, "i"),
    "I32": (torch.int32, 32, 0, 0, "i"),
    "I16": (torch.int16, 16, 0, 0, "i"),
    "I8": (torch.int8, 8, 0, 0, "i"),
    "U8": (torch.uint8, 8, 0, 0, "u"),
    "BOOL": (torch.bool, 8, 0, 0, "b"),
}
UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
SIGNED = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}
CTYPE = {8: "uint8_t", 16: "uint16_t", 32: "uint32_t", 64: "uint64_t"}

FLOATS = ["F64", "F32", "F16", "BF16"]
PAIRS = [(a, b) for a in FLOATS for b in FLOATS if a != b]
PAIRS += [
    ("I8", "I16"), ("I8", "I32"), ("I8", "I64"), ("I16", "I32"),
    ("I16", "I64"), ("I32", "I64"), ("U8", "I16"), ("U8", "I32"),
    ("U8", "I64"), ("BOOL", "U8"), ("BOOL", "I8"), ("BOOL", "I16"),
    ("BOOL", "I32"), ("BOOL", "I64"),
]
SOURCES = sorted({a for a, _ in PAIRS}, key=list(DTYPES).index)


def u64(x):
    return np.uint64(x & M64)


def mix(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cv_input(name, start, count):
    """Pseudo-random input bit patterns start..start+count-1 of dtype name.

    Mirrors cv_input() in test_convert.c exactly.  A quarter are raw random
    bits; the rest are floats with an exponent near the narrow formats'
    range and a mantissa tail (below a random bit) cleared, all ones, a
    halfway point, or a halfway point plus one: the rounding edge cases of
    every narrower precision."""
    _, bits, ebits, mbits, kind = DTYPES[name]
    idx = np.arange(start, start + count, dtype=np.uint64) + np.uint64(1)
    state = u64(SEED + DTYPES_INDEX[name] * 0x100000001B3) + idx * G
    z1 = mix(state)
    z2 = mix(state ^ np.uint64(0xA5A5A5A5A5A5A5A5))
    mask = np.uint64((1 << bits) - 1)
    raw = z1 & mask
    if kind == "b":
        return (z1 & np.uint64(1)).astype(np.uint8)
    if kind != "f":
        return raw.astype(UNSIGNED[bits])
    one = np.uint64(1)
    mode = z2 & np.uint64(3)
    sign = (z1 >> np.uint64(63)) & one
    emax = (1 << ebits) - 1
    bias = emax >> 1
    e_any = (z2 >> np.uint64(8)) % np.uint64(emax + 1)
    e_near = (z2 >> np.uint64(8)) % np.uint64(80)  # bias - 50 .. bias + 29
    e_near = e_near.astype(np.int64) + (bias - 50)
    e_near = np.clip(e_near, 0, emax).astype(np.uint64)
    e = np.where(mode == np.uint64(1), e_any, e_near)
    mant = z1 & np.uint64((1 << mbits) - 1)
    p = (z2 >> np.uint64(20)) % np.uint64(mbits + 1)
    low = (one << p) - one  # bits below p
    tail = (z2 >> np.uint64(30)) & np.uint64(3)
    half = np.where(p > 0, one << np.maximum(p, one) - one, np.uint64(0))
    t = np.select(
        [tail == 0, tail == 1, tail == 2],
        [np.uint64(0), low, half],
        half | np.where(p > 1, one, np.uint64(0)),
    )
    mant = (mant & ~low) | t
    shaped = (sign << np.uint64(bits - 1)) | (e << np.uint64(mbits)) | mant
    out = np.where(mode == np.uint64(0), raw, shaped)
    return out.astype(UNSIGNED[bits])


DTYPES_INDEX = {n: i for i, n in enumerate(
    ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"])}


def edge_inputs(name):
    """Hand-picked edge cases of dtype name, as unsigned bit patterns."""
    _, bits, ebits, mbits, kind = DTYPES[name]
    if kind == "b":
        return [0, 1]
    if kind in "iu":
        m = (1 << bits) - 1
        vals = [0, 1, 2, 0x7F, 0x80, 0xFF, m, m - 1, m >> 1, (m >> 1) + 1,
                (m >> 1) - 1, 0x5A & m, 0xA5 & m]
        return sorted(set(v & m for v in vals))
    sign = 1 << (bits - 1)
    emax = (1 << ebits) - 1
    inf = emax << mbits
    vals = [0, 1, 2, 3, (1 << mbits) - 1, 1 << mbits, inf - 1, inf, inf + 1,
            inf + (1 << (mbits - 1)), inf | ((1 << mbits) - 1),
            inf + (1 << (mbits - 1)) + 1, (inf >> 1) & ~((1 << mbits) - 1)]
    # Values around every narrower format's extremes and halfway points.
    f32 = np.array([
        1.0, 1.5, 65504.0, 65519.99, 65520.0, 65536.0, 2.0 ** -14,
        2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -26, 0.1, 1.0 / 3,
        3.3895313892515355e38, 3.4028234663852886e38, 2.0 ** -126,
        2.0 ** -149, 2.0 ** -133, 1 + 2.0 ** -8, 1 + 2.0 ** -11,
        1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8 + 2.0 ** -30,
        1 + 2.0 ** -11 + 2.0 ** -40, 1 + 2.0 ** -24, 1 + 2.0 ** -24 + 2.0 ** -50,
        6.097555160522461e-05, 5.960464477539063e-08, 1e-40, 1e-45, 1e300,
        1e-300, 2.0 ** -1074, 2.0 ** 128, 2.0 ** 128 * (1 - 2.0 ** -25),
    ], dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if name == "F64":
            vals += [int(v) for v in f32.view(np.uint64)]
        elif name == "F32":
            vals += [int(v) for v in f32.astype(np.float32).view(np.uint32)]
        elif name == "F16":
            vals += [int(v) for v in f32.astype(np.float16).view(np.uint16)]
        else:
            vals += [int(v) >> 16
                     for v in f32.astype(np.float32).view(np.uint32)]
    # Halfway and near-halfway mantissas for each narrower precision.
    for keep in (7, 10, 23):
        if keep >= mbits:
            continue
        d = mbits - keep
        for e in (bias_e for bias_e in ((emax >> 1), (emax >> 1) + 3, 1)):
            base = e << mbits | (0b1011 << (d + 1) if keep > 3 else 0)
            for t in (1 << (d - 1), (1 << (d - 1)) - 1, (1 << (d - 1)) + 1):
                vals += [base | t, base | (1 << d) | t]
    vals = [v & ((1 << bits) - 1) for v in vals]
    vals += [v | sign for v in vals]
    return sorted(set(vals))


def to_torch(name, bits_arr):
    tdt, bits, _, _, kind = DTYPES[name]
    if kind == "b":
        return torch.from_numpy(bits_arr.astype(np.bool_))
    arr = np.ascontiguousarray(bits_arr.astype(UNSIGNED[bits]))
    if kind == "u":
        return torch.from_numpy(arr)
    t = torch.from_numpy(arr.view(SIGNED[bits]))
    return t.view(tdt) if kind == "f" else t


def from_torch(name, t):
    bits = DTYPES[name][1]
    if DTYPES[name][4] == "b":
        return t.numpy().astype(np.uint8)
    return t.contiguous().view(getattr(torch, {8: "int8", 16: "int16",
                                               32: "int32", 64: "int64"}[bits])
                               ).numpy().view(UNSIGNED[bits])


def convert(a, b, bits_arr):
    """torch's a -> b conversion of bit patterns, on a length padded to a
    multiple of 16 so that no element takes the scalar tail loop."""
    n = len(bits_arr)
    pad = (-n) % 16
    arr = np.concatenate([bits_arr, np.zeros(pad, dtype=bits_arr.dtype)])
    out = from_torch(b, to_torch(a, arr).to(DTYPES[b][0]))
    return out[:n]


def block_hash(out):
    """Order-dependent 64-bit hash of an output array; mirrors cv_hash()."""
    idx = np.arange(len(out), dtype=np.uint64)
    return int(np.sum(mix(out.astype(np.uint64) + idx * G), dtype=np.uint64))


def c_array(ctype, name, vals):
    width = {"uint8_t": 4, "uint16_t": 6, "uint32_t": 10, "uint64_t": 18}
    w = width[ctype]
    suffix = "u" if ctype != "uint64_t" else "ull"
    items = ["0x%0*x%s" % (w - 2, int(v), suffix) for v in vals]
    lines, line = [], "   "
    for it in items:
        if len(line) + len(it) + 2 > 79:
            lines.append(line)
            line = "   "
        line += " " + it + ","
    lines.append(line)
    return "static const %s %s[%d] = {\n%s\n};\n" % (
        ctype, name, len(vals), "\n".join(lines))


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    out = []
    out.append("/* convert_vectors.h -- torch %s's dtype conversions, for "
               "test_convert.c.\n *\n * Generated by tests/python/"
               "gen_convert_vectors.py; do not edit. */\n"
               "#ifndef WB_TEST_CONVERT_VECTORS_H\n"
               "#define WB_TEST_CONVERT_VECTORS_H\n\n"
               "#include <stddef.h>\n#include <stdint.h>\n\n"
               "#include \"wbroker.h\"\n\n" % torch.__version__)
    out.append("#define WB_CV_TORCH_VERSION \"%s\"\n" % torch.__version__)
    out.append("#define WB_CV_SEED 0x%016xull /* Input generator seed. */\n"
               % SEED)
    out.append("#define WB_CV_RANDOM_COUNT %d /* Random inputs per source. "
               "*/\n" % RANDOM_COUNT)
    out.append("#define WB_CV_F32_BLOCK_BITS %d /* log2 F32 patterns per "
               "block. */\n\n" % F32_BLOCK_BITS)

    inputs = {}
    for s in SOURCES:
        bits = DTYPES[s][1]
        edge = np.array(edge_inputs(s), dtype=UNSIGNED[bits])
        rnd = cv_input(s, 0, EXPLICIT_RANDOM)
        inputs[s] = np.concatenate([edge, rnd]).astype(UNSIGNED[bits])
        out.append(c_array(CTYPE[bits], "cv_in_%s" % s, inputs[s]))

    rows = []
    mismatch_notes = []
    for a, b in PAIRS:
        ob = DTYPES[b][1]
        res = convert(a, b, inputs[a])
        out.append(c_array(CTYPE[ob], "cv_out_%s_%s" % (a, b), res))
        # Element by element (torch's scalar path for short tensors): note
        # where it disagrees with the bulk kernel.
        single = np.array([convert_single(a, b, v) for v in inputs[a]],
                          dtype=UNSIGNED[ob])
        diff = np.nonzero(single != res)[0]
        if len(diff):
            mismatch_notes.append(
                "%s->%s: %d of %d differ when converted one at a time, e.g. "
                "0x%x -> bulk 0x%x, single 0x%x" % (
                    a, b, len(diff), len(res), int(inputs[a][diff[0]]),
                    int(res[diff[0]]), int(single[diff[0]])))
        hr = block_hash(convert(a, b, cv_input(a, 0, RANDOM_COUNT)))
        bits = DTYPES[a][1]
        if bits <= 16:
            allin = np.arange(1 << bits, dtype=np.uint64).astype(
                UNSIGNED[bits])
            if DTYPES[a][4] == "b":
                allin = np.array([0, 1], dtype=np.uint8)
            he = block_hash(convert(a, b, allin))
        else:
            he = 0
        rows.append((a, b, hr, he))
        print("%s->%s done (%.0f s)" % (a, b, time.time() - t0),
              file=sys.stderr)

    for n in mismatch_notes:
        print("note: " + n, file=sys.stderr)

    out.append("\n/* One row per pair torch can express. */\n"
               "typedef struct cv_pair {\n"
               "    int from, to;          /* Source and target dtype. */\n"
               "    const void *in;        /* Explicit input bit patterns. */\n"
               "    const void *out;       /* torch's outputs for them. */\n"
               "    size_t n;              /* Explicit vectors. */\n"
               "    uint64_t random_hash;  /* Hash on WB_CV_RANDOM_COUNT "
               "inputs. */\n"
               "    uint64_t all_hash;     /* Hash on every input pattern, "
               "or 0. */\n"
               "} cv_pair;\n\n")
    out.append("static const cv_pair cv_pairs[] = {\n")
    for a, b, hr, he in rows:
        out.append("    {WB_%s, WB_%s, cv_in_%s, cv_out_%s_%s, %d,\n"
                   "     0x%016xull, 0x%016xull},\n" % (
                       a, b, a, a, b, len(inputs[a]), hr, he))
    out.append("};\n\n")

    # Every F32 bit pattern, block by block.
    nblk = 1 << (32 - F32_BLOCK_BITS)
    blk = 1 << F32_BLOCK_BITS
    hashes = {"F16": [], "BF16": []}
    for k in range(nblk):
        x = np.arange(k * blk, (k + 1) * blk, dtype=np.uint64).astype(
            np.uint32)
        for b in hashes:
            hashes[b].append(block_hash(convert("F32", b, x)))
        if k % 32 == 31:
            print("F32 blocks %d/%d (%.0f s)" % (k + 1, nblk,
                                                 time.time() - t0),
                  file=sys.stderr)
    for b in hashes:
        out.append("/* F32 -> %s: hash of block k = patterns k << %d.. */\n"
                   % (b, F32_BLOCK_BITS))
        out.append(c_array("uint64_t", "cv_f32_%s_blocks" % b.lower(),
                           hashes[b]))
    out.append("\n#endif /* WB_TEST_CONVERT_VECTORS_H */\n")
    with open(OUT, "w") as f:
        f.write("".join(out))
    print("wrote %s (%.0f s)" % (OUT, time.time() - t0), file=sys.stderr)


def convert_single(a, b, v):
    arr = np.array([v], dtype=UNSIGNED[DTYPES[a][1]])
    return int(from_torch(b, to_torch(a, arr).to(DTYPES[b][0]))[0])


if __name__ == "__main__":
    main()
