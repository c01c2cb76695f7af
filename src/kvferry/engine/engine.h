#pragma once
// kvferry/engine: the serving engine. Continuous batching over one model and one
// paged KV cache: chunked prefill mixed with decodes under a token budget, prefix
// caching by block hash, preemption by recompute when blocks run out, sampling,
// and the hooks the KV connector (disaggregated prefill/decode) plugs into.
//
// Threading: one scheduler thread owns all scheduling state (queues, block tables,
// block allocator, prefix cache) and runs Model::Forward. Every public method is
// thread-safe and only enqueues a command or reads published stats; callbacks
// (OutputCallback, ConnectorHooks) run on the scheduler thread and must not block (they may
// call Add/Abort/FinishRemoteKv/ReleaseHeldBlocks, which only enqueue, but not Shutdown).
// Ownership: the Engine owns the Model and the KvCache.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/model/model.h"

namespace kvferry::engine {

struct SamplingParams {
  double temperature = 1.0;         // 0 = greedy
  double top_p = 1.0;               // (0, 1]
  int top_k = 0;                    // 0 or -1 = off
  double min_p = 0.0;               // [0, 1]
  std::optional<uint64_t> seed;     // per-request RNG seed: same seed, same output
  double repetition_penalty = 1.0;  // > 0; HF semantics over prompt + output tokens
  double presence_penalty = 0.0;    // OpenAI semantics over output tokens
  double frequency_penalty = 0.0;
  int max_tokens = 16;                  // >= 1
  int min_tokens = 0;                   // EOS/stop tokens suppressed before this many
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  bool ignore_eos = false;
  int logprobs = -1;  // -1: none; n >= 0: the sampled token's logprob plus the top n
};
// InvalidArgument naming the field for out-of-range values.
Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size);

enum class FinishReason { kNone, kStop, kLength, kAbort, kError };
const char* FinishReasonName(FinishReason r);  // "stop", "length", "abort", "error"

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // the top `logprobs` alternatives
};

// What one step produced for one request. Delivered in order; the last one has
// finished = true (exactly once per accepted request).
struct Output {
  std::string request_id;
  std::vector<int32_t> new_tokens;     // a stop/EOS token that ends the request is included
  std::vector<TokenLogprob> logprobs;  // parallel to new_tokens when requested
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  Status error;  // set when finish_reason == kError
  int num_prompt_tokens = 0;
  int num_cached_tokens = 0;  // prompt tokens served from the prefix cache (or remote KV)
  // When the request asked to hold its blocks (connector producer) and finished with kStop or
  // kLength: the block ids holding its prompt's KV, in prompt order, valid until
  // ReleaseHeldBlocks. An aborted or failed request frees its blocks instead.
  std::vector<int32_t> held_blocks;
};
using OutputCallback = std::function<void(const Output&)>;

// Per-request connector role.
enum class KvRole {
  kLocal,          // ordinary request
  kHoldForRemote,  // producer: run the prompt, finish, keep the KV blocks until ReleaseHeldBlocks
  kLoadRemote,     // consumer: allocate blocks, ask the connector to fill them, then decode
};

struct RequestSpec {
  std::string id;               // unique among active requests (AlreadyExists otherwise)
  std::vector<int32_t> prompt;  // non-empty, < max_model_len
  SamplingParams sampling;
  KvRole kv_role = KvRole::kLocal;
  TimePoint arrival = {};  // for latency metrics; default: now
};

// Hooks the connector installs (all run on the scheduler thread, must not block).
struct ConnectorHooks {
  // kLoadRemote: blocks for the whole prompt are allocated; `block_ids` cover the
  // prompt in order, the first `num_local_cached_tokens` tokens already hold valid KV
  // (prefix cache) and need not be fetched. The request stays parked, not holding up
  // others, until FinishRemoteKv.
  std::function<void(const std::string& request_id, std::span<const int32_t> block_ids, int num_local_cached_tokens)>
      on_remote_kv_needed;
  // A parked kLoadRemote request was aborted (client gone) before its KV arrived. Return true
  // when a remote write into its blocks may still be in flight: the engine then keeps the
  // blocks (counted as held, the id stays in use) until ReleaseHeldBlocks(request_id), so no
  // other request can get them while a peer writes into them.
  std::function<bool(const std::string& request_id)> on_remote_kv_aborted;
};

