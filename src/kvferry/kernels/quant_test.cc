#include "kvferry/kernels/quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels {
namespace {

constexpr QuantType kTypes[] = {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_K, QuantType::kQ6_K,
                                QuantType::kQ5_0};

std::vector<float> Gaussian(int64_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Quantized {
  std::vector<uint8_t> bytes;
  std::vector<float> back;
};

Quantized RoundTrip(QuantType t, const std::vector<float>& x) {
  Quantized q;
  q.bytes.assign(QuantRowBytes(t, static_cast<int64_t>(x.size())), 0xcd);
  QuantizeRow(t, x.data(), static_cast<int64_t>(x.size()), q.bytes.data());
  q.back.resize(x.size());
  DequantizeRow(t, q.bytes.data(), static_cast<int64_t>(x.size()), q.back.data());
  return q;
}

TEST(QuantTest, Sizes) {
  EXPECT_EQ(QuantRowBytes(QuantType::kQ8_0, 896), 28 * 34);
  EXPECT_EQ(QuantRowBytes(QuantType::kQ4_0, 64), 2 * 18);
  EXPECT_EQ(QuantRowBytes(QuantType::kQ4_K, 512), 2 * 144);
  EXPECT_EQ(QuantRowBytes(QuantType::kQ5_0, 896), 28 * 22);
  EXPECT_EQ(QuantRowBytes(QuantType::kQ6_K, 4864), 19 * 210);
  for (QuantType t : kTypes) {
    auto p = ParseQuantType(QuantTypeName(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  EXPECT_EQ(*ParseQuantType("Q4_K"), QuantType::kQ4_K);
  EXPECT_FALSE(ParseQuantType("q5_k").ok());
}

// Every element within the bound its block's stored scales give, and the bound itself small
// relative to the data: the relative RMS error of N(0, 1) data per type.
TEST(QuantTest, ErrorBoundsPerType) {
  const double max_rel_rms[] = {0.01, 0.12, 0.12, 0.03, 0.06};  // q8_0 q4_0 q4_k q6_k q5_0
  int ti = 0;
  for (QuantType t : kTypes) {
    SCOPED_TRACE(QuantTypeName(t));
    const auto x = Gaussian(4096, 7 + ti);
    const Quantized q = RoundTrip(t, x);
    double err2 = 0, x2 = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const float bound = QuantErrorBound(t, q.bytes.data(), static_cast<int64_t>(i));
      ASSERT_LE(std::fabs(q.back[i] - x[i]), bound * 1.0001f + 1e-6f) << "element " << i << " x=" << x[i];
      err2 += (q.back[i] - x[i]) * (q.back[i] - x[i]);
      x2 += x[i] * x[i];
    }
    const double rel = std::sqrt(err2 / x2);
    std::printf("%s: relative RMS error %.4f on N(0,1)\n", QuantTypeName(t), rel);
    EXPECT_LT(rel, max_rel_rms[ti]);
    // And not suspiciously exact (the data is not representable).
    EXPECT_GT(rel, max_rel_rms[ti] / 50);
    ++ti;
  }
}

// Quantizing what was dequantized changes nothing (up to the step, the grid is a fixed point for
// the per-block types; the K types re-derive scales, so we check the error does not grow).
TEST(QuantTest, RequantizeIsStable) {
  for (QuantType t : kTypes) {
    SCOPED_TRACE(QuantTypeName(t));
    const auto x = Gaussian(1024, 99);
    const Quantized a = RoundTrip(t, x);
    const Quantized b = RoundTrip(t, a.back);
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_LE(std::fabs(b.back[i] - a.back[i]),
                QuantErrorBound(t, b.bytes.data(), static_cast<int64_t>(i)) * 1.0001f + 1e-6f);
    if (t == QuantType::kQ8_0 || t == QuantType::kQ4_0 || t == QuantType::kQ5_0) {
      EXPECT_EQ(a.bytes, b.bytes);
    }
  }
}

TEST(QuantTest, ZerosAndConstants) {
  for (QuantType t : kTypes) {
    SCOPED_TRACE(QuantTypeName(t));
    const Quantized z = RoundTrip(t, std::vector<float>(512, 0.0f));
    for (float v : z.back) ASSERT_EQ(v, 0.0f);
    const Quantized c = RoundTrip(t, std::vector<float>(512, -0.75f));
    for (size_t i = 0; i < c.back.size(); ++i)
      ASSERT_NEAR(c.back[i], -0.75f, QuantErrorBound(t, c.bytes.data(), static_cast<int64_t>(i)) * 1.0001f);
    // Large values (a row of a big embedding) and tiny ones keep their relative precision.
    for (float scale : {300.0f, 1e-3f}) {
      const auto x = Gaussian(512, 5, scale);
      const Quantized q = RoundTrip(t, x);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_LE(std::fabs(q.back[i] - x[i]),
                  QuantErrorBound(t, q.bytes.data(), static_cast<int64_t>(i)) * 1.0001f + 1e-9f);
    }
  }
}

// Hand-built blocks decode the way ggml's dequantize_row_* does (the layouts are fixed by the
// GGUF files llama.cpp writes; these literal blocks pin the bit positions).
TEST(QuantTest, LayoutsMatchGgml) {
  {
    BlockQ8_0 b{};
    b.d = F32ToF16(0.5f);
    for (int i = 0; i < 32; ++i) b.qs[i] = static_cast<int8_t>(i - 16);
    float y[32];
    DequantizeRow(QuantType::kQ8_0, &b, 32, y);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.5f * (i - 16));
  }
  {
    BlockQ4_0 b{};
    b.d = F32ToF16(2.0f);
    for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
    float y[32];
    DequantizeRow(QuantType::kQ4_0, &b, 32, y);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j], 2.0f * (j - 8));
      EXPECT_EQ(y[j + 16], 2.0f * (7 - j));
    }
  }
  {
    // Q4_K: sub-block j has scale j + 1 (j < 4) or 40 + j (j >= 4, needing the high bits) and
    // min 2j (j < 4) or 50 + j.
    BlockQ4_K b{};
    b.d = F32ToF16(1.0f);
    b.dmin = F32ToF16(0.5f);
    const int sc[8] = {1, 2, 3, 4, 44, 45, 46, 47}, mn[8] = {0, 2, 4, 6, 54, 55, 56, 57};
    for (int j = 0; j < 4; ++j) {
      b.scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
      b.scales[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
      b.scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
    for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<uint8_t>((i % 16) | (((i + 3) % 16) << 4));
    float y[256];
    DequantizeRow(QuantType::kQ4_K, &b, 256, y);
    for (int e = 0; e < 256; ++e) {
      const int j = e / 32, l = e % 32, byte = 32 * (j / 2) + l;
      const int q = j % 2 == 0 ? byte % 16 : (byte + 3) % 16;
      ASSERT_EQ(y[e], 1.0f * sc[j] * q - 0.5f * mn[j]) << e;
    }
  }
  {
    // Q5_0 (ggml's dequantize_row_q5_0): element j < 16 is the low nibble of qs[j] with bit j
    // of qh on top, element j + 16 the high nibble with bit j + 16; minus 16.
    BlockQ5_0 b{};
    b.d = F32ToF16(-0.5f);
    for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j * 37 + 5);
    const uint32_t qh = 0xa5c3961eu;
    std::memcpy(b.qh, &qh, 4);
    float y[32];
    DequantizeRow(QuantType::kQ5_0, &b, 32, y);
    for (int j = 0; j < 16; ++j) {
      const int x0 = static_cast<int>((b.qs[j] & 0x0f) | (((qh >> j) << 4) & 0x10)) - 16;
      const int x1 = static_cast<int>((b.qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
      ASSERT_EQ(y[j], -0.5f * x0) << j;
      ASSERT_EQ(y[j + 16], -0.5f * x1) << j;
    }
  }
  {
    // Q6_K: element n*128 + l (+32, +64, +96) per ggml's loop: ql[l] low, ql[l+32] low,
    // ql[l] high, ql[l+32] high; qh[l] bits 0-1, 2-3, 4-5, 6-7.
    BlockQ6_K b{};
    b.d = F32ToF16(0.25f);
    for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(j - 8);
    for (int i = 0; i < 128; ++i) b.ql[i] = static_cast<uint8_t>(i * 7 + 3);
    for (int i = 0; i < 64; ++i) b.qh[i] = static_cast<uint8_t>(i * 13 + 1);
    float y[256];
    DequantizeRow(QuantType::kQ6_K, &b, 256, y);
    for (int n = 0; n < 2; ++n)
      for (int l = 0; l < 32; ++l) {
        const uint8_t* ql = b.ql + 64 * n;
        const uint8_t* qh = b.qh + 32 * n;
        const int8_t* s = b.scales + 8 * n;
        const int is = l / 16;
        const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        ASSERT_EQ(y[128 * n + l], 0.25f * s[is] * q1);
        ASSERT_EQ(y[128 * n + l + 32], 0.25f * s[is + 2] * q2);
        ASSERT_EQ(y[128 * n + l + 64], 0.25f * s[is + 4] * q3);
        ASSERT_EQ(y[128 * n + l + 96], 0.25f * s[is + 6] * q4);
      }
  }
}

// Random quantized weights (rows x cols of N(0, 1), stored as t) and their dequantized values.
struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> deq;
};
Matrix RandomMatrix(QuantType t, int64_t rows, int64_t cols, uint64_t seed) {
  const auto wf = Gaussian(rows * cols, seed);
  const int64_t rb = QuantRowBytes(t, cols);
  Matrix w{std::vector<uint8_t>(rows * rb), std::vector<float>(rows * cols)};
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(t, wf.data() + r * cols, cols, w.bytes.data() + r * rb);
    DequantizeRow(t, w.bytes.data() + r * rb, cols, w.deq.data() + r * cols);
  }
  return w;
}

// What rounding the activations to int8 per 32 may cost on output (row r, token x):
// sum_k |w_k| * amax(x's block) / 254, plus the float sums.
double Int8Bound(const Matrix& w, int64_t r, int64_t cols, const float* x) {
  double bound = 1e-4;
  for (int64_t b = 0; b < cols; b += 32) {
    float amax = 0;
    for (int64_t k = b; k < b + 32; ++k) amax = std::max(amax, std::fabs(x[k]));
    for (int64_t k = b; k < b + 32; ++k) bound += std::fabs(w.deq[r * cols + k]) * amax / 254.0 * 1.01;
  }
  return bound;
}

// The int8 kernels (VNNI, AVX2) against the exact product of the stored weights: each output
// within the bound that the activations' rounding allows.
TEST(QuantTest, MatMulMatchesReference) {
  bool ran = false;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni}) {
    if (DetectIsa() < isa) {
      std::printf("skipping %s: not on this CPU\n", IsaName(isa));
      continue;
    }
    ran = true;
    for (QuantType t : kTypes) {
      for (int64_t cols : {96, 256, 512, 1280}) {
        for (int64_t m : {1, 3, 6}) {
          if (QuantBlockElems(t) == 256 && cols % 256 != 0) continue;
          SCOPED_TRACE(std::string(IsaName(isa)) + " " + QuantTypeName(t) + " cols " + std::to_string(cols) + " m " +
                       std::to_string(m));
          const int64_t rows = 37;
          const Matrix w = RandomMatrix(t, rows, cols, 11 + cols);
          auto x = Gaussian(m * cols, 5 + m, 2.0f);
          x[3] = 40.0f;  // an outlier: its block gets a coarse scale
          std::vector<float> y(m * rows), ref(m * rows);
          QuantMatMulAt(isa, t, w.bytes.data(), rows, cols, x.data(), m, cols, y.data(), rows);
          QuantMatMulReference(t, w.bytes.data(), rows, cols, x.data(), m, cols, ref.data(), rows);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < m; ++i)
              ASSERT_NEAR(y[i * rows + r], ref[i * rows + r], Int8Bound(w, r, cols, x.data() + i * cols))
                  << "row " << r << " token " << i;
        }
      }
    }
  }
  if (!ran) GTEST_SKIP() << "no AVX2 on this CPU (QuantMatMul is the reference there)";
}

