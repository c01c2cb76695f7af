// Hand-written AVX-512 GEMM for prefill: y[r][j] = x[r] · w[j] with bf16/f16/f32 weights and
// f32 accumulation, for CPUs without native bf16 math (where oneDNN's f32 path needs the
// weights widened and repacked on every call anyway).
//
// The product is computed transposed: tokens lie along the vector lanes. x is packed once per
// call into blocks of 32 tokens, [k][32] (GemmPackX); a slice of a panel of 12 weight rows is
// widened to f32 as [12][kGemmKc] (GemmWidenPanel), a straight conversion with no transposition;
// the 12x32 microkernel keeps 24 accumulators and, per k step, loads two token vectors and
// broadcasts 12 weights. k is walked in slices of kGemmKc so that the widened panel slice stays
// in L1 while the packed tokens stream from L2; partial sums live in a small [12][32] tile
// between slices; at the end a 16x16 register transpose turns it into token rows of y. Compiled with AVX-512 F/BW/VL/DQ
// + F16C flags.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/avx512_load.h"
#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512 {

void GemmPackX(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t r0, float* xt) {
  const int64_t n = m - r0 < kGemmTokens ? m - r0 : kGemmTokens;
  for (int64_t kk = 0; kk < k; ++kk) {
    float* dst = xt + kk * kGemmTokens;
    for (int64_t t = 0; t < n; ++t) dst[t] = x[(r0 + t) * ldx + kk];
    for (int64_t t = n; t < kGemmTokens; ++t) dst[t] = 0.0f;
  }
}

void GemmWidenPanel(const void* w, DType dtype, int64_t k, int64_t rows, int64_t k0, int64_t kc, float* wp) {
  const int64_t esize = dtype == DType::kF32 ? 4 : 2;
  // The weights come from DRAM in 12 short streams: ask for the next slice (or, after the last
  // slice, the start of the next panel) now, so it is on its way while this one is used.
  const int64_t next = k0 + kc < k ? (k0 + kc) * esize : kGemmPanelRows * k * esize;
  const int64_t next_bytes = kGemmKc * esize;
  for (int64_t j = 0; j < kGemmPanelRows; ++j) {
    const char* row = static_cast<const char*>(w) + j * k * esize;
    for (int64_t b = 0; b < next_bytes; b += 64) _mm_prefetch(row + next + b, _MM_HINT_T1);
  }
  for (int64_t j = 0; j < kGemmPanelRows; ++j) {
    const char* row = static_cast<const char*>(w) + j * k * esize;
    float* dst = wp + j * kGemmKc;
    for (int64_t kk = 0; kk < kc; kk += 16) {
      __m512 v;
      if (j >= rows) {
        v = _mm512_setzero_ps();
      } else if (kk + 16 <= kc) {
        v = LoadF32(row, dtype, k0 + kk);
      } else {
        v = LoadF32Masked(row, dtype, k0 + kk, FirstLanes(kc - kk));
      }
      _mm512_storeu_ps(dst + kk, v);
    }
  }
}

void GemmMicro(const float* xt, int64_t kc, const float* wp, bool first, float* ct) {
  static_assert(kGemmPanelRows == 12 && kGemmTokens == 32);
  __m512 acc[12][2];
  for (int j = 0; j < 12; ++j) {
    acc[j][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(ct + j * 32);
    acc[j][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(ct + j * 32 + 16);
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m512 x0 = _mm512_loadu_ps(xt + kk * kGemmTokens);
    const __m512 x1 = _mm512_loadu_ps(xt + kk * kGemmTokens + 16);
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) {
      const __m512 wb = _mm512_set1_ps(wp[j * kGemmKc + kk]);
      acc[j][0] = _mm512_fmadd_ps(x0, wb, acc[j][0]);
      acc[j][1] = _mm512_fmadd_ps(x1, wb, acc[j][1]);
    }
  }
  for (int j = 0; j < 12; ++j) {
    _mm512_storeu_ps(ct + j * 32, acc[j][0]);
    _mm512_storeu_ps(ct + j * 32 + 16, acc[j][1]);
  }
}

void GemmStore(const float* ct, int64_t rows, int64_t tokens, float* y, int64_t ldy) {
  // Transpose 16 tokens at a time in registers: r[j] holds row j's 16 tokens; after the 16x16
  // transpose, c[t] holds token t's values for rows 0..15, stored as `rows` contiguous floats.
  const __mmask16 mask = FirstLanes(rows);
  for (int64_t v = 0; v < 2 && 16 * v < tokens; ++v) {
    __m512 r[16], t[16];
    for (int j = 0; j < 16; ++j) r[j] = j < rows ? _mm512_loadu_ps(ct + j * 32 + 16 * v) : _mm512_setzero_ps();
    for (int j = 0; j < 16; j += 2) {
      t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
      t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {
      r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
      r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
      r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
      r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
    }
    // r[4q + i] now holds rows 4q..4q+3 at tokens i, i+4, i+8, i+12 (one 128-bit lane each).
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);      // tokens i, i+8 of rows 0-7
      t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);  // tokens i+4, i+12 of rows 0-7
      t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
      t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
    }
    __m512 c[16];
    for (int i = 0; i < 4; ++i) {
      c[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
      c[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
      c[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
      c[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
    }
    const int64_t n = tokens - 16 * v < 16 ? tokens - 16 * v : 16;
    float* base = y + 16 * v * ldy;
    for (int64_t i = 0; i < n; ++i) _mm512_mask_storeu_ps(base + i * ldy, mask, c[i]);
  }
}

float FmaLoop(int64_t iters) {
  // 24 independent chains (more than FMA latency x ports), nothing else in the loop.
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace kvferry::kernels::avx512
