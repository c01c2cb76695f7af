#pragma once
// kvferry/kernels: CPU math for the model's forward pass: matrix products against
// bf16/f16/f32 weights (GEMV for decode, GEMM for prefill), RMSNorm, RoPE, SwiGLU,
// grouped-query attention over a paged KV cache, and a memory-bandwidth probe.
// The instruction set is detected at run time (AMX-BF16 / AVX512-BF16 / AVX-512 / AVX2 /
// scalar), so one binary runs on any x86-64.
//
// Threading: the free functions are single-threaded and thread-compatible. A Compute object
// owns a team of worker threads; its methods use the whole team and must be called from one
// thread at a time (they are not reentrant). All pointers are borrowed for the call only.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "kvferry/base/base.h"

namespace kvferry::kernels {

// Element types of weights, activations and the KV cache.
// kQ8_0.. are ggml's quantized blocks (quant.h), only ever a weight Matrix's dtype: MatMul takes
// them, nothing else does.
enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8_0 = 3, kQ4_0 = 4, kQ4_K = 5, kQ6_K = 6, kQ5_0 = 7 };
inline bool IsQuantized(DType dtype) {
  return dtype >= DType::kQ8_0;
}
// Bytes of a row of `cols` elements (quantized: whole blocks; cols a multiple of the block).
int64_t DTypeRowBytes(DType dtype, int64_t cols);
// Bytes per element; for quantized types 2 (an alignment only: use DTypeRowBytes for sizes).
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);  // "f32", "f16", "bf16"
// Parses "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16".
StatusOr<DType> ParseDType(std::string_view name);

// Instruction-set levels, ordered: each implies the ones before it.
//   scalar       plain x86-64
//   avx2         AVX2 + FMA + F16C (8-lane f32)
//   avx512       AVX-512 F/BW/VL/DQ (16-lane f32)
//   avx512-vnni  + AVX512_VNNI (int8 dot products, vpdpbusd)
//   avx512-bf16  + AVX512_BF16 (bf16 dot products, vdpbf16ps)
//   amx          + AMX-TILE/AMX-BF16 tiles (and the kernel's XTILEDATA permission)
enum class Isa : uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3, kAvx512Bf16 = 4, kAmxBf16 = 5 };
const char* IsaName(Isa isa);
// Parses the names above ("amx-bf16" also means amx).
StatusOr<Isa> ParseIsa(std::string_view name);
// What this CPU (and OS) supports. For AMX this includes the XTILEDATA permission.
Isa DetectIsa();
// The level the engine uses: DetectIsa(), lowered by the environment variable
// KVFERRY_ISA=<level> (for tests and side-by-side figures; a level above the CPU's is lowered
// to the CPU's with a warning). An unknown name is an error.
StatusOr<Isa> SelectedIsa();
// Whether the GEMM library (oneDNN) was compiled in. Sanitizer builds leave it out.
bool HaveGemmLibrary();

// Scalar conversions (round to nearest even; NaN stays NaN).
float Bf16ToF32(uint16_t v);
uint16_t F32ToBf16(float v);
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float v);
// Rounds a float to the nearest bf16 value, returned as float.
inline float RoundToBf16(float v) {
  return Bf16ToF32(F32ToBf16(v));
}

// Converts n elements of `src` (of type `dtype`) to/from f32, using the best ISA.
void ConvertToF32(const void* src, DType dtype, int64_t n, float* dst);
void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for n elements; w has type w_dtype.
// x and out may alias.
void RmsNorm(const float* x, const void* w, DType w_dtype, int64_t n, float eps, float* out);

// Rotates `num_heads` heads of `head_dim` floats in place, HF "rotate_half" (neox) convention:
// pairs (i, i + head_dim/2) are rotated by cos/sin[i], i < head_dim/2.
void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, const float* cos, const float* sin);

// out[i] = silu(gate[i]) * up[i]. out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// y[i] += x[i].
void AddInPlace(float* y, const float* x, int64_t n);

// A weight matrix [rows][cols], row-major (the layout of HF nn.Linear: [out][in]), or bf16
// packed (below). Borrowed.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;     // N: output features
  int64_t cols = 0;     // K: input features
  bool packed = false;  // bf16 in the packed layout; only for a Compute whose PacksBf16()
};

// The packed bf16 layout of the AVX512-BF16 and AVX2 kernels: rows in blocks of kPackRows, each
// block [cols / 2][kPackRows][2], i.e. one 64-byte line holds the same pair of columns of 16 rows
// (what one vdpbf16ps multiplies, and two 8-output halves for AVX2's FMAs once widened; oneDNN
// calls it BA16a16b2a). A block occupies the same bytes as its
// rows do row-major, so packing is in place, block by block, and the matrix's size is unchanged.
inline constexpr int64_t kPackRows = 16;
// Whether w can be packed: bf16, rows a multiple of kPackRows, cols a multiple of 16.
bool CanPackBf16(const Matrix& w);
// Rewrites blocks [b0, b1) of the row-major bf16 matrix at w (cols columns) in the packed layout.
void PackBf16Blocks(uint16_t* w, int64_t cols, int64_t b0, int64_t b1);
// Row `row` of a packed bf16 matrix, as its cols bf16 values (an embedding lookup).
void UnpackBf16Row(const uint16_t* w, int64_t cols, int64_t row, uint16_t* out);

