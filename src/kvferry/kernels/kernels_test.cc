// Differential tests: every kernel against a naive double-precision reference, at every ISA
// level this CPU supports, on random shapes including ragged tails.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kvferry/kernels/kernel_table.h"
#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"
#include "kvferry/kernels/thread_team.h"

namespace kvferry::kernels {
namespace {

constexpr Isa kAllLevels[] = {Isa::kScalar,     Isa::kAvx2,       Isa::kAvx512,
                              Isa::kAvx512Vnni, Isa::kAvx512Bf16, Isa::kAmxBf16};

// The levels this CPU runs.
std::vector<Isa> Levels() {
  std::vector<Isa> out;
  for (Isa i : kAllLevels)
    if (i <= DetectIsa()) out.push_back(i);
  return out;
}

// Tests that run once per ISA level; a level above this CPU's is compiled in but skipped, and
// says so.
class AtLevel : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (GetParam() > DetectIsa())
      GTEST_SKIP() << "this CPU runs up to " << IsaName(DetectIsa()) << "; the " << IsaName(GetParam())
                   << " level is compiled in but cannot be tested here";
  }
};

INSTANTIATE_TEST_SUITE_P(Isa, AtLevel, ::testing::ValuesIn(kAllLevels), [](const auto& info) {
  std::string name = IsaName(info.param);
  for (char& ch : name)
    if (ch == '-') ch = '_';
  return name;
});

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Weights stored as dtype; returns the stored bytes and the values they represent.
std::vector<uint8_t> Store(const std::vector<float>& v, DType dt, std::vector<float>* exact) {
  std::vector<uint8_t> bytes(v.size() * DTypeSize(dt));
  exact->resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kF32) {
      std::memcpy(&bytes[i * 4], &v[i], 4);
      (*exact)[i] = v[i];
    } else {
      const uint16_t h = dt == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
      (*exact)[i] = dt == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
    }
  }
  return bytes;
}

TEST(Convert, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1).
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-INFINITY)), -INFINITY);
}

TEST(Convert, F16MatchesIeee) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  EXPECT_EQ(F32ToF16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x0001), 0x1p-24f);
  EXPECT_EQ(F16ToF32(0x03ff), 1023 * 0x1p-24f);
  EXPECT_EQ(F16ToF32(0x7c00), INFINITY);
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  // Every f16 value survives a round trip through f32.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // nan payloads
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(Convert, TablesAgreeWithScalar) {
  std::mt19937 rng(1);
  auto v = Random(1000, rng, 10.0f);
  for (Isa isa : Levels()) {
    const KernelTable& t = TableFor(isa);
    for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
      std::vector<uint8_t> a(v.size() * DTypeSize(dt)), b(a.size());
      t.from_f32(v.data(), static_cast<int64_t>(v.size()), dt, a.data());
      scalar::GetTable()->from_f32(v.data(), static_cast<int64_t>(v.size()), dt, b.data());
      EXPECT_EQ(a, b) << IsaName(isa) << " " << DTypeName(dt);
      std::vector<float> fa(v.size()), fb(v.size());
      t.to_f32(a.data(), dt, static_cast<int64_t>(v.size()), fa.data());
      scalar::GetTable()->to_f32(a.data(), dt, static_cast<int64_t>(v.size()), fb.data());
      EXPECT_EQ(fa, fb);
    }
  }
}

TEST(Isa, NamesParseAndEnvironmentLowersTheLevel) {
  for (Isa isa : kAllLevels) {
    auto parsed = ParseIsa(IsaName(isa));
    ASSERT_TRUE(parsed.ok()) << IsaName(isa);
    EXPECT_EQ(*parsed, isa);
  }
  EXPECT_EQ(*ParseIsa("amx-bf16"), Isa::kAmxBf16);
  EXPECT_FALSE(ParseIsa("avx9").ok());
  const char* old = std::getenv("KVFERRY_ISA");
  const std::string saved = old ? old : "";
  ::setenv("KVFERRY_ISA", "avx2", 1);
  ASSERT_TRUE(SelectedIsa().ok());
  EXPECT_EQ(*SelectedIsa(), std::min(Isa::kAvx2, DetectIsa()));
  // Without the GEMM library: oneDNN takes the level of the first team made in a process for
  // good, and the other tests here need all of it.
  auto c = Compute::Create({.num_threads = 1, .use_gemm_library = false});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->isa(), std::min(Isa::kAvx2, DetectIsa()));
  ::setenv("KVFERRY_ISA", "amx", 1);  // above most CPUs: lowered to what this one runs
  EXPECT_EQ(*SelectedIsa(), DetectIsa());
  ::setenv("KVFERRY_ISA", "sse9", 1);
  EXPECT_FALSE(SelectedIsa().ok());
  auto bad = Compute::Create({.num_threads = 1, .use_gemm_library = false});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("KVFERRY_ISA"), std::string::npos) << bad.status().ToString();
  if (old) {
    ::setenv("KVFERRY_ISA", saved.c_str(), 1);
  } else {
    ::unsetenv("KVFERRY_ISA");
  }
}

