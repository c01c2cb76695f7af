// QuantMatMulReference and the dispatch of QuantMatMul.
#include <vector>

#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"

namespace kvferry::kernels {

// quant_avx512.cc (compiled with AVX-512 VNNI flags; called only when the CPU has them).
void QuantMatMulVnni(QuantType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m, int64_t ldx,
                     float* y, int64_t ldy);

void DequantizeRowsBf16Vnni(QuantType type, const void* w, int64_t rows, int64_t cols, uint16_t* out);

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
  if (isa >= Isa::kAvx512Vnni && cpu >= Isa::kAvx512Vnni) {
    QuantMatMulVnni(type, w, rows, cols, x, m, ldx, y, ldy);
  } else if (isa >= Isa::kAvx2 && cpu >= Isa::kAvx2) {
    QuantMatMulAvx2(type, w, rows, cols, x, m, ldx, y, ldy);
  } else {
    QuantMatMulReference(type, w, rows, cols, x, m, ldx, y, ldy);
  }
}

void DequantizeRowsBf16(QuantType type, const void* w, int64_t rows, int64_t cols, uint16_t* out) {
  DequantizeRowsBf16At(QuantMatMulHasVnni() ? Isa::kAvx512Vnni : Isa::kScalar, type, w, rows, cols, out);
}

void DequantizeRowsBf16At(Isa isa, QuantType type, const void* w, int64_t rows, int64_t cols, uint16_t* out) {
  if (isa >= Isa::kAvx512Vnni && DetectIsa() >= Isa::kAvx512Vnni) {
    DequantizeRowsBf16Vnni(type, w, rows, cols, out);
    return;
  }
  const int64_t rb = QuantRowBytes(type, cols);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(type, static_cast<const char*>(w) + r * rb, cols, row.data());
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = F32ToBf16(row[c]);
  }
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
