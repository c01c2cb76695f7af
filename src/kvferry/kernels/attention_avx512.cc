// Hand-written AVX-512 attention for one (sequence, kv head, query tile): the tile of
// attention_tile.h on 16-lane vectors, and a decode tile for one query token; and SwiGLU's
// silu(gate) * up, which shares the vector exp. Compiled with AVX-512 F/BW/VL/DQ flags; see
// kernel_table.h for the contract.
//
// The decode tile. With one query token the general tile's lanes hold only the heads that share
// the kv head (7 of 16 for Qwen2.5-0.5B), and every key element is broadcast. The decode tile puts
// 16 keys on the lanes instead: each head's 16 dot products are summed together
// (TransposeSum16), the online softmax runs on a 16-key vector per head, and P·V adds each key's
// V row, kept as vectors along head_dim, scaled by the key's probability: every lane busy and no
// broadcast per key element. bench model's decode attention on the Zen 5 VM: 16 sequences of
// ~160 tokens 4.4-4.9 -> 2.7-3.3 ms a step; one of 4,096 tokens 6.1-6.7 -> 2.9-4.0 ms a step.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kvferry/kernels/attention_tile.h"
#include "kvferry/kernels/avx512_load.h"
#include "kvferry/kernels/avx512_sum.h"
#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512 {
namespace {

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

struct V16 {
  using Vec = __m512;
  static constexpr int64_t kLanes = 16;
  static constexpr int kMaxBlock = 4;
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec Set1(float x) { return _mm512_set1_ps(x); }
  static Vec Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  static Vec Exp(Vec x) { return ExpClamped(x); }
  static Vec Hide(Vec s, Vec qpos, Vec p) {
    return _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(qpos, p, _CMP_LT_OQ), _mm512_set1_ps(-__builtin_inff()));
  }
  static Vec DropHidden(Vec e, Vec s) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, _mm512_set1_ps(-__builtin_inff()), _CMP_NEQ_OQ), e);
  }
  static void RowToF32(const char* src, DType dtype, int64_t hd, float* dst) { avx512::RowToF32(src, dtype, hd, dst); }
};

constexpr int64_t kDecodeKeys = 16;  // keys per chunk: one vector of scores per head
constexpr int64_t kDecodeMaxGroup = 16;

// Lanes of TransposeSum16's result that hold keys [0, n).
constexpr __mmask16 KeyLanes(int64_t n) {
  unsigned m = 0;
  for (int l = 0; l < n && l < 16; ++l) m |= 1u << SumLane(l);
  return static_cast<__mmask16>(m);
}

// One query token, `group` heads (<= kDecodeMaxGroup), head_dim = 16 * NDV.
template <int NDV>
void DecodeTile(const AttentionTileArgs& a, float* scratch) {
  constexpr int64_t hd = 16 * NDV;
  const int64_t group = a.group;
  float* qs = scratch;                   // [group][hd] queries, pre-scaled
  float* os = qs + group * hd;           // [group][hd] output accumulators
  float* kf = os + group * hd;           // [kDecodeKeys][hd]
  float* vf = kf + kDecodeKeys * hd;     // [kDecodeKeys][hd]
  float* pb = vf + kDecodeKeys * hd;     // [group][16] probabilities, in TransposeSum16's lanes
  float* mx = pb + group * kDecodeKeys;  // [group] running max
  float* sm = mx + group;                // [group] running sum
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int64_t g = 0; g < group; ++g) {
    for (int v = 0; v < NDV; ++v) {
      _mm512_storeu_ps(qs + g * hd + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(a.q + g * hd + 16 * v), scale));
      _mm512_storeu_ps(os + g * hd + 16 * v, _mm512_setzero_ps());
    }
    mx[g] = -3.0e38f;
    sm[g] = 0.0f;
  }
  for (int64_t c0 = 0; c0 < a.n_keys; c0 += kDecodeKeys) {
    const int64_t nc = std::min(kDecodeKeys, a.n_keys - c0);
    for (int64_t l = 0; l < kDecodeKeys; ++l) {
      if (l >= nc) {
        for (int v = 0; v < NDV; ++v) _mm512_storeu_ps(kf + l * hd + 16 * v, _mm512_setzero_ps());
        continue;
      }
      KeyRowsToF32<V16>(a, c0 + l, kDecodeKeys, kf + l * hd, vf + l * hd);
    }
    const __mmask16 live = KeyLanes(nc);
    for (int64_t g = 0; g < group; ++g) {
      __m512 qv[NDV];
      for (int v = 0; v < NDV; ++v) qv[v] = _mm512_loadu_ps(qs + g * hd + 16 * v);
      __m512 acc[kDecodeKeys];
      for (int l = 0; l < kDecodeKeys; ++l) {
        __m512 d = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kf + l * hd));
        for (int v = 1; v < NDV; ++v) d = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kf + l * hd + 16 * v), d);
        acc[l] = d;
      }
      const __m512 sc = TransposeSum16(acc);
      const float m_old = mx[g];
      const float m_new = std::max(m_old, _mm512_mask_reduce_max_ps(live, sc));
      const __m512 pr = _mm512_maskz_mov_ps(live, ExpClamped(_mm512_sub_ps(sc, _mm512_set1_ps(m_new))));
      _mm512_storeu_ps(pb + g * kDecodeKeys, pr);
      float* o = os + g * hd;
      if (m_new > m_old) {
        const float alpha = ExpClamped(_mm512_set1_ps(m_old - m_new))[0];
        sm[g] *= alpha;
        for (int v = 0; v < NDV; ++v)
          _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(o + 16 * v), _mm512_set1_ps(alpha)));
      }
      sm[g] += _mm512_reduce_add_ps(pr);
      mx[g] = m_new;
    }
    // P·V: each head's accumulators stay in registers over the chunk's keys.
    for (int64_t g = 0; g < group; ++g) {
      float* o = os + g * hd;
      const float* pg = pb + g * kDecodeKeys;
      __m512 ov[NDV];
      for (int v = 0; v < NDV; ++v) ov[v] = _mm512_loadu_ps(o + 16 * v);
      for (int64_t l = 0; l < nc; ++l) {
        const __m512 pl = _mm512_set1_ps(pg[SumLane(static_cast<int>(l))]);
        for (int v = 0; v < NDV; ++v) ov[v] = _mm512_fmadd_ps(pl, _mm512_loadu_ps(vf + l * hd + 16 * v), ov[v]);
      }
      for (int v = 0; v < NDV; ++v) _mm512_storeu_ps(o + 16 * v, ov[v]);
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    const __m512 inv = _mm512_set1_ps(1.0f / sm[g]);
    for (int v = 0; v < NDV; ++v)
      _mm512_storeu_ps(a.out + g * hd + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(os + g * hd + 16 * v), inv));
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
  // The decode tile (rows = group <= 16 heads of one query) needs
  // 2 * group * hd + 2 * kDecodeKeys * hd + group * (kDecodeKeys + 2) floats: within this.
  return TileScratchFloats<V16>(rows, hd);
}

void AttentionTile(const AttentionTileArgs& a, float* scratch) {
  if (a.n_queries == 1 && a.group <= kDecodeMaxGroup && a.n_keys > 0) {
    if (a.head_dim == 64) return DecodeTile<4>(a, scratch);
    if (a.head_dim == 128) return DecodeTile<8>(a, scratch);
  }
  Tile<V16>(a, scratch);
}

}  // namespace kvferry::kernels::avx512
