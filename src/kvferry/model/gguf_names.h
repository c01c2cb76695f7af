#pragma once
// Private to model/: the GGUF metadata keys and architecture names kvferry reads and writes
// (llama.cpp's names; per-architecture keys are the architecture name + the suffix).

#include <string_view>

#include "kvferry/base/base.h"
#include "kvferry/model/model.h"

namespace kvferry::model {
namespace gguf_keys {
inline constexpr const char* kArchitecture = "general.architecture";
inline constexpr const char* kAlignment = "general.alignment";
inline constexpr const char* kContextLength = ".context_length";
inline constexpr const char* kEmbeddingLength = ".embedding_length";
inline constexpr const char* kBlockCount = ".block_count";
inline constexpr const char* kFeedForwardLength = ".feed_forward_length";
inline constexpr const char* kHeadCount = ".attention.head_count";
inline constexpr const char* kHeadCountKv = ".attention.head_count_kv";
inline constexpr const char* kKeyLength = ".attention.key_length";
inline constexpr const char* kValueLength = ".attention.value_length";
inline constexpr const char* kRmsEps = ".attention.layer_norm_rms_epsilon";
inline constexpr const char* kRopeFreqBase = ".rope.freq_base";
inline constexpr const char* kRopeDimensionCount = ".rope.dimension_count";
inline constexpr const char* kRopeScalingType = ".rope.scaling.type";
inline constexpr const char* kRopeScalingFactor = ".rope.scaling.factor";
inline constexpr const char* kVocabSize = ".vocab_size";

inline constexpr const char* kTokenizerModel = "tokenizer.ggml.model";
inline constexpr const char* kTokenizerPre = "tokenizer.ggml.pre";
inline constexpr const char* kTokens = "tokenizer.ggml.tokens";
inline constexpr const char* kTokenTypes = "tokenizer.ggml.token_type";
inline constexpr const char* kMerges = "tokenizer.ggml.merges";
inline constexpr const char* kBosId = "tokenizer.ggml.bos_token_id";
inline constexpr const char* kEosId = "tokenizer.ggml.eos_token_id";
inline constexpr const char* kPadId = "tokenizer.ggml.padding_token_id";
inline constexpr const char* kAddBos = "tokenizer.ggml.add_bos_token";
inline constexpr const char* kChatTemplate = "tokenizer.chat_template";
}  // namespace gguf_keys

// "qwen2", "llama", "qwen3".
inline const char* GgufArchName(Architecture arch) {
  switch (arch) {
    case Architecture::kQwen2: return "qwen2";
    case Architecture::kLlama: return "llama";
    case Architecture::kQwen3: return "qwen3";
  }
  return "?";
}

}  // namespace kvferry::model
