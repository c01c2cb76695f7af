// The attention tile of the AVX-512 and AVX2 kernels (attention_avx512.cc, attention_avx2.cc):
// one (sequence, kv head, query tile), written once over a vector type V.
//
// Everything runs "transposed": the tile's query rows (query tokens x the heads that share the
// kv head) lie along the vector lanes. Scores are S^T[key][row], computed as outer products of
// Q^T[d][rows] with broadcast key elements, so K needs no transposition, and the online softmax
// state (running max and sum per row) is plain per-lane vectors: max, exp and sum over keys are
// elementwise. The output accumulates as O^T[d][rows] with broadcast V elements and is transposed
// back once at the end. Keys come in chunks of kTileKeys, converted to f32 in scratch.
//
// V provides: Vec, kLanes, kMaxBlock (row vectors per register block: 4 with 32 vector
// registers, 2 with 16), Zero, Load, Store, Set1, Broadcast, Fma(a, b, acc) = a * b + acc, Mul,
// Add, Sub, Max, Exp (clamped to [-87, 88]), Hide(s, qpos, p) (s, with -inf in the lanes whose
// query position is below p), DropHidden(e, s) (e, with 0 in the lanes where s is -inf) and
// RowToF32 (one K or V row of hd elements to f32).
// Header-only with internal linkage on purpose, like stream_prefetch.h: each ISA's TU compiles
// its own copy with its own flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels {
namespace {  // NOLINT(build/namespaces): one copy per ISA translation unit, see above

constexpr int64_t kTileKeys = 64;  // keys per chunk (a multiple of 4)

// A register block of N row vectors, as a type (TileRowBlocks hands it to a generic lambda).
template <int N>
struct RowBlock {
  static constexpr int value = N;
};

template <class V>
inline int64_t RoundUpLanes(int64_t n) {
  return (n + V::kLanes - 1) / V::kLanes * V::kLanes;
}

// st[l][rv0 lanes + ..] = sum_d qt[d][..] * kf[l][d] for 4 keys l0.. and RVB row vectors.
template <class V, int RVB>
inline void TileScores4(const float* qt, int64_t rl, const float* kf, int64_t hd, int64_t l0, int64_t rv0, float* st) {
  typename V::Vec acc[4][RVB];
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) acc[l][j] = V::Zero();
  const float* k0 = kf + l0 * hd;
  const float* q0 = qt + rv0 * V::kLanes;
  for (int64_t d = 0; d < hd; ++d) {
    typename V::Vec qv[RVB];
    for (int j = 0; j < RVB; ++j) qv[j] = V::Load(q0 + d * rl + j * V::kLanes);
    for (int l = 0; l < 4; ++l) {
      const typename V::Vec kb = V::Broadcast(k0 + l * hd + d);
      for (int j = 0; j < RVB; ++j) acc[l][j] = V::Fma(qv[j], kb, acc[l][j]);
    }
  }
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < RVB; ++j) V::Store(st + (l0 + l) * rl + (rv0 + j) * V::kLanes, acc[l][j]);
}

// ot[d0 + dd][rv0 lanes + ..] += sum_l st[l][..] * vf[l][d0 + dd] for 4 dims and RVB row vectors.
template <class V, int RVB>
inline void TilePv4(const float* st, int64_t rl, const float* vf, int64_t hd, int64_t nl, int64_t d0, int64_t rv0,
                    float* ot) {
  typename V::Vec acc[4][RVB];
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) acc[dd][j] = V::Load(ot + (d0 + dd) * rl + (rv0 + j) * V::kLanes);
  for (int64_t l = 0; l < nl; ++l) {
    typename V::Vec pv[RVB];
    for (int j = 0; j < RVB; ++j) pv[j] = V::Load(st + l * rl + (rv0 + j) * V::kLanes);
    const float* v = vf + l * hd + d0;
    for (int dd = 0; dd < 4; ++dd) {
      const typename V::Vec vb = V::Broadcast(v + dd);
      for (int j = 0; j < RVB; ++j) acc[dd][j] = V::Fma(pv[j], vb, acc[dd][j]);
    }
  }
  for (int dd = 0; dd < 4; ++dd)
    for (int j = 0; j < RVB; ++j) V::Store(ot + (d0 + dd) * rl + (rv0 + j) * V::kLanes, acc[dd][j]);
}

