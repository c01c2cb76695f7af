#pragma once
// Private to kernels/, for the AVX-512 files only (they are compiled with AVX-512 flags):
// 16 elements of bf16 (zero-extend + shift), f16 (vcvtph2ps) or f32 loaded as one f32 vector.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels::avx512 {

// Elements i..i+15 of p.
template <DType D>
inline __m512 LoadF32(const void* p, int64_t i) {
  if constexpr (D == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (D == DType::kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
}

// The lanes of `mask` only (the others 0); nothing outside them is read.
template <DType D>
inline __m512 LoadF32Masked(const void* p, int64_t i, __mmask16 mask) {
  if constexpr (D == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + i);
    if constexpr (D == DType::kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
}

// The same with the type known at run time.
inline __m512 LoadF32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kBF16: return LoadF32<DType::kBF16>(p, i);
    case DType::kF16: return LoadF32<DType::kF16>(p, i);
    default: return LoadF32<DType::kF32>(p, i);
  }
}
inline __m512 LoadF32Masked(const void* p, DType dt, int64_t i, __mmask16 mask) {
  switch (dt) {
    case DType::kBF16: return LoadF32Masked<DType::kBF16>(p, i, mask);
    case DType::kF16: return LoadF32Masked<DType::kF16>(p, i, mask);
    default: return LoadF32Masked<DType::kF32>(p, i, mask);
  }
}

// Mask of the first n lanes, n <= 16.
inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

}  // namespace kvferry::kernels::avx512
