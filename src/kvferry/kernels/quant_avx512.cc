// QuantMatMulVnni: quantized weights times f32 activations with AVX-512 VNNI int8 dot products.
//
// Activations are quantized per 32 elements: x ≈ dx * xq, xq int8 (round to nearest). Every
// weight type is written per 64-element chunk as w = A * u - B with u unsigned bytes and A, B
// per group of elements (Q8_0: u = q + 128, B = 128 d; Q4_0: u = nibble, B = 8 d; Q5_0: u = 5 bits, B = 16 d; Q4_K:
// A = d sc, B = dmin m; Q6_K: u = 6-bit q, B = 32 A). vpdpbusd sums u * xq over 4 consecutive
// elements into each of 16 int32 lanes; each lane then gets its own float scale, so groups of
// 32 (Q8_0, Q4_0, Q5_0, Q4_K) and of 16 (Q6_K) need no horizontal sums:
//   acc += float(sum4(u xq)) * (A dx) - B * (dx sum4(xq))
// with dx sum4(xq) precomputed per lane and token. The products use this form for Q8_0, Q4_0 and
// Q5_0; Q4_K and Q6_K go to the AVX2 kernel (faster for them), and their chunks here serve the
// prefill's f32 weight tiles (DequantizeRowsF32Vnni). Compiled with AVX-512 VNNI flags; called
// only when the CPU has them.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"

namespace kvferry::kernels {
namespace {

constexpr int kMaxTokens = 4;  // token rows that share one pass over the weights

// How far ahead decode prefetches weights (bytes, rounded to whole groups of 4 rows, at least
// one group). On the Zen 5 VM: Q8_0 decode of the 0.5B shape at 4 KiB 58.7 tok/s, 8 KiB 60.4,
// 16 KiB 55.6, 32 KiB 53.7.
constexpr int64_t kPrefetchBytes = 8192;

// F16C, inline (F16ToF32 is an out-of-line call: a measurable share per 32-weight block).
inline float Half(uint16_t h) {
  return _cvtsh_ss(h);
}

// One token's activations, quantized, padded with zeros to a multiple of 64 elements.
struct QuantizedRow {
  std::vector<int8_t> q;  // xq
  std::vector<float> dx;  // per 4 elements: the block's dx
  std::vector<float> sx;  // per 4 elements: dx * sum of their xq
};

// One block of 32 activations: xq = round(x / d) with d = amax / 127, saturated to int8.
// Decode (QuantizeActivations) and prefill (RoundActivationsInt8Vnni) both round through here,
// so a token's activations are the same whichever path runs it.
inline float QuantizeBlock32(const float* x, __m128i* lo, __m128i* hi) {
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = std::max(_mm512_reduce_max_ps(_mm512_abs_ps(v0)), _mm512_reduce_max_ps(_mm512_abs_ps(v1)));
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  *lo = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv))));
  *hi = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv))));
  return amax / 127.0f;
}

void QuantizeActivations(const float* x, int64_t cols, QuantizedRow* out) {
  const int64_t padded = (cols + 63) / 64 * 64;
  out->q.assign(padded, 0);
  out->dx.assign(padded / 4, 0.0f);
  out->sx.assign(padded / 4, 0.0f);
  for (int64_t b = 0; b < cols; b += 32) {
    __m128i q0, q1;
    const float d = QuantizeBlock32(x + b, &q0, &q1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q.data() + b), q0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q.data() + b + 16), q1);
    for (int l = 0; l < 8; ++l) {
      const int8_t* p = out->q.data() + b + 4 * l;
      out->dx[b / 4 + l] = d;
      out->sx[b / 4 + l] = d * static_cast<float>(p[0] + p[1] + p[2] + p[3]);
    }
  }
}

__m512i Concat(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
__m512 Halves(float a, float b) {
  return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
}

// Lanes 4i..4i+3 take s[i] (i < 4).
__m512 Quarters(const float* s) {
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(s)));
}

// The chunk of 64 weights: u, A and B (see the top of the file).
struct Chunk {
  __m512i u;
  __m512 a, b;
};

