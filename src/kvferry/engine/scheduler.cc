#include "kvferry/engine/scheduler.h"

#include <algorithm>

#include "kvferry/base/base.h"

namespace kvferry::engine {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Scheduler::Scheduler(SchedulerOptions options)
    : options_(std::move(options)),
      blocks_(options_.num_blocks, options_.block_size, options_.enable_prefix_caching) {}

void Scheduler::Add(std::unique_ptr<Request> request) {
  Request* r = request.get();
  live_[r->id] = std::move(request);
  waiting_.push_back(r);
}

Output Scheduler::MakeOutput(const Request& r) const {
  Output o;
  o.request_id = r.id;
  o.num_prompt_tokens = r.num_prompt_tokens;
  o.num_cached_tokens = std::max(0, r.num_cached_tokens);
  return o;
}

void Scheduler::RemoveFromQueues(Request* r) {
  switch (r->state) {
    case RequestState::kWaiting:
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), r));
      break;
    case RequestState::kRunning:
      running_.erase(std::find(running_.begin(), running_.end(), r));
      break;
    case RequestState::kParkedRemote:
      --num_parked_;
      break;
  }
}

void Scheduler::FreeBlocks(Request* r, size_t keep) {
  // Last to first, so that the LRU evicts a request's tail before its head.
  while (r->block_table.size() > keep) {
    blocks_.Release(r->block_table.back());
    r->block_table.pop_back();
  }
}

void Scheduler::Finish(Request* r, FinishReason reason, Status status, std::vector<int32_t> tokens,
                       std::vector<TokenLogprob> logprobs, std::vector<Delivery>* out) {
  Output o = MakeOutput(*r);
  o.new_tokens = std::move(tokens);
  o.logprobs = std::move(logprobs);
  o.finished = true;
  o.finish_reason = reason;
  o.error = std::move(status);
  RemoveFromQueues(r);
  const bool hold = r->kv_role == KvRole::kHoldForRemote && !r->hold_released &&
                    (reason == FinishReason::kStop || reason == FinishReason::kLength);
  if (r->keep_blocks_after_abort) {
    num_held_blocks_ += static_cast<int64_t>(r->block_table.size());
    held_[r->id] = std::move(r->block_table);
  } else if (hold) {
    const size_t keep = static_cast<size_t>(CeilDiv(r->num_prompt_tokens, blocks_.block_size()));
    FreeBlocks(r, keep);
    o.held_blocks = r->block_table;
    num_held_blocks_ += static_cast<int64_t>(r->block_table.size());
    held_[r->id] = std::move(r->block_table);
  } else {
    FreeBlocks(r, 0);
    released_ids_.push_back(r->id);
  }
  ++requests_finished_total_;
  out->push_back({r->on_output, std::move(o)});
  live_.erase(r->id);  // destroys r
}

void Scheduler::Abort(const std::string& id, std::vector<Delivery>* out) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  Request* r = it->second.get();
  if (r->state == RequestState::kParkedRemote && options_.hooks.on_remote_kv_aborted) {
    // A peer may still be writing into the blocks: keep them until the connector says it is done.
    r->keep_blocks_after_abort = options_.hooks.on_remote_kv_aborted(id);
  }
  Finish(r, FinishReason::kAbort, Status::Ok(), {}, {}, out);
}

void Scheduler::AbortAll(std::vector<Delivery>* out) {
  std::vector<std::string> ids;
  for (const auto& [id, r] : live_) ids.push_back(id);
  for (const auto& id : ids) Abort(id, out);
  for (auto& [id, table] : held_) {
    for (auto b = table.rbegin(); b != table.rend(); ++b) blocks_.Release(*b);
    released_ids_.push_back(id);
  }
  held_.clear();
  num_held_blocks_ = 0;
}

void Scheduler::ReleaseHeld(const std::string& id) {
  auto it = held_.find(id);
  if (it == held_.end()) {
    // Still running: free instead of hold when it finishes.
    auto live = live_.find(id);
    if (live != live_.end()) live->second->hold_released = true;
    return;
  }
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) blocks_.Release(*b);
  num_held_blocks_ -= static_cast<int64_t>(it->second.size());
  held_.erase(it);
  released_ids_.push_back(id);
}