// The AVX2 kernel directly, on every type and the shapes of both its paths (decode: 4 rows a
// pass, the prefetch ahead and the leftover rows; m > 1: up to 4 tokens a pass), strided x and
// y: within the activation-rounding bound of the reference, and, where the CPU has VNNI, equal
// to the VNNI kernel up to the order of float sums (both round the activations identically).
TEST(QuantTest, Avx2MatchesVnniAndReference) {
  if (DetectIsa() < Isa::kAvx2) GTEST_SKIP() << "no AVX2 + FMA + F16C on this CPU";
  const bool vnni = DetectIsa() >= Isa::kAvx512Vnni;
  if (!vnni) std::printf("no AVX-512 VNNI here: AVX2 is checked against the reference only\n");
  double worst_vnni = 0, worst_ref = 0;
  for (QuantType t : kTypes) {
    const bool k_type = QuantBlockElems(t) == 256;
    const std::vector<int64_t> all_cols =
        k_type ? std::vector<int64_t>{256, 768, 1280} : std::vector<int64_t>{32, 96, 896, 1280};
    for (int64_t cols : all_cols) {
      for (int64_t rows : {3, 41}) {
        for (int64_t m : {1, 2, 3, 4, 5, 9}) {
          SCOPED_TRACE(std::string(QuantTypeName(t)) + " " + std::to_string(rows) + "x" + std::to_string(cols) + " m " +
                       std::to_string(m));
          const Matrix w = RandomMatrix(t, rows, cols, 100 + cols + rows);
          const int64_t ldx = cols + 3, ldy = rows + 2;
          auto x = Gaussian(m * ldx, 7 * m + cols, 1.5f);
          x[cols / 2] = -25.0f;
          std::vector<float> y(m * ldy, -1.0f), yv(m * ldy, -1.0f), ref(m * ldy, -1.0f);
          QuantMatMulAt(Isa::kAvx2, t, w.bytes.data(), rows, cols, x.data(), m, ldx, y.data(), ldy);
          QuantMatMulReference(t, w.bytes.data(), rows, cols, x.data(), m, ldx, ref.data(), ldy);
          if (vnni) QuantMatMulAt(Isa::kAvx512Vnni, t, w.bytes.data(), rows, cols, x.data(), m, ldx, yv.data(), ldy);
          double differs = 0;
          for (int64_t i = 0; i < m; ++i) {
            // The padding between rows of y is left alone.
            for (int64_t r = rows; r < ldy; ++r) ASSERT_EQ(y[i * ldy + r], -1.0f);
            for (int64_t r = 0; r < rows; ++r) {
              const float got = y[i * ldy + r], want = ref[i * ldy + r];
              const double bound = Int8Bound(w, r, cols, x.data() + i * ldx);
              ASSERT_NEAR(got, want, bound) << "row " << r << " token " << i;
              worst_ref = std::max(worst_ref, std::fabs(got - want) / bound);
              differs = std::max(differs, static_cast<double>(std::fabs(got - want)));
              if (!vnni) continue;
              // Relative to the size of the terms: sum_k |w_k x_k|.
              double mag = 0;
              for (int64_t k = 0; k < cols; ++k) mag += std::fabs(w.deq[r * cols + k] * x[i * ldx + k]);
              const double err = std::fabs(got - yv[i * ldy + r]);
              ASSERT_LE(err, 1e-4 * mag + 1e-6) << "row " << r << " token " << i << " vnni " << yv[i * ldy + r];
              worst_vnni = std::max(worst_vnni, err / mag);
            }
          }
          // The int8 kernel ran (the reference would match itself to the last bit).
          EXPECT_GT(differs, 0.0);
        }
      }
    }
  }
  std::printf("AVX2 vs reference: worst error %.3f of the int8 bound; vs VNNI: worst %.2e of sum |w x|\n", worst_ref,
              worst_vnni);
}

