#include <gtest/gtest.h>

#include <cmath>

#include "kvferry/model/model.h"

namespace kvferry::model {
namespace {

// The config.json of Qwen2.5-0.5B-Instruct.
constexpr const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

TEST(Config, ParsesQwen25) {
  auto c = ParseModelConfig(kQwen25);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Architecture::kQwen2);
  EXPECT_EQ(c->hidden_size, 896);
  EXPECT_EQ(c->num_layers, 24);
  EXPECT_EQ(c->num_heads, 14);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{151645});
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
}

TEST(Config, ParsesLlama32WithLlama3Scaling) {
  auto c = ParseModelConfig(R"({"architectures":["LlamaForCausalLM"],"hidden_size":2048,
    "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,
    "intermediate_size":8192,"vocab_size":128256,"rope_theta":500000.0,"attention_bias":false,
    "mlp_bias":false,"eos_token_id":[128001,128008,128009],"tie_word_embeddings":true,
    "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
    "original_max_position_embeddings":8192,"rope_type":"llama3"}})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->eos_token_ids.size(), 3u);
  std::vector<float> inv;
  float f;
  RopeFrequencies(*c, &inv, &f);
  ASSERT_EQ(inv.size(), 32u);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);                                    // high frequency: unchanged
  EXPECT_NEAR(inv[31], std::pow(500000.0, -62.0 / 64) / 32, 1e-12);  // low frequency: / factor
  EXPECT_EQ(f, 1.0f);
}

TEST(Config, ParsesQwen3WithYarn) {
  auto c = ParseModelConfig(R"({"architectures":["Qwen3ForCausalLM"],"hidden_size":1024,
    "num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
    "intermediate_size":3072,"vocab_size":151936,"rope_theta":1000000,
    "rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->head_dim, 128);
  std::vector<float> inv;
  float f;
  RopeFrequencies(*c, &inv, &f);
  EXPECT_NEAR(f, 0.1 * std::log(4.0) + 1.0, 1e-6);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
}

TEST(Config, ClearErrors) {
  auto unknown = ParseModelConfig(R"({"architectures":["GPT2LMHeadModel"],"hidden_size":8})");
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(unknown.status().message().find("GPT2LMHeadModel"), std::string::npos);
  EXPECT_FALSE(ParseModelConfig("{").ok());
  EXPECT_FALSE(ParseModelConfig("[]").ok());
  auto missing = ParseModelConfig(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":64})");
  EXPECT_NE(missing.status().message().find("num_hidden_layers"), std::string::npos);
  auto gqa = ParseModelConfig(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":64,
    "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3,
    "intermediate_size":8,"vocab_size":10})");
  EXPECT_FALSE(gqa.ok());
  auto neg = ParseModelConfig(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":-64,
    "num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10})");
  EXPECT_FALSE(neg.ok());
  auto dyn = ParseModelConfig(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,
    "num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10,
    "rope_scaling":{"type":"dynamic","factor":2.0}})");
  EXPECT_EQ(dyn.status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace kvferry::model