// Q8_0 / Q4_0: blocks blk and blk + 1 (the second absent when `two` is false).
Chunk Q8_0Chunk(const BlockQ8_0* blk, bool two) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i lo = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[0].qs)), flip);
  const __m256i hi = two ? _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[1].qs)), flip)
                         : _mm256_setzero_si256();
  const __m512 a = Halves(Half(blk[0].d), two ? Half(blk[1].d) : 0.0f);
  return {Concat(lo, hi), a, _mm512_mul_ps(a, _mm512_set1_ps(128.0f))};
}

// 16 bytes of nibble pairs: the low nibbles, then the high ones.
__m256i NibbleBytes(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

Chunk Q4_0Chunk(const BlockQ4_0* blk, bool two) {
  const __m512 a = Halves(Half(blk[0].d), two ? Half(blk[1].d) : 0.0f);
  return {Concat(NibbleBytes(blk[0].qs), two ? NibbleBytes(blk[1].qs) : _mm256_setzero_si256()), a,
          _mm512_mul_ps(a, _mm512_set1_ps(8.0f))};
}

// Q5_0: the 5-bit values 0..31 in element order (bit j of qh is element j's fifth bit).
__m256i Q5_0Bytes(const BlockQ5_0& b) {
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  const __m256i high = _mm256_and_si256(_mm256_movm_epi8(qh), _mm256_set1_epi8(0x10));
  return _mm256_or_si256(NibbleBytes(b.qs), high);
}

Chunk Q5_0Chunk(const BlockQ5_0* blk, bool two) {
  const __m512 a = Halves(Half(blk[0].d), two ? Half(blk[1].d) : 0.0f);
  return {Concat(Q5_0Bytes(blk[0]), two ? Q5_0Bytes(blk[1]) : _mm256_setzero_si256()), a,
          _mm512_mul_ps(a, _mm512_set1_ps(16.0f))};
}

// Q4_K: the 8 sub-block scales d*sc and offsets dmin*m of a block.
struct Q4KScales {
  float a[8], b[8];
};
Q4KScales Q4KBlockScales(const BlockQ4_K& blk) {
  Q4KScales s;
  const float d = Half(blk.d), dmin = Half(blk.dmin);
  const uint8_t* q = blk.scales;  // the packing of Q4KScaleMin, inline
  for (int j = 0; j < 4; ++j) {
    s.a[j] = d * static_cast<float>(q[j] & 63);
    s.b[j] = dmin * static_cast<float>(q[j + 4] & 63);
    s.a[j + 4] = d * static_cast<float>((q[j + 8] & 15) | ((q[j] >> 6) << 4));
    s.b[j + 4] = dmin * static_cast<float>((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
  }
  return s;
}

Chunk Q4KChunk(const BlockQ4_K& blk, const Q4KScales& s, int c) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * c));
  const __m256i m = _mm256_set1_epi8(0x0f);
  return {Concat(_mm256_and_si256(q, m), _mm256_and_si256(_mm256_srli_epi16(q, 4), m)),
          Halves(s.a[2 * c], s.a[2 * c + 1]), Halves(s.b[2 * c], s.b[2 * c + 1])};
}

Chunk Q6KChunk(const BlockQ6_K& blk, const float* a16, int c) {
  const int h = c / 2, part = c % 2;
  const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h));
  const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h + 32));
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
  const int ls = 4 * part, hs = 4 * part;  // nibble shift, and the qh pair of e0/e2 (e1/e3 add 2)
  const __m256i e_lo = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, ls), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, hs), m2), 4));
  const __m256i e_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, ls), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, hs + 2), m2), 4));
  const __m512 a = Quarters(a16 + 8 * h + 4 * part);
  return {Concat(e_lo, e_hi), a, _mm512_mul_ps(a, _mm512_set1_ps(32.0f))};
}

