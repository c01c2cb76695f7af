#pragma once
// kvferry/kernels quantized weight formats: the block layouts of ggml's Q8_0, Q4_0, Q5_0, Q4_K
// and Q6_K (bit for bit as llama.cpp reads them from GGUF files), kvferry's own quantizers into
// them and the dequantizers. A row of n elements (n a multiple of the block) is n / block
// consecutive blocks.
//
// Threading: pure functions, thread-compatible. Pointers are borrowed for the call.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels {

enum class QuantType : uint8_t { kQ8_0 = 0, kQ4_0 = 1, kQ4_K = 2, kQ6_K = 3, kQ5_0 = 4 };
const char* QuantTypeName(QuantType type);                  // "q8_0", "q4_0", "q4_k", "q6_k", "q5_0"
StatusOr<QuantType> ParseQuantType(std::string_view name);  // the names above, any case

// Elements per block and bytes per block.
int64_t QuantBlockElems(QuantType type);
int64_t QuantBlockBytes(QuantType type);
// Bytes of a row of n elements; n must be a multiple of QuantBlockElems.
inline int64_t QuantRowBytes(QuantType type, int64_t n) {
  return n / QuantBlockElems(type) * QuantBlockBytes(type);
}

// x[i] = d * qs[i], d an IEEE half.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
// x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
// x[j] = d * (q[j] - 16), q 5 bits: the low 4 as in Q4_0 (qs[j] low nibble for j < 16, qs[j - 16]
// high nibble above), the fifth is bit j of the little-endian 32-bit qh. llama-quantize stores
// Q4_K_M's Q4_K matrices as Q5_0 when their rows are not a multiple of 256 (Qwen2.5-0.5B's 896).
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
// 8 sub-blocks of 32 with 6-bit scales sc and mins m packed into `scales`:
// x = d * sc * q - dmin * m, q 4 bits; sub-blocks 2i and 2i+1 share qs[32i .. 32i+31]
// (low nibbles, then high nibbles).
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// 16 sub-blocks of 16 with int8 scales: x = d * scales[e / 16] * (q - 32), q 6 bits split into
// 4 low bits in ql and 2 high bits in qh (see quant.cc for the interleaving).
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ6_K) == 210);

// Quantizes n floats (a multiple of the block; finite, |x| < 60000) into QuantRowBytes(type, n)
// bytes at `out`. Deterministic. The error of each element is at most half a quantization step
// of its sub-block (Q4_0, Q5_0: one step for the elements of the sign opposite to the block's largest
// magnitude), where steps are rounded up so that no element is clipped.
void QuantizeRow(QuantType type, const float* x, int64_t n, void* out);
// Expands QuantRowBytes(type, n) bytes into n floats, exactly as ggml's dequantize_row_*.
void DequantizeRow(QuantType type, const void* in, int64_t n, float* y);

// The largest error QuantizeRow may leave on element i of the row stored at `in` (from the
// stored scales: half a step, Q4_0 and Q5_0 a full step), for tests and the converter's checks.
float QuantErrorBound(QuantType type, const void* in, int64_t i);

// Q4_K's 6-bit scale and min of sub-block j (0..7) from the packed `scales`.
void Q4KScaleMin(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m);

}  // namespace kvferry::kernels

namespace kvferry::kernels {

// y[t][n] = sum_k x[t][k] * W[n][k] for t < m, n < rows, where W is `rows` rows of `cols`
// elements (cols a multiple of the block) quantized as `type`, QuantRowBytes(type, cols) bytes
// a row, one after the other. x rows have stride ldx, y rows stride ldy.
//
// QuantMatMulReference dequantizes each row and accumulates in double: the exact product of
// the stored weights, for tests. QuantMatMul is the fast path: activations quantized to int8
// per 32 elements (like llama.cpp's Q8 activations) and int8 dot products (AVX-512 VNNI
// vpdpbusd, else AVX2 vpmaddubsw) when the CPU has them, else the reference; it differs from the
// reference by the activations' rounding (relative ~0.4% per block). Both int8 kernels round the
// activations identically, so they differ from each other only in the order of float sums.
void QuantMatMulReference(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
                          int64_t ldx, float* y, int64_t ldy);
void QuantMatMul(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                 float* y, int64_t ldy);
// QuantMatMul at an ISA level: the VNNI kernel from avx512-vnni up, the AVX2 kernel at avx2 and
// avx512, the reference at scalar (each also needs the CPU to have it: DetectIsa()).
void QuantMatMulAt(Isa isa, QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
                   int64_t ldx, float* y, int64_t ldy);
// Dequantizes `rows` rows of `cols` elements (stored as above) into rows*cols floats, exactly
// the weights the int8 kernel multiplies (w = A·u − B, one rounding): the weight tiles of the
// prefill GEMM. AVX-512 from avx512-vnni up, DequantizeRow below.
void DequantizeRowsF32At(Isa isa, QuantType type, const void* w, int64_t rows, int64_t cols, float* out);
// x rounded the way QuantMatMulAt's int8 kernel rounds activations (per 32 elements, d · xq),
// back in f32: a GEMM over these and DequantizeRowsF32At's weights computes what the int8 kernel
// computes, up to float summation order, so a token's result does not depend on whether it ran
// in a prefill step (GEMM) or a decode step (int8 GEMV). False (and nothing written) where
// QuantMatMulAt does not round activations (the scalar level: the reference, exact x).
bool RoundActivationsInt8At(Isa isa, const float* x, int64_t cols, float* out);
// Whether QuantMatMul uses the AVX-512 VNNI kernel on this CPU (and KVFERRY_ISA).
bool QuantMatMulHasVnni();
// The QuantType of a quantized DType (kernels.h).
enum class DType : uint8_t;
QuantType QuantTypeOf(DType dtype);

}  // namespace kvferry::kernels
