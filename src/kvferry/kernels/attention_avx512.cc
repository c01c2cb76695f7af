// Hand-written AVX-512 attention for one (sequence, kv head, query tile): the tile of
// attention_tile.h on 16-lane vectors; and SwiGLU's silu(gate) * up, which shares the vector exp.
// Compiled with AVX-512 F/BW/VL/DQ flags; see kernel_table.h for the contract.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/attention_tile.h"
#include "kvferry/kernels/avx512_load.h"
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
  return TileScratchFloats<V16>(rows, hd);
}

void AttentionTile(const AttentionTileArgs& a, float* scratch) {
  Tile<V16>(a, scratch);
}

}  // namespace kvferry::kernels::avx512
