// The master's side of the channel: RankServer accepts headless instances and stands in for
// their ranks with an engine::Engine and a connector::Connector.
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <map>
#include <thread>

#include "kvferry/dp/dp.h"
#include "kvferry/dp/link.h"

namespace kvferry::dp {
namespace {

class ServerImpl;

// One remote rank as the master sees it.
struct RemoteRank {
  int dp_rank = 0;
  Mutex mu;
  Link* link KVF_GUARDED_BY(mu) = nullptr;  // borrowed from ServerImpl::links_; null: not joined
  std::string instance KVF_GUARDED_BY(mu);
  std::string down_reason KVF_GUARDED_BY(mu) = "its headless instance has not joined yet";
  HelloRank info KVF_GUARDED_BY(mu);
  Stats stats KVF_GUARDED_BY(mu);
  std::map<std::string, std::shared_ptr<engine::OutputCallback>> inflight KVF_GUARDED_BY(mu);
  std::map<std::string, connector::RequestKvParams> begun KVF_GUARDED_BY(mu);  // BeginRequest → Add
  std::string engine_id KVF_GUARDED_BY(mu);                                    // fixed at the first join
  connector::KvTransferConfig config;  // written at the first join under mu; read after RankUp
};

Status NotUp(int rank, const std::string& why) {
  return UnavailableError(fmt::format("data-parallel rank {} is not available: {}", rank, why));
}

class RemoteEngine final : public engine::Engine {
 public:
  RemoteEngine(RemoteRank* r, const engine::Engine* model) : r_(r), model_(model) {}
  Status Add(engine::RequestSpec spec, engine::OutputCallback on_output) override {
    MutexLock l(r_->mu);
    if (r_->link == nullptr) {
      r_->begun.erase(spec.id);
      return NotUp(r_->dp_rank, r_->down_reason);
    }
    if (r_->inflight.count(spec.id) != 0) return AlreadyExistsError(fmt::format("request {} is active", spec.id));
    dp::Add msg;
    msg.dp_rank = r_->dp_rank;
    msg.id = spec.id;
    msg.prompt = std::move(spec.prompt);
    msg.sampling = std::move(spec.sampling);
    msg.role = spec.kv_role;
    if (auto b = r_->begun.find(spec.id); b != r_->begun.end()) {
      msg.kv = std::move(b->second);
      r_->begun.erase(b);
    }
    KVF_RETURN_IF_ERROR(r_->link->Send(msg));
    r_->inflight[spec.id] = std::make_shared<engine::OutputCallback>(std::move(on_output));
    return Status::Ok();
  }
  void Abort(const std::string& id) override {
    MutexLock l(r_->mu);
    if (r_->link != nullptr && r_->inflight.count(id) != 0) (void)r_->link->Send(dp::Abort{r_->dp_rank, id});
  }
  void FinishRemoteKv(const std::string&, Status, bool) override {}  // the headless connector's business
  void ReleaseHeldBlocks(const std::string&) override {}
  void Shutdown(const Deadline&) override {}
  engine::EngineStats GetStats() const override {
    MutexLock l(r_->mu);
    if (r_->link != nullptr) return r_->stats.engine;
    engine::EngineStats s;  // gone: nothing runs, nothing is held
    s.blocks_total = r_->info.blocks_total;
    return s;
  }
  const model::ModelConfig& model_config() const override { return model_->model_config(); }
  std::string model_fingerprint() const override { return model_->model_fingerprint(); }
  int64_t max_model_len() const override { return model_->max_model_len(); }
  void* kv_base() const override { return nullptr; }
  size_t kv_size_bytes() const override {
    MutexLock l(r_->mu);
    return r_->info.kv_bytes;
  }
  size_t kv_bytes_per_block() const override {
    MutexLock l(r_->mu);
    return r_->info.kv_bytes_per_block;
  }
  int64_t block_size() const override { return model_->block_size(); }

