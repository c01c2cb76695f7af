#pragma once
// Private to model/: a GGUF file as a model: its ModelConfig from the metadata, and which HF
// tensor name each GGUF tensor name stands for.

#include <string>
#include <string_view>

#include "kvferry/base/base.h"
#include "kvferry/model/gguf.h"
#include "kvferry/model/model.h"

namespace kvferry::model {

// The config of a qwen2 / llama / qwen3 GGUF file: shapes from `{arch}.*` metadata (head_dim
// from attention.key_length), vocab from token_embd.weight, biases / q-k norms / tied output
// from which tensors exist, rope_freqs.weight as rope_freq_factors, bos/eos from
// tokenizer.ggml.*. Unsupported architectures or RoPE variants are Unimplemented; missing or
// mistyped metadata is InvalidArgument naming the key.
// `bytes` are the file's (rope_freqs.weight is read from them).
StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file, std::string_view bytes);
// IsGgufFile and ReadGgufConfig are public (model.h).

// The GGUF name of an HF tensor name ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"), or "" if there is none.
std::string GgufTensorName(std::string_view hf_name);

}  // namespace kvferry::model