void Scheduler::FinishRemoteKv(const std::string& id, const Status& status, bool recompute,
                               std::vector<Delivery>* out) {
  auto it = live_.find(id);
  if (it == live_.end() || it->second->state != RequestState::kParkedRemote) {
    KVF_LOG_DEBUG("FinishRemoteKv for {}: not a parked request, ignored", id);
    return;
  }
  Request* r = it->second.get();
  if (!status.ok() && !recompute) {
    Finish(r, FinishReason::kError, status.WithContext("remote KV load failed"), {}, {}, out);
    return;
  }
  --num_parked_;
  r->remote = RemoteKv::kDone;
  if (status.ok()) {
    // The prompt's KV is present; only the last prompt token runs again, for its logits.
    r->num_computed = r->num_prompt_tokens - 1;
    r->num_cached_tokens = r->num_prompt_tokens - 1;
    CommitFullBlocks(r);
  } else {
    KVF_LOG_INFO("request {}: remote KV failed ({}), computing the prompt locally", id,
                 status.ToString());
  }
  // Otherwise num_computed stays at the local prefix-cache hit and the prefill runs here.
  r->state = RequestState::kWaiting;
  waiting_.push_front(r);
}

void Scheduler::CommitFullBlocks(Request* r) {
  const int64_t bs = blocks_.block_size();
  while ((r->num_committed_blocks + 1) * bs <= r->num_computed) {
    const int64_t i = r->num_committed_blocks;
    r->last_block_hash = blocks_.Commit(r->block_table[i], r->last_block_hash,
                                        std::span<const int32_t>(r->tokens).subspan(i * bs, bs));
    ++r->num_committed_blocks;
  }
}

bool Scheduler::GrowTable(Request* r, int64_t num_tokens) {
  const int64_t need = CeilDiv(num_tokens, blocks_.block_size()) - static_cast<int64_t>(r->block_table.size());
  if (need <= 0) return true;
  if (need > blocks_.num_free()) return false;
  for (int64_t i = 0; i < need; ++i) r->block_table.push_back(*blocks_.Allocate());
  return true;
}

void Scheduler::Preempt(Request* r) {
  KVF_LOG_DEBUG("preempting {} ({} tokens computed)", r->id, r->num_computed);
  running_.erase(std::find(running_.begin(), running_.end(), r));
  FreeBlocks(r, 0);
  r->num_computed = 0;
  r->num_committed_blocks = 0;
  r->last_block_hash = 0;
  r->state = RequestState::kWaiting;
  waiting_.push_front(r);
  ++preemptions_total_;
}

bool Scheduler::Admit(Request* r, int64_t* budget, StepPlan* plan) {
  const int64_t bs = blocks_.block_size();
  if (r->block_table.empty()) {
    // First admission, or again after preemption: look up the prefix cache. At least one token
    // always runs here so that the last one's logits exist (a remote load recomputes it too).
    const bool remote = r->remote == RemoteKv::kNeeded;
    const int64_t len = remote ? r->num_prompt_tokens : static_cast<int64_t>(r->tokens.size());
    std::span<const int32_t> toks(r->tokens.data(), len);
    const std::vector<int32_t> matched = blocks_.MatchPrefix(toks, (len - 1) / bs);
    const int64_t cached = static_cast<int64_t>(matched.size()) * bs;
    const int64_t cover = remote ? len : cached + std::min(len - cached, *budget);
    const int64_t need_new = CeilDiv(cover, bs) - static_cast<int64_t>(matched.size());
    if (blocks_.NumFreeAfterAcquiring(matched) < need_new) return false;
    for (int32_t b : matched) blocks_.Acquire(b);
    r->block_table = matched;
    for (int64_t i = 0; i < need_new; ++i) r->block_table.push_back(*blocks_.Allocate());
    r->num_computed = cached;
    r->num_committed_blocks = 0;
    r->last_block_hash = 0;
    CommitFullBlocks(r);  // recomputes the chain over the matched blocks (no-op registrations)
    prefix_cache_queries_ += static_cast<uint64_t>(len);
    prefix_cache_hits_ += static_cast<uint64_t>(cached);
    if (r->num_cached_tokens < 0) r->num_cached_tokens = static_cast<int>(cached);
    if (remote) {
      waiting_.pop_front();
      r->remote = RemoteKv::kParked;
      r->state = RequestState::kParkedRemote;
      ++num_parked_;
      if (options_.hooks.on_remote_kv_needed) {
        options_.hooks.on_remote_kv_needed(r->id, r->block_table, static_cast<int>(cached));
      }
      return true;
    }
  }
  const int64_t n = std::min(r->num_uncomputed(), *budget);
  if (!GrowTable(r, r->num_computed + n)) return false;
  waiting_.pop_front();
  r->state = RequestState::kRunning;
  running_.push_back(r);
  plan->seqs.push_back({r, n});
  *budget -= n;
  return true;
}

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  int64_t budget = options_.max_num_batched_tokens;
  // 1. Running requests (decodes, and prefills that continue in chunks), oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    const int64_t n = std::min(r->num_uncomputed(), budget);
    bool self_preempted = false;
    while (!GrowTable(r, r->num_computed + n)) {
      Request* victim = running_.back();
      Preempt(victim);
      plan.preempted = true;
      if (victim == r) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    plan.seqs.push_back({r, n});
    budget -= n;
    ++i;
  }
  // 2. Admissions, first come first served, unless this step had to preempt.
  while (!plan.preempted && budget > 0 && !waiting_.empty() &&
         static_cast<int>(running_.size()) < options_.max_num_seqs) {
    if (!Admit(waiting_.front(), &budget, &plan)) break;
  }
  // A parked remote request can wait behind nothing: admissions above skip no one, but a
  // remote request at the head of the queue is parked without using the token budget.
  while (!plan.preempted && !waiting_.empty() && waiting_.front()->remote == RemoteKv::kNeeded &&
         waiting_.front()->block_table.empty()) {
    int64_t zero = 0;
    if (!Admit(waiting_.front(), &zero, &plan)) break;
  }
  return plan;
}

