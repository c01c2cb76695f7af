#include "apps/engine_flags.h"

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <sstream>

#include "kvferry/kernels/kernels.h"
#include "kvferry/model/model.h"

namespace kvferry::apps {

void AddEngineFlags(CLI::App* app, EngineFlags* f) {
  app->add_option("--max-model-len", f->max_model_len,
                  "Longest sequence (prompt + output) in tokens (default: the model's max_position_embeddings)");
  app->add_option("--max-num-seqs", f->max_num_seqs, "Most requests in the running batch (default 64)");
  app->add_option("--max-num-batched-tokens", f->max_num_batched_tokens,
                  "Token budget of one engine step; long prompts are prefilled in chunks (default 2048)");
  app->add_option("--block-size", f->block_size, "Tokens per KV cache block (default 16)");
  app->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", f->enable_prefix_caching,
                "Reuse the KV of earlier prompts' common prefixes (default on)");
  app->add_option("--seed", f->seed, "Engine seed: requests without a seed get one derived from it (default 0)");
  app->add_option("--kv-cache-memory", f->kv_cache_memory,
                  "Size of the KV cache arena, e.g. 512MiB or 2GiB (default 1GiB; capped at what max-model-len x "
                  "max-num-seqs needs)");
  app->add_option("--dtype", f->dtype,
                  "Weight dtype: auto (default) or the dtype the weights are stored in (bf16, f16, f32); weights are "
                  "used in place, never converted");
  app->add_option("--kv-cache-dtype", f->kv_cache_dtype,
                  "KV cache dtype: auto (default: the model's torch_dtype), bf16, f16 or f32");
  app->add_option("--threads", f->threads, "Compute threads (default: all cores)");
  app->add_option("--max-waiting-requests", f->max_waiting,
                  "Requests that may wait for a batch slot; more get 503 (default 1024)");
}

namespace {

StatusOr<model::ModelConfig> ReadConfig(const std::string& model_dir) {
  if (model::IsGgufFile(model_dir)) return model::ReadGgufConfig(model_dir);
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return NotFoundError(fmt::format("cannot read {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return model::ParseModelConfig(ss.str());
}

StatusOr<kernels::DType> DTypeFlag(const char* flag, const std::string& value, kernels::DType model_dtype) {
  if (value == "auto") return model_dtype;
  std::string v = value;
  if (v == "bfloat16") v = "bf16";
  if (v == "float16" || v == "half") v = "f16";
  if (v == "float32" || v == "float") v = "f32";
  StatusOr<kernels::DType> d = kernels::ParseDType(v);
  if (!d.ok()) return InvalidArgumentError(fmt::format("{} {}: expected auto, bf16, f16 or f32", flag, value));
  return *d;
}

}  // namespace

StatusOr<engine::EngineOptions> ToEngineOptions(const EngineFlags& f, const std::string& model_dir) {
  KVF_ASSIGN_OR_RETURN(model::ModelConfig config, ReadConfig(model_dir));
  engine::EngineOptions o;
  o.model_dir = model_dir;
  o.load.num_threads = f.threads;
  o.load.show_progress = f.show_progress;
  if (f.threads < 0) return InvalidArgumentError("--threads must be >= 0");
  if (f.max_model_len < 0) return InvalidArgumentError("--max-model-len must be >= 0");
  if (f.max_model_len > config.max_position_embeddings)
    return InvalidArgumentError(fmt::format("--max-model-len {} exceeds the model's max_position_embeddings {}",
                                            f.max_model_len, config.max_position_embeddings));
  o.max_model_len = f.max_model_len;
  if (f.max_num_seqs < 1) return InvalidArgumentError("--max-num-seqs must be >= 1");
  o.max_num_seqs = f.max_num_seqs;
  if (f.max_num_batched_tokens < 1) return InvalidArgumentError("--max-num-batched-tokens must be >= 1");
  o.max_num_batched_tokens = f.max_num_batched_tokens;
  if (f.block_size < 1 || f.block_size > 1024) return InvalidArgumentError("--block-size must be in [1, 1024]");
  o.block_size = f.block_size;
  o.enable_prefix_caching = f.enable_prefix_caching;
  o.seed = f.seed;
  if (f.max_waiting < 1) return InvalidArgumentError("--max-waiting-requests must be >= 1");
  o.max_waiting = static_cast<size_t>(f.max_waiting);
  StatusOr<uint64_t> bytes = ParseByteSize(f.kv_cache_memory);
  if (!bytes.ok() || *bytes == 0)
    return InvalidArgumentError(
        fmt::format("--kv-cache-memory {}: expected a size such as 512MiB or 2GiB", f.kv_cache_memory));
  o.kv_cache_bytes = *bytes;
  KVF_ASSIGN_OR_RETURN(kernels::DType weights, DTypeFlag("--dtype", f.dtype, config.torch_dtype));
  if (weights != config.torch_dtype)
    return InvalidArgumentError(fmt::format(
        "--dtype {}: this model's weights are {} and kvferry computes in the stored dtype (no conversion); use "
        "--dtype auto",
        f.dtype, kernels::DTypeName(config.torch_dtype)));
  KVF_ASSIGN_OR_RETURN(o.kv_dtype, DTypeFlag("--kv-cache-dtype", f.kv_cache_dtype, config.torch_dtype));
  return o;
}

}  // namespace kvferry::apps
