// Hand-written AVX2 GEMV for decode: y[r][j] = x[r] · w[j] for up to kGemvMaxRows rows of x,
// the AVX2 counterpart of gemv_avx512.cc. Each weight row is read once per call and widened in
// registers. bf16 weights read into memory are packed at load and go to packed_avx2.cc
// instead (1.5x faster at one row on the Zen 3 VM); this kernel serves mapped files
// (KVFERRY_WEIGHTS=mmap), f16/f32 weights and matrices that are not 16-aligned. Compiled with
// AVX2 + FMA + F16C flags only.
//
// bf16 (what decode of a bf16 model runs): one 256-bit load brings 16 weights; `and` with
// 0xFFFF0000 gives the odd ones as f32 and a 16-bit shift the even ones, against x split once per
// call into even/odd halves (a thread-local copy, k floats per x row). A pass takes 16 weight
// rows for one x row, 8 for 2..4 x rows, and reads them as that many interleaved streams (stream
// b: rows b, b + NB, ... of the call's tile); a software prefetch keeps every stream
// kPrefetchBytes / NB ahead, from the call's first line on and never past the tile.
//
// Measured on the Zen 5 VM (decode-shaped sequence of the 0.5B model's matrices, 2 MiB pages;
// 43-50 GB/s read bandwidth, 2 threads): one x row, 4 rows a pass with the old prefetch one
// block ahead 35 GB/s, 8 rows 42, 16 rows 46.5, 32 rows 31. More rows a pass than registers is
// deliberate: at 16 rows GCC keeps 11 accumulators in registers and the rest on the stack (an
// L1 load and store per FMA, cheap next to the DRAM stream), and keeping them all in registers by
// taking two 8-row groups in turn over 128- or 256-column chunks measured slower (39.5 GB/s).
// 2..4 x rows, 1 thread: 8 rows a pass against the old 4/2: m=2 26.9 vs 20.0 GB/s, m=3 19.8 vs
// 15.9, m=4 17.4 vs 14.9. The even/odd split itself is worth little (within 1-4%): the bytes
// in flight are what count. `kvferry bench model` on the 0.5B shape, KVFERRY_ISA=avx2, 2
// threads: decode 28.6 -> 36.7 tok/s (GEMV 33 -> 45 GB/s); batch 2 51.7 -> 55.6, batch 4
// 65.2 -> 73.5.
//
// f32 and f16: each 8 weights widened on load (vcvtph2ps for f16), up to 4 weight rows in
// flight (R x NB accumulators <= 8) and a software prefetch one block of rows ahead.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvferry/kernels/kernel_table.h"
#include "kvferry/kernels/stream_prefetch.h"

namespace kvferry::kernels::avx2 {
namespace {

// f32/f16: prefetch distance in blocks of rows.
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
    static_assert(D == DType::kF16);  // bf16 has its own kernel below
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
  }
}

template <DType D>
inline float LoadOne(const void* p, int64_t i) {
  if constexpr (D == DType::kF32) {
    return static_cast<const float*>(p)[i];
  } else {
    static_assert(D == DType::kF16);
    return _cvtsh_ss(static_cast<const uint16_t*>(p)[i]);
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

// ---- bf16 ----

// How far ahead of the reads the bf16 kernel prefetches, in bytes over all NB streams of a pass.
// Measured at 16 rows per pass: 8 KiB 45.5 GB/s, 12 KiB 46.5-47, 16 KiB 44.4.
constexpr int64_t kPrefetchBytes = 12288;

// Weight rows per pass: for one x row, and for 2..4 (see the top comment).
constexpr int kBf16RowsM1 = 16;
constexpr int kBf16RowsM4 = 8;

inline float Bf16ToF32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// R rows of split x (per 16 columns: 8 even, then 8 odd; k16 floats a row) against NB rows of w
// from row j. The last k - k16 columns come from x itself. pf advances once per 64 bytes of a
// row (null: no prefetch).
template <int R, int NB>
inline void BlockBf16(const float* xs, int64_t k16, const float* x, int64_t ldx, const uint16_t* w, int64_t k,
                      int64_t j, float* y, int64_t ldy, StreamPrefetch* pf) {
  const uint16_t* rows[NB];
  for (int b = 0; b < NB; ++b) rows[b] = w + (j + b) * k;
  // One accumulator per output, even columns then odd into the same chain, in every pass width:
  // a row's result must not depend on the pass it fell in (16 rows for one x row, 8 for more,
  // narrower tails), or a sequence's decode would change with its batch. The narrow tails wait
  // on FMA latency, but they are a few rows at the end of a matrix or a thread's share.
  __m256 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm256_setzero_ps();
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t kk = 0; kk < k16; kk += 16) {
    if (pf != nullptr && (kk & 31) == 0) pf->Next();
    __m256 xe[R], xo[R];
    for (int r = 0; r < R; ++r) {
      xe[r] = _mm256_loadu_ps(xs + r * k16 + kk);
      xo[r] = _mm256_loadu_ps(xs + r * k16 + kk + 8);
    }
    for (int b = 0; b < NB; ++b) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[b] + kk));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));  // low halves: even columns
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));   // high halves: odd columns
      for (int r = 0; r < R; ++r) {
        acc[r][b] = _mm256_fmadd_ps(xe[r], we, acc[r][b]);
        acc[r][b] = _mm256_fmadd_ps(xo[r], wo, acc[r][b]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      float s = Sum8(acc[r][b]);
      for (int64_t kk = k16; kk < k; ++kk) s += x[r * ldx + kk] * Bf16ToF32(rows[b][kk]);
      y[r * ldy + j + b] = s;
    }
}

