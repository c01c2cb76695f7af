// QuantMatMulAvx2: quantized weights times f32 activations with AVX2 int8 dot products, for
// CPUs without AVX-512 VNNI (and the avx2 / avx512 levels of KVFERRY_ISA).
//
// Activations are quantized exactly as the VNNI kernel does (quant_avx512.cc): per 32
// elements dx = amax / 127 and xq = round-to-nearest-even(x * 127 / amax), saturated to int8,
// so both kernels compute the same exact integer dot product of each 32-block and differ only
// in the order of the float sums.
//
// Each 32-element block of a weight row gives 8 int32 lanes P (lane i: the exact sum over
// elements 4i..4i+3 of q * xq, q the signed weight integer), from vpmaddubsw (unsigned bytes
// times signed bytes, pairs summed to int16) and vpmaddwd (pairs of int16 to int32):
//   Q8_0        |q| times xq with q's sign (vpsignb): 255 * 127 * 2 would overflow int16.
//   Q4_0, Q5_0  u times xq minus c times the pair sums of xq, in int16 (q = u - c, c = 8, 16).
//   Q6_K        the same with c = 32; vpmaddwd multiplies by the 16-element group's scale.
//   Q4_K        u times xq (q = u); the min term dmin * m * dx * sum(xq) is added per block.
// then acc += float(P) * (block scale * dx). Compiled with AVX2 + FMA + F16C flags only;
// called only when the CPU has them.

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"

namespace kvferry::kernels {
namespace {

constexpr int kMaxTokens = 4;  // token rows that share one pass over the weights

// How far ahead decode prefetches weights (bytes, rounded to whole groups of 4 rows, at least
// one group): the VNNI kernel's figure.
constexpr int64_t kPrefetchBytes = 8192;

inline float Half(uint16_t h) {
  return _cvtsh_ss(h);
}

inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float Max8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One token's activations, quantized (cols is a multiple of 32).
struct QuantizedRow {
  std::vector<int8_t> q;  // xq
  std::vector<float> dx;  // per block of 32
  std::vector<float> sx;  // per block: dx * sum of its xq
};

void QuantizeActivations(const float* x, int64_t cols, QuantizedRow* out) {
  const int64_t nb = cols / 32;
  out->q.resize(cols);
  out->dx.resize(nb);
  out->sx.resize(nb);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                   _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    const float amax = Max8(m);
    const float d = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)));
    // Saturating packs (32 -> 16 -> 8 bits, as vpmovsdb) work per 128-bit lane: restore the order.
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    const __m256i xq = _mm256_permutevar8x32_epi32(packed, order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->q.data() + 32 * b), xq);
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, xq), ones16);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    out->dx[b] = d;
    out->sx[b] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

// The weights of one 32-element block: bytes u (unsigned) for vpmaddubsw, the int16
// multipliers for vpmaddwd (ones, or Q6_K's group scales), the float scale a and (Q4_K) the
// min term's scale b.
struct Weights {
  __m256i u, q, mul;  // q: the signed values whose signs vpsignb applies (Q8_0 only)
  float a, b;
};

// The per-type pieces. kBlocks: 32-element blocks per storage block; kShift: log2 of the
// offset c of q = u - c (-1: none); kSigned: the sign trick (Q8_0); kMin: a min term (Q4_K).
// Prepare decodes what a storage block shares; Block(pre, j) gives its 32-block j.
struct Q8_0Ops {
  static constexpr int kBlocks = 1, kShift = -1;
  static constexpr bool kSigned = true, kMin = false;
  static constexpr int64_t kBytes = sizeof(BlockQ8_0);
  using Pre = const BlockQ8_0*;
  static Pre Prepare(const char* row, int64_t s) { return reinterpret_cast<const BlockQ8_0*>(row) + s; }
  static Weights Block(Pre b, int) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs));
    return {_mm256_abs_epi8(q), q, _mm256_set1_epi16(1), Half(b->d), 0.0f};
  }
};

// 16 bytes of nibble pairs: the low nibbles (elements 0..15), then the high ones (16..31).
inline __m256i NibbleBytes(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0f));
}

struct Q4_0Ops {
  static constexpr int kBlocks = 1, kShift = 3;
  static constexpr bool kSigned = false, kMin = false;
  static constexpr int64_t kBytes = sizeof(BlockQ4_0);
  using Pre = const BlockQ4_0*;
  static Pre Prepare(const char* row, int64_t s) { return reinterpret_cast<const BlockQ4_0*>(row) + s; }
  static Weights Block(Pre b, int) {
    const __m256i u = NibbleBytes(b->qs);
    return {u, u, _mm256_set1_epi16(1), Half(b->d), 0.0f};
  }
};

