// The proxy: HTTP front end, the two legs of each request and the relay.
#include "kvferry/proxy/proxy.h"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <charconv>

#include "kvferry/http/http.h"
#include "kvferry/proxy/registry.h"
#include "kvferry/proxy/rewrite.h"

namespace kvferry::proxy {
namespace {

using Clock = std::chrono::steady_clock;

// Counters for /metrics; relaxed atomics (scraped, nothing else published through them).
struct Metrics {
  static constexpr std::array<double, 11> kBounds = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                     0.005,   0.01,   0.025,   0.05,   0.1};
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> client_disconnects{0};
  std::array<std::atomic<int64_t>, kBounds.size() + 1> buckets{};
  std::atomic<int64_t> latency_count{0};
  std::atomic<int64_t> latency_sum_ns{0};

  void ObserveAdded(Duration d) {
    double s = std::chrono::duration<double>(d).count();
    size_t b = 0;
    while (b < kBounds.size() && s > kBounds[b]) ++b;
    buckets[b].fetch_add(1, std::memory_order_relaxed);
    latency_count.fetch_add(1, std::memory_order_relaxed);
    latency_sum_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(), std::memory_order_relaxed);
  }
  void Append(std::string* out) const {
    auto get = [](const std::atomic<int64_t>& a) { return a.load(std::memory_order_relaxed); };
    *out += "# HELP kvferry_proxy_requests_total Completion requests received.\n# TYPE kvferry_proxy_requests_total counter\n";
    *out += fmt::format("kvferry_proxy_requests_total {}\n", get(requests));
    *out += "# HELP kvferry_proxy_requests_failed_total Completion requests answered with an error.\n";
    *out += "# TYPE kvferry_proxy_requests_failed_total counter\n";
    *out += fmt::format("kvferry_proxy_requests_failed_total {}\n", get(failed));
    *out += "# HELP kvferry_proxy_client_disconnects_total Requests whose client went away before the answer ended.\n";
    *out += "# TYPE kvferry_proxy_client_disconnects_total counter\n";
    *out += fmt::format("kvferry_proxy_client_disconnects_total {}\n", get(client_disconnects));
    *out += "# HELP kvferry_proxy_requests_in_flight Completion requests being served.\n";
    *out += "# TYPE kvferry_proxy_requests_in_flight gauge\n";
    *out += fmt::format("kvferry_proxy_requests_in_flight {}\n", get(in_flight));
    *out += "# HELP kvferry_proxy_added_latency_seconds Time the proxy adds before the first byte: request received to "
            "legs sent, plus decoder's first byte to client write.\n";
    *out += "# TYPE kvferry_proxy_added_latency_seconds histogram\n";
    int64_t cum = 0;
    for (size_t i = 0; i < kBounds.size(); ++i) {
      cum += get(buckets[i]);
      *out += fmt::format("kvferry_proxy_added_latency_seconds_bucket{{le=\"{}\"}} {}\n", kBounds[i], cum);
    }
    cum += get(buckets[kBounds.size()]);
    *out += fmt::format("kvferry_proxy_added_latency_seconds_bucket{{le=\"+Inf\"}} {}\n", cum);
    *out += fmt::format("kvferry_proxy_added_latency_seconds_sum {:.9f}\n", get(latency_sum_ns) / 1e9);
    *out += fmt::format("kvferry_proxy_added_latency_seconds_count {}\n", get(latency_count));
  }
};

bool IsError(int status) { return status < 200 || status >= 300; }