// Accumulates one chunk into the token accumulators.
inline void Accumulate(const Chunk& ch, const QuantizedRow* const* xs, int nt, int64_t k0, __m512* acc) {
  for (int t = 0; t < nt; ++t) {
    const __m512i xq = _mm512_loadu_si512(xs[t]->q.data() + k0);
    const __m512 dx = _mm512_loadu_ps(xs[t]->dx.data() + k0 / 4);
    const __m512 sx = _mm512_loadu_ps(xs[t]->sx.data() + k0 / 4);
    const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ch.u, xq));
    acc[t] = _mm512_fmadd_ps(p, _mm512_mul_ps(ch.a, dx), acc[t]);
    acc[t] = _mm512_fnmadd_ps(ch.b, sx, acc[t]);
  }
}

void RowDot(QuantType type, const char* row, int64_t cols, const QuantizedRow* const* xs, int nt, float* out) {
  __m512 acc[kMaxTokens];
  for (int t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
  switch (type) {
    case QuantType::kQ8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
      const int64_t nb = cols / 32;
      for (int64_t i = 0; i < nb; i += 2) Accumulate(Q8_0Chunk(b + i, i + 1 < nb), xs, nt, 32 * i, acc);
      break;
    }
    case QuantType::kQ4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
      const int64_t nb = cols / 32;
      for (int64_t i = 0; i < nb; i += 2) Accumulate(Q4_0Chunk(b + i, i + 1 < nb), xs, nt, 32 * i, acc);
      break;
    }
    case QuantType::kQ5_0: {
      const auto* b = reinterpret_cast<const BlockQ5_0*>(row);
      const int64_t nb = cols / 32;
      for (int64_t i = 0; i < nb; i += 2) Accumulate(Q5_0Chunk(b + i, i + 1 < nb), xs, nt, 32 * i, acc);
      break;
    }
    case QuantType::kQ4_K:
    case QuantType::kQ6_K: break;  // QuantMatMulVnni sends the K-quants to the AVX2 kernel
  }
  for (int t = 0; t < nt; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

// One token against 4 rows at once (decode): 8 independent accumulator chains (the A and B
// terms of each row apart) instead of one dependent pair per chunk, and each chunk of x loaded
// once for 4 rows. ChunkOf(row, c) gives chunk c (64 elements) of a row.
//
// Software prefetch: while a group of 4 rows runs, the bytes of a group kPrefetchGroups ahead
// are requested, spread evenly over the chunks (`ahead` points at them, `ahead_bytes` long, or
// is null near the end). Out of cache, without it one core read Q8_0 weights at 11 GB/s against
// 38 GB/s with the same rows in L3: the hardware prefetchers do not keep 4 row streams ahead.
template <typename ChunkOf>
void Rows4Dot(const char* const* rows, int64_t chunks, const QuantizedRow& x, const ChunkOf& chunk_of, float* out,
              const char* ahead, int64_t ahead_bytes) {
  __m512 acc_a[4], acc_b[4];
  for (int r = 0; r < 4; ++r) acc_a[r] = acc_b[r] = _mm512_setzero_ps();
  const int64_t lines = ahead == nullptr ? 0 : (ahead_bytes + 63) / 64;
  const int64_t per_chunk = (lines + chunks - 1) / chunks;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t l = c * per_chunk; l < std::min(lines, (c + 1) * per_chunk); ++l) {
      _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
    }
    const __m512i xq = _mm512_loadu_si512(x.q.data() + 64 * c);
    const __m512 dx = _mm512_loadu_ps(x.dx.data() + 16 * c);
    const __m512 sx = _mm512_loadu_ps(x.sx.data() + 16 * c);
    for (int r = 0; r < 4; ++r) {
      const Chunk ch = chunk_of(rows[r], c);
      const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ch.u, xq));
      acc_a[r] = _mm512_fmadd_ps(p, _mm512_mul_ps(ch.a, dx), acc_a[r]);
      acc_b[r] = _mm512_fmadd_ps(ch.b, sx, acc_b[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = _mm512_reduce_add_ps(_mm512_sub_ps(acc_a[r], acc_b[r]));
}

void Rows4DotAny(QuantType type, const char* const* rows, int64_t cols, const QuantizedRow& x, float* out,
                 const char* ahead, int64_t ahead_bytes) {
  const int64_t chunks = (cols + 63) / 64, nb = cols / 32;
  switch (type) {
    case QuantType::kQ8_0:
      Rows4Dot(
          rows, chunks, x,
          [nb](const char* r, int64_t c) {
            return Q8_0Chunk(reinterpret_cast<const BlockQ8_0*>(r) + 2 * c, 2 * c + 1 < nb);
          },
          out, ahead, ahead_bytes);
      break;
    case QuantType::kQ4_0:
      Rows4Dot(
          rows, chunks, x,
          [nb](const char* r, int64_t c) {
            return Q4_0Chunk(reinterpret_cast<const BlockQ4_0*>(r) + 2 * c, 2 * c + 1 < nb);
          },
          out, ahead, ahead_bytes);
      break;
    case QuantType::kQ5_0:
      Rows4Dot(
          rows, chunks, x,
          [nb](const char* r, int64_t c) {
            return Q5_0Chunk(reinterpret_cast<const BlockQ5_0*>(r) + 2 * c, 2 * c + 1 < nb);
          },
          out, ahead, ahead_bytes);
      break;
    case QuantType::kQ4_K:
    case QuantType::kQ6_K: break;  // the AVX2 kernel's (see RowDot)
  }
}

}  // namespace

