// Agreement with an independent implementation: reference_model.py, a plain eager PyTorch
// forward pass (no transformers), run once by /usr/bin/python3 on generated tiny models of each
// architecture. The test FAILS when python3-torch is missing (scripts/setup installs it).
//
// Tolerances (stated here, checked below):
//  - f32 weights, f32 KV cache: |logit - ref| <= 1e-3 * (max - min of the reference logits at
//    that position), for prompts of 1, 7, 16, 17 and 100 tokens, one sequence per call and all
//    five in one batched call.
//  - bf16 weights, bf16 KV cache, vs. the f32 reference on the same (bf16-exact) weights:
//    |logit - ref| <= 0.05 * (std of the reference logits at that position); at logit std 0.6
//    that is 3e-2 absolute. (Our test models have logit std ~2.)
//  - greedy decoding, 32 steps after prompts of 1, 17 and 100 tokens: the same tokens as the reference, except that the
//  first
//    difference may come at a step whose reference top-2 margin is below 0.05 (a near tie);
//    comparison stops there.
// The models are made so that this means something: logits are spread out (std > 1), greedy
// output is not "repeat the last token", changing the first of 100 prompt tokens changes the
// last logits by over 20x the f32 tolerance, and the reference with RoPE or the GQA head mapping deliberately broken
// disagrees with us by far more than the tolerance.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kvferry/model/model.h"

namespace kvferry::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kGreedySteps = 32;
const int kPromptLens[] = {1, 7, 16, 17, 100};
// Greedy continuations are compared for these prompt lengths (the reference recomputes the
// whole sequence at every step, so this keeps the test quick).
bool IsGreedyLen(int n) {
  return n == 1 || n == 17 || n == 100;
}
const Architecture kArchs[] = {Architecture::kQwen2, Architecture::kLlama, Architecture::kQwen3};

struct RefResult {
  std::vector<float> logits;  // [n][vocab]
  std::vector<int32_t> greedy;
  std::vector<float> margins;
};

std::string ArchKey(Architecture a) {
  return a == Architecture::kQwen2 ? "qwen2" : a == Architecture::kLlama ? "llama" : "qwen3";
}

std::vector<int32_t> Prompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 256);
  return t;
}

class ReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/kvf_reference_" + std::to_string(::getpid()));
    refs_ = new std::map<std::string, RefResult>();
    fs::remove_all(*dir_);
    fs::create_directories(*dir_ + "/out");
    if (std::system(KVFERRY_PYTHON " -c 'import torch' > /dev/null 2>&1") != 0) {
      *setup_error_ =
          "python3-torch is missing: " KVFERRY_PYTHON " cannot import torch (install it with scripts/setup)";
      return;
    }
    json cases = json::array();
    for (Architecture arch : kArchs) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        MakeTinyOptions o;
        o.arch = arch;
        o.dtype = dt;
        o.seed = 11;
        o.show_progress = false;
        // Non-default scaled RoPE on two of the three: llama3 (the default for Llama) and yarn.
        if (arch == Architecture::kQwen3) o.rope_scaling = "yarn";
        const std::string md = ModelDir(arch, dt);
        Status st = MakeTinyModel(md, o);
        if (!st.ok()) {
          *setup_error_ = st.ToString();
          return;
        }
        for (int n : kPromptLens) {
          cases.push_back({{"key", Key(arch, dt, n, "normal")},
                           {"model_dir", md},
                           {"tokens", Prompt(n, n)},
                           {"greedy_steps", IsGreedyLen(n) ? kGreedySteps : 0}});
        }
        if (dt == DType::kF32) {
          for (const char* v : {"rope_interleaved", "gqa_modulo"})
            cases.push_back({{"key", Key(arch, dt, 100, v)},
                             {"model_dir", md},
                             {"tokens", Prompt(100, 100)},
                             {"greedy_steps", kGreedySteps},
                             {"variant", v}});
        }
      }
    }
    json manifest = {{"out_dir", *dir_ + "/out"}, {"cases", cases}};
    std::ofstream(*dir_ + "/manifest.json") << manifest.dump();
    const std::string cmd = std::string(KVFERRY_PYTHON " ") + KVFERRY_REFERENCE_SCRIPT + " " + *dir_ + "/manifest.json";
    if (std::system(cmd.c_str()) != 0) {
      *setup_error_ = "reference_model.py failed: " + cmd;
      return;
    }
    std::ifstream rin(*dir_ + "/out/results.json");
    json results = json::parse(rin, nullptr, false);
    if (results.is_discarded()) {
      *setup_error_ = "bad results.json";
      return;
    }
    for (auto it = results.begin(); it != results.end(); ++it) {
      RefResult r;
      r.greedy = it.value()["greedy"].get<std::vector<int32_t>>();
      r.margins = it.value()["margins"].get<std::vector<float>>();
      std::ifstream bin(*dir_ + "/out/" + it.key() + ".bin", std::ios::binary);
      std::stringstream ss;
      ss << bin.rdbuf();
      const std::string bytes = ss.str();
      r.logits.resize(bytes.size() / 4);
      std::memcpy(r.logits.data(), bytes.data(), r.logits.size() * 4);
      (*refs_)[it.key()] = std::move(r);
    }
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete refs_;
  }
  void SetUp() override { ASSERT_TRUE(setup_error_->empty()) << *setup_error_; }

  static std::string ModelDir(Architecture a, DType dt) {
    return *dir_ + "/" + ArchKey(a) + "_" + kernels::DTypeName(dt);
  }
  static std::string Key(Architecture a, DType dt, int n, const std::string& variant) {
    return ArchKey(a) + "_" + kernels::DTypeName(dt) + "_" + std::to_string(n) + "_" + variant;
  }
  static const RefResult& Ref(const std::string& key) { return refs_->at(key); }

  static std::unique_ptr<Model> Load(Architecture a, DType dt, kernels::Isa isa = kernels::Isa::kAmxBf16) {
    auto m = Model::Load(ModelDir(a, dt), {.num_threads = 2, .max_isa = isa, .show_progress = false});
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(*m) : nullptr;
  }

  // Our greedy continuation: prefill, then one token per step through the paged cache.
  static std::vector<int32_t> Greedy(Model& m, const std::vector<int32_t>& prompt, DType kv) {
    auto cache = m.CreateKvCache({.num_blocks = 16, .block_size = 16, .dtype = kv});
    EXPECT_TRUE(cache.ok());
    std::vector<int32_t> bt = {5, 2, 9, 14, 0, 7, 3, 11, 1};
    std::vector<int32_t> toks = prompt, out;
    int64_t pos = 0;
    for (int s = 0; s < kGreedySteps; ++s) {
      std::span<const int32_t> chunk(toks.data() + pos, toks.size() - pos);
      SequenceInput in{chunk, pos, bt, false};
      ForwardOutput fo;
      EXPECT_TRUE(m.Forward({&in, 1}, **cache, &fo).ok());
      pos = static_cast<int64_t>(toks.size());
      auto row = fo.Row(0);
      const int32_t next = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      out.push_back(next);
      toks.push_back(next);
    }
    return out;
  }

  // Checks our greedy tokens against the reference, allowing a first difference at a near tie.
  static void ExpectGreedyAgrees(const std::vector<int32_t>& ours, const RefResult& ref, const std::string& what) {
    ASSERT_EQ(ref.greedy.size(), ours.size());
    size_t same = 0;
    while (same < ours.size() && ours[same] == ref.greedy[same]) ++same;
    std::printf("[greedy] %s: %zu/%zu steps identical%s\n", what.c_str(), same, ours.size(),
                same < ours.size() ? " (then a near tie)" : "");
    for (size_t i = 0; i < ours.size(); ++i) {
      if (ours[i] == ref.greedy[i]) continue;
      EXPECT_LT(ref.margins[i], 0.05f) << what << ": greedy differs at step " << i << " (ours " << ours[i]
                                       << ", reference " << ref.greedy[i] << ") with a clear reference margin "
                                       << ref.margins[i];
      return;
    }
  }

  static std::string* dir_;
  static std::map<std::string, RefResult>* refs_;
  static std::string* setup_error_;
};

std::string* ReferenceTest::dir_ = nullptr;
std::map<std::string, RefResult>* ReferenceTest::refs_ = nullptr;
std::string* ReferenceTest::setup_error_ = new std::string();

struct RowStats {
  double range, std;
};
RowStats Stats(std::span<const float> r) {
  double mn = 1e300, mx = -1e300, s = 0, s2 = 0;
  for (float v : r) {
    mn = std::min(mn, double(v));
    mx = std::max(mx, double(v));
    s += v;
    s2 += double(v) * v;
  }
  const double mean = s / r.size();
  return {mx - mn, std::sqrt(std::max(0.0, s2 / r.size() - mean * mean))};
}

// Max over positions of |ours - ref| / scale(ref row).
double WorstRatio(const ForwardOutput& out, size_t seq, const std::vector<float>& ref, int64_t V, bool by_std) {
  double worst = 0;
  for (int64_t i = 0; i < out.num_rows[seq]; ++i) {
    std::span<const float> r(&ref[i * V], V);
    auto ours = out.Row(seq, i);
    const RowStats st = Stats(r);
    double d = 0;
    for (int64_t j = 0; j < V; ++j) d = std::max(d, double(std::fabs(ours[j] - r[j])));
    worst = std::max(worst, d / (by_std ? st.std : st.range));
  }
  return worst;
}