void Scheduler::Complete(const StepPlan& plan, const model::ForwardOutput& fwd,
                         std::vector<Delivery>* out) {
  for (size_t s = 0; s < plan.seqs.size(); ++s) {
    Request* r = plan.seqs[s].request;
    r->num_computed += plan.seqs[s].num_tokens;
    CommitFullBlocks(r);
    if (r->num_uncomputed() > 0) continue;  // a prefill chunk: no token yet

    const SamplingParams& p = r->params;
    SamplerInput in{fwd.Row(s), &p, r->prompt(), r->output(), options_.eos_ids};
    TokenLogprob lp;
    const int32_t tok = SampleToken(in, r->rng, scratch_, p.logprobs >= 0 ? &lp : nullptr);
    if (r->num_output_tokens() == 0) prompt_tokens_total_ += static_cast<uint64_t>(r->num_prompt_tokens);
    r->tokens.push_back(tok);
    ++generation_tokens_total_;
    std::vector<TokenLogprob> lps;
    if (p.logprobs >= 0) lps.push_back(std::move(lp));

    FinishReason reason = FinishReason::kNone;
    if (IsStopToken(tok, p, options_.eos_ids) && r->num_output_tokens() >= p.min_tokens) {
      reason = FinishReason::kStop;
    } else if (r->num_output_tokens() >= p.max_tokens ||
               static_cast<int64_t>(r->tokens.size()) >= options_.max_model_len) {
      reason = FinishReason::kLength;
    }
    if (reason != FinishReason::kNone) {
      Finish(r, reason, Status::Ok(), {tok}, std::move(lps), out);
      continue;
    }
    Output o = MakeOutput(*r);
    o.new_tokens = {tok};
    o.logprobs = std::move(lps);
    out->push_back({r->on_output, std::move(o)});
  }
}

void Scheduler::FailStep(const StepPlan& plan, const Status& status, std::vector<Delivery>* out) {
  for (const ScheduledSeq& s : plan.seqs) Finish(s.request, FinishReason::kError, status, {}, {}, out);
}

std::vector<std::string> Scheduler::TakeReleasedIds() {
  std::vector<std::string> ids;
  ids.swap(released_ids_);
  return ids;
}

void Scheduler::FillStats(EngineStats* s) const {
  s->num_running = static_cast<int>(running_.size());
  s->num_waiting = static_cast<int>(waiting_.size()) + num_parked_;
  s->num_waiting_remote = num_parked_;
  s->blocks_total = blocks_.num_blocks();
  s->blocks_used = blocks_.num_used();
  s->blocks_held = num_held_blocks_;
  s->prefix_cache_queries = prefix_cache_queries_;
  s->prefix_cache_hits = prefix_cache_hits_;
  s->prompt_tokens_total = prompt_tokens_total_;
  s->generation_tokens_total = generation_tokens_total_;
  s->preemptions_total = preemptions_total_;
  s->requests_finished_total = requests_finished_total_;
}

}  // namespace kvferry::engine
