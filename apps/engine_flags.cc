#include "apps/engine_flags.h"

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
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
  app->add_option(
      "--threads", f->threads,
      "Compute threads of each engine (data-parallel rank) (default: all cores, shared out evenly between the ranks)");
  app->add_option("--max-waiting-requests", f->max_waiting,
                  "Requests that may wait for a batch slot; more get 503 (default 1024)");
}

void AddDataParallelFlags(CLI::App* app, DataParallelFlags* f) {
  app->add_option("--data-parallel-size", f->size,
                  "Data-parallel engine ranks in all, each with its own KV cache, compute threads and connector "
                  "worker, behind one API server (default 1)");
  app->add_option("--data-parallel-size-local", f->size_local,
                  "Data-parallel ranks run on this node (default: all the ranks from --data-parallel-start-rank on). "
                  "On the master, fewer than --data-parallel-size: the others are headless ranks that join it");
  app->add_option("--data-parallel-start-rank", f->start_rank,
                  "The first data-parallel rank this node runs (default 0; >= 1 with --headless)");
  app->add_option("--data-parallel-address", f->address,
                  "The master node's address: where headless nodes connect (required with --headless); on the "
                  "master, the address its channel for headless ranks listens on (default: every interface)");
  app->add_option("--data-parallel-rpc-port", f->rpc_port,
                  "The master's port for headless ranks' channel (default 29550; the same on every node)");
  app->add_flag("--headless", f->headless,
                "Run engine ranks only (no API server): they join the master at --data-parallel-address, take "
                "requests from its API server, and their KV connector workers register with its bootstrap server "
                "(VLLM_MOONCAKE_BOOTSTRAP_PORT must match the master's). Reconnects when the master goes away");
}

StatusOr<DataParallelPlan> PlanDataParallel(const DataParallelFlags& f, int threads, int cores) {
  if (f.size < 1) return InvalidArgumentError(fmt::format("--data-parallel-size {} must be >= 1", f.size));
  const int local = f.size_local < 0 ? f.size - f.start_rank : f.size_local;
  if (f.size_local < -1 || f.size_local > f.size)
    return InvalidArgumentError(
        fmt::format("--data-parallel-size-local {} must be in 0..{} (--data-parallel-size)", f.size_local, f.size));
  if (f.start_rank < 0 || f.start_rank >= f.size)
    return InvalidArgumentError(fmt::format("--data-parallel-start-rank {} must be in 0..{} (--data-parallel-size - 1)",
                                            f.start_rank, f.size - 1));
  if (f.start_rank + local > f.size)
    return InvalidArgumentError(
        fmt::format("--data-parallel-start-rank {} + --data-parallel-size-local {} exceeds "
                    "--data-parallel-size {}",
                    f.start_rank, local, f.size));
  if (f.rpc_port < 1 || f.rpc_port > 65535)
    return InvalidArgumentError(fmt::format("--data-parallel-rpc-port {} must be in [1, 65535]", f.rpc_port));
  if (!f.headless && f.start_rank != 0)
    return InvalidArgumentError(
        fmt::format("--data-parallel-start-rank {} without --headless: the node that runs the "
                    "API server holds rank 0 (start other nodes with --headless)",
                    f.start_rank));
  if (f.headless && f.start_rank == 0)
    return InvalidArgumentError(
        "--headless needs --data-parallel-start-rank >= 1 (rank 0 runs on the master with the "
        "API server)");
  if (local < 1)
    return InvalidArgumentError(fmt::format("--data-parallel-size-local {}: this node would run no rank", local));
  if (f.headless && f.address.empty())
    return InvalidArgumentError("--headless needs --data-parallel-address: the master node's address to join");
  if (threads < 0) return InvalidArgumentError("--threads must be >= 0");
  DataParallelPlan p;
  p.size = f.size;
  p.size_local = local;
  p.start_rank = f.start_rank;
  p.headless = f.headless;
  p.address = f.address;
  p.rpc_port = f.rpc_port;
  // --threads is per rank; by default the cores are shared out evenly (at least one each).
  p.threads_per_rank = threads > 0 ? threads : local == 1 ? 0 : std::max(1, cores / local);
  return p;
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
