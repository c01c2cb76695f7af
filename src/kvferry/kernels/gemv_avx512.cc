// Hand-written AVX-512 GEMV for decode: y[r][j] = x[r] · w[j] for up to kGemvMaxRows rows of x.
// Decode is memory bound: the kernel streams 4 weight rows at a time, converts bf16/f16 to f32
// in registers (bf16: zero-extend + shift; f16: vcvtph2ps) and keeps 4 x rows in flight, so
// each weight byte is read once per call. Compiled with AVX-512 F/BW/VL/DQ + F16C flags.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/avx512_load.h"
#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512 {
namespace {

// Software prefetch of the weights one block of rows ahead: the hardware prefetchers lose
// ground on NB interleaved short streams (measured here: 12.5 -> 17 GB/s of a 17-18 GB/s
// memory read bandwidth on the 0.5B model's matrices).
constexpr int64_t kPrefetchBlocks = 1;

template <DType D>
constexpr int64_t ElemSize() {
  return D == DType::kF32 ? 4 : 2;
}

// R rows of x against NB rows of w starting at row j.
template <DType D, int R, int NB>
inline void Block(const float* x, int64_t ldx, const char* w, int64_t k, int64_t j, float* y, int64_t ldy) {
  const void* rows[NB];
  for (int b = 0; b < NB; ++b) rows[b] = w + (j + b) * k * ElemSize<D>();
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  const int64_t k16 = k & ~int64_t{15};
  const int64_t pf = kPrefetchBlocks * NB * k * ElemSize<D>();
  for (int64_t kk = 0; kk < k16; kk += 16) {
    if ((kk * ElemSize<D>()) % 64 == 0)  // one line per row
      for (int b = 0; b < NB; ++b)
        _mm_prefetch(static_cast<const char*>(rows[b]) + kk * ElemSize<D>() + pf, _MM_HINT_T0);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * ldx + kk);
    for (int b = 0; b < NB; ++b) {
      const __m512 wv = LoadF32<D>(rows[b], kk);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm512_fmadd_ps(xv[r], wv, acc[r][b]);
    }
  }
  if (k16 < k) {
    const __mmask16 mask = FirstLanes(k - k16);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(mask, x + r * ldx + k16);
    for (int b = 0; b < NB; ++b) {
      const __m512 wv = LoadF32Masked<D>(rows[b], k16, mask);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm512_fmadd_ps(xv[r], wv, acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) y[r * ldy + j + b] = _mm512_reduce_add_ps(acc[r][b]);
}

template <DType D, int R>
void Rows(const float* x, int64_t ldx, const void* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const char* wc = static_cast<const char*>(w);
  int64_t j = n0;
  for (; j + 4 <= n1; j += 4) Block<D, R, 4>(x, ldx, wc, k, j, y, ldy);
  for (; j < n1; ++j) Block<D, R, 1>(x, ldx, wc, k, j, y, ldy);
}

template <DType D>
void Typed(const float* x, int64_t m, int64_t ldx, const void* w, int64_t k, int64_t n0, int64_t n1, float* y,
           int64_t ldy) {
  switch (m) {
    case 1: return Rows<D, 1>(x, ldx, w, k, n0, n1, y, ldy);
    case 2: return Rows<D, 2>(x, ldx, w, k, n0, n1, y, ldy);
    case 3: return Rows<D, 3>(x, ldx, w, k, n0, n1, y, ldy);
    default: return Rows<D, 4>(x, ldx, w, k, n0, n1, y, ldy);
  }
}

}  // namespace

void Gemv(const float* x, int64_t m, int64_t ldx, const void* w, DType dtype, int64_t k, int64_t n0, int64_t n1,
          float* y, int64_t ldy) {
  static_assert(kGemvMaxRows == 4);
  if (m <= 0) return;
  switch (dtype) {
    case DType::kF32: return Typed<DType::kF32>(x, m, ldx, w, k, n0, n1, y, ldy);
    case DType::kBF16: return Typed<DType::kBF16>(x, m, ldx, w, k, n0, n1, y, ldy);
    case DType::kF16: return Typed<DType::kF16>(x, m, ldx, w, k, n0, n1, y, ldy);
    default: __builtin_trap();  // quantized types never come here: Compute::MatMul sends them to quant.h
  }
}

}  // namespace kvferry::kernels::avx512