// One product of a fused MatMul: y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]).
struct MatMulOutput {
  Matrix w;
  const float* bias = nullptr;  // w.rows floats, or null
  float* y = nullptr;           // m rows of w.rows floats, row stride ldy
  int64_t ldy = 0;              // 0 means w.rows
};

// Where K and V of one layer live in a paged KV cache. Token t of a sequence is in block
// block_table[t / block_size], slot t % block_size. Within a block, the K row of (kv head h,
// slot s) starts at k_offset + h * head_stride + s * head_dim elements; V likewise.
struct PagedKv {
  void* base = nullptr;
  DType dtype = DType::kBF16;
  int64_t block_bytes = 0;  // bytes from one block to the next
  int64_t block_size = 16;  // tokens per block
  int64_t k_offset = 0;     // in elements, from the start of a block
  int64_t v_offset = 0;     // in elements
  int64_t head_stride = 0;  // elements between kv heads (block_size * head_dim when dense)
};

// One sequence of an attention call: n_tokens new tokens at positions start_pos.. whose
// queries are rows row0.. of q; their K/V are already written to the cache.
struct AttentionSequence {
  const int32_t* block_table = nullptr;
  int64_t start_pos = 0;
  int64_t n_tokens = 0;
  int64_t row0 = 0;
};

struct AttentionArgs {
  PagedKv kv;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // query head h reads kv head h / (num_heads / num_kv_heads)
  int64_t head_dim = 0;
  float scale = 0;           // usually 1/sqrt(head_dim)
  const float* q = nullptr;  // [rows][num_heads * head_dim]
  float* out = nullptr;      // [rows][num_heads * head_dim]
  std::span<const AttentionSequence> sequences;
};

struct ComputeOptions {
  // Threads used by each call, the calling thread included. 0 = hardware concurrency.
  int num_threads = 0;
  // Highest ISA to use (tests force lower levels); the detected one when higher.
  Isa max_isa = Isa::kAmxBf16;
  // Use the GEMM library (oneDNN) for large products when it is compiled in.
  bool use_gemm_library = true;
  // Tests: take the native-bf16 GEMM path (activations rounded to bf16) even on CPUs without
  // AVX512-BF16, where oneDNN emulates it slowly. Ignored without the GEMM library.
  bool force_bf16_gemm = false;
};

// A team of threads and the per-thread scratch that the big kernels need.
class Compute {
 public:
  static StatusOr<std::unique_ptr<Compute>> Create(const ComputeOptions& options);
  ~Compute();
  Compute(const Compute&) = delete;
  Compute& operator=(const Compute&) = delete;

  int num_threads() const;
  Isa isa() const;
  // Whether MatMul wants bf16 weights packed (PackBf16Blocks): at the AVX512-BF16 and AVX2
  // levels, where both the decode GEMV and the prefill GEMM run faster on them. (AMX keeps
  // oneDNN's tiles on row-major weights; avx512 and avx512-vnni keep their row-major kernels.)
  // MatMul takes packed matrices only on a Compute that wants them.
  bool PacksBf16() const;
  // "avx512 + oneDNN f32 GEMM" etc., for logs and benchmark output.
  std::string Describe() const;

  // For every output o: o.y = x · o.w^T (+ o.bias). x is [m][k] with row stride ldx; all
  // outputs share k = w.cols. Small m streams the weights once (GEMV); large m uses a GEMM.
  void MatMul(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outputs);

  // Causal grouped-query attention of each sequence's new tokens over the cache.
  void PagedAttention(const AttentionArgs& args);

  // Runs fn(begin, end) over [0, n) split into contiguous parts, one per thread.
  void ParallelFor(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn);

  // Reads `bytes` of memory `reps` times with all threads; returns the best GB/s (1e9 B/s).
  double MeasureReadBandwidth(size_t bytes, int reps);
  // f32 FMA peak of all threads in GFLOP/s (best of reps, each ~0.1 s of register-only FMAs):
  // the physical limit of the f32 GEMM. 0 below AVX-512 (not measured there).
  double MeasurePeakGflops(int reps);

  // Wall time and work spent in each kind of call since the last ResetProfile(), for
  // benchmarks (two clock reads per call; always on).
  struct Profile {
    double gemm_s = 0, gemv_s = 0, attention_s = 0, other_s = 0;  // other: ParallelFor
    double gemm_flop = 0, gemv_bytes = 0, attention_flop = 0;
  };
  Profile profile() const;
  void ResetProfile();

 private:
  struct Impl;
  explicit Compute(std::unique_ptr<Impl> impl);
  void PagedAttentionImpl(const AttentionArgs& args);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvferry::kernels
