// Engine: the public methods enqueue commands into an inbox; one scheduler thread drains it,
// plans a step (Scheduler), runs Model::Forward, publishes stats, then calls the callbacks.

#include "kvferry/engine/engine.h"

#include <thread>
#include <unordered_set>

#include "kvferry/engine/scheduler.h"

namespace kvferry::engine {
namespace {

uint64_t MixSeed(uint64_t a, uint64_t b) {
  uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Command {
  enum class Kind { kAdd, kAbort, kFinishRemote, kRelease };
  Kind kind;
  std::string id;
  std::unique_ptr<Request> request;  // kAdd
  Status status;                     // kFinishRemote
  bool recompute = false;            // kFinishRemote
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineOptions& options, std::unique_ptr<model::Model> model, std::unique_ptr<model::KvCache> cache,
             int64_t max_model_len)
      : options_(options),
        model_(std::move(model)),
        cache_(std::move(cache)),
        max_model_len_(max_model_len),
        scheduler_(MakeSchedulerOptions(options, *model_, *cache_, max_model_len)) {
    MutexLock l(mu_);
    scheduler_.FillStats(&stats_);
  }

  ~EngineImpl() override { Shutdown(Deadline::After(std::chrono::seconds(10))); }

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }

  Status Add(RequestSpec spec, OutputCallback on_output) override {
    const int64_t vocab = model_->config().vocab_size;
    if (spec.id.empty()) return InvalidArgumentError("request id is empty");
    if (spec.prompt.empty()) return InvalidArgumentError("prompt is empty");
    if (static_cast<int64_t>(spec.prompt.size()) >= max_model_len_)
      return InvalidArgumentError("prompt has " + std::to_string(spec.prompt.size()) +
                                  " tokens; it must be shorter than max_model_len " + std::to_string(max_model_len_));
    for (int32_t t : spec.prompt)
      if (t < 0 || t >= vocab)
        return InvalidArgumentError("prompt token id " + std::to_string(t) + " is outside the vocab (size " +
                                    std::to_string(vocab) + ")");
    KVF_RETURN_IF_ERROR(ValidateSamplingParams(spec.sampling, vocab));
    if (!on_output) return InvalidArgumentError("no output callback");
    if (spec.arrival == TimePoint{}) spec.arrival = Clock::Real()->Now();

    MutexLock l(mu_);
    if (closed_) return FailedPreconditionError("the engine is shut down");
    if (ids_.count(spec.id) > 0) return AlreadyExistsError("request id '" + spec.id + "' is in use");
    if (static_cast<size_t>(stats_.num_waiting) + inbox_adds_ >= options_.max_waiting)
      return ResourceExhaustedError("the waiting queue is full (max_waiting " + std::to_string(options_.max_waiting) +
                                    ")");
    const uint64_t seed = spec.sampling.seed.has_value() ? *spec.sampling.seed : MixSeed(options_.seed, ++num_added_);
    ids_.insert(spec.id);
    Command c{Command::Kind::kAdd, spec.id};
    c.request = std::make_unique<Request>(std::move(spec), std::move(on_output), seed);
    inbox_.push_back(std::move(c));
    ++inbox_adds_;
    cv_.NotifyAll();
    return Status::Ok();
  }

  void Abort(const std::string& id) override { Enqueue({Command::Kind::kAbort, id}); }

  void FinishRemoteKv(const std::string& id, Status status, bool recompute) override {
    Command c{Command::Kind::kFinishRemote, id};
    c.status = std::move(status);
    c.recompute = recompute;
    Enqueue(std::move(c));
  }

  void ReleaseHeldBlocks(const std::string& id) override { Enqueue({Command::Kind::kRelease, id}); }

  void Shutdown(const Deadline& deadline) override {
    MutexLock sl(shutdown_mu_);
    {
      MutexLock l(mu_);
      closed_ = true;
      drain_deadline_ = deadline;
      cv_.NotifyAll();
    }
    // The scheduler thread drains until `deadline`, aborts the rest and exits; the join waits
    // at most one step past the deadline.
    if (thread_.joinable()) thread_.join();
  }

