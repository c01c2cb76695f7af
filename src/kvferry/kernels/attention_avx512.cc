// Hand-written AVX-512 attention for one (sequence, kv head, query tile), and SwiGLU's
// silu(gate) * up, which shares the vector exp.
//
// Everything runs "transposed": the tile's query rows (query tokens x the heads that share the
// kv head) lie along the 16 vector lanes. Scores are S^T[key][row], computed as outer products
// of Q^T[d][rows] with broadcast key elements, so K needs no transposition, and the online
// softmax state (running max and sum per row) is plain per-lane vectors: max, exp and sum over
// keys are elementwise. The output accumulates as O^T[d][rows] with broadcast V elements and is
// transposed back once at the end. Keys come in chunks of kChunk, converted to f32 in scratch.
// Compiled with AVX-512 F/BW/VL/DQ flags; see kernel_table.h for the contract.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/avx512_load.h"
#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512 {
namespace {

constexpr int64_t kChunk = 64;  // keys per chunk (a multiple of 4)

inline int64_t RoundUp16(int64_t n) {
  return (n + 15) & ~int64_t{15};
}

// exp(x), Cephes-style (~1 ulp), for x clamped to [-87, 88.7]: below -87 the result is ~0.
inline __m512 ExpClamped(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// One K or V row of hd elements to f32.
inline void RowToF32(const char* src, DType dtype, int64_t hd, float* dst) {
  int64_t d = 0;
  for (; d + 16 <= hd; d += 16) _mm512_storeu_ps(dst + d, LoadF32(src, dtype, d));
  if (d < hd) _mm512_mask_storeu_ps(dst + d, FirstLanes(hd - d), LoadF32Masked(src, dtype, d, FirstLanes(hd - d)));
}

// st[l][rv0 + j] = sum_d qt[d][rv0 + j] * kf[l][d] for 4 keys l0.. and RVB row vectors.
template <int RVB>
inline void Scores4(const float* qt, int64_t r16, const float* kf, int64_t hd, int64_t l0, int64_t rv0, float* st) {
  __m512 acc[4][RVB];
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) acc[l][j] = _mm512_setzero_ps();
  const float* k0 = kf + l0 * hd;
  const float* q0 = qt + rv0 * 16;
  for (int64_t d = 0; d < hd; ++d) {
    __m512 qv[RVB];
    for (int j = 0; j < RVB; ++j) qv[j] = _mm512_loadu_ps(q0 + d * r16 + j * 16);
    for (int l = 0; l < 4; ++l) {
      const __m512 kb = _mm512_set1_ps(k0[l * hd + d]);
      for (int j = 0; j < RVB; ++j) acc[l][j] = _mm512_fmadd_ps(qv[j], kb, acc[l][j]);
    }
  }
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) _mm512_storeu_ps(st + (l0 + l) * r16 + (rv0 + j) * 16, acc[l][j]);
}

// ot[d0 + dd][rv0 + j] += sum_l st[l][rv0 + j] * vf[l][d0 + dd] for 4 dims and RVB row vectors.
template <int RVB>
inline void Pv4(const float* st, int64_t r16, const float* vf, int64_t hd, int64_t nl, int64_t d0, int64_t rv0,
                float* ot) {
  __m512 acc[4][RVB];
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) acc[dd][j] = _mm512_loadu_ps(ot + (d0 + dd) * r16 + (rv0 + j) * 16);
  for (int64_t l = 0; l < nl; ++l) {
    __m512 pv[RVB];
    for (int j = 0; j < RVB; ++j) pv[j] = _mm512_loadu_ps(st + l * r16 + (rv0 + j) * 16);
    const float* v = vf + l * hd + d0;
    for (int dd = 0; dd < 4; ++dd) {
      const __m512 vb = _mm512_set1_ps(v[dd]);
      for (int j = 0; j < RVB; ++j) acc[dd][j] = _mm512_fmadd_ps(pv[j], vb, acc[dd][j]);
    }
  }
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) _mm512_storeu_ps(ot + (d0 + dd) * r16 + (rv0 + j) * 16, acc[dd][j]);
}

template <typename F4, typename F3, typename F2, typename F1>
inline void ForRowBlocks(int64_t rv, F4 f4, F3 f3, F2 f2, F1 f1) {
  int64_t j = 0;
  for (; j + 4 <= rv; j += 4) f4(j);
  switch (rv - j) {
    case 3: f3(j); break;
    case 2: f2(j); break;
    case 1: f1(j); break;
    default: break;
  }
}

}  // namespace

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, ExpClamped(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
  }
  if (i < n) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, ExpClamped(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mask, up + i)));
  }
}

int64_t AttentionTileScratchFloats(int64_t rows, int64_t hd) {
  const int64_t r16 = RoundUp16(rows);
  return 2 * hd * r16 + kChunk * r16 + 2 * kChunk * hd + 3 * r16 + 64;
}

