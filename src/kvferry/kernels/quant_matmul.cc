// QuantMatMulReference and the dispatch of QuantMatMul.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"

namespace kvferry::kernels {

// quant_avx512.cc (compiled with AVX-512 VNNI flags; called only when the CPU has them).
void QuantMatMulVnni(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy);

void DequantizeRowsF32Vnni(QuantType type, const void* w, int64_t rows, int64_t cols, float* out);
void RoundActivationsInt8Vnni(const float* x, int64_t cols, float* out);

// quant_avx2.cc (compiled with AVX2 + FMA + F16C flags; called only when the CPU has them).
void QuantMatMulAvx2(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy);

void QuantMatMulReference(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
                          int64_t ldx, float* y, int64_t ldy) {
  const int64_t rb = QuantRowBytes(type, cols);
  std::vector<float> row(cols);
  for (int64_t n = 0; n < rows; ++n) {
    DequantizeRow(type, static_cast<const char*>(w) + n * rb, cols, row.data());
    for (int64_t t = 0; t < m; ++t) {
      double s = 0;
      for (int64_t k = 0; k < cols; ++k) s += static_cast<double>(row[k]) * x[t * ldx + k];
      y[t * ldy + n] = static_cast<float>(s);
    }
  }
}

bool QuantMatMulHasVnni() {
  auto isa = SelectedIsa();
  return isa.ok() && *isa >= Isa::kAvx512Vnni;
}

void QuantMatMul(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                 float* y, int64_t ldy) {
  auto isa = SelectedIsa();
  QuantMatMulAt(isa.ok() ? *isa : Isa::kScalar, type, w, rows, cols, x, m, ldx, y, ldy);
}

void QuantMatMulAt(Isa isa, QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
                   int64_t ldx, float* y, int64_t ldy) {
  const Isa cpu = DetectIsa();
  if (isa >= Isa::kAvx512Vnni && cpu >= Isa::kAvx512Vnni) {  // (Q4_K / Q6_K: the AVX2 kernel, inside)
    QuantMatMulVnni(type, w, rows, cols, x, m, ldx, y, ldy);
  } else if (isa >= Isa::kAvx2 && cpu >= Isa::kAvx2) {
    QuantMatMulAvx2(type, w, rows, cols, x, m, ldx, y, ldy);
  } else {
    QuantMatMulReference(type, w, rows, cols, x, m, ldx, y, ldy);
  }
}

void DequantizeRowsF32At(Isa isa, QuantType type, const void* w, int64_t rows, int64_t cols, float* out) {
  if (isa >= Isa::kAvx512Vnni && DetectIsa() >= Isa::kAvx512Vnni) {
    DequantizeRowsF32Vnni(type, w, rows, cols, out);
    return;
  }
  const int64_t rb = QuantRowBytes(type, cols);
  for (int64_t r = 0; r < rows; ++r) DequantizeRow(type, static_cast<const char*>(w) + r * rb, cols, out + r * cols);
}

bool RoundActivationsInt8At(Isa isa, const float* x, int64_t cols, float* out) {
  const Isa cpu = DetectIsa();
  if (isa >= Isa::kAvx512Vnni && cpu >= Isa::kAvx512Vnni) {
    RoundActivationsInt8Vnni(x, cols, out);
    return true;
  }
  if (isa < Isa::kAvx2 || cpu < Isa::kAvx2) return false;
  // The AVX2 kernel's rounding, in scalar code with the same float operations (max of |x|, one
  // multiply by 127/amax, round to nearest even, saturate): bit-identical, and cheap next to
  // the GEMM it feeds.
  for (int64_t b = 0; b < cols; b += 32) {
    float amax = 0;
    for (int64_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inv = amax > 0 ? 127.0f / amax : 0.0f, d = amax / 127.0f;
    for (int64_t i = b; i < b + 32; ++i) out[i] = d * std::clamp(std::nearbyint(x[i] * inv), -128.0f, 127.0f);
  }
  return true;
}

}  // namespace kvferry::kernels

namespace kvferry::kernels {

QuantType QuantTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kQ4_0: return QuantType::kQ4_0;
    case DType::kQ4_K: return QuantType::kQ4_K;
    case DType::kQ6_K: return QuantType::kQ6_K;
    case DType::kQ5_0: return QuantType::kQ5_0;
    default: return QuantType::kQ8_0;
  }
}

int64_t DTypeRowBytes(DType dtype, int64_t cols) {
  if (IsQuantized(dtype)) return QuantRowBytes(QuantTypeOf(dtype), cols);
  return cols * static_cast<int64_t>(DTypeSize(dtype));
}

}  // namespace kvferry::kernels