// One client request and its two legs. Every answer to the client goes through here,
// under mu_, so the legs (on upstream io threads) and a client disconnect (on a server
// io thread) cannot interleave their writes.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(std::shared_ptr<http::Responder> responder, Registry* registry, Metrics* metrics, Instance* prefill,
           Instance* decode, std::string request_id, Clock::time_point received)
      : responder_(std::move(responder)), registry_(registry), metrics_(metrics), prefill_(prefill),
        decode_(decode), request_id_(std::move(request_id)), received_(received) {
    metrics_->in_flight.fetch_add(1, std::memory_order_relaxed);
  }
  ~Exchange() {
    MutexLock l(mu_);
    if (!answered_) {
      metrics_->failed.fetch_add(1, std::memory_order_relaxed);
      AnsweredLocked();
    }
  }

  // The legs' handlers may run before this (a refused connection fails at once): a leg
  // that failed, or a client that left, in the meantime aborts the other leg here.
  void SetCalls(std::shared_ptr<http::Call> p, std::shared_ptr<http::Call> d) {
    {
      MutexLock l(mu_);
      legs_sent_ = Clock::now();
      if (!abort_legs_) {
        if (!p_done_) p_call_ = std::move(p);
        if (!d_done_) d_call_ = std::move(d);
        return;
      }
    }
    p->Cancel();  // no-ops for a leg that already finished
    d->Cancel();
  }

  void ClientGone() {
    std::shared_ptr<http::Call> p, d;
    {
      MutexLock l(mu_);
      client_gone_ = true;
      abort_legs_ = true;
      if (!answered_) {
        AnsweredLocked();  // nobody to answer
        metrics_->client_disconnects.fetch_add(1, std::memory_order_relaxed);
      }
      p = std::move(p_call_);
      d = std::move(d_call_);
    }
    if (p) p->Cancel();
    if (d) d->Cancel();
  }

  // --- decode leg -------------------------------------------------------------
  void OnDecodeHeaders(const http::Response& head) {
    MutexLock l(mu_);
    d_status_ = head.status;
    d_first_byte_ = Clock::now();
    if (answered_ || IsError(head.status)) return;
    const std::string* ct = head.Find("content-type");
    content_type_ = ct ? *ct : "application/json";
    std::vector<http::Header> extra;
    const std::string* rid = head.Find("x-request-id");
    extra.push_back({"X-Request-Id", rid ? *rid : request_id_});
    responder_->BeginStream(head.status, content_type_, std::move(extra));
    begun_ = true;
    ObserveLatency();
  }
  void OnDecodeBody(std::string_view chunk) {
    MutexLock l(mu_);
    if (answered_) return;
    if (begun_) {
      responder_->Write(std::string(chunk));
    } else if (d_error_body_.size() < 64 * 1024) {
      d_error_body_.append(chunk.substr(0, 64 * 1024 - d_error_body_.size()));
    }
  }
  void OnDecodeDone(const Status& st) {
    std::shared_ptr<http::Call> cancel_p;
    {
      MutexLock l(mu_);
      d_done_ = true;
      d_call_.reset();
      if (!st.ok() && st.code() != StatusCode::kCancelled) {
        decode_->errors.fetch_add(1, std::memory_order_relaxed);
        registry_->MarkDown(decode_, st);
      } else if (st.ok() && d_status_ >= 500) {
        decode_->errors.fetch_add(1, std::memory_order_relaxed);
      }
      if (answered_) return;
      if (st.ok() && begun_) {
        responder_->End();
        AnsweredLocked();
        return;
      }
      // The decode leg failed: the prefill is of no use any more (cancelling it lets the
      // prefiller free its blocks now rather than at the abort timeout).
      cancel_p = std::move(p_call_);
      if (st.ok()) {
        FailLocked(d_status_, fmt::format("decode instance {} answered {}: {}", decode_->url, d_status_,
                                          UpstreamMessage(d_error_body_)));
      } else {
        FailLocked(GatewayStatus(st), fmt::format("decode instance {} failed: {}", decode_->url, st.message()));
      }
    }
    if (cancel_p) cancel_p->Cancel();
  }

  // --- prefill leg ------------------------------------------------------------
  void OnPrefillHeaders(const http::Response& head) {
    MutexLock l(mu_);
    p_status_ = head.status;
  }
  void OnPrefillBody(std::string_view chunk) {
    MutexLock l(mu_);
    if (IsError(p_status_) && p_error_body_.size() < 64 * 1024) {
      p_error_body_.append(chunk.substr(0, 64 * 1024 - p_error_body_.size()));
    }
  }
  void OnPrefillDone(const Status& st) {
    std::shared_ptr<http::Call> cancel_d;
    {
      MutexLock l(mu_);
      p_done_ = true;
      p_call_.reset();
      if (st.code() == StatusCode::kCancelled) return;
      bool failed = !st.ok() || IsError(p_status_);
      if (!failed) return;
      if (!st.ok()) registry_->MarkDown(prefill_, st);
      if (!st.ok() || p_status_ >= 500) prefill_->errors.fetch_add(1, std::memory_order_relaxed);
      std::string msg = !st.ok() ? fmt::format("prefill instance {} failed: {}", prefill_->url, st.message())
                                 : fmt::format("prefill instance {} answered {}: {}", prefill_->url, p_status_,
                                               UpstreamMessage(p_error_body_));
      if (answered_ || d_done_) {
        KVF_LOG_WARN("proxy: {} (request {})", msg, request_id_);
        return;
      }
      cancel_d = std::move(d_call_);
      FailLocked(st.ok() ? p_status_ : GatewayStatus(st), msg);
    }
    if (cancel_d) cancel_d->Cancel();
  }

 private:
  // Answers the client with an error: a JSON error response, or, when the decoder's
  // stream already began, an SSE error event (the status line is already gone).
  void FailLocked(int status, const std::string& message) KVF_REQUIRES(mu_) {
    KVF_LOG_WARN("proxy: request {}: {}", request_id_, message);
    AnsweredLocked();
    abort_legs_ = true;
    metrics_->failed.fetch_add(1, std::memory_order_relaxed);
    if (begun_) {
      if (content_type_.starts_with("text/event-stream")) {
        responder_->Write("data: " + ErrorJson(status, message) + "\n\ndata: [DONE]\n\n");
      }
      responder_->End();
      return;
    }
    responder_->Respond(status, "application/json", ErrorJson(status, message), {{"X-Request-Id", request_id_}});
  }
  // The client's answer is complete (or nobody listens): the request leaves in_flight
  // even if the prefill leg is still finishing.
  void AnsweredLocked() KVF_REQUIRES(mu_) {
    answered_ = true;
    metrics_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  }
  void ObserveLatency() KVF_REQUIRES(mu_) {
    auto now = Clock::now();
    metrics_->ObserveAdded((legs_sent_ - received_) + (now - d_first_byte_));
  }

  const std::shared_ptr<http::Responder> responder_;
  Registry* const registry_;
  Metrics* const metrics_;
  Instance* const prefill_;
  Instance* const decode_;
  const std::string request_id_;
  const Clock::time_point received_;

  Mutex mu_;
  std::shared_ptr<http::Call> p_call_ KVF_GUARDED_BY(mu_);
  std::shared_ptr<http::Call> d_call_ KVF_GUARDED_BY(mu_);
  Clock::time_point legs_sent_ KVF_GUARDED_BY(mu_) = received_;
  Clock::time_point d_first_byte_ KVF_GUARDED_BY(mu_);
  bool client_gone_ KVF_GUARDED_BY(mu_) = false;
  bool abort_legs_ KVF_GUARDED_BY(mu_) = false;  // client gone or request failed: legs are of no use
  bool answered_ KVF_GUARDED_BY(mu_) = false;  // the client's answer is complete (or nobody listens)
  bool begun_ KVF_GUARDED_BY(mu_) = false;     // the decoder's stream is being relayed
  bool p_done_ KVF_GUARDED_BY(mu_) = false;
  bool d_done_ KVF_GUARDED_BY(mu_) = false;
  int p_status_ KVF_GUARDED_BY(mu_) = 0;
  int d_status_ KVF_GUARDED_BY(mu_) = 0;
  std::string content_type_ KVF_GUARDED_BY(mu_);
  std::string p_error_body_ KVF_GUARDED_BY(mu_);
  std::string d_error_body_ KVF_GUARDED_BY(mu_);
};

