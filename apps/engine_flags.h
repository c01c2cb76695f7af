#pragma once
// Engine flags shared by the commands that start an engine (`serve`, and later `run`/`bench`):
// vLLM's names where vLLM has the flag (--max-model-len, --max-num-seqs, --block-size, ...).

#include <cstdint>
#include <string>

#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"

namespace CLI {
class App;
}

namespace kvferry::apps {

struct EngineFlags {
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  int max_num_seqs = 64;
  int64_t max_num_batched_tokens = 2048;
  int64_t block_size = 16;
  bool enable_prefix_caching = true;
  uint64_t seed = 0;
  std::string kv_cache_memory = "1GiB";
  std::string dtype = "auto";           // weights compute in their stored dtype
  std::string kv_cache_dtype = "auto";  // auto: the model's dtype (config.json torch_dtype)
  int threads = 0;                      // 0: all cores
  int64_t max_waiting = 1024;
  bool show_progress = true;
};

// Registers the flags on `app`; values land in `*flags`, which must outlive parsing.
void AddEngineFlags(CLI::App* app, EngineFlags* flags);

// Checks the values against the model in `model_dir` (its config.json) and fills EngineOptions.
// InvalidArgument naming the flag for a bad value.
StatusOr<engine::EngineOptions> ToEngineOptions(const EngineFlags& flags, const std::string& model_dir);

}  // namespace kvferry::apps
