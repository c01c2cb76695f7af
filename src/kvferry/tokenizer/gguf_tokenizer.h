#pragma once
// Private to tokenizer/: a GGUF file's tokenizer metadata (`tokenizer.ggml.*`,
// `tokenizer.chat_template`) as the Hugging Face files the loaders read, so that a GGUF model
// needs no tokenizer directory. Only "gpt2" (byte-level BPE) tokenizers are supported; the
// pre-tokenizer regex comes from `tokenizer.ggml.pre` (qwen2, llama-bpe, gpt-2/default).

#include <string>
#include <string_view>

#include "kvferry/base/base.h"

namespace kvferry::tokenizer {

struct GgufTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;  // bos/eos/pad tokens, add_bos_token, chat_template
  std::string generation_config_json;  // eos_token_id (with eot_token_id when different)
};

// Whether `path` is a regular file that starts with the GGUF magic.
bool IsGgufPath(std::string_view path);

// Reads the file's metadata (the file is mapped, only its header pages are read). Errors name
// the file and the key: NotFound (no tokenizer metadata), InvalidArgument (wrong types or
// inconsistent arrays), Unimplemented (another tokenizer model or pre-tokenizer).
StatusOr<GgufTokenizerFiles> TokenizerFilesFromGguf(const std::string& path);

}  // namespace kvferry::tokenizer