struct EngineOptions {
  std::string model_dir;
  model::LoadOptions load;
  int64_t block_size = 16;
  // KV cache size: num_kv_blocks if > 0, else kv_cache_bytes (default 1 GiB, capped at what
  // max_model_len * max_num_seqs needs).
  int64_t num_kv_blocks = 0;
  uint64_t kv_cache_bytes = 1ull << 30;
  model::DType kv_dtype = model::DType::kBF16;
  int64_t max_model_len = 0;              // 0: the model's max_position_embeddings
  int max_num_seqs = 64;                  // running requests per step
  int64_t max_num_batched_tokens = 2048;  // token budget per step (chunked prefill)
  bool enable_prefix_caching = true;
  size_t max_waiting = 1024;  // Add beyond this is ResourceExhausted (HTTP 503)
  uint64_t seed = 0;          // requests without a seed get one mixed from this and
                              // their order of arrival
  ConnectorHooks hooks;
};

struct EngineStats {
  int num_running = 0;
  int num_waiting = 0;  // including parked remote-KV requests
  int num_waiting_remote = 0;
  int64_t blocks_total = 0;
  int64_t blocks_used = 0;            // referenced by requests (running, waiting, held)
  int64_t blocks_held = 0;            // held for remote consumers
  uint64_t prefix_cache_queries = 0;  // prompt tokens looked up
  uint64_t prefix_cache_hits = 0;     // prompt tokens found
  uint64_t prompt_tokens_total = 0;
  uint64_t generation_tokens_total = 0;
  uint64_t preemptions_total = 0;
  uint64_t requests_finished_total = 0;
  uint64_t steps_total = 0;
};

class Engine {
 public:
  // Loads the model, allocates the KV cache, starts the scheduler thread.
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;  // Shutdown(Deadline::After(10 s)) if not done

  // Queues a request. InvalidArgument for a bad spec (empty prompt, too long with the
  // max_model_len in the message, bad sampling), AlreadyExists for a duplicate id (a finished
  // kHoldForRemote request's id stays in use until ReleaseHeldBlocks),
  // ResourceExhausted when the waiting queue is full, FailedPrecondition after Shutdown.
  // On OK, `on_output` will be called until an Output with finished = true.
  virtual Status Add(RequestSpec spec, OutputCallback on_output) = 0;
  // Aborts an active request (its final Output has kAbort) and frees its blocks. No-op if unknown.
  virtual void Abort(const std::string& request_id) = 0;
  // Consumer: the KV of a parked kLoadRemote request arrived (ok) or not. On ok the
  // prompt counts as computed and decoding starts (the last prompt token runs again locally,
  // for its logits); otherwise `recompute` runs the prefill locally and !recompute finishes the
  // request with kError and `status`. No-op unless the request is parked.
  virtual void FinishRemoteKv(const std::string& request_id, Status status, bool recompute) = 0;
  // Producer: frees the blocks a kHoldForRemote request kept (consumer: the blocks of an
  // aborted load kept while a write may have been in flight). For a request that has not
  // finished yet, its blocks are freed at its finish instead of held. No-op if unknown.
  virtual void ReleaseHeldBlocks(const std::string& request_id) = 0;

  // Stops intake, aborts what is left after `deadline`, joins the scheduler.
  virtual void Shutdown(const Deadline& deadline) = 0;

  virtual EngineStats GetStats() const = 0;
  virtual const model::ModelConfig& model_config() const = 0;
  // model::Model::Fingerprint() of the weights it serves; empty when it cannot tell.
  virtual std::string model_fingerprint() const { return {}; }
  virtual int64_t max_model_len() const = 0;
  // The KV arena, for registering with the transfer engine: base, size, block stride.
  virtual void* kv_base() const = 0;
  virtual size_t kv_size_bytes() const = 0;
  virtual size_t kv_bytes_per_block() const = 0;
  virtual int64_t block_size() const = 0;
};

}  // namespace kvferry::engine