TEST_F(ReferenceTest, F32LogitsAgreeUnbatchedAndBatched) {
  for (Architecture arch : kArchs) {
    auto m = Load(arch, DType::kF32);
    ASSERT_NE(m, nullptr);
    const int64_t V = m->config().vocab_size;
    // Unbatched: one sequence per call.
    for (int n : kPromptLens) {
      auto cache = m->CreateKvCache({.num_blocks = 16, .dtype = DType::kF32});
      const auto toks = Prompt(n, n);
      const std::vector<int32_t> bt = {3, 1, 4, 15, 9, 2, 6, 8};
      SequenceInput in{toks, 0, bt, true};
      ForwardOutput out;
      ASSERT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
      const double r = WorstRatio(out, 0, Ref(Key(arch, DType::kF32, n, "normal")).logits, V, false);
      EXPECT_LE(r, 1e-3) << ArchKey(arch) << " n=" << n;
      std::printf("[ f32 ] %s n=%3d unbatched: max|d|/range = %.2e\n", ArchKey(arch).c_str(), n, r);
    }
    // Batched: all prompts in one call, each in its own blocks.
    auto cache = m->CreateKvCache({.num_blocks = 64, .dtype = DType::kF32});
    std::vector<std::vector<int32_t>> toks, tables;
    for (int n : kPromptLens) toks.push_back(Prompt(n, n));
    std::vector<SequenceInput> batch;
    int32_t next_block = 0;
    for (size_t s = 0; s < toks.size(); ++s) {
      std::vector<int32_t> bt;
      for (size_t b = 0; b < (toks[s].size() + 15) / 16; ++b) bt.push_back(next_block++);
      tables.push_back(bt);
    }
    for (size_t s = 0; s < toks.size(); ++s) batch.push_back({toks[s], 0, tables[s], true});
    ForwardOutput out;
    ASSERT_TRUE(m->Forward(batch, **cache, &out).ok());
    for (size_t s = 0; s < toks.size(); ++s) {
      const double r = WorstRatio(out, s, Ref(Key(arch, DType::kF32, kPromptLens[s], "normal")).logits, V, false);
      EXPECT_LE(r, 1e-3) << ArchKey(arch) << " batched n=" << kPromptLens[s];
      std::printf("[ f32 ] %s n=%3d batched:   max|d|/range = %.2e\n", ArchKey(arch).c_str(), kPromptLens[s], r);
    }
  }
}

TEST_F(ReferenceTest, GreedyAgreesF32AndBf16) {
  for (Architecture arch : kArchs) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      auto m = Load(arch, dt);
      ASSERT_NE(m, nullptr);
      for (int n : kPromptLens) {
        if (!IsGreedyLen(n)) continue;
        const auto ours = Greedy(*m, Prompt(n, n), dt);
        ExpectGreedyAgrees(ours, Ref(Key(arch, dt, n, "normal")),
                           ArchKey(arch) + " " + kernels::DTypeName(dt) + " n=" + std::to_string(n));
      }
    }
  }
}

TEST_F(ReferenceTest, Bf16LogitsWithinToleranceOfF32Reference) {
  for (Architecture arch : kArchs) {
    auto m = Load(arch, DType::kBF16);
    ASSERT_NE(m, nullptr);
    const int64_t V = m->config().vocab_size;
    for (int n : kPromptLens) {
      auto cache = m->CreateKvCache({.num_blocks = 16, .dtype = DType::kBF16});
      const auto toks = Prompt(n, n);
      const std::vector<int32_t> bt = {3, 1, 4, 15, 9, 2, 6, 8};
      SequenceInput in{toks, 0, bt, true};
      ForwardOutput out;
      ASSERT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
      const double r = WorstRatio(out, 0, Ref(Key(arch, DType::kBF16, n, "normal")).logits, V, true);
      EXPECT_LE(r, 0.05) << ArchKey(arch) << " n=" << n << " (" << m->Describe() << ")";
      std::printf("[ bf16] %s n=%3d: max|d|/std = %.3f\n", ArchKey(arch).c_str(), n, r);
    }
  }
}

