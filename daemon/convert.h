/* convert.h -- Element-wise dtype conversion, bit-identical to PyTorch.
 *
 * Pure functions with no state: the daemon calls them from libuv's thread
 * pool, splitting large tensors into ranges itself.  Supported are the
 * floating types among each other (F64, F32, F16, BF16), lossless integer
 * widening, BOOL to any integer type, and any dtype to itself (a copy).
 * Every conversion from BOOL reads any non-zero byte as true and writes
 * 1, BOOL to BOOL too: torch leaves a bool byte other than 0 and 1
 * undefined, so no such byte leaves the daemon.
 *
 * Results match torch 1.13's CPU `tensor.to(dtype)` bit for bit, including
 * its NaN encodings, which differ by pair:
 *   F32/F64 -> BF16   any NaN becomes 0xFFFF (torch's vectorised kernel;
 *                     for F64 torch itself gives 0x7FC0 to the last
 *                     count % 16 elements, which its scalar loop converts);
 *   F16 -> BF16       any NaN becomes 0x7FC0 (torch's scalar c10 path);
 *   any  -> F16       a NaN becomes sign | 0x7E00 (payload dropped);
 *   F16/BF16/F32 -> wider floats  the payload is kept, and a NaN is
 *                     quietened except BF16 -> F32, which copies it as is.
 * F64 -> F16 and F64 -> BF16 round through F32 (two roundings), as torch
 * does.  Subnormals are kept both ways; overflow gives infinity. */
#ifndef WB_DAEMON_CONVERT_H
#define WB_DAEMON_CONVERT_H

#include <stddef.h>

/* Returns 1 if wb__convert() can convert from dtype `from` to dtype `to`,
 * 0 otherwise (including unknown dtypes). */
int wb__convert_supported(int from, int to);

/* Converts count elements of dtype `from` at src into dtype `to` at dst.
 * Neither buffer needs any alignment; they must not overlap.  Returns 0, or
 * WB_EDTYPE (nothing written) if the pair is not supported. */
int wb__convert(int from, int to, const void *src, void *dst, size_t count);

/* Same as wb__convert() but never takes a CPU-specific path (F16C); the
 * results are identical.  For tests and benchmarks. */
int wb__convert_portable(int from, int to, const void *src, void *dst,
                         size_t count);

/* Returns 1 if each of the n bytes at p is 0 or 1 (a valid BOOL tensor;
 * also for n == 0, when p may be NULL), else 0.  Reads eight bytes at a
 * time; p needs no alignment.  For refusing, at commit, a BOOL tensor
 * that holds another byte. */
int wb__bool_valid(const void *p, size_t n);

#endif /* WB_DAEMON_CONVERT_H */
