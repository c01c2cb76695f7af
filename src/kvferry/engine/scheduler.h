#pragma once
// Scheduler: the engine's queues and per-step batch planning, without threads or the model.
// Schedule() picks the next Model::Forward batch (running requests first, then admissions from
// the waiting queue under max_num_batched_tokens and max_num_seqs, preempting the newest
// running request by recompute when blocks run out); Complete() applies the step's logits
// (commit full blocks to the prefix cache, sample, stop checks) and produces the Outputs.
// Outputs are returned as Deliveries so the engine can call them after publishing its stats.
//
// Threading: not thread-safe; owned by the scheduler thread. Connector hooks are called from
// inside Schedule() and Abort().

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvferry/engine/block_manager.h"
#include "kvferry/engine/engine.h"
#include "kvferry/engine/request.h"
#include "kvferry/engine/sampler.h"

namespace kvferry::engine {

struct SchedulerOptions {
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  bool enable_prefix_caching = true;
  int64_t max_model_len = 0;
  int max_num_seqs = 64;
  int64_t max_num_batched_tokens = 2048;
  std::vector<int64_t> eos_ids;
  ConnectorHooks hooks;
};

struct Delivery {
  std::shared_ptr<OutputCallback> callback;
  Output output;
};

struct ScheduledSeq {
  Request* request;
  int64_t num_tokens;  // tokens[num_computed, num_computed + num_tokens) run this step
};

struct StepPlan {
  std::vector<ScheduledSeq> seqs;
  bool preempted = false;  // something changed even if seqs is empty
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  // Queues a validated request at the back of the waiting queue.
  void Add(std::unique_ptr<Request> request);
  // Finishes a live request with kAbort (a parked one also calls on_remote_kv_aborted).
  void Abort(const std::string& id, std::vector<Delivery>* out);
  void FinishRemoteKv(const std::string& id, const Status& status, bool recompute,
                      std::vector<Delivery>* out);
  void ReleaseHeld(const std::string& id);
  // Aborts everything live and drops held blocks (shutdown).
  void AbortAll(std::vector<Delivery>* out);

  StepPlan Schedule();
  void Complete(const StepPlan& plan, const model::ForwardOutput& fwd, std::vector<Delivery>* out);
  // The step's Forward failed: its requests finish with kError.
  void FailStep(const StepPlan& plan, const Status& status, std::vector<Delivery>* out);

  // Requests waiting, parked or running (not held).
  int64_t num_live() const { return static_cast<int64_t>(live_.size()); }
  // Ids that stopped being in use (finished, or held blocks released) since the last call.
  std::vector<std::string> TakeReleasedIds();
  void FillStats(EngineStats* s) const;
  const BlockManager& blocks() const { return blocks_; }

 private:
  bool Admit(Request* r, int64_t* budget, StepPlan* plan);
  // Allocates blocks so that the table covers `num_tokens` tokens. False (nothing allocated)
  // when there are not enough free blocks.
  bool GrowTable(Request* r, int64_t num_tokens);
  void Preempt(Request* r);
  void CommitFullBlocks(Request* r);
  void FreeBlocks(Request* r, size_t keep);
  // Emits `r`'s last Output (with `tokens` and `logprobs` from this step) and destroys it.
  void Finish(Request* r, FinishReason reason, Status status, std::vector<int32_t> tokens,
              std::vector<TokenLogprob> logprobs, std::vector<Delivery>* out);
  Output MakeOutput(const Request& r) const;
  void RemoveFromQueues(Request* r);

  const SchedulerOptions options_;
  BlockManager blocks_;
  SamplerScratch scratch_;
  std::unordered_map<std::string, std::unique_ptr<Request>> live_;
  std::deque<Request*> waiting_;  // front first; preempted and remote-loaded requests go first
  std::vector<Request*> running_;  // oldest admission first; preemption takes from the back
  int num_parked_ = 0;
  std::unordered_map<std::string, std::vector<int32_t>> held_;
  int64_t num_held_blocks_ = 0;
  std::vector<std::string> released_ids_;

  uint64_t prefix_cache_queries_ = 0, prefix_cache_hits_ = 0;
  uint64_t prompt_tokens_total_ = 0, generation_tokens_total_ = 0;
  uint64_t preemptions_total_ = 0, requests_finished_total_ = 0;
};

}  // namespace kvferry::engine