// quant_avx2.cc
void QuantMatMulAvx2(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy);

void QuantMatMulVnni(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy) {
  // The K-quants take the AVX2 kernel here too: its per-32 (Q6_K per-16) scales fold into
  // vpmaddwd, where this form pays float work per 16-lane chunk. One thread, 896x4864, Zen 5 VM:
  // Q4_K 13.1 vs 11.5 GB/s, Q6_K 21.5 vs 11.3. Both round activations alike (results agree up
  // to float summation order).
  if (type == QuantType::kQ4_K || type == QuantType::kQ6_K) {
    QuantMatMulAvx2(type, w, rows, cols, x, m, ldx, y, ldy);
    return;
  }
  std::vector<QuantizedRow> xq(m);
  for (int64_t t = 0; t < m; ++t) QuantizeActivations(x + t * ldx, cols, &xq[t]);
  const int64_t rb = QuantRowBytes(type, cols);
  if (m == 1) {  // decode: rows 4 at a time
    int64_t n = 0;
    // Groups ahead: about PrefetchBytes, at least one group.
    const int64_t dist = std::max<int64_t>(1, kPrefetchBytes / (4 * rb));
    // The first groups of this range, which no earlier group prefetched.
    for (int64_t b = 0; b < std::min(rows, 4 * dist) * rb; b += 64)
      _mm_prefetch(static_cast<const char*>(w) + b, _MM_HINT_T0);
    for (; n + 4 <= rows; n += 4) {
      const char* r4[4];
      for (int r = 0; r < 4; ++r) r4[r] = static_cast<const char*>(w) + (n + r) * rb;
      const char* ahead = n + 4 * dist + 4 <= rows ? r4[0] + 4 * dist * rb : nullptr;
      float out[4];
      Rows4DotAny(type, r4, cols, xq[0], out, ahead, 4 * rb);
      for (int r = 0; r < 4; ++r) y[n + r] = out[r];
    }
    const QuantizedRow* x0 = &xq[0];
    for (; n < rows; ++n) RowDot(type, static_cast<const char*>(w) + n * rb, cols, &x0, 1, y + n);
    return;
  }
  for (int64_t t0 = 0; t0 < m; t0 += kMaxTokens) {
    const int nt = static_cast<int>(std::min<int64_t>(kMaxTokens, m - t0));
    const QuantizedRow* xs[kMaxTokens];
    for (int t = 0; t < nt; ++t) xs[t] = &xq[t0 + t];
    for (int64_t n = 0; n < rows; ++n) {
      float out[kMaxTokens];
      RowDot(type, static_cast<const char*>(w) + n * rb, cols, xs, nt, out);
      for (int t = 0; t < nt; ++t) y[(t0 + t) * ldy + n] = out[t];
    }
  }
}

}  // namespace kvferry::kernels

