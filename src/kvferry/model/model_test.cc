// Self-consistency of the forward pass (paged vs. chunked vs. batched vs. ISA levels) and the
// loader's error reporting. Agreement with an independent implementation is in
// model_reference_test.cc.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "kvferry/model/model.h"
#include "kvferry/model/safetensors.h"

namespace kvferry::model {
namespace {

namespace fs = std::filesystem;

// One folder per process (ctest runs each test in its own), removed when the process exits.
const std::string& ProcessDir() {
  static const std::string* dir = [] {
    auto* d = new std::string(::testing::TempDir() + "/kvf_model_test_" + std::to_string(::getpid()));
    fs::remove_all(*d);
    fs::create_directories(*d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(ProcessDir(), ec);
    });
    return d;
  }();
  return *dir;
}

std::string TempDir(const std::string& name) {
  const std::string d = (fs::path(ProcessDir()) / name).string();
  fs::remove_all(d);
  return d;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string MakeModel(const std::string& name, Architecture arch, DType dtype) {
  const std::string dir = TempDir(name);
  MakeTinyOptions o;
  o.arch = arch;
  o.dtype = dtype;
  o.seed = 7;
  o.show_progress = false;
  Status st = MakeTinyModel(dir, o);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return dir;
}

std::unique_ptr<Model> Load(const std::string& dir, LoadOptions o = {}) {
  o.show_progress = false;
  if (o.num_threads == 0) o.num_threads = 2;
  auto m = Model::Load(dir, o);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(*m) : nullptr;
}

std::vector<int32_t> Prompt(int n, uint32_t seed, int vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::vector<int32_t> Blocks(int64_t first, int64_t n) {
  std::vector<int32_t> b(n);
  for (int64_t i = 0; i < n; ++i) b[i] = static_cast<int32_t>(first + i);
  return b;
}

// All-position logits of one sequence run as a single prefill.
std::vector<float> FullLogits(Model& m, const std::vector<int32_t>& toks, DType kv = DType::kF32,
                              std::vector<int32_t> blocks = {}) {
  auto cache = m.CreateKvCache({.num_blocks = 64, .block_size = 16, .dtype = kv});
  EXPECT_TRUE(cache.ok());
  if (blocks.empty()) blocks = Blocks(0, 16);
  SequenceInput in{toks, 0, blocks, true};
  ForwardOutput out;
  Status st = m.Forward({&in, 1}, **cache, &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out.logits;
}

double MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

class ModelArchTest : public ::testing::TestWithParam<Architecture> {};

TEST_P(ModelArchTest, ChunkedPagedAndBatchedAgreeWithFullPrefill) {
  const std::string dir = MakeModel(std::string("arch") + ArchitectureName(GetParam()), GetParam(), DType::kF32);
  auto m = Load(dir);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->config().vocab_size;
  const auto toks = Prompt(40, 1, 256);
  const auto full = FullLogits(*m, toks);
  ASSERT_EQ(full.size(), toks.size() * V);

  // Scattered, non-contiguous block ids give the same result.
  const auto scattered = FullLogits(*m, toks, DType::kF32, {9, 3, 60, 17});
  EXPECT_LT(MaxAbsDiff(full, scattered), 1e-5);

  // Chunked prefill (5, 11, 24) then token-by-token decode of the same tokens.
  auto cache = m->CreateKvCache({.num_blocks = 64, .block_size = 16, .dtype = DType::kF32});
  ASSERT_TRUE(cache.ok());
  const auto bt = Blocks(5, 4);
  int64_t pos = 0;
  for (int64_t n : {5, 11, 14, 1, 1, 1, 1, 1, 1}) {
    std::span<const int32_t> chunk(toks.data() + pos, n);
    SequenceInput in{chunk, pos, bt, true};
    ForwardOutput out;
    ASSERT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
    for (int64_t i = 0; i < n; ++i)
      EXPECT_LT(MaxAbsDiff(out.Row(0, i), std::span<const float>(&full[(pos + i) * V], V)), 1e-4)
          << "position " << pos + i;
    pos += n;
  }

  // A batch mixing a prefill chunk, a decode step and a fresh prompt, vs. the same separately.
  auto c2 = m->CreateKvCache({.num_blocks = 64, .block_size = 16, .dtype = DType::kF32});
  const auto t2 = Prompt(23, 2, 256);
  const auto t3 = Prompt(7, 3, 256);
  const auto b1 = Blocks(0, 4), b2 = Blocks(10, 2), b3 = Blocks(20, 1);
  {
    SequenceInput warm[] = {{std::span<const int32_t>(toks.data(), 39), 0, b1, false},
                            {std::span<const int32_t>(t2.data(), 17), 0, b2, false}};
    ForwardOutput out;
    ASSERT_TRUE(m->Forward(warm, **c2, &out).ok());
  }
  SequenceInput mixed[] = {{std::span<const int32_t>(toks.data() + 39, 1), 39, b1, false},
                           {std::span<const int32_t>(t2.data() + 17, 6), 17, b2, true},
                           {t3, 0, b3, false}};
  ForwardOutput out;
  ASSERT_TRUE(m->Forward(mixed, **c2, &out).ok());
  ASSERT_EQ(out.num_rows, (std::vector<int64_t>{1, 6, 1}));
  EXPECT_LT(MaxAbsDiff(out.Row(0), std::span<const float>(&full[39 * V], V)), 1e-4);
  const auto full2 = FullLogits(*m, t2);
  for (int i = 0; i < 6; ++i)
    EXPECT_LT(MaxAbsDiff(out.Row(1, i), std::span<const float>(&full2[(17 + i) * V], V)), 1e-4);
  const auto full3 = FullLogits(*m, t3);
  EXPECT_LT(MaxAbsDiff(out.Row(2), std::span<const float>(&full3[6 * V], V)), 1e-4);
}

TEST_P(ModelArchTest, IsaLevelsAndGemmPathsAgree) {
  const std::string dir = MakeModel(std::string("isa") + ArchitectureName(GetParam()), GetParam(), DType::kBF16);
  auto ref = Load(dir, {.num_threads = 1, .max_isa = kernels::Isa::kScalar, .use_gemm_library = false});
  ASSERT_NE(ref, nullptr);
  const auto toks = Prompt(33, 4, 256);
  const auto want = FullLogits(*ref, toks, DType::kBF16);
  for (auto isa : {kernels::Isa::kAvx2, kernels::Isa::kAvx512, kernels::Isa::kAmxBf16}) {
    for (bool lib : {false, true}) {
      auto m = Load(dir, {.num_threads = 2, .max_isa = isa, .use_gemm_library = lib});
      ASSERT_NE(m, nullptr);
      // The native bf16 GEMMs (oneDNN's, and the packed-weight one at AVX512-BF16) round the
      // prompt's activations to bf16: looser.
      const std::string how = m->Describe();
      const bool rounds = how.find("oneDNN bf16") != std::string::npos || how.find("packed") != std::string::npos;
      const double tol = rounds ? 0.1 : 2e-3;
      EXPECT_LT(MaxAbsDiff(FullLogits(*m, toks, DType::kBF16), want), tol) << m->Describe();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ModelArchTest,
                         ::testing::Values(Architecture::kQwen2, Architecture::kLlama, Architecture::kQwen3),
                         [](const auto& info) { return std::string(ArchitectureName(info.param)); });

TEST(Model, F16WeightsMatchF32) {
  const std::string d32 = MakeModel("w32", Architecture::kQwen2, DType::kF32);
  const std::string d16 = MakeModel("w16", Architecture::kQwen2, DType::kF16);
  auto m32 = Load(d32), m16 = Load(d16);
  ASSERT_NE(m16, nullptr);
  EXPECT_EQ(m16->weight_dtype(), DType::kF16);
  const auto toks = Prompt(20, 5, 256);
  EXPECT_LT(MaxAbsDiff(FullLogits(*m32, toks), FullLogits(*m16, toks)), 0.05);
}

// The connector compares fingerprints: two loads of one model agree (in memory or mapped), the
// same model in another dtype does not.
TEST(Model, FingerprintIdentifiesTheWeights) {
  const std::string d32 = MakeModel("fp32", Architecture::kQwen2, DType::kF32);
  const std::string d16 = MakeModel("fp16", Architecture::kQwen2, DType::kF16);
  auto a = Load(d32), b = Load(d32), c = Load(d16);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(a->Fingerprint(), b->Fingerprint());
  EXPECT_EQ(a->Fingerprint().rfind("Qwen2ForCausalLM f32 ", 0), 0u) << a->Fingerprint();
  EXPECT_NE(a->Fingerprint(), c->Fingerprint());
  setenv("KVFERRY_WEIGHTS", "mmap", 1);
  auto mapped = Load(d32);
  unsetenv("KVFERRY_WEIGHTS");
  ASSERT_NE(mapped, nullptr);
  EXPECT_EQ(mapped->Fingerprint(), a->Fingerprint());
}

TEST(Model, KvCacheLayoutIsBlockMajor) {
  const std::string dir = MakeModel("layout", Architecture::kQwen2, DType::kBF16);
  auto m = Load(dir);
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  auto cache = m->CreateKvCache({.num_blocks = 8, .block_size = 16, .dtype = DType::kBF16});
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ((*cache)->bytes_per_block(), static_cast<size_t>(c.num_layers * 2 * c.num_kv_heads * 16 * c.head_dim * 2));
  EXPECT_EQ((*cache)->size_bytes(), 8 * (*cache)->bytes_per_block());
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*cache)->base()) % 4096, 0u);
  // A 20-token prompt in blocks 3 and 4 writes only inside those blocks' byte range.
  const auto toks = Prompt(20, 6, 256);
  const std::vector<int32_t> bt = {3, 4};
  SequenceInput in{toks, 0, bt, false};
  ForwardOutput out;
  ASSERT_TRUE(m->Forward({&in, 1}, **cache, &out).ok());
  const auto* bytes = static_cast<const uint8_t*>((*cache)->base());
  const size_t bpb = (*cache)->bytes_per_block();
  for (size_t i = 0; i < (*cache)->size_bytes(); ++i) {
    const bool inside = i >= 3 * bpb && i < 5 * bpb;
    if (!inside) {
      ASSERT_EQ(bytes[i], 0) << "byte " << i << " outside blocks 3-4 was written";
    }
  }
  // Layer 1's V of block 3 holds data.
  const size_t v1 = 3 * bpb + (*cache)->LayerOffset(1, true) * 2;
  EXPECT_TRUE(std::any_of(bytes + v1, bytes + v1 + 64, [](uint8_t b) { return b != 0; }));
}

TEST(Model, ForwardRejectsBadInput) {
  const std::string dir = MakeModel("badinput", Architecture::kQwen2, DType::kBF16);
  auto m = Load(dir);
  ASSERT_NE(m, nullptr);
  auto cache = m->CreateKvCache({.num_blocks = 4});
  ASSERT_TRUE(cache.ok());
  ForwardOutput out;
  const std::vector<int32_t> good = {1, 2, 3}, bad_tok = {1, 100000}, one_block = {0};
  const std::vector<int32_t> bad_block = {7};
  SequenceInput a{bad_tok, 0, one_block, false};
  EXPECT_EQ(m->Forward({&a, 1}, **cache, &out).code(), StatusCode::kInvalidArgument);
  SequenceInput b{good, 15, one_block, false};  // positions 15..17 need 2 blocks
  EXPECT_EQ(m->Forward({&b, 1}, **cache, &out).code(), StatusCode::kInvalidArgument);
  SequenceInput c{good, 0, bad_block, false};
  EXPECT_EQ(m->Forward({&c, 1}, **cache, &out).code(), StatusCode::kInvalidArgument);
  SequenceInput d{{}, 0, one_block, false};
  EXPECT_EQ(m->Forward({&d, 1}, **cache, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(m->CreateKvCache({.num_blocks = 0}).ok());
}

TEST(Model, MakeTinyWritesCompleteDirectory) {
  const std::string dir = MakeModel("files", Architecture::kQwen2, DType::kBF16);
  for (const char* f :
       {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
  EXPECT_NE(Slurp(dir + "/tokenizer_config.json").find("<|im_start|>"), std::string::npos);
  EXPECT_NE(Slurp(dir + "/tokenizer.json").find("\"merges\""), std::string::npos);
  // Deterministic: the same seed gives the same bytes.
  const std::string again = TempDir("files2");
  MakeTinyOptions o;
  o.seed = 7;
  o.show_progress = false;
  ASSERT_TRUE(MakeTinyModel(again, o).ok());
  EXPECT_EQ(Slurp(dir + "/model.safetensors"), Slurp(again + "/model.safetensors"));
  // A custom tokenizer writer replaces the placeholder.
  const std::string custom = TempDir("files3");
  o.tokenizer_writer = [](const std::string& d, const ModelConfig&) {
    Spit(d + "/tokenizer.json", "{}");
    return Status::Ok();
  };
  ASSERT_TRUE(MakeTinyModel(custom, o).ok());
  EXPECT_EQ(Slurp(custom + "/tokenizer.json"), "{}");
}

TEST(Model, LoadErrorsNameFileAndTensor) {
  const std::string dir = MakeModel("errors", Architecture::kQwen3, DType::kBF16);
  const std::string config = Slurp(dir + "/config.json");
  auto load = [&] { return Model::Load(dir, {.num_threads = 1, .show_progress = false}).status(); };
  ASSERT_TRUE(load().ok());

  // Unknown architecture.
  std::string c2 = config;
  c2.replace(c2.find("Qwen3ForCausalLM"), 16, "MambaForCausalLM");
  Spit(dir + "/config.json", c2);
  Status st = load();
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("config.json"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("MambaForCausalLM"), std::string::npos) << st.ToString();

  // Qwen2 needs q/k/v biases, which a Qwen3 checkpoint lacks: missing tensor.
  c2 = config;
  c2.replace(c2.find("Qwen3ForCausalLM"), 16, "Qwen2ForCausalLM");
  Spit(dir + "/config.json", c2);
  st = load();
  EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.ToString();
  EXPECT_NE(st.message().find("model.layers.0.self_attn.q_proj.bias"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("model.safetensors"), std::string::npos) << st.ToString();

  // Wrong shape.
  c2 = config;
  c2.replace(c2.find("\"intermediate_size\": 128"), 24, "\"intermediate_size\": 96 ");
  Spit(dir + "/config.json", c2);
  st = load();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("gate_proj.weight' has shape [128, 64], want [96, 64]"), std::string::npos)
      << st.ToString();
  Spit(dir + "/config.json", config);

  // Truncated file.
  const std::string weights = Slurp(dir + "/model.safetensors");
  fs::resize_file(dir + "/model.safetensors", weights.size() - 100);
  st = load();
  EXPECT_EQ(st.code(), StatusCode::kDataLoss) << st.ToString();
  EXPECT_NE(st.message().find("model.safetensors"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st.ToString();
  Spit(dir + "/model.safetensors", weights);
  ASSERT_TRUE(load().ok());

  // No config, no weights.
  fs::remove(dir + "/model.safetensors");
  EXPECT_EQ(load().code(), StatusCode::kNotFound);
  fs::remove(dir + "/config.json");
  st = load();
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("config.json"), std::string::npos);
}

// Splits model.safetensors into two shards with an index, as HF does for large models.
TEST(Model, LoadsShardedCheckpoint) {
  const std::string dir = MakeModel("sharded", Architecture::kLlama, DType::kBF16);
  auto whole = Load(dir);
  ASSERT_NE(whole, nullptr);
  const auto toks = Prompt(12, 8, 256);
  const auto want = FullLogits(*whole, toks, DType::kBF16);
  whole.reset();

  const std::string file = Slurp(dir + "/model.safetensors");
  auto header = ParseSafetensorsHeader(file);
  ASSERT_TRUE(header.ok());
  std::string index = R"({"metadata":{},"weight_map":{)";
  for (int shard = 0; shard < 2; ++shard) {
    std::string json = "{";
    std::string data;
    bool first = true;
    for (size_t i = shard; i < header->tensors.size(); i += 2) {
      const TensorInfo& t = header->tensors[i];
      std::string shape;
      for (auto d : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
      json += std::string(first ? "" : ",") + "\"" + t.name + "\":{\"dtype\":\"" + t.dtype_name + "\",\"shape\":[" +
              shape + "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + t.end - t.begin) + "]}";
      data += file.substr(t.begin, t.end - t.begin);
      const std::string name = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
      index += std::string(index.back() == '{' ? "" : ",") + "\"" + t.name + "\":\"" + name + "\"";
      first = false;
    }
    json += "}";
    std::string out(8, '\0');
    for (int b = 0; b < 8; ++b) out[b] = static_cast<char>((json.size() >> (8 * b)) & 0xff);
    Spit(dir + "/model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors", out + json + data);
  }
  index += "}}";
  Spit(dir + "/model.safetensors.index.json", index);
  fs::remove(dir + "/model.safetensors");
  auto sharded = Load(dir);
  ASSERT_NE(sharded, nullptr);
  EXPECT_EQ(MaxAbsDiff(FullLogits(*sharded, toks, DType::kBF16), want), 0.0);

  fs::remove(dir + "/model-00002-of-00002.safetensors");
  auto st = Model::Load(dir, {.num_threads = 1, .show_progress = false}).status();
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("model-00002-of-00002.safetensors"), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace kvferry::model