TEST(Exp, AccurateOverRange) {
  for (Isa isa : Levels()) {
    std::vector<float> x;
    for (float v = -100.0f; v < 88.0f; v += 0.0371f) x.push_back(v);
    std::vector<float> y = x;
    TableFor(isa).exp_inplace(y.data(), static_cast<int64_t>(y.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const double ref = x[i] < -87.0f ? 0.0 : std::exp(static_cast<double>(x[i]));
      ASSERT_NEAR(y[i], ref, 4e-7 * ref + 1e-37) << x[i];
    }
  }
}

TEST_P(AtLevel, GemvMatchesReferenceAllDtypes) {
  std::mt19937 rng(2);
  {
    const Isa isa = GetParam();
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (int64_t k : {1, 13, 64, 100, 257}) {
        // n = 49: rows [2, 49) take the kernels' widest passes (16 rows in the AVX2 bf16 kernel)
        // as well as the narrower tail passes.
        for (int64_t n : {11, 49}) {
          for (int64_t m = 1; m <= kGemvMaxRows; ++m) {
            const int64_t ldx = k + 3, ldy = n + 2;
            auto x = Random(m * ldx, rng);
            std::vector<float> wexact;
            auto wbytes = Store(Random(n * k, rng), dt, &wexact);
            std::vector<float> y(m * ldy, -7.0f);
            TableFor(isa).gemv(x.data(), m, ldx, wbytes.data(), dt, k, 2, n, y.data(), ldy);
            for (int64_t r = 0; r < m; ++r) {
              EXPECT_EQ(y[r * ldy + 0], -7.0f);  // outside [n0, n1)
              for (int64_t j = 2; j < n; ++j) {
                double ref = 0;
                for (int64_t c = 0; c < k; ++c) ref += double(x[r * ldx + c]) * wexact[j * k + c];
                ASSERT_NEAR(y[r * ldy + j], ref, 1e-4 * std::sqrt(double(k)) + 1e-5)
                    << IsaName(isa) << " " << DTypeName(dt) << " k=" << k << " m=" << m << " n=" << n;
              }
            }
          }
        }
      }
    }
  }
}

TEST_P(AtLevel, MatMulFusedOutputsMatchReference) {
  std::mt19937 rng(3);
  {
    const Isa isa = GetParam();
    for (bool lib : {false, true}) {
      for (int threads : {1, 2, 3}) {
        ComputeOptions opt;
        opt.num_threads = threads;
        opt.max_isa = isa;
        opt.use_gemm_library = lib;
        auto c = Compute::Create(opt);
        ASSERT_TRUE(c.ok());
        ASSERT_EQ((*c)->isa(), isa);
        for (int64_t m : {1, 3, 5, 16, 17, 40}) {
          for (DType dt : {DType::kBF16, DType::kF32}) {
            const int64_t k = m == 40 ? 300 : 72, ldx = k + 8;  // 300: more than one k slice
            auto x = Random(m * ldx, rng);
            std::vector<int64_t> ns = {37, 130, 8};
            std::vector<std::vector<uint8_t>> wb(3);
            std::vector<std::vector<float>> we(3), bias(3), y(3);
            std::vector<MatMulOutput> outs;
            for (int o = 0; o < 3; ++o) {
              wb[o] = Store(Random(ns[o] * k, rng), dt, &we[o]);
              bias[o] = Random(ns[o], rng);
              y[o].assign(m * (ns[o] + 1), 0.0f);
              outs.push_back({{wb[o].data(), dt, ns[o], k}, o == 1 ? nullptr : bias[o].data(), y[o].data(), ns[o] + 1});
            }
            (*c)->MatMul(x.data(), m, ldx, outs);
            // With AVX512_BF16, bf16 weights meet activations rounded to bf16: in the decode
            // GEMV (m <= 16) and in oneDNN's bf16 GEMM; the built-in GEMM widens the weights.
            const bool rounds_x =
                isa >= Isa::kAvx512Bf16 && dt == DType::kBF16 && (m <= 16 || (lib && HaveGemmLibrary()));
            auto xv = [&](int64_t i) { return rounds_x ? RoundToBf16(x[i]) : x[i]; };
            for (int o = 0; o < 3; ++o)
              for (int64_t r = 0; r < m; ++r)
                for (int64_t j = 0; j < ns[o]; ++j) {
                  double ref = o == 1 ? 0 : bias[o][j];
                  for (int64_t cc = 0; cc < k; ++cc) ref += double(xv(r * ldx + cc)) * we[o][j * k + cc];
                  ASSERT_NEAR(y[o][r * (ns[o] + 1) + j], ref, 1e-3) << (*c)->Describe() << " m=" << m << " o=" << o;
                }
          }
        }
      }
    }
  }
}