namespace kvferry::kernels {
namespace {

// The first n (32 or 64) weights of a chunk, w = a * u - b, as f32.
inline void StoreChunkF32(const Chunk& ch, int n, float* out) {
  for (int g = 0; g < n / 16; ++g) {
    const __m512i idx =
        _mm512_set_epi32(4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 2, 4 * g + 2, 4 * g + 2, 4 * g + 2,
                         4 * g + 1, 4 * g + 1, 4 * g + 1, 4 * g + 1, 4 * g, 4 * g, 4 * g, 4 * g);
    __m128i bytes;
    switch (g) {
      case 0: bytes = _mm512_extracti32x4_epi32(ch.u, 0); break;
      case 1: bytes = _mm512_extracti32x4_epi32(ch.u, 1); break;
      case 2: bytes = _mm512_extracti32x4_epi32(ch.u, 2); break;
      default: bytes = _mm512_extracti32x4_epi32(ch.u, 3); break;
    }
    const __m512 uf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
    _mm512_storeu_ps(out + 16 * g,
                     _mm512_fmsub_ps(_mm512_permutexvar_ps(idx, ch.a), uf, _mm512_permutexvar_ps(idx, ch.b)));
  }
}

// Calls store(chunk, n, offset) for every chunk of a row: n weights (32 or 64) at element offset.
template <typename Store>
void ForEachChunk(QuantType type, const char* row, int64_t cols, const Store& store) {
  switch (type) {
    case QuantType::kQ8_0:
    case QuantType::kQ4_0:
    case QuantType::kQ5_0: {
      const int64_t nb = cols / 32;
      for (int64_t i = 0; i < nb; i += 2) {
        const bool two = i + 1 < nb;
        const Chunk ch = type == QuantType::kQ8_0   ? Q8_0Chunk(reinterpret_cast<const BlockQ8_0*>(row) + i, two)
                         : type == QuantType::kQ4_0 ? Q4_0Chunk(reinterpret_cast<const BlockQ4_0*>(row) + i, two)
                                                    : Q5_0Chunk(reinterpret_cast<const BlockQ5_0*>(row) + i, two);
        store(ch, two ? 64 : 32, 32 * i);
      }
      break;
    }
    case QuantType::kQ4_K: {
      const auto* b = reinterpret_cast<const BlockQ4_K*>(row);
      for (int64_t i = 0; i < cols / 256; ++i) {
        const Q4KScales s = Q4KBlockScales(b[i]);
        for (int c = 0; c < 4; ++c) store(Q4KChunk(b[i], s, c), 64, 256 * i + 64 * c);
      }
      break;
    }
    case QuantType::kQ6_K: {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(row);
      for (int64_t i = 0; i < cols / 256; ++i) {
        float a16[16];
        const float d = Half(b[i].d);
        for (int j = 0; j < 16; ++j) a16[j] = d * b[i].scales[j];
        for (int c = 0; c < 4; ++c) store(Q6KChunk(b[i], a16, c), 64, 256 * i + 64 * c);
      }
      break;
    }
  }
}

}  // namespace

void DequantizeRowsF32Vnni(QuantType type, const void* w, int64_t rows, int64_t cols, float* out) {
  const int64_t rb = QuantRowBytes(type, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * cols;
    ForEachChunk(type, static_cast<const char*>(w) + r * rb, cols,
                 [o](const Chunk& ch, int n, int64_t at) { StoreChunkF32(ch, n, o + at); });
  }
}

void RoundActivationsInt8Vnni(const float* x, int64_t cols, float* out) {
  for (int64_t b = 0; b < cols; b += 32) {
    __m128i q0, q1;
    const __m512 d = _mm512_set1_ps(QuantizeBlock32(x + b, &q0, &q1));
    _mm512_storeu_ps(out + b, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0))));
    _mm512_storeu_ps(out + b + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1))));
  }
}

}  // namespace kvferry::kernels