template <int R>
void RowsBf16(const float* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  constexpr int NB = R == 1 ? kBf16RowsM1 : kBf16RowsM4;
  const int64_t k16 = k & ~int64_t{15};
  thread_local std::vector<float> split;
  if (split.size() < static_cast<size_t>(R * k16)) split.resize(static_cast<size_t>(R * k16));
  float* xs = split.data();
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < k16; c += 16)
      for (int i = 0; i < 8; ++i) {
        xs[r * k16 + c + i] = x[r * ldx + c + 2 * i];
        xs[r * k16 + c + 8 + i] = x[r * ldx + c + 2 * i + 1];
      }
  StreamPrefetch pf(reinterpret_cast<const char*>(w + n0 * k), reinterpret_cast<const char*>(w + n1 * k), k * 2, NB);
  // The first lines of every stream, which no earlier call requested (none when k < 16: no
  // pass reads whole lines then, and k = 0 would give empty rows).
  if (k16 > 0)
    for (int64_t d = 0; d < std::max<int64_t>(64, kPrefetchBytes / NB); d += 64) pf.Next();
  int64_t j = n0;
  for (; j + NB <= n1; j += NB) BlockBf16<R, NB>(xs, k16, x, ldx, w, k, j, y, ldy, &pf);
  if constexpr (NB > 4)
    for (; j + 4 <= n1; j += 4) BlockBf16<R, 4>(xs, k16, x, ldx, w, k, j, y, ldy, nullptr);
  for (; j < n1; ++j) BlockBf16<R, 1>(xs, k16, x, ldx, w, k, j, y, ldy, nullptr);
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

void Bf16(const float* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y,
          int64_t ldy) {
  switch (m) {
    case 1: return RowsBf16<1>(x, ldx, w, k, n0, n1, y, ldy);
    case 2: return RowsBf16<2>(x, ldx, w, k, n0, n1, y, ldy);
    case 3: return RowsBf16<3>(x, ldx, w, k, n0, n1, y, ldy);
    default: return RowsBf16<4>(x, ldx, w, k, n0, n1, y, ldy);
  }
}

}  // namespace

void Gemv(const float* x, int64_t m, int64_t ldx, const void* w, DType dtype, int64_t k, int64_t n0, int64_t n1,
          float* y, int64_t ldy) {
  static_assert(kGemvMaxRows == 4);
  if (m <= 0) return;
  switch (dtype) {
    case DType::kF32: return Typed<DType::kF32>(x, m, ldx, w, k, n0, n1, y, ldy);
    case DType::kBF16: return Bf16(x, m, ldx, static_cast<const uint16_t*>(w), k, n0, n1, y, ldy);
    case DType::kF16: return Typed<DType::kF16>(x, m, ldx, w, k, n0, n1, y, ldy);
    default: __builtin_trap();  // quantized types never come here: Compute::MatMul sends them to quant.h
  }
}

}  // namespace kvferry::kernels::avx2