// Decode steps (m <= 16) with bf16 weights: a sequence's result is bitwise the same whether it
// runs alone or with up to 15 others, so batching never changes a greedy token. k = 2100 takes
// the AVX512_BF16 kernel's chunked path with a ragged tail; 130 rows end in a partial group.
TEST_P(AtLevel, Bf16DecodeIsBatchInvariant) {
  std::mt19937 rng(21);
  ComputeOptions opt;
  opt.num_threads = 2;
  opt.max_isa = GetParam();
  auto c = Compute::Create(opt);
  ASSERT_TRUE(c.ok());
  for (int64_t k : {72, 896, 2100}) {
    const int64_t n = 130;
    std::vector<float> we;
    const auto w = Store(Random(n * k, rng), DType::kBF16, &we);
    const auto x = Random(16 * k, rng);
    std::vector<float> one(16 * n);
    for (int64_t r = 0; r < 16; ++r) {
      const MatMulOutput o{{w.data(), DType::kBF16, n, k}, nullptr, one.data() + r * n, n};
      (*c)->MatMul(x.data() + r * k, 1, k, {&o, 1});
    }
    for (int64_t m = 2; m <= 16; ++m) {
      std::vector<float> all(m * n);
      const MatMulOutput o{{w.data(), DType::kBF16, n, k}, nullptr, all.data(), n};
      (*c)->MatMul(x.data(), m, k, {&o, 1});
      for (int64_t i = 0; i < m * n; ++i) {
        ASSERT_EQ(all[i], one[i]) << (*c)->Describe() << " k=" << k << " m=" << m << " row " << i / n << " out "
                                  << i % n;
      }
    }
  }
}

