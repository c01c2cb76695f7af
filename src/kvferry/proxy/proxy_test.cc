#include "kvferry/proxy/proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "kvferry/connector/connector.h"
#include "kvferry/http/http.h"
#include "kvferry/proxy/rewrite.h"

namespace kvferry::proxy {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;

struct Seen {
  std::string path;
  std::vector<http::Header> headers;
  json body;
  std::string Header(std::string_view n) const {
    const std::string* v = http::FindHeader(headers, n);
    return v ? *v : "<absent>";
  }
};

// A fake upstream on http::Server that records what it received. Requests it answers
// later run on their own threads, joined when the fake goes away.
class Fake {
 public:
  enum Mode { kAnswer, kHold, kStreamThenHold };
  explicit Fake(std::string name) : name_(std::move(name)) {
    http::ServerOptions o;
    o.host = "127.0.0.1";
    auto s = http::Server::Create(o, [this](http::Request req, std::shared_ptr<http::Responder> r) { Handle(req, r); });
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
  }
  virtual ~Fake() { Shutdown(); }
  void Shutdown() {
    if (server_) server_->Stop();
    std::vector<std::thread> ts;
    {
      MutexLock l(mu_);
      ts.swap(threads_);
      held_.clear();
    }
    for (auto& t : ts) t.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  std::vector<Seen> seen() {
    MutexLock l(mu_);
    return seen_;
  }
  size_t count() {
    MutexLock l(mu_);
    return seen_.size();
  }
  std::atomic<int> health{200};
  std::atomic<int> status{200};
  std::atomic<Mode> mode{kAnswer};
  std::atomic<int> gone{0};

 protected:
  virtual void Answer(const http::Request& req, std::shared_ptr<http::Responder> r) = 0;
  void Spawn(std::function<void()> f) {
    MutexLock l(mu_);
    threads_.emplace_back(std::move(f));
  }

 private:
  void Handle(const http::Request& req, std::shared_ptr<http::Responder> r) {
    if (req.path == "/health") {
      int h = health;
      r->Respond(h, "application/json", h == 200 ? "{}" : R"({"error":{"message":"not ready"}})");
      return;
    }
    {
      MutexLock l(mu_);
      Seen s{req.path, req.headers, json::parse(req.body, nullptr, false)};
      seen_.push_back(std::move(s));
    }
    r->OnClientGone([this] { gone++; });
    if (req.path == "/v1/models") {
      r->Respond(200, "application/json", R"({"object":"list","data":[{"id":")" + name_ + R"("}]})");
      return;
    }
    if (mode == kHold) {
      MutexLock l(mu_);
      held_.push_back(r);
      return;
    }
    Answer(req, r);
  }

 protected:
  std::string name_;
  std::unique_ptr<http::Server> server_;
  Mutex mu_;
  std::vector<Seen> seen_ KVF_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ KVF_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<http::Responder>> held_ KVF_GUARDED_BY(mu_);
};

// Prefiller: a 1-token completion; a bootstrap server on its own port.
class FakePrefill : public Fake {
 public:
  FakePrefill(std::string name, std::vector<std::pair<int64_t, std::string>> ranks, bool register_now = true)
      : Fake(std::move(name)), ranks_(std::move(ranks)) {
    auto b = connector::BootstrapServer::Start("127.0.0.1", 0);
    EXPECT_TRUE(b.ok());
    bootstrap_ = std::move(*b);
    if (register_now) Register();
  }
  ~FakePrefill() override {
    Shutdown();
    bootstrap_->Stop();
  }
  void Register() {
    for (auto& [dp, e] : ranks_) {
      connector::WorkerInfo w{e, dp, 0, 0, "tcp://127.0.0.1:1"};
      EXPECT_TRUE(bootstrap_->registry().Register(w).ok());
    }
  }
  uint16_t bootstrap_port() const { return bootstrap_->port(); }
  PrefillInstance instance() const { return PrefillInstance{url(), bootstrap_port()}; }