// f(RVB-constant, j) over the rv row vectors in register blocks of V::kMaxBlock, then the rest.
template <class V, class F>
inline void TileRowBlocks(int64_t rv, F f) {
  int64_t j = 0;
  for (; j + V::kMaxBlock <= rv; j += V::kMaxBlock) f(RowBlock<V::kMaxBlock>{}, j);
  const int64_t left = rv - j;
  if constexpr (V::kMaxBlock > 3) {
    if (left == 3) return f(RowBlock<3>{}, j);
  }
  if constexpr (V::kMaxBlock > 2) {
    if (left == 2) return f(RowBlock<2>{}, j);
  }
  if (left == 1) f(RowBlock<1>{}, j);
}

// Key p's K and V rows (the kv head's, from the pages) as f32 in kr and vr, and a prefetch of
// key p + ahead's rows: the cache is read once a step (decode), so the next chunk's keys are
// fetched while this one is computed.
template <class V>
inline void KeyRowsToF32(const AttentionTileArgs& a, int64_t p, int64_t ahead, float* kr, float* vr) {
  const int64_t hd = a.head_dim, esize = a.kv_dtype == DType::kF32 ? 4 : 2;
  const char* base = static_cast<const char*>(a.kv_base);
  const char* blk = base + static_cast<int64_t>(a.block_table[p / a.block_size]) * a.block_bytes;
  const int64_t off = (p % a.block_size) * hd;
  V::RowToF32(blk + (a.k_offset + off) * esize, a.kv_dtype, hd, kr);
  V::RowToF32(blk + (a.v_offset + off) * esize, a.kv_dtype, hd, vr);
  const int64_t pn = p + ahead;
  if (pn < a.n_keys) {
    const char* nb = base + static_cast<int64_t>(a.block_table[pn / a.block_size]) * a.block_bytes;
    const int64_t noff = (pn % a.block_size) * hd;
    for (int64_t byte = 0; byte < hd * esize; byte += 64) {
      _mm_prefetch(nb + (a.k_offset + noff) * esize + byte, _MM_HINT_T0);
      _mm_prefetch(nb + (a.v_offset + noff) * esize + byte, _MM_HINT_T0);
    }
  }
}

template <class V>
inline int64_t TileScratchFloats(int64_t rows, int64_t hd) {
  const int64_t rl = RoundUpLanes<V>(rows);
  return 2 * hd * rl + kTileKeys * rl + 2 * kTileKeys * hd + 3 * rl + 64;
}

