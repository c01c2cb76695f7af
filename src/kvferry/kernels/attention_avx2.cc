// Hand-written AVX2 attention for one (sequence, kv head, query tile): the tile of
// attention_tile.h (the AVX-512 kernel's) on 8-lane vectors, with register blocks of at most 2
// row vectors (AVX2 has 16 vector registers). It replaced the portable path, which transposed
// each key with scalar stores, ran the softmax bookkeeping scalar and took 16 keys a chunk: on
// the Zen 5 VM with KVFERRY_ISA=avx2, prefill of 512 tokens went from 196 to 256 tok/s
// (attention 0.58 -> 0.09 s) and decode from 36.4 to 41.8 tok/s.
// Compiled with AVX2 + FMA + F16C flags; see kernel_table.h for the contract.

#include <immintrin.h>

#include <cstdint>

#include "kvferry/kernels/attention_tile.h"
#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx2 {
namespace {

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

struct V8 {
  using Vec = __m256;
  static constexpr int64_t kLanes = 8;
  static constexpr int kMaxBlock = 2;
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Set1(float x) { return _mm256_set1_ps(x); }
  static Vec Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static Vec Exp(Vec x) { return ExpClamped(x); }
  static Vec Hide(Vec s, Vec qpos, Vec p) {
    return _mm256_blendv_ps(s, _mm256_set1_ps(-__builtin_inff()), _mm256_cmp_ps(qpos, p, _CMP_LT_OQ));
  }
  static Vec DropHidden(Vec e, Vec s) {
    return _mm256_and_ps(_mm256_cmp_ps(s, _mm256_set1_ps(-__builtin_inff()), _CMP_NEQ_OQ), e);
  }
  // This level's to_f32 (vec_kernels.inc), which the compiler vectorizes for AVX2.
  static void RowToF32(const char* src, DType dtype, int64_t hd, float* dst) {
    GetTable()->to_f32(src, dtype, hd, dst);
  }
};

}  // namespace

int64_t AttentionTileScratchFloats(int64_t rows, int64_t hd) {
  return TileScratchFloats<V8>(rows, hd);
}

void AttentionTile(const AttentionTileArgs& a, float* scratch) {
  Tile<V8>(a, scratch);
}

// The portable loop (vec_kernels.inc) is not vectorized by GCC 12 (floorf, the clamps and the
// int conversion of its exp), and took ~6% of a 512-token prefill on the Zen 3 VM.
void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  auto silu_mul = [&](__m256 g, __m256 u) {
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, ExpClamped(_mm256_sub_ps(_mm256_setzero_ps(), g)))), u);
  };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, silu_mul(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  for (; i < n; ++i)  // the last few: the same arithmetic on one lane
    out[i] = _mm256_cvtss_f32(silu_mul(_mm256_set1_ps(gate[i]), _mm256_set1_ps(up[i])));
}

}  // namespace kvferry::kernels::avx2