 protected:
  void Answer(const http::Request&, std::shared_ptr<http::Responder> r) override {
    std::function<bool()> when;
    {
      MutexLock l(mu_);
      when = answer_when_;
    }
    auto answer = [this, r] {
      int s = status;
      if (s != 200) {
        r->Respond(s, "application/json",
                   R"({"error":{"message":"prompt is too long","type":"BadRequestError","code":400}})");
        return;
      }
      r->Respond(200, "application/json", R"({"choices":[{"text":"x"}]})");
    };
    if (!when) return answer();
    Spawn([when, answer] {
      for (int i = 0; i < 1000 && !when(); ++i) std::this_thread::sleep_for(5ms);
      answer();
    });
  }

 public:
  // Answer only once `when` holds (bounded), e.g. after the decoder got its leg.
  void AnswerWhen(std::function<bool()> when) {
    MutexLock l(mu_);
    answer_when_ = std::move(when);
  }

 protected:
  std::function<bool()> answer_when_ KVF_GUARDED_BY(mu_);
  std::vector<std::pair<int64_t, std::string>> ranks_;
  std::unique_ptr<connector::BootstrapServer> bootstrap_;
};

std::string SseBody(const std::string& name, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += "data: {\"from\":\"" + name + "\",\"i\":" + std::to_string(i) + "}\n\n";
  return out + "data: [DONE]\n\n";
}

// Decoder: SSE for stream=true (chunks 2 ms apart), JSON otherwise.
class FakeDecode : public Fake {
 public:
  using Fake::Fake;
  int chunks = 5;

