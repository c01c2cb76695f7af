// The headless side of the channel: RankHost dials the master, runs what it is sent on its
// engines and streams the outputs back; it reconnects with backoff when the channel drops.
#include <fmt/format.h>
#include <unistd.h>

#include <map>
#include <thread>

#include "kvferry/dp/dp.h"
#include "kvferry/dp/link.h"

namespace kvferry::dp {
namespace {

class HostImpl final : public RankHost {
 public:
  explicit HostImpl(const RankHostOptions& o) : o_(o) {}
  ~HostImpl() override { Stop(); }

  void Begin() {
    loop_ = std::thread([this] { Loop(); });
  }

  bool joined() const override {
    MutexLock l(mu_);
    return joined_;
  }
  Status fatal() const override {
    MutexLock l(mu_);
    return fatal_;
  }
  void Stop() override {
    {
      MutexLock l(mu_);
      if (stopping_) return;
      stopping_ = true;
      if (link_ != nullptr) link_->Close(CancelledError("the headless instance is shutting down"));
      cv_.NotifyAll();
    }
    if (loop_.joinable()) loop_.join();
  }

 private:
  const RankHostOptions::Rank* FindRank(int64_t r) const {
    for (const auto& rk : o_.ranks)
      if (rk.dp_rank == r) return &rk;
    return nullptr;
  }

  // Queues `m` on the channel of `epoch` (dropped when that channel is gone).
  void SendOn(uint64_t epoch, const Message& m) {
    MutexLock l(mu_);
    if (link_ != nullptr && epoch == epoch_) (void)link_->Send(m);
  }

  void Fail(uint64_t epoch, int64_t rank, const std::string& id, const Status& st) {
    OutputMsg m;
    m.dp_rank = rank;
    m.out.request_id = id;
    m.out.finished = true;
    m.out.finish_reason = engine::FinishReason::kError;
    m.out.error = st;
    SendOn(epoch, m);
  }

  void OnAdd(uint64_t epoch, Add a) {
    const RankHostOptions::Rank* rk = FindRank(a.dp_rank);
    if (rk == nullptr) return Fail(epoch, a.dp_rank, a.id, InvalidArgumentError("not a rank of this instance"));
    engine::KvRole role = engine::KvRole::kLocal;
    const bool use_connector = rk->connector != nullptr && a.kv.has_value();
    if (a.kv && rk->connector == nullptr)
      return Fail(epoch, a.dp_rank, a.id, FailedPreconditionError("this headless rank runs without a KV connector"));
    if (use_connector) {
      StatusOr<engine::KvRole> r = rk->connector->BeginRequest(a.id, *a.kv);
      if (!r.ok()) return Fail(epoch, a.dp_rank, a.id, r.status());
      role = *r;
    }
    {
      MutexLock l(mu_);
      if (epoch != epoch_) {  // the channel went away meanwhile
        if (use_connector) rk->connector->CancelRequest(a.id);
        return;
      }
      active_[a.id] = a.dp_rank;
    }
    engine::RequestSpec spec;
    spec.id = a.id;
    spec.prompt = std::move(a.prompt);
    spec.sampling = std::move(a.sampling);
    spec.kv_role = role;
    connector::Connector* conn = use_connector ? rk->connector : nullptr;
    const int64_t rank = a.dp_rank;
    Status st = rk->engine->Add(std::move(spec), [this, epoch, rank, conn](const engine::Output& out) {
      if (conn != nullptr) conn->OnOutput(out);
      if (out.finished) {
        MutexLock l(mu_);
        active_.erase(out.request_id);
      }
      OutputMsg m;
      m.dp_rank = rank;
      m.out = out;
      m.out.held_blocks.clear();  // they stay here, with the connector
      SendOn(epoch, m);
    });
    if (!st.ok()) {
      if (conn != nullptr) conn->CancelRequest(a.id);
      {
        MutexLock l(mu_);
        active_.erase(a.id);
      }
      Fail(epoch, a.dp_rank, a.id, st);
    }
  }