// bf16 weights packed at load, at both levels that pack them (avx512-bf16: x rounded to bf16,
// vdpbf16ps; avx2: x in f32, widened weights): packing is a permutation that UnpackBf16Row
// inverts, MatMul on packed weights matches the reference for decode and prefill shapes with
// fused outputs, biases, ragged row groups and every thread count; and a row's result is
// bitwise the same for any m, decode or prefill (one summation order for all tiles). k = 2,560
// makes two chunks of rows in the AVX2 prefill.
TEST(PackedBf16, PackingRoundTripsAndMatMulMatchesReference) {
  std::mt19937 rng(31);
  int levels_run = 0;
  for (Isa level : {Isa::kAvx2, Isa::kAvx512Bf16}) {
    if (DetectIsa() < level) {
      std::printf("[ SKIPPED  ] packed bf16 at %s: this CPU runs up to %s\n", IsaName(level), IsaName(DetectIsa()));
      continue;
    }
    ++levels_run;
    const bool round_x = level == Isa::kAvx512Bf16;
    for (int threads : {1, 2, 3}) {
      ComputeOptions opt;
      opt.num_threads = threads;
      opt.max_isa = level;
      auto c = Compute::Create(opt);
      ASSERT_TRUE(c.ok());
      ASSERT_TRUE((*c)->PacksBf16());
      for (int64_t k : {16, 48, 896, 2560}) {
        const std::vector<int64_t> ns = {48, 160, 16};  // odd block counts: single-block tiles too
        std::vector<std::vector<uint8_t>> wb(3), packed(3);
        std::vector<std::vector<float>> we(3), bias(3);
        for (int o = 0; o < 3; ++o) {
          wb[o] = Store(Random(ns[o] * k, rng), DType::kBF16, &we[o]);
          packed[o] = wb[o];
          ASSERT_TRUE(CanPackBf16({packed[o].data(), DType::kBF16, ns[o], k}));
          auto* w16 = reinterpret_cast<uint16_t*>(packed[o].data());
          PackBf16Blocks(w16, k, 0, ns[o] / kPackRows);
          ASSERT_NE(packed[o], wb[o]);
          std::vector<uint16_t> row(k);
          for (int64_t j = 0; j < ns[o]; ++j) {
            UnpackBf16Row(w16, k, j, row.data());
            ASSERT_EQ(0, std::memcmp(row.data(), wb[o].data() + j * k * 2, k * 2)) << "row " << j;
          }
          bias[o] = Random(ns[o], rng);
        }
        // 110 rows: the AVX2 prefill cuts them into slices of rows (from 96 on).
        const int64_t max_m = 110, ldx = k + 8;
        const auto x = Random(max_m * ldx, rng);
        for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{6}, int64_t{7}, int64_t{9}, int64_t{12},
                          int64_t{13}, int64_t{16}, int64_t{17}, int64_t{24}, max_m}) {
          std::vector<std::vector<float>> y(3);
          std::vector<MatMulOutput> outs;
          for (int o = 0; o < 3; ++o) {
            y[o].assign(m * (ns[o] + 1), 0.0f);
            const Matrix w{packed[o].data(), DType::kBF16, ns[o], k, true};
            outs.push_back({w, o == 1 ? nullptr : bias[o].data(), y[o].data(), ns[o] + 1});
          }
          (*c)->MatMul(x.data(), m, ldx, outs);
          for (int o = 0; o < 3; ++o) {
            for (int64_t r = 0; r < m; ++r)
              for (int64_t j = 0; j < ns[o]; ++j) {
                double ref = o == 1 ? 0 : bias[o][j];
                for (int64_t cc = 0; cc < k; ++cc) {
                  const float xv = x[r * ldx + cc];
                  ref += double(round_x ? RoundToBf16(xv) : xv) * we[o][j * k + cc];
                }
                ASSERT_NEAR(y[o][r * (ns[o] + 1) + j], ref, 1e-3)
                    << IsaName(level) << " threads=" << threads << " k=" << k << " m=" << m << " o=" << o;
              }
          }
        }
        // Each row alone, then all 110 at once (prefill) and 16 at once (decode): bitwise equal.
        std::vector<std::vector<float>> alone(3), all(3), dec(3);
        for (int o = 0; o < 3; ++o) {
          alone[o].assign(max_m * ns[o], 0.0f);
          all[o].assign(max_m * ns[o], 0.0f);
          dec[o].assign(16 * ns[o], 0.0f);
        }
        auto run = [&](const float* xr, int64_t m, std::vector<std::vector<float>>& y, int64_t row0) {
          std::vector<MatMulOutput> outs;
          for (int o = 0; o < 3; ++o)
            outs.push_back(
                {{packed[o].data(), DType::kBF16, ns[o], k, true}, bias[o].data(), y[o].data() + row0 * ns[o], ns[o]});
          (*c)->MatMul(xr, m, ldx, outs);
        };
        for (int64_t r = 0; r < max_m; ++r) run(x.data() + r * ldx, 1, alone, r);
        run(x.data(), max_m, all, 0);
        run(x.data(), 16, dec, 0);
        for (int o = 0; o < 3; ++o) {
          ASSERT_EQ(0, std::memcmp(alone[o].data(), all[o].data(), alone[o].size() * 4))
              << IsaName(level) << " prefill, k=" << k;
          ASSERT_EQ(0, std::memcmp(alone[o].data(), dec[o].data(), dec[o].size() * 4))
              << IsaName(level) << " decode, k=" << k;
        }
      }
    }
  }
  if (levels_run == 0) GTEST_SKIP() << "this CPU runs none of the levels that pack bf16 weights";
}