 protected:
  void Answer(const http::Request& req, std::shared_ptr<http::Responder> r) override {
    int s = status;
    if (s != 200) {
      r->Respond(s, "application/json", R"({"error":{"message":"decoder is overloaded","code":503}})");
      return;
    }
    json body = json::parse(req.body, nullptr, false);
    bool stream = body.is_object() && body.value("stream", false);
    if (!stream) {
      r->Respond(200, "application/json", R"({"from":")" + name_ + R"(","choices":[{"text":"hello"}]})");
      return;
    }
    Spawn([this, r] {
      r->BeginStream(200, "text/event-stream");
      std::string all = SseBody(name_, chunks);
      size_t pos = 0;
      bool first = true;
      while (pos < all.size()) {
        size_t next = all.find("\n\n", pos) + 2;
        if (!r->Write(all.substr(pos, next - pos))) return;
        pos = next;
        if (first && mode == kStreamThenHold) {
          for (int i = 0; i < 1000 && !r->ClientGone(); ++i) std::this_thread::sleep_for(5ms);
          return;
        }
        first = false;
        std::this_thread::sleep_for(2ms);
      }
      r->End();
    });
  }
};

struct Result {
  Status status;
  int code = 0;
  std::string content_type;
  std::string body;
  json Json() const { return json::parse(body, nullptr, false); }
};

Result Post(const std::string& url, const json& body, std::vector<http::Header> headers = {}) {
  http::FetchOptions o;
  o.method = "POST";
  o.body = body.dump();
  o.headers = std::move(headers);
  auto r = http::Fetch(url, o, Deadline::After(10s));
  Result out;
  out.status = r.status();
  if (r.ok()) {
    out.code = r->status;
    out.content_type = r->Find("content-type") ? *r->Find("content-type") : "";
    out.body = r->body;
  }
  return out;
}

ProxyOptions Options(std::vector<PrefillInstance> p, std::vector<std::string> d) {
  ProxyOptions o;
  o.prefill = std::move(p);
  o.decode = std::move(d);
  o.port = 0;
  o.health_interval = 30ms;
  o.health_timeout = 500ms;
  return o;
}

// Decoders join the rotation after their first health check, which a loaded machine may delay.
bool DecoderInRotation(const Proxy& p, const std::string& url) {
  const Deadline d = Deadline::After(std::chrono::seconds(10));
  const std::string want = "instance_healthy{role=\"decode\",instance=\"" + url + "\"} 1";
  while (!d.Expired()) {
    if (p.MetricsText().find(want) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::unique_ptr<Proxy> StartProxy(const ProxyOptions& o, bool wait = true) {
  auto p = Proxy::Create(o);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (wait) {
    EXPECT_TRUE((*p)->WaitReady(Deadline::After(10s)));
    for (const std::string& d : o.decode) EXPECT_TRUE(DecoderInRotation(**p, d)) << d;
  }
  return std::move(*p);
}

std::string Base(const Proxy& p) {
  return "http://127.0.0.1:" + std::to_string(p.port());
}

template <typename F>
bool Eventually(F f, Duration d = 5s) {
  Deadline dl = Deadline::After(d);
  while (!dl.Expired()) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

const json kChat = {{"model", "m"},     {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})},
                    {"max_tokens", 50}, {"max_completion_tokens", 40},
                    {"stream", true},   {"stream_options", {{"include_usage", true}}}};

TEST(ProxyTest, BothLegsCarryExactlyTheContractFields) {
  FakePrefill p("p", {{3, "engine-p3"}});
  FakeDecode d("d");
  auto proxy = StartProxy(Options({p.instance()}, {d.url()}));
  Result r =
      Post(Base(*proxy) + "/v1/chat/completions", kChat, {{"X-Request-Id", "rid-1"}, {"Authorization", "Bearer k"}});
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.code, 200);
  EXPECT_EQ(r.content_type, "text/event-stream");
  EXPECT_EQ(r.body, SseBody("d", 5));  // bytes preserved
  ASSERT_TRUE(Eventually([&] { return p.count() == 1; }));
  Seen ps = p.seen().at(0), ds = d.seen().at(0);
  EXPECT_EQ(ps.path, "/v1/chat/completions");
  EXPECT_EQ(ds.path, "/v1/chat/completions");
  // Prefill leg.
  EXPECT_EQ(ps.body["max_tokens"], 1);
  EXPECT_EQ(ps.body["max_completion_tokens"], 1);
  EXPECT_EQ(ps.body["stream"], false);
  EXPECT_FALSE(ps.body.contains("stream_options"));
  EXPECT_EQ(ps.body["messages"], kChat["messages"]);
  const json& pk = ps.body["kv_transfer_params"];
  EXPECT_EQ(pk.size(), 3u) << pk.dump();
  EXPECT_EQ(pk["do_remote_decode"], true);
  EXPECT_EQ(pk["do_remote_prefill"], false);
  EXPECT_EQ(ps.Header("X-data-parallel-rank"), "3");
  EXPECT_EQ(ps.Header("X-Request-Id"), "rid-1");
  EXPECT_EQ(ps.Header("Authorization"), "Bearer k");
  // Decode leg: the original body plus the params.
  json original = ds.body;
  original.erase("kv_transfer_params");
  EXPECT_EQ(original, kChat);
  const json& dk = ds.body["kv_transfer_params"];
  EXPECT_EQ(dk["do_remote_prefill"], true);
  EXPECT_EQ(dk["do_remote_decode"], false);
  EXPECT_EQ(dk["remote_bootstrap_addr"], "http://127.0.0.1:" + std::to_string(p.bootstrap_port()));
  EXPECT_EQ(dk["remote_engine_id"], "engine-p3");
  EXPECT_EQ(dk["remote_dp_rank"], 3);
  EXPECT_EQ(ds.Header("X-Request-Id"), "rid-1");
  EXPECT_EQ(ds.Header("Authorization"), "Bearer k");
  EXPECT_EQ(ds.Header("X-data-parallel-rank"), "<absent>");
  ASSERT_TRUE(pk["transfer_id"].is_string());
  std::string tid = pk["transfer_id"];
  EXPECT_EQ(dk["transfer_id"], tid);
  EXPECT_TRUE(
      std::regex_match(tid, std::regex("xfer-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")))
      << tid;

  // Non-streaming completion: JSON relayed; a fresh transfer_id; no max_completion_tokens added.
  json comp = {{"model", "m"}, {"prompt", "hello"}, {"max_tokens", 7}};
  Result c = Post(Base(*proxy) + "/v1/completions", comp);
  EXPECT_EQ(c.code, 200);
  EXPECT_EQ(c.content_type, "application/json");
  EXPECT_EQ(c.Json()["from"], "d");
  ASSERT_TRUE(Eventually([&] { return p.count() == 2; }));
  Seen p2 = p.seen().at(1);
  EXPECT_EQ(p2.path, "/v1/completions");
  EXPECT_FALSE(p2.body.contains("max_completion_tokens"));
  EXPECT_EQ(p2.body["max_tokens"], 1);
  EXPECT_NE(p2.body["kv_transfer_params"]["transfer_id"], tid);
  EXPECT_EQ(d.seen().at(1).body["max_tokens"], 7);
  EXPECT_EQ(Post(Base(*proxy) + "/v1/completions", "not an object").code, 400);

  // /v1/responses takes the same two legs; the prefill leg also caps max_output_tokens.
  json resp = {{"model", "m"}, {"input", "hello"}, {"max_output_tokens", 9}};
  Result rr = Post(Base(*proxy) + "/v1/responses", resp);
  EXPECT_EQ(rr.code, 200);
  ASSERT_TRUE(Eventually([&] { return p.count() == 3; }));
  Seen p3 = p.seen().at(2);
  EXPECT_EQ(p3.path, "/v1/responses");
  EXPECT_EQ(p3.body["max_output_tokens"], 1);
  EXPECT_EQ(p3.body["kv_transfer_params"]["do_remote_decode"], true);
  EXPECT_EQ(d.seen().at(2).path, "/v1/responses");
  EXPECT_EQ(d.seen().at(2).body["max_output_tokens"], 9);
  EXPECT_EQ(d.seen().at(2).body["kv_transfer_params"]["do_remote_prefill"], true);
}

TEST(ProxyTest, Answers503UntilEveryPrefillerIsKnown) {
  FakePrefill p("p", {{0, "e0"}}, /*register_now=*/false);
  p.health = 503;
  FakeDecode d("d");
  auto proxy = StartProxy(Options({p.instance()}, {d.url()}), /*wait=*/false);
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(proxy->ready());
  auto h = http::Fetch(Base(*proxy) + "/health", {}, Deadline::After(5s));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->status, 503);
  Result r = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
  EXPECT_EQ(r.code, 503);
  EXPECT_TRUE(r.Json()["error"]["message"].is_string()) << r.body;
  EXPECT_EQ(p.count(), 0u);
  EXPECT_EQ(d.count(), 0u);
  p.health = 200;  // healthy, but its bootstrap map is still empty
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(proxy->ready());
  p.Register();
  ASSERT_TRUE(proxy->WaitReady(Deadline::After(5s)));
  h = http::Fetch(Base(*proxy) + "/health", {}, Deadline::After(5s));
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}}).code, 200);
}

