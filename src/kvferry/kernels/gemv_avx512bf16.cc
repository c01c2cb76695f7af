// GEMV / skinny GEMM for bf16 weights with AVX512_BF16 dot products (vdpbf16ps), for decode
// steps of 1 to 16 rows: y[r][j] = xb[r] · w[j], where xb is x already rounded to bf16 (once
// per MatMul, as llama.cpp and oneDNN's bf16 kernels do). One vdpbf16ps multiplies 32 bf16
// pairs and adds them into 16 f32 lanes, so each 64-byte line of a weight row costs one load
// and one instruction per x row: no widening, half the FMAs of the f32 path. The weights are
// streamed once per call with a software prefetch one block of rows ahead; up to 8 x rows are
// kept in registers per pass (a 16-row step makes two passes over a block that is in L1/L2).
// Compiled with AVX-512 F/BW/VL/DQ + AVX512_BF16 flags.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512bf16 {
namespace {

constexpr int64_t kPrefetchBlocks = 1;

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

template <int R>
void Rows(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // Accumulators R x NB plus R x vectors stay within the 32 registers.
  constexpr int NB = R <= 2 ? 4 : (R <= 4 ? 3 : 2);
  int64_t j = n0;
  for (; j + NB <= n1; j += NB) Block<R, NB>(x, ldx, w, k, j, y, ldy);
  for (; j < n1; ++j) Block<R, 1>(x, ldx, w, k, j, y, ldy);
}

}  // namespace

void GemvBf16(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  for (int64_t r0 = 0; r0 < m; r0 += kBf16GemvMaxRows) {
    const uint16_t* xr = x + r0 * ldx;
    float* yr = y + r0 * ldy;
    switch (m - r0 < kBf16GemvMaxRows ? m - r0 : kBf16GemvMaxRows) {
      case 1: Rows<1>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 2: Rows<2>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 3: Rows<3>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 4: Rows<4>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 5: Rows<5>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 6: Rows<6>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      case 7: Rows<7>(xr, ldx, w, k, n0, n1, yr, ldy); break;
      default: Rows<8>(xr, ldx, w, k, n0, n1, yr, ldy); break;
    }
  }
}

}  // namespace kvferry::kernels::avx512bf16
