#pragma once
// Private to kernels/: the table of ISA-specific inner loops. vec_kernels.inc is compiled once
// per ISA level (vec_scalar.cc, vec_avx2.cc, vec_avx512.cc), each filling one table; the
// hand-written AVX-512 GEMV (gemv_avx512.cc) replaces the generic one in the AVX-512 tables.
// These functions take raw pointers only: the per-ISA files must not instantiate std::
// templates, whose weak definitions the linker could pick for code run on an older CPU.

#include <cstddef>
#include <cstdint>

#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels {

// Rows of x one GEMV pass handles; the caller loops over larger m.
inline constexpr int64_t kGemvMaxRows = 4;
// Keys per attention chunk (one 16-lane vector of scores).
inline constexpr int64_t kKeyChunk = 16;

struct KernelTable {
  Isa isa;
  void (*to_f32)(const void* src, DType dtype, int64_t n, float* dst);
  void (*from_f32)(const float* src, int64_t n, DType dtype, void* dst);
  // y[r * ldy + j] = dot(x + r * ldx, row j of w) for r < m (m <= kGemvMaxRows), j in [n0, n1).
  // w is [rows][k] of dtype; j indexes rows of w and columns of y.
  void (*gemv)(const float* x, int64_t m, int64_t ldx, const void* w, DType dtype, int64_t k, int64_t n0, int64_t n1,
               float* y, int64_t ldy);
  // y[r * ldy + j] = dot(x + r * ldx, w + j * k) for r < m, j < n (f32 weights, any m).
  // panel: scratch of k * 16 floats.
  void (*gemm_f32)(const float* x, int64_t m, int64_t ldx, const float* w, int64_t k, int64_t n, float* y, int64_t ldy,
                   float* panel);
  // s[r * 16 + j] = scale * dot(q + r * ldq, key j) for r < rows, j < 16; kt is [hd][16]
  // (keys transposed).
  void (*attn_scores)(const float* q, int64_t rows, int64_t ldq, int64_t hd, const float* kt, float scale, float* s);
  // out[r * hd + d] += sum_j p[r * 16 + j] * v[j * hd + d].
  void (*attn_pv)(const float* p, int64_t rows, const float* v, int64_t hd, float* out);
  // x[i] = exp(x[i]) (x < -87 gives 0).
  void (*exp_inplace)(float* x, int64_t n);
  void (*rms_norm)(const float* x, const void* w, DType w_dtype, int64_t n, float eps, float* out);
  void (*rope)(float* x, int64_t num_heads, int64_t head_dim, const float* cos, const float* sin);
  void (*silu_mul)(const float* gate, const float* up, int64_t n, float* out);
  void (*add)(float* y, const float* x, int64_t n);
  // y[i] = y[i] * a + x[i] * b (x may alias y).
  void (*scale_add)(float* y, float a, const float* x, float b, int64_t n);
  // Reads [p, p + bytes) (bytes a multiple of 64); returns a value that depends on every byte.
  uint64_t (*read_sum)(const void* p, size_t bytes);
};

// One attention work item: the causal attention of n_queries consecutive query tokens (at
// positions first_pos..) for the `group` query heads that share one kv head, over keys
// [0, n_keys) of a paged cache (k_offset/v_offset already include the kv head's offset).
// Row r of the tile is query token r / group, head r % group: q + (r / group) * ldq +
// (r % group) * head_dim, and likewise out with ldo.
struct AttentionTileArgs {
  const float* q = nullptr;
  int64_t ldq = 0;
  float* out = nullptr;
  int64_t ldo = 0;
  int64_t n_queries = 0;
  int64_t group = 1;
  int64_t head_dim = 0;  // a multiple of 4
  int64_t first_pos = 0;
  int64_t n_keys = 0;  // first_pos + n_queries for a causal tile
  float scale = 1.0f;
  const void* kv_base = nullptr;
  DType kv_dtype = DType::kBF16;
  int64_t block_bytes = 0;
  int64_t block_size = 16;
  int64_t k_offset = 0;  // elements
  int64_t v_offset = 0;
  const int32_t* block_table = nullptr;
};

// The table for an ISA level (the highest compiled level not above it).
const KernelTable& TableFor(Isa isa);
// The table for DetectIsa().
const KernelTable& BestTable();