TEST(ProxyTest, RoundRobinOverPrefillRanksAndDecoders) {
  FakePrefill a("a", {{0, "a0"}});
  FakePrefill b("b", {{0, "b0"}, {1, "b1"}});
  FakeDecode d1("d1"), d2("d2");
  auto proxy = StartProxy(Options({a.instance(), b.instance()}, {d1.url(), d2.url()}));
  // Both decoders in rotation first (on a loaded machine a health check may still be running).
  ASSERT_TRUE(DecoderInRotation(*proxy, d1.url()));
  ASSERT_TRUE(DecoderInRotation(*proxy, d2.url()));
  std::map<std::string, int> engines;
  for (int i = 0; i < 6; ++i) {
    Result r = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
    ASSERT_EQ(r.code, 200) << r.body;
  }
  ASSERT_TRUE(Eventually([&] { return a.count() + b.count() == 6; }));
  EXPECT_EQ(a.count(), 2u);
  EXPECT_EQ(b.count(), 4u);
  EXPECT_EQ(d1.count(), 3u);
  EXPECT_EQ(d2.count(), 3u);
  for (auto* d : {&d1, &d2}) {
    for (const Seen& s : d->seen()) engines[s.body["kv_transfer_params"]["remote_engine_id"]]++;
  }
  EXPECT_EQ(engines, (std::map<std::string, int>{{"a0", 2}, {"b0", 2}, {"b1", 2}}));
  std::map<std::string, int> ranks;
  for (const Seen& s : b.seen()) ranks[s.Header("X-data-parallel-rank")]++;
  EXPECT_EQ(ranks, (std::map<std::string, int>{{"0", 2}, {"1", 2}}));
  std::string m = proxy->MetricsText();
  EXPECT_NE(m.find("kvferry_proxy_requests_total 6"), std::string::npos) << m;
  EXPECT_NE(m.find("kvferry_proxy_upstream_requests_total{role=\"decode\",instance=\"" + d1.url() + "\"} 3"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("kvferry_proxy_added_latency_seconds_count 6"), std::string::npos) << m;
}

TEST(ProxyTest, PrefillFailureIsReportedAndTheDecodeLegCancelled) {
  FakePrefill p("p", {{0, "e0"}});
  FakeDecode d("d");
  ProxyOptions o = Options({p.instance()}, {d.url()});
  o.health_interval = 1h;  // only the first round: the failures below are found by the legs
  auto proxy = StartProxy(o);
  p.status = 400;
  p.AnswerWhen([&] { return d.count() == 1; });
  d.mode = Fake::kHold;  // the decoder waits for KV that never comes
  Result r = Post(Base(*proxy) + "/v1/chat/completions", kChat);
  EXPECT_EQ(r.code, 400);
  EXPECT_EQ(r.content_type, "application/json");
  std::string msg = r.Json()["error"]["message"];
  EXPECT_NE(msg.find("prompt is too long"), std::string::npos) << msg;
  EXPECT_NE(msg.find("prefill"), std::string::npos) << msg;
  EXPECT_TRUE(Eventually([&] { return d.gone == 1; }));
  // An unreachable prefiller: 502, and it leaves the rotation.
  p.Shutdown();
  Result u = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
  EXPECT_EQ(u.code, 502) << u.body;
  EXPECT_TRUE(u.Json()["error"]["message"].is_string());
  EXPECT_TRUE(Eventually([&] { return static_cast<size_t>(d.gone) == d.count(); }));  // any leg it got was aborted
  Result n = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
  EXPECT_EQ(n.code, 503) << n.body;
}

TEST(ProxyTest, DecodeFailureIsReported) {
  FakePrefill p("p", {{0, "e0"}});
  FakeDecode d("d");
  auto proxy = StartProxy(Options({p.instance()}, {d.url()}));
  ASSERT_TRUE(DecoderInRotation(*proxy, d.url()));
  d.status = 503;
  Result r = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
  EXPECT_EQ(r.code, 503);
  std::string msg = r.Json()["error"]["message"];
  EXPECT_NE(msg.find("decoder is overloaded"), std::string::npos) << msg;
  d.Shutdown();
  // The decoder is gone. The failure above makes the proxy check the decoder's health, and
  // that check may already have taken it out of rotation (503, "no healthy decode instance");
  // otherwise the proxy tries it and reports the failed leg (502).
  Result u = Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}});
  EXPECT_TRUE(u.code == 502 || u.code == 503) << u.code << " " << u.body;
  EXPECT_NE(u.body.find("decode instance"), std::string::npos) << u.body;
  EXPECT_TRUE(Eventually([&] { return !proxy->ready(); }));
  std::string m = proxy->MetricsText();
  const std::string errors = u.code == 502 ? "2" : "1";
  EXPECT_NE(m.find("kvferry_proxy_upstream_errors_total{role=\"decode\",instance=\"" + d.url() + "\"} " + errors),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("kvferry_proxy_instance_healthy{role=\"decode\",instance=\"" + d.url() + "\"} 0"), std::string::npos)
      << m;
}

