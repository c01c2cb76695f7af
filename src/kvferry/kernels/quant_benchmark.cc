// Prints the single-thread speed of QuantMatMul (decode: 1 token) on the matrix shapes of
// Qwen2.5-0.5B, in weight GB/s, next to the bf16 GEMV-equivalent bytes. A tool, not a test.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "kvferry/kernels/quant.h"
#include "kvferry/kernels/thread_team.h"

using namespace kvferry::kernels;

int main() {
  struct Shape {
    const char* name;
    int64_t rows, cols;
  } shapes[] = {{"gate/up 4864x896", 4864, 896}, {"down 896x4864", 896, 4864}, {"lm_head-ish 8192x896", 8192, 896}};
  std::printf("QuantMatMul, 1 thread, %s\n", QuantMatMulHasVnni() ? "AVX-512 VNNI" : "reference");
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  for (QuantType t : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_K, QuantType::kQ6_K, QuantType::kQ5_0}) {
    for (const Shape& s : shapes) {
      if (s.cols % QuantBlockElems(t) != 0) continue;
      std::vector<float> wf(s.rows * s.cols), x(s.cols), y(s.rows);
      for (auto& v : wf) v = dist(rng);
      for (auto& v : x) v = dist(rng);
      const int64_t rb = QuantRowBytes(t, s.cols);
      std::vector<uint8_t> w(s.rows * rb);
      for (int64_t r = 0; r < s.rows; ++r) QuantizeRow(t, wf.data() + r * s.cols, s.cols, w.data() + r * rb);
      double best = 1e9;
      for (int rep = 0; rep < 20; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        QuantMatMul(t, w.data(), s.rows, s.cols, x.data(), 1, s.cols, y.data(), s.rows);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-5s %-22s %8.1f us  %6.2f GB/s of weights (%.2f bytes/weight)\n", QuantTypeName(t), s.name,
                  best * 1e6, w.size() / best / 1e9, static_cast<double>(w.size()) / (s.rows * s.cols));
    }
  }
  // Out of cache: 48 matrices of 4864x896 (more than L3), every core, parts handed out like
  // Compute's (4 per thread): what decode sees.
  for (int threads : {1, 2}) {
    ThreadTeam team(threads);
    for (QuantType t : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ5_0}) {
      const int64_t rows = 4864, cols = 896, mats = 48;
      const int64_t rb = QuantRowBytes(t, cols);
      std::vector<float> wf(rows * cols), x(cols), y(rows);
      for (auto& v : wf) v = dist(rng);
      for (auto& v : x) v = dist(rng);
      std::vector<uint8_t> one(rows * rb), w(mats * rows * rb);
      for (int64_t r = 0; r < rows; ++r) QuantizeRow(t, wf.data() + r * cols, cols, one.data() + r * rb);
      for (int64_t m = 0; m < mats; ++m) std::copy(one.begin(), one.end(), w.begin() + m * rows * rb);
      double best = 1e9;
      for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t m = 0; m < mats; ++m) {
          const uint8_t* wm = w.data() + m * rows * rb;
          const int64_t parts = 4 * threads;
          team.RunParts(parts, [&](int, int64_t p) {
            const int64_t b = rows * p / parts, e = rows * (p + 1) / parts;
            QuantMatMul(t, wm + b * rb, e - b, cols, x.data(), 1, cols, y.data() + b, rows);
          });
        }
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-5s 48 x 4864x896, %d thread(s), out of cache: %6.2f GB/s of weights\n", QuantTypeName(t), threads,
                  w.size() / best / 1e9);
    }
  }
  return 0;
}