class ProxyImpl final : public Proxy {
 public:
  explicit ProxyImpl(const ProxyOptions& o) : options_(o) {}
  ~ProxyImpl() override { Stop(); }

  Status Start() {
    if (options_.prefill.empty()) return InvalidArgumentError("proxy: at least one --prefill instance is needed");
    if (options_.decode.empty()) return InvalidArgumentError("proxy: at least one --decode instance is needed");
    for (const PrefillInstance& p : options_.prefill) {
      auto u = http::ParseUrl(p.url);
      if (!u.ok()) return InvalidArgumentError(fmt::format("proxy: --prefill {}: {}", p.url, u.status().message()));
      if (p.bootstrap_port == 0) return InvalidArgumentError(fmt::format("proxy: --prefill {}: bootstrap port 0", p.url));
    }
    for (const std::string& d : options_.decode) {
      auto u = http::ParseUrl(d);
      if (!u.ok()) return InvalidArgumentError(fmt::format("proxy: --decode {}: {}", d, u.status().message()));
    }
    http::ClientOptions co;
    co.io_threads = std::max(1, options_.upstream_threads);
    co.connect_timeout = options_.connect_timeout;
    KVF_ASSIGN_OR_RETURN(client_, http::Client::Create(co));
    registry_ = std::make_unique<Registry>(options_, client_.get());
    http::ServerOptions so;
    so.host = options_.host;
    so.port = options_.port;
    so.io_threads = std::max(1, options_.io_threads);
    so.idle_timeout = std::chrono::minutes(10);
    KVF_ASSIGN_OR_RETURN(server_, http::Server::Create(so, [this](http::Request req, std::shared_ptr<http::Responder> r) {
                           Handle(std::move(req), std::move(r));
                         }));
    registry_->Start();
    KVF_LOG_INFO("proxy: listening on {}:{} ({} prefill, {} decode instances)", options_.host, server_->port(),
                 options_.prefill.size(), options_.decode.size());
    return Status::Ok();
  }