  EngineStats GetStats() const override {
    MutexLock l(mu_);
    return stats_;
  }
  const model::ModelConfig& model_config() const override { return model_->config(); }
  std::string model_fingerprint() const override { return fingerprint_; }
  int64_t max_model_len() const override { return max_model_len_; }
  void* kv_base() const override { return cache_->base(); }
  size_t kv_size_bytes() const override { return cache_->size_bytes(); }
  size_t kv_bytes_per_block() const override { return cache_->bytes_per_block(); }
  int64_t block_size() const override { return cache_->block_size(); }

 private:
  static SchedulerOptions MakeSchedulerOptions(const EngineOptions& o, const model::Model& m,
                                               const model::KvCache& cache, int64_t max_model_len) {
    SchedulerOptions s;
    s.num_blocks = cache.num_blocks();
    s.block_size = cache.block_size();
    s.enable_prefix_caching = o.enable_prefix_caching;
    s.max_model_len = max_model_len;
    s.max_num_seqs = o.max_num_seqs;
    s.max_num_batched_tokens = o.max_num_batched_tokens;
    s.eos_ids = m.config().eos_token_ids;
    s.hooks = o.hooks;
    return s;
  }

  void Enqueue(Command c) {
    MutexLock l(mu_);
    inbox_.push_back(std::move(c));
    cv_.NotifyAll();
  }

  void Apply(Command& c, std::vector<Delivery>* out) {
    switch (c.kind) {
      case Command::Kind::kAdd: scheduler_.Add(std::move(c.request)); break;
      case Command::Kind::kAbort: scheduler_.Abort(c.id, out); break;
      case Command::Kind::kFinishRemote: scheduler_.FinishRemoteKv(c.id, c.status, c.recompute, out); break;
      case Command::Kind::kRelease: scheduler_.ReleaseHeld(c.id); break;
    }
  }

  // Publishes stats and frees ids, then runs the callbacks with no lock held.
  void Publish(std::vector<Delivery>* out, bool stepped) {
    {
      MutexLock l(mu_);
      const uint64_t steps = stats_.steps_total + (stepped ? 1 : 0);
      scheduler_.FillStats(&stats_);
      stats_.steps_total = steps;
      for (const std::string& id : scheduler_.TakeReleasedIds()) ids_.erase(id);
    }
    for (Delivery& d : *out) (*d.callback)(d.output);
    out->clear();
  }

  void Loop() {
    SetCurrentThreadName("kvf-engine");
    std::vector<Command> cmds;
    std::vector<Delivery> out;
    std::vector<model::SequenceInput> batch;
    model::ForwardOutput fwd;
    bool idle = false;  // the last step could do nothing: sleep until a command arrives
    while (true) {
      bool stop = false;
      {
        MutexLock l(mu_);
        while (inbox_.empty() && idle && !(closed_ && (scheduler_.num_live() == 0 || drain_deadline_.Expired()))) {
          if (closed_) {
            cv_.WaitUntil(mu_, drain_deadline_);
          } else {
            cv_.Wait(mu_);
          }
        }
        cmds.swap(inbox_);
        // The adds move from the inbox to the scheduler's waiting queue: keep the count exact
        // for Add's max_waiting check until the next Publish.
        stats_.num_waiting += static_cast<int>(inbox_adds_);
        inbox_adds_ = 0;
        stop = closed_ && drain_deadline_.Expired();
      }
      for (Command& c : cmds) Apply(c, &out);
      cmds.clear();
      if (stop || (ClosedAndDrained())) {
        scheduler_.AbortAll(&out);
        Publish(&out, false);
        return;
      }

      StepPlan plan = scheduler_.Schedule();
      idle = plan.seqs.empty() && !plan.preempted;
      if (!plan.seqs.empty()) {
        batch.clear();
        for (const ScheduledSeq& s : plan.seqs) {
          Request* r = s.request;
          batch.push_back({std::span<const int32_t>(r->tokens).subspan(r->num_computed, s.num_tokens), r->num_computed,
                           r->block_table, false});
        }
        Status st = model_->Forward(batch, *cache_, &fwd);
        if (st.ok()) {
          scheduler_.Complete(plan, fwd, &out);
        } else {
          KVF_LOG_ERROR("engine step failed: {}", st.ToString());
          scheduler_.FailStep(plan, st.WithContext("model forward"), &out);
        }
      }
      Publish(&out, !plan.seqs.empty());
    }
  }