struct Q5_0Ops {
  static constexpr int kBlocks = 1, kShift = 4;
  static constexpr bool kSigned = false, kMin = false;
  static constexpr int64_t kBytes = sizeof(BlockQ5_0);
  using Pre = const BlockQ5_0*;
  static Pre Prepare(const char* row, int64_t s) { return reinterpret_cast<const BlockQ5_0*>(row) + s; }
  static Weights Block(Pre b, int) {
    uint32_t qh;
    std::memcpy(&qh, b->qh, 4);
    // Byte i gets byte i / 8 of qh, then its bit i % 8 becomes 0x10.
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(static_cast<int>(qh)),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
    const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
    const __m256i high =
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
    const __m256i u = _mm256_or_si256(NibbleBytes(b->qs), high);
    return {u, u, _mm256_set1_epi16(1), Half(b->d), 0.0f};
  }
};

struct Q4KOps {
  static constexpr int kBlocks = 8, kShift = -1;
  static constexpr bool kSigned = false, kMin = true;
  static constexpr int64_t kBytes = sizeof(BlockQ4_K);
  struct Pre {
    const BlockQ4_K* b;
    float a[8], m[8];  // d * sc and dmin * m of the 8 sub-blocks
  };
  static Pre Prepare(const char* row, int64_t s) {
    Pre p;
    p.b = reinterpret_cast<const BlockQ4_K*>(row) + s;
    const float d = Half(p.b->d), dmin = Half(p.b->dmin);
    const uint8_t* q = p.b->scales;  // the packing of Q4KScaleMin
    for (int j = 0; j < 4; ++j) {
      p.a[j] = d * static_cast<float>(q[j] & 63);
      p.m[j] = dmin * static_cast<float>(q[j + 4] & 63);
      p.a[j + 4] = d * static_cast<float>((q[j + 8] & 15) | ((q[j] >> 6) << 4));
      p.m[j + 4] = dmin * static_cast<float>((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
    }
    return p;
  }
  static Weights Block(const Pre& p, int j) {
    // Sub-blocks 2c and 2c + 1 are the low and high nibbles of qs[32c .. 32c + 31].
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b->qs + 32 * (j / 2)));
    const __m256i u = _mm256_and_si256(j % 2 == 0 ? q : _mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0f));
    return {u, u, _mm256_set1_epi16(1), p.a[j], p.m[j]};
  }
};

struct Q6KOps {
  static constexpr int kBlocks = 8, kShift = 5;
  static constexpr bool kSigned = false, kMin = false;
  static constexpr int64_t kBytes = sizeof(BlockQ6_K);
  struct Pre {
    const BlockQ6_K* b;
    __m256i sc;  // the 16 group scales as int16
    float d;
  };
  static Pre Prepare(const char* row, int64_t s) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(row) + s;
    return {b, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales))), Half(b->d)};
  }
  static Weights Block(const Pre& p, int j) {
    // 32-block j = 4h + sub of half h: low 4 bits from ql[64h + 32 (sub & 1) + l] (nibble
    // sub >> 1), high 2 from qh[32h + l] (bits 2 sub, 2 sub + 1).
    const int h = j / 4, sub = j % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b->ql + 64 * h + 32 * (sub & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b->qh + 32 * h));
    const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (sub >> 1)), _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * sub), _mm256_set1_epi8(0x03));
    const __m256i u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    // Scales 2j (elements 0..15: the low 128 bits of the int16 pairs) and 2j + 1, each
    // broadcast over its half: int32 lane j holds both.
    const __m256i pair = _mm256_permutevar8x32_epi32(p.sc, _mm256_set1_epi32(j));
    const __m256i mul = _mm256_shuffle_epi8(
        pair, _mm256_set_epi64x(0x0302030203020302, 0x0302030203020302, 0x0100010001000100, 0x0100010001000100));
    return {u, u, mul, p.d, 0.0f};
  }
};

// The exact integer sums (8 lanes of 4 elements) of q * xq for one block and one token; xoff:
// the pair sums of xq shifted by kShift.
template <typename K>
inline __m256i IntDot(const Weights& w, __m256i xq, __m256i xoff) {
  __m256i p16;
  if constexpr (K::kSigned) {
    p16 = _mm256_maddubs_epi16(w.u, _mm256_sign_epi8(xq, w.q));
  } else {
    p16 = _mm256_maddubs_epi16(w.u, xq);
    if constexpr (K::kShift >= 0) p16 = _mm256_sub_epi16(p16, xoff);
  }
  return _mm256_madd_epi16(p16, w.mul);
}

