// ISA detection, dtype helpers, scalar conversions, and the free functions of kernels.h
// (dispatched through the best kernel table).

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "kvferry/kernels/kernel_table.h"
#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels {
namespace {

uint64_t Xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

bool RequestAmxPermission() {
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Isa DetectIsaUncached() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::kScalar;
  const bool osxsave = c & (1u << 27);
  const bool fma = c & (1u << 12);
  const bool f16c = c & (1u << 29);
  if (!osxsave) return Isa::kScalar;
  const uint64_t xcr0 = Xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return Isa::kScalar;  // SSE + AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::kScalar;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  if (!(avx2 && fma && f16c)) return Isa::kScalar;
  if (!(avx512f && avx512dq && avx512bw && avx512vl) || (xcr0 & 0xe0) != 0xe0) return Isa::kAvx2;
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool avx512_vnni = c & (1u << 11);
  const bool avx512_bf16 = a1 & (1u << 5);
  if (!avx512_vnni) return Isa::kAvx512;
  if (!avx512_bf16) return Isa::kAvx512Vnni;
  if (amx_bf16 && amx_tile && (xcr0 & 0x60000) == 0x60000 && RequestAmxPermission()) return Isa::kAmxBf16;
  return Isa::kAvx512Bf16;
}

inline float AsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  return dtype == DType::kF32 ? 4 : 2;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
    case DType::kQ4_K: return "q4_k";
    case DType::kQ6_K: return "q6_k";
    case DType::kQ5_0: return "q5_0";
  }
  return "?";
}

StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "F32") return DType::kF32;
  if (name == "f16" || name == "float16" || name == "F16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  return InvalidArgumentError("unknown dtype '" + std::string(name) + "' (want f32, f16 or bf16)");
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512-vnni";
    case Isa::kAvx512Bf16: return "avx512-bf16";
    case Isa::kAmxBf16: return "amx";
  }
  return "?";
}

StatusOr<Isa> ParseIsa(std::string_view name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni, Isa::kAvx512Bf16, Isa::kAmxBf16})
    if (name == IsaName(isa)) return isa;
  if (name == "amx-bf16") return Isa::kAmxBf16;
  return InvalidArgumentError("unknown ISA level '" + std::string(name) +
                              "' (want scalar, avx2, avx512, avx512-vnni, avx512-bf16 or amx)");
}

Isa DetectIsa() {
  static const Isa isa = DetectIsaUncached();
  return isa;
}

StatusOr<Isa> SelectedIsa() {
  const char* env = std::getenv("KVFERRY_ISA");
  if (env == nullptr || *env == '\0') return DetectIsa();
  auto want = ParseIsa(env);
  if (!want.ok()) return want.status().WithContext("KVFERRY_ISA");
  if (*want > DetectIsa()) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      KVF_LOG_WARN("KVFERRY_ISA={}: this CPU runs up to {}; using {}", env, IsaName(DetectIsa()), IsaName(DetectIsa()));
    return DetectIsa();
  }
  return *want;
}

const KernelTable& TableFor(Isa isa) {
  if (isa > DetectIsa()) isa = DetectIsa();
  if (isa >= Isa::kAvx512) return *avx512::GetTable();
  if (isa >= Isa::kAvx2) return *avx2::GetTable();
  return *scalar::GetTable();
}

const KernelTable& BestTable() {
  static const KernelTable& table = [] {
    auto isa = SelectedIsa();
    return std::cref(TableFor(isa.ok() ? *isa : DetectIsa()));
  }();
  return table;
}

float Bf16ToF32(uint16_t v) {
  return AsFloat(static_cast<uint32_t>(v) << 16);
}

uint16_t F32ToBf16(float v) {
  uint16_t out;
  scalar::GetTable()->from_f32(&v, 1, DType::kBF16, &out);
  return out;
}

float F16ToF32(uint16_t v) {
  float out;
  scalar::GetTable()->to_f32(&v, DType::kF16, 1, &out);
  return out;
}

uint16_t F32ToF16(float v) {
  uint16_t out;
  scalar::GetTable()->from_f32(&v, 1, DType::kF16, &out);
  return out;
}

void ConvertToF32(const void* src, DType dtype, int64_t n, float* dst) {
  BestTable().to_f32(src, dtype, n, dst);
}
void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst) {
  BestTable().from_f32(src, n, dtype, dst);
}
void RmsNorm(const float* x, const void* w, DType w_dtype, int64_t n, float eps, float* out) {
  BestTable().rms_norm(x, w, w_dtype, n, eps, out);
}
void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, const float* cos, const float* sin) {
  BestTable().rope(x, num_heads, head_dim, cos, sin);
}
void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  BestTable().silu_mul(gate, up, n, out);
}
void AddInPlace(float* y, const float* x, int64_t n) {
  BestTable().add(y, x, n);
}

}  // namespace kvferry::kernels
