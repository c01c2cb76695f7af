// Connector: wires the producer and consumer halves to the engine, the transfer engine,
// the bootstrap server and ZMQ.

#include "kvferry/connector/connector.h"

#include <fmt/format.h>

#include <atomic>
#include <zmq.hpp>

#include "kvferry/connector/consumer.h"
#include "kvferry/connector/metrics.h"
#include "kvferry/connector/producer.h"
#include "kvferry/connector/zmq_util.h"
#include "kvferry/http/http.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::connector {
namespace {

bool TakesPrefillLeg(KvRole r) {
  return r != KvRole::kConsumer;
}
bool TakesDecodeLeg(KvRole r) {
  return r != KvRole::kProducer;
}

// "http://HOST:PORT" from "HOST:PORT", "http://HOST:PORT" or "http://HOST:PORT/".
std::string NormalizeUrl(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.find("://") == std::string::npos) url = "http://" + url;
  return url;
}

class ConnectorImpl final : public Connector {
 public:
  explicit ConnectorImpl(const ConnectorOptions& options) : options_(options) {}
  ~ConnectorImpl() override { Shutdown(Deadline::After(std::chrono::seconds(10))); }

  engine::ConnectorHooks Hooks() override {
    engine::ConnectorHooks h;
    h.on_remote_kv_needed = [this](const std::string& id, std::span<const int32_t> blocks, int cached) {
      Consumer* c = consumer();
      if (c != nullptr) {
        c->OnNeeded(id, blocks, cached);
        return;
      }
      engine::Engine* e = engine();
      KVF_LOG_ERROR("connector: request {} needs remote KV but this instance takes no decode leg", id);
      if (e != nullptr) {
        e->FinishRemoteKv(id, FailedPreconditionError("this instance's connector does not load remote KV"),
                          options_.config.load_failure_policy == LoadFailurePolicy::kRecompute);
      }
    };
    h.on_remote_kv_aborted = [this](const std::string& id) {
      Consumer* c = consumer();
      return c != nullptr && c->OnAborted(id);
    };
    return h;
  }

  Status Start(engine::Engine* engine) override {
    if (engine == nullptr) return InvalidArgumentError("connector: Start needs an engine");
    {
      MutexLock l(mu_);
      if (started_ || shut_down_) return FailedPreconditionError("connector: Start called twice or after Shutdown");
      started_ = true;
      engine_ = engine;
    }
    Status st = StartParts(engine);
    if (!st.ok()) {
      Shutdown(Deadline::After(std::chrono::seconds(10)));
      return st;
    }
    ready_.store(true, std::memory_order_release);
    return Status::Ok();
  }

  StatusOr<engine::KvRole> BeginRequest(const std::string& request_id, const RequestKvParams& p) override {
    if (!p.do_remote_decode && !p.do_remote_prefill) return engine::KvRole::kLocal;
    const KvRole role = options_.config.role;
    if (p.do_remote_decode && p.do_remote_prefill) {
      return InvalidArgumentError("kv_transfer_params: do_remote_decode and do_remote_prefill cannot both be true");
    }
    if (p.transfer_id.empty()) return InvalidArgumentError("kv_transfer_params.transfer_id is required");
    if (p.do_remote_decode) {
      if (!TakesPrefillLeg(role)) {
        return InvalidArgumentError(
            fmt::format("this instance is a {}: it cannot take the prefill leg (do_remote_decode)", KvRoleName(role)));
      }
      Producer* prod = producer();
      if (prod == nullptr) return FailedPreconditionError("connector is not started");
      return prod->Begin(request_id, p.transfer_id);
    }
    if (!TakesDecodeLeg(role)) {
      return InvalidArgumentError(
          fmt::format("this instance is a {}: it cannot take the decode leg (do_remote_prefill)", KvRoleName(role)));
    }
    if (p.remote_bootstrap_addr.empty()) {
      return InvalidArgumentError("kv_transfer_params.remote_bootstrap_addr is required with do_remote_prefill");
    }
    const std::string url = NormalizeUrl(p.remote_bootstrap_addr);
    StatusOr<http::Url> parsed = http::ParseUrl(url);
    if (!parsed.ok() || parsed->host.empty()) {
      return InvalidArgumentError(fmt::format(
          "kv_transfer_params.remote_bootstrap_addr '{}' is not an http://HOST:PORT address", p.remote_bootstrap_addr));
    }
    // Without remote_dp_rank the prefiller rank is the one whose engine is remote_engine_id
    // (kAnyDpRank; rank 0 when no engine id is named either), as vLLM's decoder finds it.
    const int64_t dp = p.remote_dp_rank.value_or(kAnyDpRank);
    if (p.remote_dp_rank && dp < 0) return InvalidArgumentError("kv_transfer_params.remote_dp_rank must be >= 0");
    Consumer* cons = consumer();
    if (cons == nullptr) return FailedPreconditionError("connector is not started");
    KVF_RETURN_IF_ERROR(cons->Begin(request_id, p.transfer_id, url, p.remote_engine_id, dp));
    return engine::KvRole::kLoadRemote;
  }