  uint16_t port() const override { return server_->port(); }
  bool ready() const override { return registry_->Ready(); }
  bool WaitReady(const Deadline& deadline) const override { return registry_->WaitReady(deadline); }

  void Stop() override {
    MutexLock l(stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    if (server_) server_->Stop();      // client connections close: their legs are cancelled
    if (registry_) registry_->Stop();  // no new health rounds
    client_.reset();                   // finishes every upstream call (their callbacks see the registry)
    registry_.reset();
  }

  std::string MetricsText() const override {
    std::string out;
    metrics_.Append(&out);
    registry_->AppendMetrics(&out);
    return out;
  }

 private:
  void Handle(http::Request req, std::shared_ptr<http::Responder> r) {
    if (req.path == "/v1/completions" || req.path == "/v1/chat/completions" || req.path == "/v1/responses") {
      if (req.method != "POST") {
        r->Respond(405, "application/json", ErrorJson(405, fmt::format("{} needs POST", req.path)), {{"Allow", "POST"}});
        return;
      }
      Dispatch(std::move(req), std::move(r));
      return;
    }
    if (req.method != "GET") {
      r->Respond(404, "application/json", ErrorJson(404, fmt::format("no route for {} {}", req.method, req.path)));
      return;
    }
    if (req.path == "/health") {
      std::string why = registry_->NotReadyReason();
      if (why.empty()) r->Respond(200, "application/json", R"({"status":"ok"})");
      else r->Respond(503, "application/json", ErrorJson(503, why));
    } else if (req.path == "/metrics") {
      r->Respond(200, "text/plain; version=0.0.4", MetricsText());
    } else if (req.path == "/v1/models") {
      Models(std::move(req), std::move(r));
    } else {
      r->Respond(404, "application/json", ErrorJson(404, fmt::format("no route for GET {}", req.path)));
    }
  }

  static void ForwardHeaders(const http::Request& req, std::vector<http::Header>* out) {
    if (const std::string* a = req.Find("authorization")) out->push_back({"Authorization", *a});
  }

  void Models(http::Request req, std::shared_ptr<http::Responder> r) {
    auto d = registry_->PickDecode();
    if (!d.ok()) {
      r->Respond(503, "application/json", ErrorJson(503, std::string(d.status().message())));
      return;
    }
    http::CallOptions o;
    o.timeout = std::chrono::seconds(30);
    ForwardHeaders(req, &o.headers);
    std::string url = (*d)->url + req.target;
    client_->Fetch(url, std::move(o), [r, url](StatusOr<http::Response> resp) {
      if (!resp.ok()) {
        int code = GatewayStatus(resp.status());
        r->Respond(code, "application/json", ErrorJson(code, fmt::format("GET {}: {}", url, resp.status().message())));
        return;
      }
      const std::string* ct = resp->Find("content-type");
      r->Respond(resp->status, ct ? *ct : "application/json", std::move(resp->body));
    });
  }

  void Dispatch(http::Request req, std::shared_ptr<http::Responder> r) {
    const auto received = Clock::now();
    metrics_.requests.fetch_add(1, std::memory_order_relaxed);
    auto fail = [&](int code, std::string_view msg) {
      metrics_.failed.fetch_add(1, std::memory_order_relaxed);
      r->Respond(code, "application/json", ErrorJson(code, msg));
    };
    if (!registry_->AllPrefillersKnown()) {
      fail(503, "the proxy is not ready: " + registry_->NotReadyReason());
      return;
    }
    auto p = registry_->PickPrefill();
    if (!p.ok()) return fail(503, p.status().message());
    auto d = registry_->PickDecode();
    if (!d.ok()) return fail(503, d.status().message());
    LegParams lp;
    lp.transfer_id = NewTransferId();
    lp.bootstrap_addr = p->instance->bootstrap_url;
    lp.engine_id = p->engine_id;
    lp.dp_rank = p->dp_rank;
    lp.responses = req.path == "/v1/responses";
    auto legs = RewriteRequest(req.body, lp);
    if (!legs.ok()) return fail(400, legs.status().message());

    const std::string* client_rid = req.Find("x-request-id");
    std::string rid = client_rid ? *client_rid : lp.transfer_id.substr(5);
    std::vector<http::Header> headers{{"X-Request-Id", rid}};
    ForwardHeaders(req, &headers);

    auto ex = std::make_shared<Exchange>(r, registry_.get(), &metrics_, p->instance, *d, rid, received);
    r->OnClientGone([w = std::weak_ptr<Exchange>(ex)] {
      if (auto e = w.lock()) e->ClientGone();
    });

    http::CallOptions po;
    po.method = "POST";
    po.body = std::move(legs->prefill_body);
    po.headers = headers;
    po.headers.push_back({"X-data-parallel-rank", std::to_string(p->dp_rank)});
    po.idle_timeout = options_.upstream_idle_timeout;
    http::CallHandlers ph;
    ph.on_headers = [ex](const http::Response& h) { ex->OnPrefillHeaders(h); };
    ph.on_body = [ex](std::string_view c) { ex->OnPrefillBody(c); };
    ph.on_done = [ex](const Status& st) { ex->OnPrefillDone(st); };

    http::CallOptions dopt;
    dopt.method = "POST";
    dopt.body = std::move(legs->decode_body);
    dopt.headers = std::move(headers);
    dopt.idle_timeout = options_.upstream_idle_timeout;
    const size_t limit = options_.max_pending_bytes;
    dopt.hold = [r, limit] { return r->PendingBytes() > limit; };
    http::CallHandlers dh;
    dh.on_headers = [ex](const http::Response& h) { ex->OnDecodeHeaders(h); };
    dh.on_body = [ex](std::string_view c) { ex->OnDecodeBody(c); };
    dh.on_done = [ex](const Status& st) { ex->OnDecodeDone(st); };

    p->instance->requests.fetch_add(1, std::memory_order_relaxed);
    (*d)->requests.fetch_add(1, std::memory_order_relaxed);
    auto pc = client_->Start(p->instance->url + req.path, std::move(po), std::move(ph));
    auto dc = client_->Start((*d)->url + req.path, std::move(dopt), std::move(dh));
    ex->SetCalls(std::move(pc), std::move(dc));
  }

  const ProxyOptions options_;
  std::unique_ptr<http::Client> client_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<http::Server> server_;
  mutable Metrics metrics_;
  Mutex stop_mu_;
  bool stopped_ KVF_GUARDED_BY(stop_mu_) = false;
};

}  // namespace