template <class V>
void Tile(const AttentionTileArgs& a, float* scratch) {
  using Vec = typename V::Vec;
  constexpr int64_t kL = V::kLanes;
  const int64_t hd = a.head_dim, group = a.group;
  const int64_t rows = a.n_queries * group;
  const int64_t rl = RoundUpLanes<V>(rows), rv = rl / kL;
  float* qt = scratch;              // [hd][rl]  queries, pre-scaled
  float* ot = qt + hd * rl;         // [hd][rl]  output accumulator
  float* st = ot + hd * rl;         // [kTileKeys][rl] scores, then probabilities
  float* kf = st + kTileKeys * rl;  // [kTileKeys][hd]
  float* vf = kf + kTileKeys * hd;  // [kTileKeys][hd]
  float* mx = vf + kTileKeys * hd;  // [rl] running max
  float* sm = mx + rl;              // [rl] running sum
  float* qpos = sm + rl;            // [rl] each row's query position (as float)

  for (int64_t d = 0; d < hd; ++d)
    for (int64_t r = 0; r < rl; ++r) qt[d * rl + r] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a.q + (r / group) * a.ldq + (r % group) * hd;
    for (int64_t d = 0; d < hd; ++d) qt[d * rl + r] = src[d] * a.scale;
  }
  for (int64_t i = 0; i < hd * rl; i += kL) V::Store(ot + i, V::Zero());
  for (int64_t r = 0; r < rl; ++r) {
    mx[r] = -3.0e38f;
    sm[r] = 0.0f;
    // Padding rows take the last query's position: finite, ignored at the end.
    qpos[r] = static_cast<float>(a.first_pos + (r < rows ? r / group : a.n_queries - 1));
  }

  const float first_pos = static_cast<float>(a.first_pos);
  for (int64_t c0 = 0; c0 < a.n_keys; c0 += kTileKeys) {
    const int64_t nc = a.n_keys - c0 < kTileKeys ? a.n_keys - c0 : kTileKeys;
    const int64_t nc4 = (nc + 3) & ~int64_t{3};
    for (int64_t l = 0; l < nc4; ++l) {
      if (l < nc) {
        KeyRowsToF32<V>(a, c0 + l, kTileKeys, kf + l * hd, vf + l * hd);
      } else {
        for (int64_t d = 0; d < hd; ++d) kf[l * hd + d] = vf[l * hd + d] = 0.0f;
      }
    }
    for (int64_t l0 = 0; l0 < nc4; l0 += 4) {
      TileRowBlocks<V>(rv,
                       [&](auto rvb, int64_t j) { TileScores4<V, decltype(rvb)::value>(qt, rl, kf, hd, l0, j, st); });
    }
    // Causal mask: key position p is visible to rows whose query position is >= p. Only
    // chunks that reach past the first query's position (and the padding keys) need it.
    if (static_cast<float>(c0 + nc4 - 1) > first_pos || nc4 != nc) {
      for (int64_t l = 0; l < nc4; ++l) {
        const Vec p = V::Set1(l < nc ? static_cast<float>(c0 + l) : 3.0e38f);
        for (int64_t j = 0; j < rv; ++j) {
          float* s = st + l * rl + j * kL;
          V::Store(s, V::Hide(V::Load(s), V::Load(qpos + j * kL), p));
        }
      }
    }
    // Online softmax, per lane.
    for (int64_t j = 0; j < rv; ++j) {
      const Vec m_old = V::Load(mx + j * kL);
      Vec m_new = m_old;
      for (int64_t l = 0; l < nc4; ++l) m_new = V::Max(m_new, V::Load(st + l * rl + j * kL));
      const Vec alpha = V::Exp(V::Sub(m_old, m_new));
      Vec sum = V::Mul(V::Load(sm + j * kL), alpha);
      for (int64_t d = 0; d < hd; ++d) {
        float* o = ot + d * rl + j * kL;
        V::Store(o, V::Mul(V::Load(o), alpha));
      }
      for (int64_t l = 0; l < nc4; ++l) {
        float* s = st + l * rl + j * kL;
        const Vec sv = V::Load(s);
        // -inf - m_new clamps to exp(-87) ~ 2e-38: zero it exactly where the mask hid the key.
        const Vec pr = V::DropHidden(V::Exp(V::Sub(sv, m_new)), sv);
        V::Store(s, pr);
        sum = V::Add(sum, pr);
      }
      V::Store(sm + j * kL, sum);
      V::Store(mx + j * kL, m_new);
    }
    for (int64_t d0 = 0; d0 < hd; d0 += 4) {
      TileRowBlocks<V>(rv,
                       [&](auto rvb, int64_t j) { TilePv4<V, decltype(rvb)::value>(st, rl, vf, hd, nc4, d0, j, ot); });
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = a.out + (r / group) * a.ldo + (r % group) * hd;
    const float inv = 1.0f / sm[r];
    for (int64_t d = 0; d < hd; ++d) dst[d] = ot[d * rl + r] * inv;
  }
}

}  // namespace
}  // namespace kvferry::kernels
