// GEMV / skinny GEMM for bf16 weights with AVX512_BF16 dot products (vdpbf16ps), for decode
// steps of 1 to 16 rows: y[r][j] = xb[r] · w[j], where xb is x already rounded to bf16 (once
// per MatMul, as llama.cpp and oneDNN's bf16 kernels do). One vdpbf16ps multiplies 32 bf16
// pairs and adds them into 16 f32 lanes, so each 64-byte line of a weight row costs one load
// and one instruction per x row: no widening, half the FMAs of the f32 path. The weights are
// streamed once per call with a software prefetch one block of rows ahead.
//
// 1 to 3 x rows: memory-bound, so each output keeps one accumulator and is summed on its own.
// One x row takes 16 weight rows a pass as 16 prefetched streams (RowsOne): bench model decode
// of the 0.5B shape went from 35.8-40.5 to 41.5-44.9 tok/s, alternating on the Zen 5 VM.
// 4 or more (batched decode): passes of 4 x rows against groups of 4 weight rows, 16
// accumulators summed with one transpose-reduce instead of 16 horizontal sums. The first pass
// over a 64-row block streams it from memory, the others find it in L2. Long rows (k > kChunk)
// go in chunks so that the 4 x rows stay in L1, with the accumulators parked in a per-thread
// scratch between chunks. Measured on one Zen 5 core, against the 8 x 2 / 4 x 3 register
// blocking with a horizontal sum per output that this replaced: 4 rows 1.5x, 8 rows 1.1x, 12
// rows 1.2x, 16 rows 1.1x (k = 896; 1.16x at 16 rows with k = 4864).
//
// Every output's arithmetic is the same in all paths (lane by lane in k order, then the same
// pairwise sum), so a sequence's result does not depend on how many others share its step.
// Compiled with AVX-512 F/BW/VL/DQ + AVX512_BF16 flags.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kvferry/kernels/avx512_sum.h"
#include "kvferry/kernels/kernel_table.h"
#include "kvferry/kernels/stream_prefetch.h"

namespace kvferry::kernels::avx512bf16 {
namespace {

constexpr int64_t kPrefetchBlocks = 1;
// Batched passes: weight rows per group, x rows per pass, longest k in one go, weight rows per
// sub-block (whose accumulators are parked between chunks).
constexpr int kGroup = 4;
constexpr int kPass = 4;
constexpr int64_t kChunk = 1024;
constexpr int64_t kSubBlock = 64;

inline __m512bh AsBh(__m512i v) {
  return (__m512bh)v;  // same 64 bytes, viewed as 32 bf16 values
}

// R rows of x against NB rows of w starting at row j; k elements (any k: the tail is masked).
template <int R, int NB>
inline void Block(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t j, float* y, int64_t ldy) {
  const uint16_t* rows[NB];
  for (int b = 0; b < NB; ++b) rows[b] = w + (j + b) * k;
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  const int64_t k32 = k & ~int64_t{31};
  const int64_t pf = kPrefetchBlocks * NB * k;  // elements
  for (int64_t kk = 0; kk < k32; kk += 32) {
    for (int b = 0; b < NB; ++b) _mm_prefetch(reinterpret_cast<const char*>(rows[b] + kk + pf), _MM_HINT_T0);
    __m512i xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_si512(x + r * ldx + kk);
    for (int b = 0; b < NB; ++b) {
      const __m512i wv = _mm512_loadu_si512(rows[b] + kk);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], AsBh(xv[r]), AsBh(wv));
    }
  }
  if (k32 < k) {
    const int64_t left = k - k32;
    const __mmask32 mask = static_cast<__mmask32>(left >= 32 ? 0xffffffffu : ((1u << left) - 1u));
    __m512i xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_epi16(mask, x + r * ldx + k32);
    for (int b = 0; b < NB; ++b) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, rows[b] + k32);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], AsBh(xv[r]), AsBh(wv));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) y[r * ldy + j + b] = _mm512_reduce_add_ps(acc[r][b]);
}

// One x row (single-sequence decode, memory-bound): 16 weight rows a pass, read as 16 streams,
// each prefetched kStreamAheadBytes / 16 ahead from the call's first line (StreamPrefetch, as
// in the AVX2 kernel, where 16 rows a pass and 12 KiB ahead read fastest).
constexpr int kOneRowPass = 16;
constexpr int64_t kStreamAheadBytes = 12288;

template <int NB>
inline void BlockOne(const uint16_t* x, const uint16_t* w, int64_t k, int64_t j, float* y, StreamPrefetch* pf) {
  const uint16_t* rows[NB];
  for (int b = 0; b < NB; ++b) rows[b] = w + (j + b) * k;
  __m512 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
  const int64_t k32 = k & ~int64_t{31};
  for (int64_t kk = 0; kk < k32; kk += 32) {
    if (pf != nullptr) pf->Next();
    const __m512i xv = _mm512_loadu_si512(x + kk);
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_dpbf16_ps(acc[b], AsBh(xv), AsBh(_mm512_loadu_si512(rows[b] + kk)));
  }
  if (k32 < k) {
    const __mmask32 mask = static_cast<__mmask32>((1u << (k - k32)) - 1u);
    const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + k32);
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm512_dpbf16_ps(acc[b], AsBh(xv), AsBh(_mm512_maskz_loadu_epi16(mask, rows[b] + k32)));
    }
  }
  for (int b = 0; b < NB; ++b) y[j + b] = _mm512_reduce_add_ps(acc[b]);
}