TEST(ProxyTest, ClientDisconnectAbortsBothLegs) {
  FakePrefill p("p", {{0, "e0"}});
  FakeDecode d("d");
  auto proxy = StartProxy(Options({p.instance()}, {d.url()}));
  p.mode = Fake::kHold;
  d.mode = Fake::kStreamThenHold;
  std::string got;
  auto r = http::FetchStream(
      Base(*proxy) + "/v1/chat/completions", http::FetchOptions{"POST", kChat.dump()}, nullptr,
      [&](std::string_view c) {
        got.append(c);
        return false;  // hang up after the first chunk
      },
      Deadline::After(10s));
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  EXPECT_NE(got.find("\"i\":0"), std::string::npos) << got;
  EXPECT_TRUE(Eventually([&] { return p.gone == 1 && d.gone == 1; }));
  EXPECT_TRUE(
      Eventually([&] { return proxy->MetricsText().find("kvferry_proxy_requests_in_flight 0") != std::string::npos; }));
}

TEST(ProxyTest, UnhealthyDecoderLeavesRotationAndComesBack) {
  FakePrefill p("p", {{0, "e0"}});
  FakeDecode d1("d1"), d2("d2");
  auto proxy = StartProxy(Options({p.instance()}, {d1.url(), d2.url()}));
  ASSERT_TRUE(Eventually([&] {
    return proxy->MetricsText().find("instance_healthy{role=\"decode\",instance=\"" + d2.url() + "\"} 1") !=
           std::string::npos;
  }));
  d2.health = 503;
  ASSERT_TRUE(Eventually([&] {
    return proxy->MetricsText().find("instance_healthy{role=\"decode\",instance=\"" + d2.url() + "\"} 0") !=
           std::string::npos;
  }));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}}).code, 200);
  EXPECT_EQ(d1.count(), 4u);
  EXPECT_EQ(d2.count(), 0u);
  d2.health = 200;
  ASSERT_TRUE(Eventually([&] {
    return proxy->MetricsText().find("instance_healthy{role=\"decode\",instance=\"" + d2.url() + "\"} 1") !=
           std::string::npos;
  }));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Post(Base(*proxy) + "/v1/completions", {{"prompt", "x"}}).code, 200);
  EXPECT_EQ(d1.count(), 6u);
  EXPECT_EQ(d2.count(), 2u);
  // /v1/models comes from a decoder.
  auto m = http::Fetch(Base(*proxy) + "/v1/models", {}, Deadline::After(5s));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->status, 200);
  EXPECT_NE(m->body.find("\"id\":\"d"), std::string::npos) << m->body;
}