StatusOr<std::vector<PrefillInstance>> ParsePrefillArgs(const std::vector<std::string>& args) {
  std::vector<PrefillInstance> out;
  bool port_given = false;
  for (const std::string& a : args) {
    bool numeric = !a.empty() && a.find_first_not_of("0123456789") == std::string::npos;
    // "" is how CLI11 pads a `--prefill URL` that has no port.
    if (numeric || a == "none" || a.empty()) {
      if (out.empty() || port_given) {
        return InvalidArgumentError(fmt::format("--prefill: '{}' must follow a URL (--prefill URL [BOOTSTRAP_PORT])", a));
      }
      if (numeric) {
        unsigned port = 0;
        auto [ptr, ec] = std::from_chars(a.data(), a.data() + a.size(), port);
        if (ec != std::errc() || port == 0 || port > 65535) {
          return InvalidArgumentError(fmt::format("--prefill {}: bad bootstrap port '{}'", out.back().url, a));
        }
        out.back().bootstrap_port = static_cast<uint16_t>(port);
      }
      port_given = true;
      continue;
    }
    auto u = http::ParseUrl(a);
    if (!u.ok()) return InvalidArgumentError(fmt::format("--prefill: '{}' is not a URL: {}", a, u.status().message()));
    if (!a.starts_with("http://")) {
      return InvalidArgumentError(fmt::format("--prefill: '{}' is neither a URL (http://HOST:PORT) nor a port", a));
    }
    out.push_back(PrefillInstance{a, 8998});
    port_given = false;
  }
  return out;
}

StatusOr<std::unique_ptr<Proxy>> Proxy::Create(const ProxyOptions& options) {
  auto p = std::make_unique<ProxyImpl>(options);
  KVF_RETURN_IF_ERROR(p->Start());
  return std::unique_ptr<Proxy>(std::move(p));
}

}  // namespace kvferry::proxy
