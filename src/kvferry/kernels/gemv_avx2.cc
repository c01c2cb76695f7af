// Hand-written AVX2 GEMV for decode: y[r][j] = x[r] · w[j] for up to kGemvMaxRows rows of x,
// the AVX2 counterpart of gemv_avx512.cc. Each weight row is read once per call, widened in
// registers (bf16: zero-extend + shift; f16: vcvtph2ps), with up to 4 weight rows in flight
// and a software prefetch one block of rows ahead. AVX2 has 16 vector registers, so the
// number of weight rows per pass shrinks as x rows grow (R x NB accumulators <= 8).
// Compiled with AVX2 + FMA + F16C flags only.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx2 {
namespace {

constexpr int64_t kPrefetchBlocks = 1;

template <DType D>
constexpr int64_t ElemSize() {
  return D == DType::kF32 ? 4 : 2;
}

template <DType D>
inline __m256 Load8(const void* p, int64_t i) {
  if constexpr (D == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (D == DType::kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
}

template <DType D>
inline float LoadOne(const void* p, int64_t i) {
  if constexpr (D == DType::kF32) {
    return static_cast<const float*>(p)[i];
  } else {
    const uint16_t v = static_cast<const uint16_t*>(p)[i];
    if constexpr (D == DType::kBF16) {
      const uint32_t u = static_cast<uint32_t>(v) << 16;
      float f;
      __builtin_memcpy(&f, &u, 4);
      return f;
    }
    return _cvtsh_ss(v);
  }
}

inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R rows of x against NB rows of w starting at row j.
template <DType D, int R, int NB>
inline void Block(const float* x, int64_t ldx, const char* w, int64_t k, int64_t j, float* y, int64_t ldy) {
  const void* rows[NB];
  for (int b = 0; b < NB; ++b) rows[b] = w + (j + b) * k * ElemSize<D>();
  __m256 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  const int64_t pf = kPrefetchBlocks * NB * k * ElemSize<D>();
  for (int64_t kk = 0; kk < k8; kk += 8) {
    if ((kk * ElemSize<D>()) % 64 == 0)
      for (int b = 0; b < NB; ++b)
        _mm_prefetch(static_cast<const char*>(rows[b]) + kk * ElemSize<D>() + pf, _MM_HINT_T0);
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * ldx + kk);
    for (int b = 0; b < NB; ++b) {
      const __m256 wv = Load8<D>(rows[b], kk);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(xv[r], wv, acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      float s = Sum8(acc[r][b]);
      for (int64_t kk = k8; kk < k; ++kk) s += x[r * ldx + kk] * LoadOne<D>(rows[b], kk);
      y[r * ldy + j + b] = s;
    }
}

template <DType D, int R>
void Rows(const float* x, int64_t ldx, const void* w, int64_t k, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int NB = R <= 2 ? 4 : 2;
  const char* wc = static_cast<const char*>(w);
  int64_t j = n0;
  for (; j + NB <= n1; j += NB) Block<D, R, NB>(x, ldx, wc, k, j, y, ldy);
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

}  // namespace kvferry::kernels::avx2
