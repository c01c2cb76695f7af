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

// vLLM's data-parallel flags (`kvferry serve`): several engine ranks behind one API server.
struct DataParallelFlags {
  int size = 1;           // --data-parallel-size: ranks in all
  int size_local = -1;    // --data-parallel-size-local: ranks on this node (-1: all of them)
  int start_rank = 0;     // --data-parallel-start-rank: the first rank this node runs
  std::string address;    // --data-parallel-address: the master's address (headless ranks join it)
  int rpc_port = 29550;   // --data-parallel-rpc-port: the master's port for headless ranks
  bool headless = false;  // --headless: engines only, no API server
};

// The data-parallel layout after checking the flags against each other.
struct DataParallelPlan {
  int size = 1;
  int size_local = 1;
  int start_rank = 0;
  bool headless = false;
  std::string address;  // the master's address ("" on the master: listen on every interface)
  int rpc_port = 29550;
  int threads_per_rank = 0;  // compute threads of each local rank (0: the engine's default)
};

void AddDataParallelFlags(CLI::App* app, DataParallelFlags* flags);
// InvalidArgument naming the flags for inconsistent values (a headless node without
// --data-parallel-address, a master with no local rank, ranks out of range).
// `threads` is --threads (per rank; 0: the machine's cores shared out evenly between the
// local ranks), `cores` the cores available.
StatusOr<DataParallelPlan> PlanDataParallel(const DataParallelFlags& flags, int threads, int cores);

// Registers the flags on `app`; values land in `*flags`, which must outlive parsing.
void AddEngineFlags(CLI::App* app, EngineFlags* flags);

// Checks the values against the model in `model_dir` (its config.json) and fills EngineOptions.
// InvalidArgument naming the flag for a bad value.
StatusOr<engine::EngineOptions> ToEngineOptions(const EngineFlags& flags, const std::string& model_dir);

}  // namespace kvferry::apps