// Quantized weights (GGUF): decode (m <= 16) and prefill, fused outputs of mixed types, with
// and without the GEMM library. The bound covers the activations' rounding: to int8 per 32
// (the VNNI kernel; the AVX2 kernel at avx2 and avx512) or to bf16 with the weights (the bf16
// GEMM of the prefill from avx512-bf16 up).
TEST_P(AtLevel, QuantizedMatMulMatchesReference) {
  std::mt19937 rng(5);
  const Isa isa = GetParam();
  const QuantType types[] = {QuantType::kQ8_0, QuantType::kQ5_0, QuantType::kQ4_K, QuantType::kQ6_K, QuantType::kQ4_0};
  const DType dtypes[] = {DType::kQ8_0, DType::kQ5_0, DType::kQ4_K, DType::kQ6_K, DType::kQ4_0};
  for (bool lib : {false, true}) {
    ComputeOptions opt;
    opt.num_threads = 2;
    opt.max_isa = isa;
    opt.use_gemm_library = lib;
    auto c = Compute::Create(opt);
    ASSERT_TRUE(c.ok());
    for (int64_t m : {1, 5, 17, 40}) {
      const int64_t k = 512, ldx = k + 8;
      auto x = Random(m * ldx, rng);
      const std::vector<int64_t> ns = {37, 130, 48};
      std::vector<std::vector<uint8_t>> wb(3);
      std::vector<std::vector<float>> we(3), bias(3), y(3);
      std::vector<MatMulOutput> outs;
      for (int o = 0; o < 3; ++o) {
        const int ti = static_cast<int>((m + o) % 5);
        const auto wf = Random(ns[o] * k, rng);
        const int64_t rb = QuantRowBytes(types[ti], k);
        wb[o].resize(ns[o] * rb);
        we[o].resize(ns[o] * k);
        for (int64_t r = 0; r < ns[o]; ++r) {
          QuantizeRow(types[ti], wf.data() + r * k, k, wb[o].data() + r * rb);
          DequantizeRow(types[ti], wb[o].data() + r * rb, k, we[o].data() + r * k);
        }
        bias[o] = Random(ns[o], rng);
        y[o].assign(m * (ns[o] + 1), 0.0f);
        outs.push_back(
            {{wb[o].data(), dtypes[ti], ns[o], k}, o == 1 ? nullptr : bias[o].data(), y[o].data(), ns[o] + 1});
      }
      (*c)->MatMul(x.data(), m, ldx, outs);
      for (int o = 0; o < 3; ++o)
        for (int64_t r = 0; r < m; ++r)
          for (int64_t j = 0; j < ns[o]; ++j) {
            double ref = o == 1 ? 0 : bias[o][j], bound = 1e-3;
            for (int64_t b = 0; b < k; b += 32) {
              float amax = 0;
              for (int64_t cc = b; cc < b + 32; ++cc) amax = std::max(amax, std::fabs(x[r * ldx + cc]));
              for (int64_t cc = b; cc < b + 32; ++cc) {
                const double w = we[o][j * k + cc], xv = x[r * ldx + cc];
                ref += w * xv;
                bound += std::fabs(w) * amax / 254.0 + std::fabs(w * xv) / 128.0;
              }
            }
            ASSERT_NEAR(y[o][r * (ns[o] + 1) + j], ref, bound) << (*c)->Describe() << " m=" << m << " o=" << o;
          }
    }
  }
}

// Quantized weights: a token's result does not depend on the step it ran in. The prefill GEMM
// (m > 16, with the GEMM library) must give what the int8 decode kernel gives for the same token
// alone, up to float summation order: the two rounding activations differently (bf16 vs int8)
// made disaggregated output differ from colocated output at near-ties.
TEST_P(AtLevel, QuantizedPrefillEqualsDecodePerToken) {
  const Isa isa = GetParam();
  if (!HaveGemmLibrary()) GTEST_SKIP() << "built without oneDNN: prefill runs the decode kernel";
  std::mt19937 rng(12);
  ComputeOptions opt;
  opt.num_threads = 2;
  opt.max_isa = isa;
  auto c = Compute::Create(opt);
  ASSERT_TRUE(c.ok());
  const int64_t m = 40, k = 512, n = 96;
  const auto x = Random(m * k, rng);
  for (QuantType t : {QuantType::kQ8_0, QuantType::kQ5_0, QuantType::kQ4_K, QuantType::kQ6_K, QuantType::kQ4_0}) {
    const DType dt = t == QuantType::kQ8_0   ? DType::kQ8_0
                     : t == QuantType::kQ5_0 ? DType::kQ5_0
                     : t == QuantType::kQ4_K ? DType::kQ4_K
                     : t == QuantType::kQ6_K ? DType::kQ6_K
                                             : DType::kQ4_0;
    const auto wf = Random(n * k, rng);
    const int64_t rb = QuantRowBytes(t, k);
    std::vector<uint8_t> w(n * rb);
    std::vector<float> we(n * k);
    for (int64_t r = 0; r < n; ++r) {
      QuantizeRow(t, wf.data() + r * k, k, w.data() + r * rb);
      DequantizeRow(t, w.data() + r * rb, k, we.data() + r * k);
    }
    std::vector<float> all(m * n), one(n);
    const MatMulOutput o_all{{w.data(), dt, n, k}, nullptr, all.data(), n};
    (*c)->MatMul(x.data(), m, k, {&o_all, 1});
    for (int64_t r = 0; r < m; ++r) {
      const MatMulOutput o_one{{w.data(), dt, n, k}, nullptr, one.data(), n};
      (*c)->MatMul(x.data() + r * k, 1, k, {&o_one, 1});
      for (int64_t j = 0; j < n; ++j) {
        double mag = 0;
        for (int64_t cc = 0; cc < k; ++cc) mag += std::fabs(we[j * k + cc] * x[r * k + cc]);
        ASSERT_NEAR(all[r * n + j], one[j], 1e-5 * mag + 1e-6)
            << (*c)->Describe() << " " << QuantTypeName(t) << " token " << r << " row " << j;
      }
    }
  }
}