void AttentionTile(const AttentionTileArgs& a, float* scratch) {
  const int64_t hd = a.head_dim, group = a.group;
  const int64_t rows = a.n_queries * group;
  const int64_t r16 = RoundUp16(rows), rv = r16 / 16;
  float* qt = scratch;            // [hd][r16]  queries, pre-scaled
  float* ot = qt + hd * r16;      // [hd][r16]  output accumulator
  float* st = ot + hd * r16;      // [kChunk][r16] scores, then probabilities
  float* kf = st + kChunk * r16;  // [kChunk][hd]
  float* vf = kf + kChunk * hd;   // [kChunk][hd]
  float* mx = vf + kChunk * hd;   // [r16] running max
  float* sm = mx + r16;           // [r16] running sum
  float* qpos = sm + r16;         // [r16] each row's query position (as float)

  for (int64_t d = 0; d < hd; ++d)
    for (int64_t r = 0; r < r16; ++r) qt[d * r16 + r] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a.q + (r / group) * a.ldq + (r % group) * hd;
    for (int64_t d = 0; d < hd; ++d) qt[d * r16 + r] = src[d] * a.scale;
  }
  for (int64_t i = 0; i < hd * r16; i += 16) _mm512_storeu_ps(ot + i, _mm512_setzero_ps());
  for (int64_t r = 0; r < r16; ++r) {
    mx[r] = -3.0e38f;
    sm[r] = 0.0f;
    // Padding rows take the last query's position: finite, ignored at the end.
    qpos[r] = static_cast<float>(a.first_pos + (r < rows ? r / group : a.n_queries - 1));
  }

  const int64_t esize = a.kv_dtype == DType::kF32 ? 4 : 2;
  const char* base = static_cast<const char*>(a.kv_base);
  const float first_pos = static_cast<float>(a.first_pos);
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
      ForRowBlocks(
          rv, [&](int64_t j) { Scores4<4>(qt, r16, kf, hd, l0, j, st); },
          [&](int64_t j) { Scores4<3>(qt, r16, kf, hd, l0, j, st); },
          [&](int64_t j) { Scores4<2>(qt, r16, kf, hd, l0, j, st); },
          [&](int64_t j) { Scores4<1>(qt, r16, kf, hd, l0, j, st); });
    }
    // Causal mask: key position p is visible to rows whose query position is >= p. Only
    // chunks that reach past the first query's position (and the padding keys) need it.
    const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
    if (static_cast<float>(c0 + nc4 - 1) > first_pos || nc4 != nc) {
      for (int64_t l = 0; l < nc4; ++l) {
        const __m512 p = _mm512_set1_ps(l < nc ? static_cast<float>(c0 + l) : 3.0e38f);
        for (int64_t j = 0; j < rv; ++j) {
          const __mmask16 hide = _mm512_cmp_ps_mask(_mm512_loadu_ps(qpos + j * 16), p, _CMP_LT_OQ);
          float* s = st + l * r16 + j * 16;
          _mm512_storeu_ps(s, _mm512_mask_mov_ps(_mm512_loadu_ps(s), hide, neg_inf));
        }
      }
    }
    // Online softmax, per lane.
    for (int64_t j = 0; j < rv; ++j) {
      const __m512 m_old = _mm512_loadu_ps(mx + j * 16);
      __m512 m_new = m_old;
      for (int64_t l = 0; l < nc4; ++l) m_new = _mm512_max_ps(m_new, _mm512_loadu_ps(st + l * r16 + j * 16));
      const __m512 alpha = ExpClamped(_mm512_sub_ps(m_old, m_new));
      __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(sm + j * 16), alpha);
      for (int64_t d = 0; d < hd; ++d) {
        float* o = ot + d * r16 + j * 16;
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), alpha));
      }
      for (int64_t l = 0; l < nc4; ++l) {
        float* s = st + l * r16 + j * 16;
        const __m512 e = ExpClamped(_mm512_sub_ps(_mm512_loadu_ps(s), m_new));
        // -inf - m_new clamps to exp(-87) ~ 2e-38: zero it exactly where the mask hid the key.
        const __m512 pr = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(s), neg_inf, _CMP_NEQ_OQ), e);
        _mm512_storeu_ps(s, pr);
        sum = _mm512_add_ps(sum, pr);
      }
      _mm512_storeu_ps(sm + j * 16, sum);
      _mm512_storeu_ps(mx + j * 16, m_new);
    }
    for (int64_t d0 = 0; d0 < hd; d0 += 4) {
      ForRowBlocks(
          rv, [&](int64_t j) { Pv4<4>(st, r16, vf, hd, nc4, d0, j, ot); },
          [&](int64_t j) { Pv4<3>(st, r16, vf, hd, nc4, d0, j, ot); },
          [&](int64_t j) { Pv4<2>(st, r16, vf, hd, nc4, d0, j, ot); },
          [&](int64_t j) { Pv4<1>(st, r16, vf, hd, nc4, d0, j, ot); });
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = a.out + (r / group) * a.ldo + (r % group) * hd;
    const float inv = 1.0f / sm[r];
    for (int64_t d = 0; d < hd; ++d) dst[d] = ot[d * r16 + r] * inv;
  }
}

}  // namespace kvferry::kernels::avx512