 private:
  RemoteRank* const r_;
  const engine::Engine* const model_;
};

class RemoteConnector final : public connector::Connector {
 public:
  RemoteConnector(RemoteRank* r, const connector::KvTransferConfig& cfg, connector::Connector* owner)
      : r_(r), owner_(owner) {
    MutexLock l(r_->mu);
    r_->config = cfg;
  }
  engine::ConnectorHooks Hooks() override { return {}; }
  Status Start(engine::Engine*) override { return Status::Ok(); }
  // Checks the shape only; the headless rank's connector takes the request with the Add.
  StatusOr<engine::KvRole> BeginRequest(const std::string& id, const connector::RequestKvParams& p) override {
    if (!p.do_remote_decode && !p.do_remote_prefill) return engine::KvRole::kLocal;
    if (p.do_remote_decode && p.do_remote_prefill)
      return InvalidArgumentError("kv_transfer_params: do_remote_decode and do_remote_prefill cannot both be true");
    if (p.transfer_id.empty()) return InvalidArgumentError("kv_transfer_params.transfer_id is required");
    const connector::KvRole role = r_->config.role;
    if (p.do_remote_decode && role == connector::KvRole::kConsumer)
      return InvalidArgumentError("this instance is a kv_consumer: it cannot take the prefill leg (do_remote_decode)");
    if (p.do_remote_prefill && role == connector::KvRole::kProducer)
      return InvalidArgumentError("this instance is a kv_producer: it cannot take the decode leg (do_remote_prefill)");
    if (p.do_remote_prefill && p.remote_bootstrap_addr.empty())
      return InvalidArgumentError("kv_transfer_params.remote_bootstrap_addr is required with do_remote_prefill");
    MutexLock l(r_->mu);
    if (r_->link == nullptr) return NotUp(r_->dp_rank, r_->down_reason);
    r_->begun[id] = p;
    return p.do_remote_decode ? engine::KvRole::kHoldForRemote : engine::KvRole::kLoadRemote;
  }
  void CancelRequest(const std::string& id) override {
    MutexLock l(r_->mu);
    r_->begun.erase(id);
  }
  void OnRejected(const connector::RequestKvParams& p, const Status& why) override {
    MutexLock l(r_->mu);
    if (r_->link != nullptr) (void)r_->link->Send(Rejected{r_->dp_rank, p, why});
  }
  void OnOutput(const engine::Output&) override {}  // the headless connector saw it already
  bool Ready() const override {
    MutexLock l(r_->mu);
    return r_->link != nullptr && r_->stats.ready;
  }
  connector::ConnectorStats GetStats() const override { return {}; }
  std::string MetricsText() const override {
    MutexLock l(r_->mu);
    return r_->link != nullptr ? r_->stats.metrics : std::string();
  }
  const connector::KvTransferConfig& config() const override { return r_->config; }
  std::string bootstrap_url() const override { return owner_ != nullptr ? owner_->bootstrap_url() : std::string(); }
  int64_t dp_rank() const override { return r_->dp_rank; }
  std::optional<connector::BootstrapMap> BootstrapSnapshot() const override { return std::nullopt; }
  std::string worker_endpoint() const override {
    MutexLock l(r_->mu);
    return r_->info.worker_addr;
  }
  Status AdoptWorker(const connector::WorkerInfo&) override {
    return FailedPreconditionError("a remote rank runs no bootstrap server");
  }
  void DropWorkers(int64_t) override {}
  void Shutdown(const Deadline&) override {}

 private:
  RemoteRank* const r_;
  connector::Connector* const owner_;
};

class ServerImpl final : public RankServer {
 public:
  explicit ServerImpl(const RankServerOptions& o) : o_(o) {
    for (int r = o.first_remote_rank; r < o.dp_size; ++r) {
      auto rr = std::make_unique<RemoteRank>();
      rr->dp_rank = r;
      engines_.push_back(std::make_unique<RemoteEngine>(rr.get(), o.model_engine));
      if (o.kv_config)
        connectors_.push_back(std::make_unique<RemoteConnector>(rr.get(), *o.kv_config, o.bootstrap_owner));
      ranks_.push_back(std::move(rr));
    }
  }
  ~ServerImpl() override { Stop(); }

