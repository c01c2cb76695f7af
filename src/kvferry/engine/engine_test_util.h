#pragma once
// Helpers for the engine tests: a tiny f32 model on disk, engine options for it, an output
// collector, and a reference greedy decoder that drives Model::Forward directly.

#include <map>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"
#include "kvferry/model/model.h"

namespace kvferry::engine::testing {

// A tiny Qwen2 model with f32 weights, written once per process into a temp dir.
const std::string& TinyModelDir();
// Options for TinyModelDir(): f32 KV, one compute thread, no progress output.
EngineOptions TinyOptions();
// The model loaded once per process for the reference loops (test thread only).
model::Model& ReferenceModel();

std::vector<int32_t> RandomPrompt(int n, uint32_t seed);

// Greedy decode of `prompt` by plain Model::Forward calls: one full prefill, then one token
// per step, `max_tokens` tokens, EOS ignored. With `wrong_table`, decode steps use a block
// table whose first block is not the one the prefill wrote (a deliberately broken reference).
std::vector<int32_t> ReferenceGreedy(const std::vector<int32_t>& prompt, int max_tokens,
                                     bool wrong_table = false);

// Everything delivered for one request.
struct Result {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  int num_outputs = 0;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  Status error;
  int num_prompt_tokens = 0;
  int num_cached_tokens = 0;
  std::vector<int32_t> held_blocks;
  int outputs_after_finish = 0;  // must stay 0
};

// Thread-safe sink for Outputs of many requests.
class Collector {
 public:
  OutputCallback Callback();
  // Waits until `id` finished; false on timeout.
  bool WaitFinished(const std::string& id, Duration timeout = std::chrono::seconds(120));
  bool WaitAll(const std::vector<std::string>& ids, Duration timeout = std::chrono::seconds(120));
  // Waits until `id` delivered at least `n` outputs.
  bool WaitOutputs(const std::string& id, int n, Duration timeout = std::chrono::seconds(120));
  Result Get(const std::string& id);

 private:
  Mutex mu_;
  CondVar cv_;
  std::map<std::string, Result> results_ KVF_GUARDED_BY(mu_);
};

// Adds `spec` and waits for its final Output (ASSERTs inside: call via ASSERT_NO_FATAL_FAILURE
// or check the returned finished flag).
Result RunOne(Engine& engine, RequestSpec spec);

RequestSpec Greedy(const std::string& id, std::vector<int32_t> prompt, int max_tokens);

// Polls GetStats until `pred` holds or the timeout passes.
bool WaitStats(Engine& engine, const std::function<bool(const EngineStats&)>& pred,
               Duration timeout = std::chrono::seconds(60));

}  // namespace kvferry::engine::testing