// The f32 weight tiles of the prefill GEMM: each level gives the weights DequantizeRow gives
// (the AVX-512 form computes A·u − B with one rounding: within a few ulps of the row's scale).
TEST(QuantTest, DequantizeRowsF32AtEachLevel) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx512Vnni}) {
    if (isa > DetectIsa()) continue;
    for (QuantType t : kTypes) {
      for (int64_t cols : {32, 96, 256, 768}) {
        if (cols % QuantBlockElems(t) != 0) continue;
        SCOPED_TRACE(std::string(IsaName(isa)) + " " + QuantTypeName(t) + " cols " + std::to_string(cols));
        const int64_t rows = 5, rb = QuantRowBytes(t, cols);
        const auto x = Gaussian(rows * cols, 3 + cols, 0.7f);
        std::vector<uint8_t> w(rows * rb);
        for (int64_t r = 0; r < rows; ++r) QuantizeRow(t, x.data() + r * cols, cols, w.data() + r * rb);
        std::vector<float> got(rows * cols);
        DequantizeRowsF32At(isa, t, w.data(), rows, cols, got.data());
        std::vector<float> want(cols);
        for (int64_t r = 0; r < rows; ++r) {
          DequantizeRow(t, w.data() + r * rb, cols, want.data());
          float scale = 0;
          for (float v : want) scale = std::max(scale, std::fabs(v));
          for (int64_t c = 0; c < cols; ++c) ASSERT_NEAR(got[r * cols + c], want[c], scale * 1e-6f) << r << "," << c;
        }
      }
    }
  }
}