namespace scalar {
const KernelTable* GetTable();
}
namespace avx2 {
const KernelTable* GetTable();
// Hand-written AVX2 GEMV (gemv_avx2.cc).
void Gemv(const float* x, int64_t m, int64_t ldx, const void* w, DType dtype, int64_t k, int64_t n0, int64_t n1,
          float* y, int64_t ldy);
// Hand-written AVX2 attention tile (attention_avx2.cc), the AVX-512 one's scheme on 8 lanes;
// scratch holds AttentionTileScratchFloats(n_queries * group, head_dim) floats.
int64_t AttentionTileScratchFloats(int64_t rows, int64_t head_dim);
void AttentionTile(const AttentionTileArgs& args, float* scratch);
// silu(gate) * up with a vector exp (the table's silu_mul for AVX2; attention_avx2.cc).
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
// Packed bf16 weights (kernels.h, kPackRows) against f32 x (packed_avx2.cc): y[r * ldy + j] =
// sum_c x[r * ldx + c] * w[j][c] for r < m (any m), j in [b0 * 16, b1 * 16). Up to
// kDecodeRowsMax rows stream the weights once (decode); more run register tiles (prefill).
inline constexpr int64_t kDecodeRowsMax = 16;
void MatMulPacked(const float* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t b0, int64_t b1,
                  float* y, int64_t ldy);
}  // namespace avx2
namespace avx512 {
const KernelTable* GetTable();
// Hand-written AVX-512 GEMV (gemv_avx512.cc).
void Gemv(const float* x, int64_t m, int64_t ldx, const void* w, DType dtype, int64_t k, int64_t n0, int64_t n1,
          float* y, int64_t ldy);
// Hand-written AVX-512 GEMM pieces (gemm_avx512.cc). x is packed in blocks of kGemmTokens
// tokens, [k][kGemmTokens] each (zeros past m). A panel is kGemmPanelRows rows of w; its slice
// [k0, k0 + kc) (kc <= kGemmKc) is widened to f32 as [kGemmPanelRows][kGemmKc]. GemmMicro
// accumulates one slice into a [kGemmPanelRows][kGemmTokens] tile ct (overwriting it when
// `first`); GemmStore writes the tile to y[t * ldy + j] for t < tokens, j < rows (y already
// offset to the block's first token and the panel's first row).
inline constexpr int64_t kGemmPanelRows = 12;
inline constexpr int64_t kGemmTokens = 32;
inline constexpr int64_t kGemmKc = 128;
void GemmPackX(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t r0, float* xt);
void GemmWidenPanel(const void* w, DType dtype, int64_t k, int64_t rows, int64_t k0, int64_t kc, float* wp);
void GemmMicro(const float* xt, int64_t kc, const float* wp, bool first, float* ct);
void GemmStore(const float* ct, int64_t rows, int64_t tokens, float* y, int64_t ldy);
// iters x 24 AVX-512 FMAs on registers only (16 lanes x 2 flops each): the FMA peak probe.
float FmaLoop(int64_t iters);
// Hand-written AVX-512 attention tile (attention_avx512.cc); scratch holds
// AttentionTileScratchFloats(n_queries * group, head_dim) floats.
int64_t AttentionTileScratchFloats(int64_t rows, int64_t head_dim);
// silu(gate) * up with a vector exp (the table's silu_mul for AVX-512).
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
void AttentionTile(const AttentionTileArgs& args, float* scratch);
}  // namespace avx512
namespace avx512bf16 {
// y[r * ldy + j] = dot(x + r * ldx, row j of w) for r < m (any m), j in [n0, n1): x and w are
// bf16, w is [rows][k]; f32 accumulation with vdpbf16ps (gemv_avx512bf16.cc).
void GemvBf16(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* y,
              int64_t ldy);
// Packed bf16 weights (kernels.h, kPackRows): x goes as PackedX, bf16 pairs in groups of rows,
// each group [k / 2][rows of the group] of uint32 (the group of rows r0.. starts at r0 * k / 2).
// Groups are the m rows themselves up to kPackedDecodeRows, else kPackedGroup rows (the last
// one fewer).
inline constexpr int64_t kPackedDecodeRows = 16;
inline constexpr int64_t kPackedGroup = 12;
inline int64_t PackedGroupRows(int64_t m) {
  return m <= kPackedDecodeRows ? m : kPackedGroup;
}
// y[r * ldy + j] = sum_c x[r][c] * w[j][c] for r < m, j in [b0 * 16, b1 * 16): xp is PackedX,
// w is packed (packed_avx512bf16.cc).
void MatMulPacked(const uint32_t* xp, int64_t m, const uint16_t* w, int64_t k, int64_t b0, int64_t b1, float* y,
                  int64_t ldy);
}  // namespace avx512bf16

}  // namespace kvferry::kernels