void RowsOne(const uint16_t* x, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y) {
  StreamPrefetch pf(reinterpret_cast<const char*>(w + n0 * k), reinterpret_cast<const char*>(w + n1 * k), k * 2,
                    kOneRowPass);
  if (k >= 32) {  // the first lines of every stream, which no earlier call requested
    for (int64_t d = 0; d < kStreamAheadBytes / kOneRowPass; d += 64) pf.Next();
  }
  int64_t j = n0;
  for (; j + kOneRowPass <= n1; j += kOneRowPass) BlockOne<kOneRowPass>(x, w, k, j, y, k >= 32 ? &pf : nullptr);
  for (; j + 4 <= n1; j += 4) BlockOne<4>(x, w, k, j, y, nullptr);
  for (; j < n1; ++j) BlockOne<1>(x, w, k, j, y, nullptr);
}

template <int R>
void Rows(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // 2 or 3 x rows (one takes RowsOne, 4 and more Pass): R x NB accumulators plus R x vectors.
  static_assert(R >= 1 && R <= 3);
  constexpr int NB = R <= 2 ? 4 : 3;
  int64_t j = n0;
  for (; j + NB <= n1; j += NB) Block<R, NB>(x, ldx, w, k, j, y, ldy);
  for (; j < n1; ++j) Block<R, 1>(x, ldx, w, k, j, y, ldy);
}

// kPass x rows against kGroup weight rows from row j, over k in [k0, k1). acc holds the running
// sums (weight-row-major); with `last` the sums go to y. Each step prefetches the same columns of
// the next group's rows.
inline void Group(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t j, int64_t k0, int64_t k1,
                  bool last, __m512* acc, float* y, int64_t ldy) {
  const uint16_t* rows[kGroup];
  for (int b = 0; b < kGroup; ++b) rows[b] = w + (j + b) * k;
  __m512 a[kGroup * kPass];
#pragma GCC unroll 16
  for (int i = 0; i < kGroup * kPass; ++i) a[i] = acc[i];
  const int64_t pf = kGroup * k;
  const int64_t end32 = k0 + ((k1 - k0) & ~int64_t{31});
  for (int64_t kk = k0; kk < end32; kk += 32) {
#pragma GCC unroll 4
    for (int b = 0; b < kGroup; ++b) _mm_prefetch(reinterpret_cast<const char*>(rows[b] + kk + pf), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int b = 0; b < kGroup; ++b) {
      const __m512i wv = _mm512_loadu_si512(rows[b] + kk);
#pragma GCC unroll 4
      for (int r = 0; r < kPass; ++r) {
        a[kPass * b + r] = _mm512_dpbf16_ps(a[kPass * b + r], AsBh(_mm512_loadu_si512(x + r * ldx + kk)), AsBh(wv));
      }
    }
  }
  if (end32 < k1) {  // only the last chunk can end off a 32 boundary
    const int64_t left = k1 - end32;
    const __mmask32 mask = static_cast<__mmask32>((1u << left) - 1u);
#pragma GCC unroll 4
    for (int b = 0; b < kGroup; ++b) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, rows[b] + end32);
#pragma GCC unroll 4
      for (int r = 0; r < kPass; ++r) {
        a[kPass * b + r] =
            _mm512_dpbf16_ps(a[kPass * b + r], AsBh(_mm512_maskz_loadu_epi16(mask, x + r * ldx + end32)), AsBh(wv));
      }
    }
  }
  if (!last) {
#pragma GCC unroll 16
    for (int i = 0; i < kGroup * kPass; ++i) acc[i] = a[i];
    return;
  }
  alignas(64) float sums[kGroup * kPass];
  _mm512_store_ps(sums, avx512::TransposeSum16(a));
  for (int r = 0; r < kPass; ++r) {
    for (int b = 0; b < kGroup; ++b) y[r * ldy + j + b] = sums[kGroup * r + b];
  }
}

// kPass x rows over weight rows [n0, n1), in sub-blocks of kSubBlock rows and chunks of k, one
// group of weight rows after another (the prefetch fetches the next group); rows past the last
// whole group go to Block.
void Pass(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  static_assert(kGroup * kPass == 16, "TransposeSum16 sums 16 accumulators");
  thread_local __m512 parked[kSubBlock / kGroup][kGroup * kPass];
  const int64_t chunks = (k + kChunk - 1) / kChunk;
  const int64_t chunk = ((k + chunks - 1) / chunks + 31) / 32 * 32;  // a multiple of 32: only the last is ragged
  for (int64_t sb = n0; sb < n1; sb += kSubBlock) {
    const int64_t se = std::min(n1, sb + kSubBlock);
    const int64_t groups = (se - sb) / kGroup;
    for (int64_t k0 = 0; k0 < k; k0 += chunk) {
      const int64_t k1 = std::min(k, k0 + chunk);
      for (int64_t g = 0; g < groups; ++g) {
        __m512* acc = parked[g];
        if (k0 == 0) {
          for (int i = 0; i < kGroup * kPass; ++i) acc[i] = _mm512_setzero_ps();
        }
        Group(x, ldx, w, k, sb + g * kGroup, k0, k1, k1 == k, acc, y, ldy);
      }
    }
    for (int64_t j = sb + groups * kGroup; j < se; ++j) Block<kPass, 1>(x, ldx, w, k, j, y, ldy);
  }
}

}  // namespace

void GemvBf16(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  int64_t r0 = 0;
  for (; m - r0 >= kPass; r0 += kPass) Pass(x + r0 * ldx, ldx, w, k, n0, n1, y + r0 * ldy, ldy);
  const uint16_t* xr = x + r0 * ldx;
  float* yr = y + r0 * ldy;
  switch (m - r0) {
    case 1: return RowsOne(xr, w, k, n0, n1, yr);
    case 2: return Rows<2>(xr, ldx, w, k, n0, n1, yr, ldy);
    case 3: return Rows<3>(xr, ldx, w, k, n0, n1, yr, ldy);
    default: return;
  }
}

}  // namespace kvferry::kernels::avx512bf16