  void OnMessage(uint64_t epoch, const Message& m) {
    if (const auto* a = std::get_if<Add>(&m)) return OnAdd(epoch, *a);
    if (const auto* a = std::get_if<dp::Abort>(&m)) {
      if (const RankHostOptions::Rank* rk = FindRank(a->dp_rank)) rk->engine->Abort(a->id);
      return;
    }
    if (const auto* r = std::get_if<Rejected>(&m)) {
      const RankHostOptions::Rank* rk = FindRank(r->dp_rank);
      if (rk != nullptr && rk->connector != nullptr) rk->connector->OnRejected(r->kv, r->why);
      return;
    }
    MutexLock l(mu_);
    if (std::holds_alternative<Welcome>(m)) {
      if (epoch == epoch_) answered_ = joined_ = true;
    } else if (const auto* r = std::get_if<Refuse>(&m)) {
      if (epoch == epoch_) {
        answered_ = true;
        refusal_ = *r;
      }
    }
    cv_.NotifyAll();
  }

  Hello MakeHello() const {
    Hello h;
    h.instance = o_.instance;
    for (const auto& rk : o_.ranks) {
      HelloRank hr;
      hr.dp_rank = rk.dp_rank;
      if (rk.connector != nullptr) {
        hr.engine_id = rk.connector->config().engine_id;
        hr.worker_addr = rk.connector->worker_endpoint();
      }
      hr.vocab_size = rk.engine->model_config().vocab_size;
      hr.max_model_len = rk.engine->max_model_len();
      hr.block_size = rk.engine->block_size();
      hr.kv_bytes = rk.engine->kv_size_bytes();
      hr.kv_bytes_per_block = rk.engine->kv_bytes_per_block();
      hr.blocks_total = rk.engine->GetStats().blocks_total;
      h.ranks.push_back(std::move(hr));
    }
    return h;
  }

  void SendStats(uint64_t epoch) {
    for (const auto& rk : o_.ranks) {
      Stats s;
      s.dp_rank = rk.dp_rank;
      s.engine = rk.engine->GetStats();
      s.ready = rk.connector == nullptr || rk.connector->Ready();
      if (rk.connector != nullptr) s.metrics = rk.connector->MetricsText();
      SendOn(epoch, s);
    }
  }

