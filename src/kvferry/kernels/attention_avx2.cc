// Hand-written AVX2 attention for one (sequence, kv head, query tile): the AVX-512 tile's scheme
// (attention_avx512.cc) on 8-lane vectors. The tile's query rows (query tokens x the heads that
// share the kv head) lie along the lanes; scores are S^T[key][row], outer products of Q^T[d][rows]
// with broadcast key elements, so K needs no transposition; the online softmax state is per-lane
// vectors; the output accumulates as O^T[d][rows] and is transposed back once at the end. This
// replaced the portable path, which transposed each key with scalar stores, ran the softmax
// bookkeeping scalar and took 16 keys a chunk: on the Zen 5 VM with KVFERRY_ISA=avx2 it spent
// 4.1 ms of a 27 ms decode step and 23% of a 512-token prefill in attention. Register blocks are
// at most 2 row vectors by 4 keys or 4 dims (AVX2 has 16 vector registers).
// Compiled with AVX2 + FMA + F16C flags; see kernel_table.h for the contract.

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx2 {
namespace {

constexpr int64_t kChunk = 64;  // keys per chunk (a multiple of 4)

inline int64_t RoundUp8(int64_t n) {
  return (n + 7) & ~int64_t{7};
}

// exp(x), Cephes-style, for x clamped to [-87, 88]: below -87 the result is ~0. The same
// polynomial as the AVX-512 kernel; 2^n is built in the exponent field (n in [-126, 127]).
inline __m256 ExpClamped(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// One K or V row of hd elements (bf16, f16 or f32) to f32.
inline void RowToF32(const char* src, DType dtype, int64_t hd, float* dst) {
  int64_t d = 0;
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(hd) * sizeof(float));
    return;
  }
  const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
  if (dtype == DType::kBF16) {
    for (; d + 8 <= hd; d += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + d));
      _mm256_storeu_ps(dst + d, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)));
    }
    for (; d < hd; ++d) {
      const uint32_t bits = static_cast<uint32_t>(h[d]) << 16;
      std::memcpy(dst + d, &bits, sizeof(bits));
    }
    return;
  }
  for (; d + 8 <= hd; d += 8) {
    _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + d))));
  }
  for (; d < hd; ++d) dst[d] = _cvtsh_ss(h[d]);
}

// st[l][rv0 * 8 + ..] = sum_d qt[d][..] * kf[l][d] for 4 keys l0.. and RVB row vectors.
template <int RVB>
inline void Scores4(const float* qt, int64_t r8, const float* kf, int64_t hd, int64_t l0, int64_t rv0, float* st) {
  __m256 acc[4][RVB];
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) acc[l][j] = _mm256_setzero_ps();
  const float* k0 = kf + l0 * hd;
  const float* q0 = qt + rv0 * 8;
  for (int64_t d = 0; d < hd; ++d) {
    __m256 qv[RVB];
    for (int j = 0; j < RVB; ++j) qv[j] = _mm256_loadu_ps(q0 + d * r8 + j * 8);
    for (int l = 0; l < 4; ++l) {
      const __m256 kb = _mm256_broadcast_ss(k0 + l * hd + d);
      for (int j = 0; j < RVB; ++j) acc[l][j] = _mm256_fmadd_ps(qv[j], kb, acc[l][j]);
    }
  }
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) _mm256_storeu_ps(st + (l0 + l) * r8 + (rv0 + j) * 8, acc[l][j]);
}

// ot[d0 + dd][..] += sum_l st[l][..] * vf[l][d0 + dd] for 4 dims and RVB row vectors.
template <int RVB>
inline void Pv4(const float* st, int64_t r8, const float* vf, int64_t hd, int64_t nl, int64_t d0, int64_t rv0,
                float* ot) {
  __m256 acc[4][RVB];
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) acc[dd][j] = _mm256_loadu_ps(ot + (d0 + dd) * r8 + (rv0 + j) * 8);
  for (int64_t l = 0; l < nl; ++l) {
    __m256 pv[RVB];
    for (int j = 0; j < RVB; ++j) pv[j] = _mm256_loadu_ps(st + l * r8 + (rv0 + j) * 8);
    const float* v = vf + l * hd + d0;
    for (int dd = 0; dd < 4; ++dd) {
      const __m256 vb = _mm256_broadcast_ss(v + dd);
      for (int j = 0; j < RVB; ++j) acc[dd][j] = _mm256_fmadd_ps(pv[j], vb, acc[dd][j]);
    }
  }
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) _mm256_storeu_ps(ot + (d0 + dd) * r8 + (rv0 + j) * 8, acc[dd][j]);
}

}  // namespace

int64_t AttentionTileScratchFloats(int64_t rows, int64_t hd) {
  const int64_t r8 = RoundUp8(rows);
  return 2 * hd * r8 + kChunk * r8 + 2 * kChunk * hd + 3 * r8 + 32;
}