TEST(ProxyTest, AnInstanceStillStartingJoinsWithoutWaitingAWholeHealthInterval) {
  FakePrefill p("p", {{0, "e0"}});
  FakeDecode d1("d1"), d2("d2");
  d2.health = 503;  // still loading
  ProxyOptions o = Options({p.instance()}, {d1.url(), d2.url()});
  o.health_interval = 1h;
  auto proxy = StartProxy(o, /*wait=*/false);
  ASSERT_TRUE(proxy->WaitReady(Deadline::After(10s)));  // the first round found p and d1
  const std::string up = "instance_healthy{role=\"decode\",instance=\"" + d2.url() + "\"} 1";
  EXPECT_EQ(proxy->MetricsText().find(up), std::string::npos);
  d2.health = 200;
  // Down instances are looked at again every 250 ms, not after the hour-long interval.
  EXPECT_TRUE(Eventually([&] { return proxy->MetricsText().find(up) != std::string::npos; }, 3s));
}

TEST(ProxyTest, TwoHundredConcurrentStreamsComplete) {
  FakePrefill p("p", {{0, "e0"}, {1, "e1"}});
  FakeDecode d1("d1"), d2("d2");
  d1.chunks = d2.chunks = 20;
  auto proxy = StartProxy(Options({p.instance()}, {d1.url(), d2.url()}));
  auto client = http::Client::Create({.io_threads = 2});
  ASSERT_TRUE(client.ok());
  constexpr int kN = 200;
  Mutex mu;
  CondVar cv;
  int done = 0, ok = 0;
  std::vector<std::string> bodies(kN);
  for (int i = 0; i < kN; ++i) {
    http::CallOptions o;
    o.method = "POST";
    o.body = kChat.dump();
    o.timeout = 30s;
    http::CallHandlers h;
    h.on_body = [&bodies, i](std::string_view c) { bodies[i].append(c); };
    h.on_done = [&, i](const Status& st) {
      MutexLock l(mu);
      ++done;
      if (st.ok() && (bodies[i] == SseBody("d1", 20) || bodies[i] == SseBody("d2", 20))) ++ok;
      cv.NotifyAll();
    };
    (*client)->Start(Base(*proxy) + "/v1/chat/completions", o, h);
  }
  {
    MutexLock l(mu);
    Deadline dl = Deadline::After(30s);
    while (done < kN && !dl.Expired()) cv.WaitUntil(mu, dl);
    EXPECT_EQ(done, kN);
    EXPECT_EQ(ok, kN);
  }
  EXPECT_EQ(d1.count() + d2.count(), static_cast<size_t>(kN));
  EXPECT_TRUE(Eventually([&] { return p.count() == kN; }));
}