TEST(MatMul, Bf16GemmPathRoundsActivationsOnly) {
  if (!HaveGemmLibrary()) GTEST_SKIP() << "built without oneDNN";
  // oneDNN's bf16 matmul (emulated or native) needs AVX-512; below it the primitive is refused
  // and MatMul falls back to the f32 path, which this test is not about.
  if (DetectIsa() < Isa::kAvx512)
    GTEST_SKIP() << "this CPU runs up to " << IsaName(DetectIsa()) << "; oneDNN's bf16 matmul needs avx512";
  std::mt19937 rng(9);
  auto c = Compute::Create({.num_threads = 2, .force_bf16_gemm = true});
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*c)->Describe().find("oneDNN bf16"), std::string::npos);
  const int64_t m = 40, k = 96, n = 70;
  auto x = Random(m * k, rng);
  std::vector<float> we;
  auto wb = Store(Random(n * k, rng), DType::kBF16, &we);
  auto bias = Random(n, rng);
  std::vector<float> y(m * n);
  MatMulOutput o{{wb.data(), DType::kBF16, n, k}, bias.data(), y.data(), n};
  (*c)->MatMul(x.data(), m, k, {&o, 1});
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double ref = bias[j];
      for (int64_t cc = 0; cc < k; ++cc) ref += double(RoundToBf16(x[r * k + cc])) * we[j * k + cc];
      ASSERT_NEAR(y[r * n + j], ref, 1e-3) << r << "," << j;
    }
}

TEST_P(AtLevel, RmsNormRopeSiluAdd) {
  std::mt19937 rng(4);
  {
    const Isa isa = GetParam();
    const KernelTable& t = TableFor(isa);
    const int64_t n = 70;
    auto x = Random(n, rng);
    std::vector<float> wexact;
    auto wb = Store(Random(n, rng), DType::kBF16, &wexact);
    std::vector<float> out(n);
    t.rms_norm(x.data(), wb.data(), DType::kBF16, n, 1e-6f, out.data());
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(out[i], x[i] * inv * wexact[i], 1e-5);

    const int64_t heads = 3, hd = 10;
    auto q = Random(heads * hd, rng);
    auto cs = Random(hd / 2, rng), sn = Random(hd / 2, rng);
    auto q2 = q;
    t.rope(q2.data(), heads, hd, cs.data(), sn.data());
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd / 2; ++i) {
        const float a = q[h * hd + i], b = q[h * hd + i + hd / 2];
        ASSERT_NEAR(q2[h * hd + i], a * cs[i] - b * sn[i], 1e-5);
        ASSERT_NEAR(q2[h * hd + i + hd / 2], b * cs[i] + a * sn[i], 1e-5);
      }

    auto g = Random(n, rng, 5.0f), u = Random(n, rng);
    if (n >= 4) g[0] = -100.0f, g[1] = 100.0f, g[2] = -88.5f, g[3] = 30.0f;  // exp's clamps
    std::vector<float> s(n);
    t.silu_mul(g.data(), u.data(), n, s.data());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(s[i], g[i] / (1.0 + std::exp(-double(g[i]))) * u[i], 1e-5 * (1 + std::fabs(s[i])));
    auto y = x;
    t.add(y.data(), g.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(y[i], x[i] + g[i]);
  }
}

// Paged attention against a dense reference, with shuffled block tables, GQA, several
// sequences at different offsets, and both cache dtypes.
struct AttentionShape {
  int64_t hd, nh, nkv;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (start_pos, n_tokens)
};

class PagedAttention : public ::testing::TestWithParam<AttentionShape> {};