  void CancelRequest(const std::string& request_id) override {
    if (Producer* p = producer(); p != nullptr && p->Cancel(request_id)) return;
    if (Consumer* c = consumer()) c->Cancel(request_id);
  }

  void OnRejected(const RequestKvParams& p, const Status& why) override {
    if (p.transfer_id.empty() || p.do_remote_decode == p.do_remote_prefill) return;
    if (p.do_remote_decode) {
      if (Producer* prod = producer()) {
        prod->Reject(p.transfer_id, fmt::format("its prefill leg was refused: {}", why.message()));
      }
      return;
    }
    Consumer* c = consumer();
    if (c == nullptr || p.remote_bootstrap_addr.empty()) return;
    StatusOr<http::Url> parsed = http::ParseUrl(NormalizeUrl(p.remote_bootstrap_addr));
    if (!parsed.ok() || parsed->host.empty()) return;
    c->Abandon(p.transfer_id, NormalizeUrl(p.remote_bootstrap_addr), p.remote_engine_id,
               std::max<int64_t>(kAnyDpRank, p.remote_dp_rank.value_or(kAnyDpRank)));
  }

  void OnOutput(const engine::Output& output) override {
    if (Producer* p = producer(); p != nullptr && p->OnOutput(output)) return;
    if (Consumer* c = consumer()) c->OnOutput(output);
  }

  bool Ready() const override { return ready_.load(std::memory_order_acquire); }

  ConnectorStats GetStats() const override {
    ConnectorStats s = metrics_.Counters();
    Producer* p = producer();
    Consumer* c = consumer();
    if (p != nullptr) {
      s.held_requests = p->held_requests();
      s.waiting_pulls = p->waiting_pulls();
    }
    if (c != nullptr) s.pending_loads = c->pending_loads();
    return s;
  }

  std::string MetricsText() const override { return metrics_.Text(GetStats()); }
  const KvTransferConfig& config() const override { return options_.config; }
  std::string bootstrap_url() const override {
    MutexLock l(mu_);
    return bootstrap_url_;
  }

  int64_t dp_rank() const override { return options_.dp_rank; }
  std::optional<BootstrapMap> BootstrapSnapshot() const override {
    MutexLock l(mu_);
    if (bootstrap_ == nullptr) return std::nullopt;
    return bootstrap_->registry().Snapshot();
  }

  std::string worker_endpoint() const override {
    MutexLock l(mu_);
    return producer_ ? producer_->endpoint() : std::string();
  }
  Status AdoptWorker(const WorkerInfo& w) override {
    MutexLock l(mu_);
    if (bootstrap_ == nullptr) return FailedPreconditionError("this worker runs no bootstrap server");
    return bootstrap_->registry().Adopt(w);
  }
  void DropWorkers(int64_t dp_rank) override {
    MutexLock l(mu_);
    if (bootstrap_ != nullptr) bootstrap_->registry().Deregister(dp_rank);
  }

  void Shutdown(const Deadline& deadline) override {
    Producer* p;
    Consumer* c;
    BootstrapServer* b;
    engine::Engine* e;
    transfer::TransferEngine* te;
    bool registered;
    {
      MutexLock l(mu_);
      if (shut_down_) return;
      shut_down_ = true;
      p = producer_.get();
      c = consumer_.get();
      b = bootstrap_.get();
      e = engine_;
      te = te_.get();
      registered = registered_;
    }
    ready_.store(false, std::memory_order_release);
    if (p != nullptr) p->Shutdown(deadline);
    if (c != nullptr) c->Shutdown(deadline);
    if (b != nullptr) b->Stop();
    // Nothing submits transfers any more (the sender pool is joined); peers' writes into our
    // arena end here, before the engine frees it.
    if (te != nullptr && e != nullptr && registered) {
      Status st = te->UnregisterMemory(e->kv_base());
      if (!st.ok()) KVF_LOG_WARN("connector: unregistering the KV arena: {}", st.ToString());
    }
  }

