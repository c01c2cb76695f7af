// Prints the speed of QuantMatMul in decode (1 token) at each level this CPU runs: the AVX-512
// VNNI kernel, the AVX2 kernel and the scalar reference, in GB/s of weights. First one thread
// on the matrix shapes of Qwen2.5-0.5B (in cache), then out of cache on 1 and 2 threads. A
// tool, not a test.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "kvferry/kernels/quant.h"
#include "kvferry/kernels/thread_team.h"

using namespace kvferry::kernels;

namespace {

// The levels to time, best first, that this CPU runs.
std::vector<Isa> Levels() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kAvx512Vnni, Isa::kAvx2, Isa::kScalar})
    if (DetectIsa() >= isa) out.push_back(isa);
  return out;
}

const char* KernelName(Isa isa) {
  return isa >= Isa::kAvx512Vnni ? "vnni" : isa >= Isa::kAvx2 ? "avx2" : "ref";
}

template <typename F>
double Best(int reps, const F& f) {
  double best = 1e9;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<uint8_t> RandomWeights(QuantType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> wf(rows * cols);
  for (auto& v : wf) v = dist(rng);
  const int64_t rb = QuantRowBytes(t, cols);
  std::vector<uint8_t> w(rows * rb);
  for (int64_t r = 0; r < rows; ++r) QuantizeRow(t, wf.data() + r * cols, cols, w.data() + r * rb);
  return w;
}

}  // namespace

int main() {
  struct Shape {
    const char* name;
    int64_t rows, cols;
  } shapes[] = {{"gate/up 4864x896", 4864, 896}, {"down 896x4864", 896, 4864}, {"lm_head-ish 8192x896", 8192, 896}};
  const std::vector<Isa> levels = Levels();
  std::printf("QuantMatMul decode, GB/s of weights; 1 thread, in cache\n%-5s %-22s %6s", "type", "shape", "B/w");
  for (Isa isa : levels) std::printf(" %8s", KernelName(isa));
  std::printf("\n");
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  for (QuantType t : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_K, QuantType::kQ6_K, QuantType::kQ5_0}) {
    for (const Shape& s : shapes) {
      if (s.cols % QuantBlockElems(t) != 0) continue;
      const std::vector<uint8_t> w = RandomWeights(t, s.rows, s.cols, rng);
      std::vector<float> x(s.cols), y(s.rows);
      for (auto& v : x) v = dist(rng);
      std::printf("%-5s %-22s %6.3f", QuantTypeName(t), s.name, static_cast<double>(w.size()) / (s.rows * s.cols));
      for (Isa isa : levels) {
        const double sec = Best(isa == Isa::kScalar ? 3 : 20, [&] {
          QuantMatMulAt(isa, t, w.data(), s.rows, s.cols, x.data(), 1, s.cols, y.data(), s.rows);
        });
        std::printf(" %8.2f", w.size() / sec / 1e9);
      }
      std::printf("\n");
    }
  }
  // Out of cache: 48 matrices of 4864x896 (more than L3), parts handed out like Compute's (4
  // per thread): what decode sees.
  std::printf("\nout of cache: 48 x 4864x896, GB/s of weights\n%-5s %7s", "type", "threads");
  for (Isa isa : levels) std::printf(" %8s", KernelName(isa));
  std::printf("\n");
  for (int threads : {1, 2}) {
    ThreadTeam team(threads);
    for (QuantType t : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ5_0}) {
      const int64_t rows = 4864, cols = 896, mats = 48;
      const int64_t rb = QuantRowBytes(t, cols);
      const std::vector<uint8_t> one = RandomWeights(t, rows, cols, rng);
      std::vector<uint8_t> w(mats * rows * rb);
      for (int64_t m = 0; m < mats; ++m) std::copy(one.begin(), one.end(), w.begin() + m * rows * rb);
      std::vector<float> x(cols), y(rows);
      for (auto& v : x) v = dist(rng);
      std::printf("%-5s %7d", QuantTypeName(t), threads);
      for (Isa isa : levels) {
        const double sec = Best(isa == Isa::kScalar ? 1 : 5, [&] {
          for (int64_t m = 0; m < mats; ++m) {
            const uint8_t* wm = w.data() + m * rows * rb;
            const int64_t parts = 4 * threads;
            team.RunParts(parts, [&](int, int64_t p) {
              const int64_t b = rows * p / parts, e = rows * (p + 1) / parts;
              QuantMatMulAt(isa, t, wm + b * rb, e - b, cols, x.data(), 1, cols, y.data() + b, rows);
            });
          }
        });
        std::printf(" %8.2f", w.size() / sec / 1e9);
      }
      std::printf("\n");
    }
  }
  return 0;
}