  bool ClosedAndDrained() {
    MutexLock l(mu_);
    return closed_ && scheduler_.num_live() == 0 && inbox_.empty();
  }

  const EngineOptions options_;
  const std::unique_ptr<model::Model> model_;
  const std::string fingerprint_ = model_->Fingerprint();  // after model_ (declaration order)
  const std::unique_ptr<model::KvCache> cache_;
  const int64_t max_model_len_;
  Scheduler scheduler_;  // scheduler thread only
  std::thread thread_;

  Mutex shutdown_mu_;  // serializes Shutdown (and its join)
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<Command> inbox_ KVF_GUARDED_BY(mu_);
  size_t inbox_adds_ KVF_GUARDED_BY(mu_) = 0;
  std::unordered_set<std::string> ids_ KVF_GUARDED_BY(mu_);  // live and held request ids
  uint64_t num_added_ KVF_GUARDED_BY(mu_) = 0;
  bool closed_ KVF_GUARDED_BY(mu_) = false;
  Deadline drain_deadline_ KVF_GUARDED_BY(mu_) = Deadline::Infinite();
  EngineStats stats_ KVF_GUARDED_BY(mu_);
};

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  if (options.block_size <= 0) return InvalidArgumentError("block_size must be > 0");
  if (options.max_num_seqs < 1) return InvalidArgumentError("max_num_seqs must be >= 1");
  if (options.max_num_batched_tokens < 1) return InvalidArgumentError("max_num_batched_tokens must be >= 1");
  if (options.max_model_len < 0) return InvalidArgumentError("max_model_len must be >= 0");
  KVF_ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, model::Model::Load(options.model_dir, options.load));
  const model::ModelConfig& c = model->config();
  KVF_LOG_INFO("engine: {}", model->Describe());
  KVF_LOG_INFO("engine: weights {}", model->DescribeWeightMemory());
  int64_t max_model_len = options.max_model_len > 0 ? options.max_model_len : c.max_position_embeddings;
  if (max_model_len <= 1) return InvalidArgumentError("max_model_len must be > 1");

  const size_t bytes_per_block = static_cast<size_t>(c.num_layers) * 2 * c.num_kv_heads * options.block_size *
                                 c.head_dim * kernels::DTypeSize(options.kv_dtype);
  int64_t num_blocks = options.num_kv_blocks;
  if (num_blocks <= 0) {
    const int64_t per_seq = (max_model_len + options.block_size - 1) / options.block_size;
    num_blocks = std::min<int64_t>(static_cast<int64_t>(options.kv_cache_bytes / bytes_per_block),
                                   per_seq * options.max_num_seqs);
    if (num_blocks <= 0)
      return InvalidArgumentError("kv_cache_bytes " + std::to_string(options.kv_cache_bytes) + " holds no block of " +
                                  std::to_string(bytes_per_block) + " bytes");
  }
  const int64_t capacity = num_blocks * options.block_size;
  if (max_model_len > capacity) {
    if (options.max_model_len > 0)
      return InvalidArgumentError("max_model_len " + std::to_string(max_model_len) + " does not fit in the KV cache (" +
                                  std::to_string(capacity) + " tokens)");
    KVF_LOG_INFO("max_model_len lowered from {} to {}, what the KV cache holds", max_model_len, capacity);
    max_model_len = capacity;
  }
  KVF_ASSIGN_OR_RETURN(
      std::unique_ptr<model::KvCache> cache,
      model->CreateKvCache(
          {.num_blocks = num_blocks, .block_size = options.block_size, .dtype = options.kv_dtype, .prefault = true}));
  KVF_LOG_INFO("engine: {} KV blocks of {} tokens ({} MiB), max_model_len {}", num_blocks, options.block_size,
               cache->size_bytes() >> 20, max_model_len);
  auto engine = std::make_unique<EngineImpl>(options, std::move(model), std::move(cache), max_model_len);
  engine->Start();
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace kvferry::engine