// R weight rows against T tokens: out[r * T + t]. Each block of x is loaded once for the R
// rows, each block of weights unpacked once for the T tokens; R * T independent accumulators.
//
// Software prefetch (decode): the `ahead_bytes` at `ahead` (a group of rows further on, or
// null) are requested spread evenly over the storage blocks, as the VNNI kernel's Rows4Dot.
template <typename K, int R, int T>
void RowsDot(const char* const* rows, int64_t nsuper, const QuantizedRow* const* xs, float* out, const char* ahead,
             int64_t ahead_bytes) {
  __m256 acc[R][T];
  float accb[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps(), accb[r][t] = 0.0f;
  const int64_t lines = ahead == nullptr ? 0 : (ahead_bytes + 63) / 64;
  const int64_t per_super = (lines + nsuper - 1) / nsuper;
  const __m256i ones8 = _mm256_set1_epi8(1);
  for (int64_t s = 0; s < nsuper; ++s) {
    for (int64_t l = s * per_super; l < std::min(lines, (s + 1) * per_super); ++l) {
      _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
    }
    typename K::Pre pre[R];
    for (int r = 0; r < R; ++r) pre[r] = K::Prepare(rows[r], s);
    for (int j = 0; j < K::kBlocks; ++j) {
      const int64_t blk = s * K::kBlocks + j;
      __m256i xq[T], xoff[T];
      float dx[T];
      for (int t = 0; t < T; ++t) {
        xq[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs[t]->q.data() + 32 * blk));
        dx[t] = xs[t]->dx[blk];
        if constexpr (K::kShift >= 0) {
          xoff[t] = _mm256_slli_epi16(_mm256_maddubs_epi16(ones8, xq[t]), K::kShift);
        } else {
          xoff[t] = xq[t];  // unused
        }
      }
      for (int r = 0; r < R; ++r) {
        const Weights w = K::Block(pre[r], j);
        for (int t = 0; t < T; ++t) {
          const __m256 p = _mm256_cvtepi32_ps(IntDot<K>(w, xq[t], xoff[t]));
          acc[r][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(w.a * dx[t]), acc[r][t]);
          if constexpr (K::kMin) accb[r][t] += w.b * xs[t]->sx[blk];
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[r * T + t] = Sum8(acc[r][t]) - accb[r][t];
}

template <typename K>
void MatMul(const char* w, int64_t rows, int64_t cols, const std::vector<QuantizedRow>& xq, int64_t m, float* y,
            int64_t ldy) {
  const int64_t nsuper = cols / (32 * K::kBlocks), rb = nsuper * K::kBytes;
  if (m == 1) {  // decode: rows 4 at a time
    const QuantizedRow* x0 = &xq[0];
    // Groups ahead: about kPrefetchBytes, at least one group; and the first groups of this
    // range, which no earlier group prefetched.
    const int64_t dist = std::max<int64_t>(1, kPrefetchBytes / (4 * rb));
    for (int64_t b = 0; b < std::min(rows, 4 * dist) * rb; b += 64) _mm_prefetch(w + b, _MM_HINT_T0);
    int64_t n = 0;
    for (; n + 4 <= rows; n += 4) {
      const char* r4[4];
      for (int r = 0; r < 4; ++r) r4[r] = w + (n + r) * rb;
      const char* ahead = n + 4 * dist + 4 <= rows ? r4[0] + 4 * dist * rb : nullptr;
      RowsDot<K, 4, 1>(r4, nsuper, &x0, y + n, ahead, 4 * rb);
    }
    for (; n < rows; ++n) {
      const char* r1 = w + n * rb;
      RowsDot<K, 1, 1>(&r1, nsuper, &x0, y + n, nullptr, 0);
    }
    return;
  }
  for (int64_t t0 = 0; t0 < m; t0 += kMaxTokens) {
    const int nt = static_cast<int>(std::min<int64_t>(kMaxTokens, m - t0));
    const QuantizedRow* xs[kMaxTokens];
    for (int t = 0; t < nt; ++t) xs[t] = &xq[t0 + t];
    for (int64_t n = 0; n < rows; ++n) {
      const char* row = w + n * rb;
      float out[kMaxTokens];
      switch (nt) {
        case 1: RowsDot<K, 1, 1>(&row, nsuper, xs, out, nullptr, 0); break;
        case 2: RowsDot<K, 1, 2>(&row, nsuper, xs, out, nullptr, 0); break;
        case 3: RowsDot<K, 1, 3>(&row, nsuper, xs, out, nullptr, 0); break;
        default: RowsDot<K, 1, 4>(&row, nsuper, xs, out, nullptr, 0); break;
      }
      for (int t = 0; t < nt; ++t) y[(t0 + t) * ldy + n] = out[t];
    }
  }
}

}  // namespace

void QuantMatMulAvx2(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy) {
  std::vector<QuantizedRow> xq(m);
  for (int64_t t = 0; t < m; ++t) QuantizeActivations(x + t * ldx, cols, &xq[t]);
  const char* wb = static_cast<const char*>(w);
  switch (type) {
    case QuantType::kQ8_0: MatMul<Q8_0Ops>(wb, rows, cols, xq, m, y, ldy); break;
    case QuantType::kQ4_0: MatMul<Q4_0Ops>(wb, rows, cols, xq, m, y, ldy); break;
    case QuantType::kQ5_0: MatMul<Q5_0Ops>(wb, rows, cols, xq, m, y, ldy); break;
    case QuantType::kQ4_K: MatMul<Q4KOps>(wb, rows, cols, xq, m, y, ldy); break;
    case QuantType::kQ6_K: MatMul<Q6KOps>(wb, rows, cols, xq, m, y, ldy); break;
  }
}

}  // namespace kvferry::kernels