// Activations rounded as the int8 kernel rounds them: per 32 elements d·q with d = amax/127 and
// q an integer in [-127, 127], each within d/2 of x; the block's largest |x| is kept exactly
// (up to d's rounding). The AVX2 levels' scalar form gives the same bits as the AVX-512 one. At
// the scalar level (the reference kernel, exact x) nothing is rounded.
TEST(QuantTest, RoundActivationsInt8) {
  std::vector<float> out(96, -1.0f);
  auto x = Gaussian(96, 11, 2.0f);
  x[40] = 127.5f * (x[33] < 0 ? -1.0f : 1.0f);  // a block whose amax is exactly representable
  EXPECT_FALSE(RoundActivationsInt8At(Isa::kScalar, x.data(), 96, out.data()));
  EXPECT_EQ(out[0], -1.0f);
  if (DetectIsa() < Isa::kAvx2) GTEST_SKIP() << "this CPU has no AVX2";
  ASSERT_TRUE(RoundActivationsInt8At(Isa::kAvx2, x.data(), 96, out.data()));
  if (DetectIsa() >= Isa::kAvx512Vnni) {
    std::vector<float> vnni(96);
    ASSERT_TRUE(RoundActivationsInt8At(Isa::kAvx512Vnni, x.data(), 96, vnni.data()));
    for (int i = 0; i < 96; ++i) ASSERT_EQ(out[i], vnni[i]) << i;
  }
  for (int64_t b = 0; b < 96; b += 32) {
    float amax = 0;
    for (int64_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    for (int64_t i = b; i < b + 32; ++i) {
      const float q = out[i] / d;
      EXPECT_NEAR(q, std::round(q), 1e-3f) << i;
      EXPECT_LE(std::fabs(q), 127.001f) << i;
      EXPECT_LE(std::fabs(out[i] - x[i]), d * 0.5001f) << i;
    }
  }
  // All-zero blocks stay zero.
  std::vector<float> zeros(32, 0.0f), z(32, 1.0f);
  ASSERT_TRUE(RoundActivationsInt8At(Isa::kAvx2, zeros.data(), 32, z.data()));
  for (float v : z) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace kvferry::kernels