  // One session: connect, join, serve until the channel drops. Returns false to stop for good.
  bool Session(Duration* backoff, int attempt) {
    const std::string where = fmt::format("{}:{}", o_.master_host, o_.master_port);
    StatusOr<int> fd = Dial(o_.master_host, o_.master_port, Deadline::After(std::chrono::seconds(5)));
    if (!fd.ok()) {
      if (attempt == 1 || attempt % 20 == 0)
        KVF_LOG_WARN("headless: cannot reach the master at {} (attempt {}): {}; retrying", where, attempt,
                     fd.status().ToString());
      return true;
    }
    LinkOptions lo;
    lo.peer = where;
    lo.ping_interval = o_.ping_interval;
    lo.idle_timeout = o_.idle_timeout;
    uint64_t epoch;
    {
      MutexLock l(mu_);
      if (stopping_) {
        ::close(*fd);
        return false;
      }
      epoch = ++epoch_;
      answered_ = joined_ = false;
      refusal_.reset();
      link_ = Link::Start(
          *fd, lo, [this, epoch](const Message& m) { OnMessage(epoch, m); },
          [this](const Status&) {
            MutexLock l(mu_);
            cv_.NotifyAll();
          });
      (void)link_->Send(MakeHello());
    }
    // Wait for the answer, then serve: stats every stats_interval until the channel drops.
    const Deadline answer_by = Deadline::After(std::chrono::seconds(10));
    bool announced = false;
    while (true) {
      {
        MutexLock l(mu_);
        if (stopping_ || link_->closed()) break;
        if (refusal_) {
          const Refuse r = *refusal_;
          if (r.final) {
            fatal_ =
                FailedPreconditionError(fmt::format("the master at {} refused this instance: {}", where, r.message));
            KVF_LOG_ERROR("headless: {}", fatal_.ToString());
          } else {
            KVF_LOG_WARN("headless: the master at {} refused this instance for now: {}; retrying", where, r.message);
          }
          link_->Close(CancelledError("refused"));
          break;
        }
        if (!answered_ && answer_by.Expired()) {
          link_->Close(DeadlineExceededError("no answer to the hello within 10 s"));
          break;
        }
        if (joined_ && !announced) {
          announced = true;
          *backoff = std::chrono::milliseconds(200);
          KVF_LOG_INFO("headless: joined the master at {} with data-parallel rank(s) {}", where, RankList());
        }
      }
      if (announced) SendStats(epoch);
      MutexLock l(mu_);
      if (!stopping_ && !link_->closed()) cv_.WaitUntil(mu_, Deadline::After(o_.stats_interval));
    }
    // The master failed what ran here (or will); abort it so the KV blocks come back.
    std::unique_ptr<Link> old;
    std::map<std::string, int64_t> orphans;
    bool stop;
    {
      MutexLock l(mu_);
      old = std::move(link_);
      ++epoch_;  // outputs still coming for this session go nowhere
      joined_ = false;
      orphans.swap(active_);
      stop = stopping_ || !fatal_.ok();
    }
    old.reset();  // joins its threads (no lock held: they may be waiting for mu_)
    if (announced) KVF_LOG_WARN("headless: left the master at {}; aborting {} request(s)", where, orphans.size());
    for (const auto& [id, rank] : orphans)
      if (const RankHostOptions::Rank* rk = FindRank(rank)) rk->engine->Abort(id);
    return !stop;
  }

  std::string RankList() const {
    std::string s;
    for (const auto& rk : o_.ranks) s += fmt::format("{}{}", s.empty() ? "" : ",", rk.dp_rank);
    return s;
  }

  void Loop() {
    SetCurrentThreadName("kvf-dp-host");
    Duration backoff = std::chrono::milliseconds(200);
    for (int attempt = 1;; ++attempt) {
      if (!Session(&backoff, attempt)) return;
      MutexLock l(mu_);
      if (stopping_) return;
      cv_.WaitUntil(mu_, Deadline::After(backoff));
      if (stopping_) return;
      backoff = std::min<Duration>(backoff * 2, o_.max_backoff);
    }
  }

  const RankHostOptions o_;
  std::thread loop_;
  mutable Mutex mu_;
  CondVar cv_;
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  bool answered_ KVF_GUARDED_BY(mu_) = false;
  bool joined_ KVF_GUARDED_BY(mu_) = false;
  std::optional<Refuse> refusal_ KVF_GUARDED_BY(mu_);
  Status fatal_ KVF_GUARDED_BY(mu_);
  uint64_t epoch_ KVF_GUARDED_BY(mu_) = 0;
  std::unique_ptr<Link> link_ KVF_GUARDED_BY(mu_);
  std::map<std::string, int64_t> active_ KVF_GUARDED_BY(mu_);  // request id → rank, this session
};

}  // namespace

StatusOr<std::unique_ptr<RankHost>> RankHost::Start(const RankHostOptions& o) {
  if (o.master_host.empty()) return InvalidArgumentError("--headless needs --data-parallel-address (the master)");
  if (o.ranks.empty()) return InvalidArgumentError("RankHostOptions.ranks is empty");
  for (const auto& r : o.ranks)
    if (r.engine == nullptr) return InvalidArgumentError("RankHostOptions.ranks: every rank needs an engine");
  auto h = std::make_unique<HostImpl>(o);
  h->Begin();
  return std::unique_ptr<RankHost>(std::move(h));
}

}  // namespace kvferry::dp