  Status Listen() {
    KVF_ASSIGN_OR_RETURN(listen_fd_, dp::Listen(o_.bind_host, o_.port, &port_));
    accept_ = std::thread([this] { AcceptLoop(); });
    KVF_LOG_INFO("serve: waiting for headless data-parallel ranks {}..{} on {}:{}", o_.first_remote_rank,
                 o_.dp_size - 1, o_.bind_host, port_);
    return Status::Ok();
  }

  engine::Engine* engine(int r) override { return Index(r) < 0 ? nullptr : engines_[Index(r)].get(); }
  connector::Connector* connector(int r) override {
    return Index(r) < 0 || connectors_.empty() ? nullptr : connectors_[Index(r)].get();
  }
  Status RankUp(int r) const override {
    if (Index(r) < 0) return InvalidArgumentError(fmt::format("data-parallel rank {} is not a remote rank", r));
    RemoteRank& rr = *ranks_[Index(r)];
    MutexLock l(rr.mu);
    if (rr.link == nullptr) return NotUp(r, rr.down_reason);
    if (o_.kv_config && !rr.stats.ready)
      return NotUp(r, fmt::format("the KV connector of the headless instance {} is not ready yet", rr.instance));
    return Status::Ok();
  }
  int port() const override { return port_; }

  void Stop() override {
    {
      MutexLock l(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    if (accept_.joinable()) accept_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    // Close every channel; each one's on_close fails its ranks' requests (it needs links_).
    std::vector<Link*> open;
    {
      MutexLock l(mu_);
      for (auto& [k, s] : links_) open.push_back(s.link.get());
    }
    for (Link* l : open) l->Close(CancelledError("the master is shutting down"));
    const Deadline bound = Deadline::After(std::chrono::seconds(5));
    while (!bound.Expired()) {
      bool all = true;
      {
        MutexLock l(mu_);
        for (auto& [k, s] : links_) all = all && s.closed_seen;
      }
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::map<uint64_t, LinkState> links;
    {
      MutexLock l(mu_);
      links.swap(links_);
    }
    links.clear();
  }

 private:
  struct LinkState {
    std::unique_ptr<Link> link;
    std::vector<int> ranks;    // joined ranks (empty until Hello is accepted)
    bool closed_seen = false;  // OnClose ran: nothing calls back any more
  };

  int Index(int r) const { return r >= o_.first_remote_rank && r < o_.dp_size ? r - o_.first_remote_rank : -1; }

  void AcceptLoop() {
    SetCurrentThreadName("kvf-dp-accept");
    while (true) {
      {
        MutexLock l(mu_);
        if (stopped_) return;
      }
      Reap();
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
      if (fd < 0) continue;
      char host[INET6_ADDRSTRLEN] = "?";
      int peer_port = 0;
      if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        peer_port = ntohs(a->sin_port);
      } else if (ss.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        peer_port = ntohs(a->sin6_port);
      }
      LinkOptions lo;
      lo.peer = fmt::format("{}:{}", host, peer_port);
      lo.ping_interval = o_.ping_interval;
      lo.idle_timeout = o_.idle_timeout;
      MutexLock l(mu_);
      const uint64_t key = ++next_key_;
      // The callbacks find the link by key: it is in links_ before its reader can call them (mu_ is held).
      links_[key].link = Link::Start(
          fd, lo, [this, key](const Message& m) { OnMessage(key, m); },
          [this, key](const Status& why) { OnClose(key, why); });
    }
  }

  // Destroys links that closed (never from their own threads).
  void Reap() {
    std::vector<std::unique_ptr<Link>> dead;
    {
      MutexLock l(mu_);
      for (auto it = links_.begin(); it != links_.end();) {
        if (it->second.closed_seen) {
          dead.push_back(std::move(it->second.link));
          it = links_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  Link* LinkOf(uint64_t key, std::vector<int>* ranks) {
    MutexLock l(mu_);
    auto it = links_.find(key);
    if (it == links_.end()) return nullptr;
    if (ranks != nullptr) *ranks = it->second.ranks;
    return it->second.link.get();
  }

  void OnMessage(uint64_t key, const Message& m) {
    std::vector<int> joined;
    Link* link = LinkOf(key, &joined);
    if (link == nullptr) return;
    if (const auto* h = std::get_if<Hello>(&m)) return OnHello(key, link, joined, *h);
    auto owns = [&](int64_t r) { return std::find(joined.begin(), joined.end(), r) != joined.end(); };
    if (const auto* out = std::get_if<OutputMsg>(&m)) {
      if (!owns(out->dp_rank))
        return link->Close(InvalidArgumentError(
            fmt::format("an output for rank {}, which this channel has not joined", out->dp_rank)));
      RemoteRank& rr = *ranks_[Index(static_cast<int>(out->dp_rank))];
      std::shared_ptr<engine::OutputCallback> cb;
      {
        MutexLock l(rr.mu);
        auto it = rr.inflight.find(out->out.request_id);
        if (it == rr.inflight.end()) return;  // aborted and already failed here, or unknown
        cb = it->second;
        if (out->out.finished) rr.inflight.erase(it);
      }
      (*cb)(out->out);
      return;
    }
    if (const auto* s = std::get_if<Stats>(&m)) {
      if (!owns(s->dp_rank)) return;
      RemoteRank& rr = *ranks_[Index(static_cast<int>(s->dp_rank))];
      MutexLock l(rr.mu);
      rr.stats = *s;
      return;
    }
    if (std::holds_alternative<Ping>(m)) return;
    link->Close(InvalidArgumentError("dp channel: a headless instance sent a message only the master sends"));
  }

  void OnHello(uint64_t key, Link* link, const std::vector<int>& joined, const Hello& h) {
    auto refuse = [&](std::string msg, bool final) {
      KVF_LOG_WARN("serve: refused headless instance {} ({}): {}", h.instance, link->peer(), msg);
      (void)link->Send(Refuse{msg, final});
    };
    if (!joined.empty()) return link->Close(InvalidArgumentError("dp channel: a second hello"));
    if (h.version != kProtocolVersion)
      return refuse(fmt::format("channel protocol version {} (the master speaks {})", h.version, kProtocolVersion),
                    true);
    const model::ModelConfig& mc = o_.model_engine->model_config();
    for (const HelloRank& hr : h.ranks) {
      const int r = static_cast<int>(hr.dp_rank);
      if (Index(r) < 0) {
        return refuse(fmt::format("rank {} is not a headless rank of this master (it expects ranks {}..{}: "
                                  "--data-parallel-size {}, --data-parallel-size-local {})",
                                  r, o_.first_remote_rank, o_.dp_size - 1, o_.dp_size, o_.first_remote_rank),
                      true);
      }
      if (hr.vocab_size != mc.vocab_size || hr.max_model_len != o_.model_engine->max_model_len() ||
          hr.block_size != o_.model_engine->block_size()) {
        return refuse(fmt::format("rank {} runs another model or shape (vocab {}, max_model_len {}, block size {}; "
                                  "the master: {}, {}, {})",
                                  r, hr.vocab_size, hr.max_model_len, hr.block_size, mc.vocab_size,
                                  o_.model_engine->max_model_len(), o_.model_engine->block_size()),
                      true);
      }
      if (o_.kv_config && hr.engine_id.empty())
        return refuse(fmt::format("rank {} has no KV connector, but the master runs with --kv-transfer-config", r),
                      true);
      if (!o_.kv_config && !hr.engine_id.empty())
        return refuse(fmt::format("rank {} has a KV connector, but the master runs without --kv-transfer-config", r),
                      true);
      RemoteRank& rr = *ranks_[Index(r)];
      MutexLock l(rr.mu);
      if (rr.link != nullptr)
        return refuse(fmt::format("rank {} is connected already (from {})", r, rr.instance), false);
      if (!rr.engine_id.empty() && rr.engine_id != hr.engine_id)
        return refuse(fmt::format("rank {} joined before as engine {}; it must rejoin under that engine_id, not {}", r,
                                  rr.engine_id, hr.engine_id),
                      true);
    }
    // Its workers are in the bootstrap server's map again (they registered themselves at start;
    // after a master-side drop they are registered here).
    for (const HelloRank& hr : h.ranks) {
      if (o_.bootstrap_owner == nullptr || hr.worker_addr.empty()) continue;
      Status st = o_.bootstrap_owner->AdoptWorker({hr.engine_id, hr.dp_rank, 0, 0, hr.worker_addr});
      if (!st.ok()) return refuse(fmt::format("registering rank {}'s worker: {}", hr.dp_rank, st.message()), false);
    }
    std::vector<int> ranks;
    for (const HelloRank& hr : h.ranks) {
      RemoteRank& rr = *ranks_[Index(static_cast<int>(hr.dp_rank))];
      MutexLock l(rr.mu);
      rr.link = link;
      rr.instance = h.instance.empty() ? link->peer() : fmt::format("{} at {}", h.instance, link->peer());
      rr.info = hr;
      rr.stats = Stats{};
      if (rr.engine_id.empty()) {
        rr.engine_id = hr.engine_id;
        rr.config.engine_id = hr.engine_id;
      }
      ranks.push_back(static_cast<int>(hr.dp_rank));
      KVF_LOG_INFO("serve: data-parallel rank {} joined from headless instance {}{}", hr.dp_rank, rr.instance,
                   hr.engine_id.empty() ? "" : fmt::format(", engine {} worker {}", hr.engine_id, hr.worker_addr));
    }
    {
      MutexLock l(mu_);
      if (auto it = links_.find(key); it != links_.end()) it->second.ranks = ranks;
    }
    (void)link->Send(Welcome{});
  }

  void OnClose(uint64_t key, const Status& why) {
    std::vector<int> ranks;
    {
      MutexLock l(mu_);
      auto it = links_.find(key);
      if (it == links_.end()) return;
      ranks = std::move(it->second.ranks);
      it->second.ranks.clear();
    }
    // Only once no rank points at the link any more may Reap destroy it.
    auto done = [&] {
      MutexLock l(mu_);
      if (auto it = links_.find(key); it != links_.end()) it->second.closed_seen = true;
    };
    for (int r : ranks) {
      RemoteRank& rr = *ranks_[Index(r)];
      std::map<std::string, std::shared_ptr<engine::OutputCallback>> lost;
      std::string instance;
      {
        MutexLock l(rr.mu);
        rr.link = nullptr;
        rr.down_reason = fmt::format("its headless instance {} left: {}", rr.instance, why.message());
        instance = rr.instance;
        lost.swap(rr.inflight);
        rr.begun.clear();
        rr.stats = Stats{};
      }
      KVF_LOG_WARN(
          "serve: data-parallel rank {} is out of service ({} request(s) in flight fail): headless instance {} "
          "left: {}",
          r, lost.size(), instance, why.ToString());
      if (o_.bootstrap_owner != nullptr) o_.bootstrap_owner->DropWorkers(r);
      for (auto& [id, cb] : lost) {
        engine::Output out;
        out.request_id = id;
        out.finished = true;
        out.finish_reason = engine::FinishReason::kError;
        out.error =
            UnavailableError(fmt::format("data-parallel rank {} (headless instance {}) was lost while running "
                                         "this request: {}",
                                         r, instance, why.message()));
        (*cb)(out);
      }
    }
    done();
  }

  const RankServerOptions o_;
  std::vector<std::unique_ptr<RemoteRank>> ranks_;
  std::vector<std::unique_ptr<RemoteEngine>> engines_;
  std::vector<std::unique_ptr<RemoteConnector>> connectors_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_;
  Mutex mu_;
  bool stopped_ KVF_GUARDED_BY(mu_) = false;
  uint64_t next_key_ KVF_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, LinkState> links_ KVF_GUARDED_BY(mu_);
};

}  // namespace

StatusOr<std::unique_ptr<RankServer>> RankServer::Start(const RankServerOptions& o) {
  if (o.model_engine == nullptr) return InvalidArgumentError("RankServerOptions.model_engine is required");
  if (o.first_remote_rank < 1 || o.first_remote_rank >= o.dp_size)
    return InvalidArgumentError("RankServerOptions: no remote rank");
  auto s = std::make_unique<ServerImpl>(o);
  KVF_RETURN_IF_ERROR(s->Listen().WithContext("--data-parallel-rpc-port"));
  return std::unique_ptr<RankServer>(std::move(s));
}

}  // namespace kvferry::dp