// Small heads and short sequences; then Qwen2.5-0.5B's heads (64 dims, 14 query heads on 2 kv
// heads) with sequences that span several key chunks and query tiles; then decode steps.
INSTANTIATE_TEST_SUITE_P(Shapes, PagedAttention,
                         ::testing::Values(AttentionShape{8, 6, 2, {{0, 1}, {0, 37}, {20, 1}, {5, 18}}},
                                           AttentionShape{64, 14, 2, {{0, 150}, {100, 40}, {300, 1}, {63, 2}}},
                                           // Decode (one query token) on 64- and 128-dim heads:
                                           // whole and partial 16-key chunks, one key alone.
                                           AttentionShape{64, 14, 2, {{0, 1}, {15, 1}, {16, 1}, {47, 1}, {250, 1}}},
                                           AttentionShape{128, 16, 2, {{0, 1}, {20, 1}, {95, 1}, {31, 3}}}));

TEST_P(PagedAttention, MatchesDense) {
  std::mt19937 rng(5);
  const int64_t hd = GetParam().hd, nh = GetParam().nh, nkv = GetParam().nkv, layers = 2, layer = 1;
  for (int64_t bs : {16, 4}) {
    for (DType kvdt : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (Isa isa : Levels()) {
        ComputeOptions opt;
        opt.num_threads = 2;
        opt.max_isa = isa;
        auto c = Compute::Create(opt);
        ASSERT_TRUE(c.ok());
        const int64_t nblocks = 256;
        const int64_t per_layer = 2 * nkv * bs * hd;
        const int64_t block_elems = layers * per_layer;
        const int64_t esize = DTypeSize(kvdt);
        std::vector<uint8_t> cache(nblocks * block_elems * esize);
        PagedKv kv{cache.data(), kvdt, block_elems * esize, bs, layer * per_layer, layer * per_layer + nkv * bs * hd,
                   bs * hd};
        // Sequences: (start_pos, n_tokens).
        const std::vector<std::pair<int64_t, int64_t>>& shapes = GetParam().seqs;
        std::vector<int32_t> free_blocks(nblocks);
        for (int i = 0; i < nblocks; ++i) free_blocks[i] = i;
        std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
        std::vector<std::vector<int32_t>> tables;
        std::vector<std::vector<float>> kf, vf;  // dense exact K/V per sequence [pos][nkv][hd]
        int64_t rows = 0;
        std::vector<AttentionSequence> seqs;
        for (auto [start, n] : shapes) {
          const int64_t total = start + n;
          std::vector<int32_t> bt;
          for (int64_t b = 0; b < (total + bs - 1) / bs; ++b) {
            bt.push_back(free_blocks.back());
            free_blocks.pop_back();
          }
          tables.push_back(bt);
          std::vector<float> ke, ve;
          auto kb = Store(Random(total * nkv * hd, rng), kvdt, &ke);
          auto vb = Store(Random(total * nkv * hd, rng), kvdt, &ve);
          for (int64_t p = 0; p < total; ++p)
            for (int64_t h = 0; h < nkv; ++h) {
              uint8_t* blk = cache.data() + bt[p / bs] * kv.block_bytes;
              const int64_t off = h * kv.head_stride + (p % bs) * hd;
              std::memcpy(blk + (kv.k_offset + off) * esize, &kb[(p * nkv + h) * hd * esize], hd * esize);
              std::memcpy(blk + (kv.v_offset + off) * esize, &vb[(p * nkv + h) * hd * esize], hd * esize);
            }
          kf.push_back(ke);
          vf.push_back(ve);
          seqs.push_back({nullptr, start, n, rows});
          rows += n;
        }
        for (size_t s = 0; s < seqs.size(); ++s) seqs[s].block_table = tables[s].data();
        auto q = Random(rows * nh * hd, rng);
        std::vector<float> out(rows * nh * hd, 0.0f);
        AttentionArgs args;
        args.kv = kv;
        args.num_heads = nh;
        args.num_kv_heads = nkv;
        args.head_dim = hd;
        args.scale = 1.0f / std::sqrt(float(hd));
        args.q = q.data();
        args.out = out.data();
        args.sequences = seqs;
        (*c)->PagedAttention(args);
        for (size_t s = 0; s < seqs.size(); ++s) {
          for (int64_t i = 0; i < seqs[s].n_tokens; ++i) {
            const int64_t pos = seqs[s].start_pos + i, row = seqs[s].row0 + i;
            for (int64_t h = 0; h < nh; ++h) {
              const int64_t g = h / (nh / nkv);
              std::vector<double> sc(pos + 1);
              double mx = -1e300;
              for (int64_t j = 0; j <= pos; ++j) {
                double d = 0;
                for (int64_t e = 0; e < hd; ++e)
                  d += double(q[(row * nh + h) * hd + e]) * kf[s][(j * nkv + g) * hd + e];
                sc[j] = d * args.scale;
                mx = std::max(mx, sc[j]);
              }
              double sum = 0;
              for (auto& v : sc) sum += (v = std::exp(v - mx));
              for (int64_t e = 0; e < hd; ++e) {
                double o = 0;
                for (int64_t j = 0; j <= pos; ++j) o += sc[j] / sum * vf[s][(j * nkv + g) * hd + e];
                ASSERT_NEAR(out[(row * nh + h) * hd + e], o, 1e-5)
                    << "bs=" << bs << " " << DTypeName(kvdt) << " " << IsaName(isa) << " seq " << s << " tok " << i
                    << " head " << h;
              }
            }
          }
        }
      }
    }
  }
}