void AttentionTile(const AttentionTileArgs& a, float* scratch) {
  const int64_t hd = a.head_dim, group = a.group;
  const int64_t rows = a.n_queries * group;
  const int64_t r8 = RoundUp8(rows), rv = r8 / 8;
  float* qt = scratch;           // [hd][r8]  queries, pre-scaled
  float* ot = qt + hd * r8;      // [hd][r8]  output accumulator
  float* st = ot + hd * r8;      // [kChunk][r8] scores, then probabilities
  float* kf = st + kChunk * r8;  // [kChunk][hd]
  float* vf = kf + kChunk * hd;  // [kChunk][hd]
  float* mx = vf + kChunk * hd;  // [r8] running max
  float* sm = mx + r8;           // [r8] running sum
  float* qpos = sm + r8;         // [r8] each row's query position (as float)

  for (int64_t d = 0; d < hd; ++d)
    for (int64_t r = 0; r < r8; ++r) qt[d * r8 + r] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a.q + (r / group) * a.ldq + (r % group) * hd;
    for (int64_t d = 0; d < hd; ++d) qt[d * r8 + r] = src[d] * a.scale;
  }
  for (int64_t i = 0; i < hd * r8; i += 8) _mm256_storeu_ps(ot + i, _mm256_setzero_ps());
  for (int64_t r = 0; r < r8; ++r) {
    mx[r] = -3.0e38f;
    sm[r] = 0.0f;
    // Padding rows take the last query's position: finite, ignored at the end.
    qpos[r] = static_cast<float>(a.first_pos + (r < rows ? r / group : a.n_queries - 1));
  }

  const int64_t esize = a.kv_dtype == DType::kF32 ? 4 : 2;
  const char* base = static_cast<const char*>(a.kv_base);
  const float first_pos = static_cast<float>(a.first_pos);
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  for (int64_t c0 = 0; c0 < a.n_keys; c0 += kChunk) {
    const int64_t nc = a.n_keys - c0 < kChunk ? a.n_keys - c0 : kChunk;
    const int64_t nc4 = (nc + 3) & ~int64_t{3};
    for (int64_t l = 0; l < nc4; ++l) {
      if (l < nc) {
        const int64_t p = c0 + l;
        const char* blk = base + static_cast<int64_t>(a.block_table[p / a.block_size]) * a.block_bytes;
        const int64_t off = (p % a.block_size) * hd;
        RowToF32(blk + (a.k_offset + off) * esize, a.kv_dtype, hd, kf + l * hd);
        RowToF32(blk + (a.v_offset + off) * esize, a.kv_dtype, hd, vf + l * hd);
        // The cache is read once per step (decode): fetch the next chunk's rows meanwhile.
        const int64_t pn = p + kChunk;
        if (pn < a.n_keys) {
          const char* nb = base + static_cast<int64_t>(a.block_table[pn / a.block_size]) * a.block_bytes;
          const int64_t noff = (pn % a.block_size) * hd;
          for (int64_t byte = 0; byte < hd * esize; byte += 64) {
            _mm_prefetch(nb + (a.k_offset + noff) * esize + byte, _MM_HINT_T0);
            _mm_prefetch(nb + (a.v_offset + noff) * esize + byte, _MM_HINT_T0);
          }
        }
      } else {
        for (int64_t d = 0; d < hd; ++d) kf[l * hd + d] = vf[l * hd + d] = 0.0f;
      }
    }
    for (int64_t l0 = 0; l0 < nc4; l0 += 4) {
      int64_t j = 0;
      for (; j + 2 <= rv; j += 2) Scores4<2>(qt, r8, kf, hd, l0, j, st);
      if (j < rv) Scores4<1>(qt, r8, kf, hd, l0, j, st);
    }
    // Causal mask: key position p is visible to rows whose query position is >= p. Only
    // chunks that reach past the first query's position (and the padding keys) need it.
    if (static_cast<float>(c0 + nc4 - 1) > first_pos || nc4 != nc) {
      for (int64_t l = 0; l < nc4; ++l) {
        const __m256 p = _mm256_set1_ps(l < nc ? static_cast<float>(c0 + l) : 3.0e38f);
        for (int64_t j = 0; j < rv; ++j) {
          const __m256 hide = _mm256_cmp_ps(_mm256_loadu_ps(qpos + j * 8), p, _CMP_LT_OQ);
          float* s = st + l * r8 + j * 8;
          _mm256_storeu_ps(s, _mm256_blendv_ps(_mm256_loadu_ps(s), neg_inf, hide));
        }
      }
    }
    // Online softmax, per lane.
    for (int64_t j = 0; j < rv; ++j) {
      const __m256 m_old = _mm256_loadu_ps(mx + j * 8);
      __m256 m_new = m_old;
      for (int64_t l = 0; l < nc4; ++l) m_new = _mm256_max_ps(m_new, _mm256_loadu_ps(st + l * r8 + j * 8));
      const __m256 alpha = ExpClamped(_mm256_sub_ps(m_old, m_new));
      __m256 sum = _mm256_mul_ps(_mm256_loadu_ps(sm + j * 8), alpha);
      for (int64_t d = 0; d < hd; ++d) {
        float* o = ot + d * r8 + j * 8;
        _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_loadu_ps(o), alpha));
      }
      for (int64_t l = 0; l < nc4; ++l) {
        float* s = st + l * r8 + j * 8;
        const __m256 sv = _mm256_loadu_ps(s);
        const __m256 e = ExpClamped(_mm256_sub_ps(sv, m_new));
        // -inf - m_new clamps to exp(-87) ~ 2e-38: zero it exactly where the mask hid the key.
        const __m256 pr = _mm256_and_ps(_mm256_cmp_ps(sv, neg_inf, _CMP_NEQ_OQ), e);
        _mm256_storeu_ps(s, pr);
        sum = _mm256_add_ps(sum, pr);
      }
      _mm256_storeu_ps(sm + j * 8, sum);
      _mm256_storeu_ps(mx + j * 8, m_new);
    }
    for (int64_t d0 = 0; d0 < hd; d0 += 4) {
      int64_t j = 0;
      for (; j + 2 <= rv; j += 2) Pv4<2>(st, r8, vf, hd, nc4, d0, j, ot);
      if (j < rv) Pv4<1>(st, r8, vf, hd, nc4, d0, j, ot);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = a.out + (r / group) * a.ldo + (r % group) * hd;
    const float inv = 1.0f / sm[r];
    for (int64_t d = 0; d < hd; ++d) dst[d] = ot[d * r8 + r] * inv;
  }
}

}  // namespace kvferry::kernels::avx2