 private:
  Status StartParts(engine::Engine* engine) {
    const KvTransferConfig& cfg = options_.config;
    const std::string host = options_.advertise_host.empty() ? PrimaryIpv4() : options_.advertise_host;

    transfer::TransferEngineOptions to;
    to.local_host = host;
    to.protocol = cfg.protocol;
    StatusOr<std::unique_ptr<transfer::TransferEngine>> te = transfer::TransferEngine::Create(to);
    if (!te.ok()) return te.status().WithContext("connector: starting the transfer engine");
    transfer::TransferEngine* tep = te->get();
    {
      MutexLock l(mu_);
      te_ = std::move(*te);
    }
    KVF_RETURN_IF_ERROR(tep->RegisterMemory(engine->kv_base(), engine->kv_size_bytes())
                            .WithContext("connector: registering the KV arena"));
    {
      MutexLock l(mu_);
      registered_ = true;
    }
    KVF_LOG_INFO("connector: {} engine {} transfer engine {} ({}), KV arena {} bytes, {} bytes per block",
                 KvRoleName(cfg.role), cfg.engine_id, tep->segment_name(), transfer::ProtocolName(tep->protocol()),
                 engine->kv_size_bytes(), engine->kv_bytes_per_block());

    if (TakesDecodeLeg(cfg.role)) {
      const Duration load_timeout = options_.load_timeout > Duration::zero()
                                        ? options_.load_timeout
                                        : cfg.abort_request_timeout + std::chrono::seconds(60);
      auto c = std::make_unique<Consumer>(cfg, engine, tep, load_timeout, &metrics_, &zmq_);
      KVF_RETURN_IF_ERROR(c->Start());
      MutexLock l(mu_);
      consumer_ = std::move(c);
    }
    if (!TakesPrefillLeg(cfg.role)) return Status::Ok();

    auto p = std::make_unique<Producer>(cfg, engine, tep, &metrics_, &zmq_);
    KVF_RETURN_IF_ERROR(p->Start(host));
    const std::string endpoint = p->endpoint();
    {
      MutexLock l(mu_);
      producer_ = std::move(p);
    }
    std::string url;
    if (cfg.bootstrap_server_address.empty()) {
      StatusOr<std::unique_ptr<BootstrapServer>> b =
          BootstrapServer::Start(options_.bootstrap_bind_host, cfg.bootstrap_port);
      if (!b.ok()) {
        return b.status().WithContext(fmt::format("connector: starting the bootstrap server on {}:{}",
                                                  options_.bootstrap_bind_host, cfg.bootstrap_port));
      }
      const bool any = options_.bootstrap_bind_host == "0.0.0.0" || options_.bootstrap_bind_host.empty();
      url = fmt::format("http://{}:{}", any ? host : options_.bootstrap_bind_host, (*b)->port());
      // /query answers 503 until every expected worker registered.
      if (options_.expect_dp_ranks.empty()) {
        (*b)->registry().Expect(options_.dp_rank);
      } else {
        for (int64_t r : options_.expect_dp_ranks) (*b)->registry().Expect(r);
      }
      MutexLock l(mu_);
      bootstrap_ = std::move(*b);
    } else {
      url = NormalizeUrl(cfg.bootstrap_server_address);
    }
    {
      MutexLock l(mu_);
      bootstrap_url_ = url;
    }
    const WorkerInfo w{cfg.engine_id, options_.dp_rank, 0, 0, endpoint};
    Status st = RegisterWorker(url, w, cfg.connector_timeout, 3);
    if (!st.ok())
      return st.WithContext(fmt::format("connector: registering worker {} with bootstrap {}", endpoint, url));
    KVF_LOG_INFO("connector: worker dp {} registered at {} as {}", options_.dp_rank, url, endpoint);
    return Status::Ok();
  }

  Producer* producer() const {
    MutexLock l(mu_);
    return producer_.get();
  }
  Consumer* consumer() const {
    MutexLock l(mu_);
    return consumer_.get();
  }
  engine::Engine* engine() const {
    MutexLock l(mu_);
    return engine_;
  }

  const ConnectorOptions options_;
  Metrics metrics_;
  // Declared before the parts that own sockets: destroyed after them (zmq_ctx_term waits
  // for every socket to close).
  zmq::context_t zmq_;
  std::atomic<bool> ready_{false};  // published by Start for /health (acquire/release)

  mutable Mutex mu_;
  bool started_ KVF_GUARDED_BY(mu_) = false;
  bool shut_down_ KVF_GUARDED_BY(mu_) = false;
  engine::Engine* engine_ KVF_GUARDED_BY(mu_) = nullptr;
  bool registered_ KVF_GUARDED_BY(mu_) = false;  // the KV arena is registered with te_
  std::unique_ptr<transfer::TransferEngine> te_ KVF_GUARDED_BY(mu_);
  std::unique_ptr<BootstrapServer> bootstrap_ KVF_GUARDED_BY(mu_);
  std::unique_ptr<Producer> producer_ KVF_GUARDED_BY(mu_);
  std::unique_ptr<Consumer> consumer_ KVF_GUARDED_BY(mu_);
  std::string bootstrap_url_ KVF_GUARDED_BY(mu_);
};

}  // namespace

StatusOr<std::unique_ptr<Connector>> Connector::Create(const ConnectorOptions& options) {
  ConnectorOptions o = options;
  if (o.config.engine_id.empty()) {
    // Stable across restarts of the same instance: routers cache engine ids forever.
    const std::string host = o.advertise_host.empty() ? PrimaryIpv4() : o.advertise_host;
    o.config.engine_id = o.instance_port > 0 ? StableEngineId(host, o.instance_port, o.dp_rank) : NewUuid4();
  }
  if (o.config.num_workers < 1 || o.config.num_workers > 256) {
    return InvalidArgumentError(fmt::format("num_workers {} is outside 1..256", o.config.num_workers));
  }
  if (o.dp_rank < 0) return InvalidArgumentError("dp_rank must be >= 0");
  if (o.config.abort_request_timeout <= Duration::zero() || o.config.connector_timeout <= Duration::zero()) {
    return InvalidArgumentError("abort_request_timeout and connector_timeout must be positive");
  }
  return std::unique_ptr<Connector>(new ConnectorImpl(o));
}

}  // namespace kvferry::connector