// Every ISA level this CPU runs (the kernels of each level, and the GEMM/GEMV paths they
// choose) against the PyTorch reference: bf16 logits within tolerance and greedy agreement.
TEST_F(ReferenceTest, EveryIsaLevelAgreesWithTheReference) {
  using kernels::Isa;
  int tested = 0;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni, Isa::kAvx512Bf16, Isa::kAmxBf16}) {
    if (isa > kernels::DetectIsa()) {
      std::printf("[ isa ] %s: not run on this CPU (it runs up to %s)\n", kernels::IsaName(isa),
                  kernels::IsaName(kernels::DetectIsa()));
      continue;
    }
    ++tested;
    for (Architecture arch : kArchs) {
      auto m = Load(arch, DType::kBF16, isa);
      ASSERT_NE(m, nullptr);
      ASSERT_EQ(m->compute().isa(), isa);
      const int64_t V = m->config().vocab_size;
      const std::string what = std::string(kernels::IsaName(isa)) + " " + ArchKey(arch);
      for (int n : kPromptLens) {
        auto cache = m->CreateKvCache({.num_blocks = 16, .dtype = DType::kBF16});
        const auto toks = Prompt(n, n);
        const std::vector<int32_t> bt = {3, 1, 4, 15, 9, 2, 6, 8};
        SequenceInput in{toks, 0, bt, true};
        ForwardOutput out;
        ASSERT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
        const double r = WorstRatio(out, 0, Ref(Key(arch, DType::kBF16, n, "normal")).logits, V, true);
        EXPECT_LE(r, 0.05) << what << " n=" << n << " (" << m->Describe() << ")";
        if (IsGreedyLen(n))
          ExpectGreedyAgrees(Greedy(*m, toks, DType::kBF16), Ref(Key(arch, DType::kBF16, n, "normal")),
                             what + " bf16 n=" + std::to_string(n));
      }
    }
  }
  EXPECT_GE(tested, 1);
}

TEST_F(ReferenceTest, TestModelsAreSensitive) {
  for (Architecture arch : kArchs) {
    auto m = Load(arch, DType::kF32);
    ASSERT_NE(m, nullptr);
    const int64_t V = m->config().vocab_size;
    const RefResult& ref = Ref(Key(arch, DType::kF32, 100, "normal"));
    // Spread-out logits.
    const RowStats st = Stats(std::span<const float>(&ref.logits[99 * V], V));
    EXPECT_GT(st.std, 1.0) << ArchKey(arch);
    // Greedy output is not "repeat the last token".
    int repeats = 0;
    int32_t prev = Prompt(100, 100).back();
    for (int32_t t : ref.greedy) repeats += (t == prev), prev = t;
    EXPECT_LT(repeats, kGreedySteps / 4) << ArchKey(arch) << ": " << ::testing::PrintToString(ref.greedy);
    // The first token of a 100-token prompt moves the last logits.
    auto last_logits = [&](const std::vector<int32_t>& toks) {
      auto cache = m->CreateKvCache({.num_blocks = 8, .dtype = DType::kF32});
      const std::vector<int32_t> bt = {0, 1, 2, 3, 4, 5, 6};
      SequenceInput in{toks, 0, bt, false};
      ForwardOutput out;
      EXPECT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
      return std::vector<float>(out.Row(0).begin(), out.Row(0).end());
    };
    auto p1 = Prompt(100, 100), p2 = p1;
    p2[0] = (p2[0] + 1) % 256;
    const auto a = last_logits(p1), b = last_logits(p2);
    double d = 0;
    for (int64_t j = 0; j < V; ++j) d = std::max(d, double(std::fabs(a[j] - b[j])));
    EXPECT_GT(d, 20 * 1e-3 * st.range) << ArchKey(arch) << ": the first token barely matters";
    std::printf("[sense] %s: logit std %.2f, greedy repeats %d/32, first-token effect %.3f\n", ArchKey(arch).c_str(),
                st.std, repeats, d);
    // A reference with broken RoPE or GQA mapping disagrees with us far beyond tolerance, and
    // its greedy output differs.
    const auto ours = Greedy(*m, p1, DType::kF32);
    for (const char* v : {"rope_interleaved", "gqa_modulo"}) {
      const RefResult& broken = Ref(Key(arch, DType::kF32, 100, v));
      double worst = 0;
      for (int64_t j = 0; j < V; ++j) worst = std::max(worst, double(std::fabs(broken.logits[99 * V + j] - a[j])));
      EXPECT_GT(worst, 30 * 1e-3 * st.range) << ArchKey(arch) << " " << v;
      EXPECT_NE(broken.greedy, ours) << ArchKey(arch) << " " << v;
      std::printf("[sense] %s %s: last-logit diff %.3f, greedy differs: %s\n", ArchKey(arch).c_str(), v, worst,
                  broken.greedy != ours ? "yes" : "no");
    }
  }
}

}  // namespace
}  // namespace kvferry::model
