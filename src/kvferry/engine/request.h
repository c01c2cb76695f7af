#pragma once
// The scheduler's record of one request. Private to the engine; touched only by the scheduler
// thread.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/engine/engine.h"
#include "kvferry/engine/sampler.h"

namespace kvferry::engine {

// Lifecycle (docs/engine.md): kWaiting -> [kParkedRemote ->] kRunning -> finished (destroyed,
// or kept as held blocks). kRunning -> kWaiting on preemption. Abort from any live state.
enum class RequestState { kWaiting, kParkedRemote, kRunning };

// Where a kLoadRemote request stands with its remote KV.
enum class RemoteKv { kNone, kNeeded, kParked, kDone };

struct Request {
  Request(RequestSpec spec, OutputCallback cb, uint64_t rng_seed)
      : id(std::move(spec.id)),
        num_prompt_tokens(static_cast<int>(spec.prompt.size())),
        tokens(std::move(spec.prompt)),
        params(std::move(spec.sampling)),
        kv_role(spec.kv_role),
        arrival(spec.arrival),
        // Shared by the request and the Deliveries queued for it in a step, which may outlive
        // it (its final Output is delivered after it is destroyed).
        on_output(std::make_shared<OutputCallback>(std::move(cb))),
        rng(rng_seed),
        remote(spec.kv_role == KvRole::kLoadRemote ? RemoteKv::kNeeded : RemoteKv::kNone) {}

  std::span<const int32_t> prompt() const { return {tokens.data(), static_cast<size_t>(num_prompt_tokens)}; }
  std::span<const int32_t> output() const {
    return {tokens.data() + num_prompt_tokens, tokens.size() - num_prompt_tokens};
  }
  int num_output_tokens() const { return static_cast<int>(tokens.size()) - num_prompt_tokens; }
  // Tokens whose KV is still to be computed before the next token can be sampled.
  int64_t num_uncomputed() const { return static_cast<int64_t>(tokens.size()) - num_computed; }

  const std::string id;
  const int num_prompt_tokens;
  std::vector<int32_t> tokens;  // prompt, then output
  const SamplingParams params;
  const KvRole kv_role;
  const TimePoint arrival;
  std::shared_ptr<OutputCallback> on_output;
  Rng rng;

  RequestState state = RequestState::kWaiting;
  RemoteKv remote;
  int64_t num_computed = 0;          // tokens whose KV is in the cache
  std::vector<int32_t> block_table;  // covers at least num_computed tokens
  int num_committed_blocks = 0;      // leading blocks registered in the prefix cache
  uint64_t last_block_hash = 0;      // chain hash of block num_committed_blocks - 1
  int num_cached_tokens = -1;        // reported in Output; set at first admission
  bool hold_released = false;        // kHoldForRemote: ReleaseHeldBlocks came before the finish
  bool keep_blocks_after_abort = false;  // kLoadRemote aborted mid-load: blocks held until released
};

}  // namespace kvferry::engine
