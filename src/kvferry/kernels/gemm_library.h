#pragma once
// Private to kernels/: the GEMM library (oneDNN) behind a narrow interface, so that no oneDNN
// type leaves gemm_library.cc. Each team thread t calls with its own t: thread t owns stream t
// and its primitive cache, and oneDNN runs single-threaded inside it (the team does the
// threading, so oneDNN's OpenMP pool never spins against it).

#include <cstdint>
#include <memory>
#include <string>

namespace kvferry::kernels {

class GemmLibrary {
 public:
  // Null when oneDNN is not compiled in (sanitizer builds) or fails to start.
  static std::unique_ptr<GemmLibrary> Create(int num_threads);
  virtual ~GemmLibrary() = default;

  // y[r * ldy + j] = sum_c x[r * ldx + c] * w[j * k + c] for r < m, j < n. Called by team
  // thread t. Returns false if the library cannot do it (the caller falls back).
  virtual bool MatMulF32(int t, const float* x, int64_t m, int64_t ldx, const float* w,
                         int64_t n, int64_t k, float* y, int64_t ldy) = 0;
  // The same with bf16 x and w (bf16 bits as uint16_t), f32 y.
  virtual bool MatMulBf16(int t, const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w,
                          int64_t n, int64_t k, float* y, int64_t ldy) = 0;
  // The implementation oneDNN chose for the last call ("brg:avx512_core_amx_bf16" ...).
  virtual std::string LastImpl() const = 0;
};

}  // namespace kvferry::kernels