// A decoder that streams `total` bytes as fast as it can and reports what it could not
// hand to the socket yet.
class FloodDecode : public Fake {
 public:
  using Fake::Fake;
  std::atomic<size_t> pending{0};
  std::atomic<size_t> queued{0};
  static constexpr size_t kTotal = 96u << 20;

 protected:
  void Answer(const http::Request&, std::shared_ptr<http::Responder> r) override {
    Spawn([this, r] {
      r->BeginStream(200, "text/event-stream");
      std::string chunk = "data: " + std::string(64 * 1024 - 8, 'x') + "\n\n";
      for (size_t sent = 0; sent < kTotal && !r->ClientGone(); sent += chunk.size()) {
        r->Write(chunk);
        queued = sent + chunk.size();
      }
      // Until the proxy hangs up (bounded: 30 s), so a slow build (TSan) still sees it go.
      for (int i = 0; i < 6000 && !r->ClientGone(); ++i) {
        pending = r->PendingBytes();
        std::this_thread::sleep_for(5ms);
      }
    });
  }
};

TEST(ProxyTest, ASlowClientStopsTheProxyReadingInsteadOfBuffering) {
  FakePrefill p("p", {{0, "e0"}});
  FloodDecode d("d");
  auto proxy = StartProxy(Options({p.instance()}, {d.url()}));
  // A client that sends its request and never reads.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(proxy->port());
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  std::string body = kChat.dump();
  std::string req =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  // Everything is queued at the decoder; the proxy holds only socket buffers and its
  // 256 KiB allowance, so most of the 96 MiB must still be waiting at the decoder.
  // Queuing 96 MiB takes ~10 s under TSan on 2 cores (its shadow memory faults in): bounds are wide.
  EXPECT_TRUE(Eventually([&] { return d.queued == FloodDecode::kTotal && d.pending > 0; }, 60s));
  std::this_thread::sleep_for(300ms);
  EXPECT_GT(d.pending.load(), FloodDecode::kTotal / 2)
      << "the proxy read " << (FloodDecode::kTotal - d.pending) << " bytes";
  close(fd);
  EXPECT_TRUE(Eventually([&] { return d.gone == 1; }, 25s));
}

TEST(ProxyTest, PrefillArgsTakeAnOptionalPort) {
  auto r = ParsePrefillArgs({"http://a:8010", "http://b:8011", "9000", "http://c:8012", "none"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].url, "http://a:8010");
  EXPECT_EQ((*r)[0].bootstrap_port, 8998);
  EXPECT_EQ((*r)[1].url, "http://b:8011");
  EXPECT_EQ((*r)[1].bootstrap_port, 9000);
  EXPECT_EQ((*r)[2].bootstrap_port, 8998);
  EXPECT_FALSE(ParsePrefillArgs({"9000"}).ok());
  EXPECT_FALSE(ParsePrefillArgs({"http://a:1", "1", "2"}).ok());
  EXPECT_FALSE(ParsePrefillArgs({"http://a:1", "70000"}).ok());
  EXPECT_FALSE(ParsePrefillArgs({"https://a:1"}).ok());
  EXPECT_FALSE(Proxy::Create(ProxyOptions{}).ok());
}

TEST(ProxyTest, TransferIdsAreFreshUuid4) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.insert(NewTransferId());
  EXPECT_EQ(ids.size(), 1000u);
  EXPECT_EQ(ErrorJson(503, "x"),
            R"({"error":{"code":503,"message":"x","param":null,"type":"ServiceUnavailableError"}})");
}

}  // namespace
}  // namespace kvferry::proxy
