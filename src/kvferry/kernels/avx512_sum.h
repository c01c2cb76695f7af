#pragma once
// Private to kernels/, for the AVX-512 files only (compiled with AVX-512 flags): sums of 16
// vectors at once, for kernels that finish 16 dot products together (the batched bf16 GEMV, the
// decode attention's scores).

#include <immintrin.h>

namespace kvferry::kernels::avx512 {

// The lane sums of a[0..15] in one vector: the sum of a[4 * b + r] lands in lane 4 * r + b
// (SumLane(i) below). Pairwise in the order _mm512_reduce_add_ps uses (256-bit halves, then
// 128-bit halves, then elements 0+2 / 1+3, then 0+1), so each sum is bitwise what
// _mm512_reduce_add_ps gives for that vector alone.
inline __m512 TransposeSum16(const __m512* a) {
  __m512 h[8];
  for (int i = 0; i < 8; ++i) {
    h[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44));
  }
  __m512 q[4];
  for (int i = 0; i < 4; ++i) {
    q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0xDD),
                         _mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0x88));
  }
  __m512 e[2];
  for (int i = 0; i < 2; ++i) {
    e[i] =
        _mm512_add_ps(_mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0x44), _mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}

// The lane of TransposeSum16's result that holds the sum of a[i].
constexpr int SumLane(int i) {
  return 4 * (i % 4) + i / 4;
}

}  // namespace kvferry::kernels::avx512