TEST(ThreadTeam, RunsEveryPartEveryTime) {
  ThreadTeam team(3);
  std::vector<int> hits(3, 0);
  for (int i = 0; i < 300; ++i) team.Run([&](int t) { hits[t]++; });
  EXPECT_EQ(hits, std::vector<int>({300, 300, 300}));
}

// Back-to-back jobs of every size, including ones with fewer parts than threads: each part
// runs exactly once, on a valid thread, and never after its job returned (a worker that
// wakes late for a finished job must claim nothing of the next one).
TEST(ThreadTeam, RunPartsRunsEachPartOnceAcrossManyJobs) {
  ThreadTeam team(3);
  std::vector<std::atomic<int>> hits(64);
  std::atomic<int> bad_thread{0};
  for (int job = 0; job < 3000; ++job) {
    const int64_t n = job % 64;
    for (auto& h : hits) h.store(0, std::memory_order_relaxed);
    team.RunParts(n, [&](int t, int64_t i) {
      if (t < 0 || t >= 3) bad_thread++;
      hits[i].fetch_add(1, std::memory_order_relaxed);
    });
    for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(hits[i].load(), i < n ? 1 : 0) << "job " << job << " part " << i;
  }
  EXPECT_EQ(bad_thread.load(), 0);
}

// A job that is larger than the claim word counts is grouped, not cut short.
TEST(ThreadTeam, RunPartsGroupsHugeJobs) {
  ThreadTeam team(2);
  const int64_t n = ThreadTeam::kMaxParts * 2 + 5;
  std::vector<uint8_t> hits(static_cast<size_t>(n), 0);
  team.RunParts(n, [&](int, int64_t i) { hits[i]++; });
  EXPECT_EQ(std::count(hits.begin(), hits.end(), 1), n);
}

// While one thread is stuck in a long part, the others finish the remaining parts: the job
// does not wait for the stuck thread to come back for its "share".
TEST(ThreadTeam, RunPartsDoesNotWaitForAThreadsShare) {
  ThreadTeam team(2);
  std::vector<int> by_thread(2, 0);
  team.RunParts(101, [&](int t, int64_t i) {
    if (i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    by_thread[t]++;
  });
  // Whichever thread took part 0 slept for 200 ms; the other ran (nearly) all of the rest.
  EXPECT_GE(std::max(by_thread[0], by_thread[1]), 95) << by_thread[0] << " " << by_thread[1];
  EXPECT_EQ(by_thread[0] + by_thread[1], 101);
}

TEST(Compute, ParallelForCoversRangeOnce) {
  auto c = Compute::Create({.num_threads = 2});
  ASSERT_TRUE(c.ok());
  std::vector<int> seen(101, 0);
  (*c)->ParallelFor(101, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) seen[i]++;
  });
  for (int v : seen) EXPECT_EQ(v, 1);
  EXPECT_GT((*c)->MeasureReadBandwidth(8 << 20, 2), 0.0);
  if ((*c)->isa() >= Isa::kAvx512) {
    EXPECT_GT((*c)->MeasurePeakGflops(1), 1.0);
  } else {
    EXPECT_EQ((*c)->MeasurePeakGflops(1), 0.0);
  }
  EXPECT_FALSE(Compute::Create({.num_threads = -1}).ok());
}

}  // namespace
}  // namespace kvferry::kernels
