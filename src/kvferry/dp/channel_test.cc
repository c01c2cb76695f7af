// RankServer and RankHost in one process over loopback, with fake engines: joining, requests
// and their outputs across the channel, aborts, a rank that leaves and rejoins, refusals.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

#include "kvferry/dp/dp.h"

namespace kvferry::dp {
namespace {

// Emits one token per active request every millisecond on its own thread, then finishes with
// kLength at max_tokens; Abort finishes with kAbort.
class FakeEngine final : public engine::Engine {
 public:
  explicit FakeEngine(int64_t vocab = 100) {
    config_.vocab_size = vocab;
    thread_ = std::thread([this] { Run(); });
  }
  ~FakeEngine() override { Shutdown(Deadline::After(std::chrono::seconds(1))); }

  Status Add(engine::RequestSpec spec, engine::OutputCallback cb) override {
    MutexLock l(mu_);
    if (active_.count(spec.id) != 0) return AlreadyExistsError("dup");
    active_[spec.id] = Req{std::move(cb), spec.sampling.max_tokens, 0, false};
    return Status::Ok();
  }
  void Abort(const std::string& id) override {
    MutexLock l(mu_);
    if (auto it = active_.find(id); it != active_.end()) it->second.aborted = true;
  }
  void FinishRemoteKv(const std::string&, Status, bool) override {}
  void ReleaseHeldBlocks(const std::string&) override {}
  void Shutdown(const Deadline&) override {
    {
      MutexLock l(mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }
  engine::EngineStats GetStats() const override {
    MutexLock l(mu_);
    engine::EngineStats s;
    s.num_running = static_cast<int>(active_.size());
    s.blocks_total = 64;
    s.blocks_used = static_cast<int64_t>(active_.size());
    return s;
  }
  const model::ModelConfig& model_config() const override { return config_; }
  int64_t max_model_len() const override { return 1000; }
  void* kv_base() const override { return nullptr; }
  size_t kv_size_bytes() const override { return 64 * 1024; }
  size_t kv_bytes_per_block() const override { return 1024; }
  int64_t block_size() const override { return 16; }
  size_t active() const {
    MutexLock l(mu_);
    return active_.size();
  }

 private:
  struct Req {
    engine::OutputCallback cb;
    int max_tokens;
    int emitted;
    bool aborted;
  };
  void Run() {
    while (true) {
      std::vector<std::pair<engine::OutputCallback, engine::Output>> outs;
      {
        MutexLock l(mu_);
        if (stop_) return;
        for (auto it = active_.begin(); it != active_.end();) {
          Req& r = it->second;
          engine::Output o;
          o.request_id = it->first;
          if (r.aborted) {
            o.finished = true;
            o.finish_reason = engine::FinishReason::kAbort;
          } else {
            o.new_tokens = {r.emitted % 100};
            ++r.emitted;
            o.finished = r.emitted >= r.max_tokens;
            if (o.finished) o.finish_reason = engine::FinishReason::kLength;
          }
          outs.emplace_back(r.cb, std::move(o));
          it = outs.back().second.finished ? active_.erase(it) : std::next(it);
        }
      }
      for (auto& [cb, o] : outs) cb(o);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  model::ModelConfig config_;
  mutable Mutex mu_;
  bool stop_ KVF_GUARDED_BY(mu_) = false;
  std::map<std::string, Req> active_ KVF_GUARDED_BY(mu_);
  std::thread thread_;
};

// Collects one request's outputs.
struct Sink {
  Mutex mu;
  CondVar cv;
  std::vector<int32_t> tokens KVF_GUARDED_BY(mu);
  std::optional<engine::Output> last KVF_GUARDED_BY(mu);
  engine::OutputCallback Callback() {
    return [this](const engine::Output& o) {
      MutexLock l(mu);
      tokens.insert(tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      if (o.finished) last = o;
      cv.NotifyAll();
    };
  }
  std::optional<engine::Output> WaitFinished(Duration d = std::chrono::seconds(10)) {
    const Deadline dl = Deadline::After(d);
    MutexLock l(mu);
    while (!last && !dl.Expired()) cv.WaitUntil(mu, dl);
    return last;
  }
  size_t NumTokens() {
    MutexLock l(mu);
    return tokens.size();
  }
};

bool WaitFor(const std::function<bool()>& f, Duration d = std::chrono::seconds(10)) {
  const Deadline dl = Deadline::After(d);
  while (!dl.Expired()) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

engine::RequestSpec Spec(const std::string& id, int max_tokens) {
  engine::RequestSpec s;
  s.id = id;
  s.prompt = {1, 2, 3};
  s.sampling.max_tokens = max_tokens;
  return s;
}

class Channel : public ::testing::Test {
 protected:
  void SetUp() override {
    RankServerOptions so;
    so.bind_host = "127.0.0.1";
    so.port = 0;
    so.dp_size = 2;
    so.first_remote_rank = 1;
    so.model_engine = &local_;
    so.idle_timeout = std::chrono::seconds(2);
    so.ping_interval = std::chrono::milliseconds(200);
    auto s = RankServer::Start(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
  }
  std::unique_ptr<RankHost> Join(engine::Engine* e, int rank = 1) {
    RankHostOptions ho;
    ho.master_host = "127.0.0.1";
    ho.master_port = server_->port();
    ho.ranks.push_back({rank, e, nullptr});
    ho.instance = "test-host";
    ho.stats_interval = std::chrono::milliseconds(20);
    ho.ping_interval = std::chrono::milliseconds(200);
    ho.idle_timeout = std::chrono::seconds(2);
    auto h = RankHost::Start(ho);
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    return h.ok() ? std::move(*h) : nullptr;
  }

  FakeEngine local_;
  std::unique_ptr<RankServer> server_;
};

TEST_F(Channel, NotJoinedRankRefusesRequests) {
  EXPECT_EQ(server_->RankUp(1).code(), StatusCode::kUnavailable);
  Sink sink;
  Status st = server_->engine(1)->Add(Spec("a", 3), sink.Callback());
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("data-parallel rank 1"), std::string::npos) << st.ToString();
  EXPECT_EQ(server_->engine(0), nullptr);     // rank 0 is local, not the server's
  EXPECT_EQ(server_->connector(1), nullptr);  // colocated: no connector stand-in
}

TEST_F(Channel, RequestsRunOnTheHeadlessRankAndStatsComeBack) {
  FakeEngine remote;
  auto host = Join(&remote);
  ASSERT_TRUE(WaitFor([&] { return server_->RankUp(1).ok(); })) << server_->RankUp(1).ToString();
  EXPECT_TRUE(WaitFor([&] { return host->joined(); }));  // the welcome may still be on its way
  Sink a, b, held;
  ASSERT_TRUE(server_->engine(1)->Add(Spec("a", 5), a.Callback()).ok());
  ASSERT_TRUE(server_->engine(1)->Add(Spec("b", 7), b.Callback()).ok());
  // A duplicate id is refused while its request runs. "held" cannot finish on its own before the
  // second Add (a 5-token request can, under a sanitizer), so the check does not race the engine.
  ASSERT_TRUE(server_->engine(1)->Add(Spec("held", 1000000), held.Callback()).ok());
  EXPECT_EQ(server_->engine(1)->Add(Spec("held", 5), held.Callback()).code(), StatusCode::kAlreadyExists);
  server_->engine(1)->Abort("held");
  auto fa = a.WaitFinished(), fb = b.WaitFinished(), fh = held.WaitFinished();
  ASSERT_TRUE(fa && fb && fh);
  EXPECT_EQ(fh->finish_reason, engine::FinishReason::kAbort);
  EXPECT_EQ(fa->finish_reason, engine::FinishReason::kLength);
  EXPECT_EQ(a.NumTokens(), 5u);
  EXPECT_EQ(b.NumTokens(), 7u);
  EXPECT_EQ(server_->engine(1)->model_config().vocab_size, 100);
  EXPECT_TRUE(WaitFor([&] { return server_->engine(1)->GetStats().blocks_total == 64; }));
  EXPECT_TRUE(WaitFor([&] { return server_->engine(1)->GetStats().num_running == 0; }));
}

TEST_F(Channel, AbortCrossesTheChannel) {
  FakeEngine remote;
  auto host = Join(&remote);
  ASSERT_TRUE(WaitFor([&] { return server_->RankUp(1).ok(); }));
  Sink s;
  ASSERT_TRUE(server_->engine(1)->Add(Spec("long", 1000000), s.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] { return s.NumTokens() >= 3; }));
  server_->engine(1)->Abort("long");
  auto f = s.WaitFinished();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->finish_reason, engine::FinishReason::kAbort);
  EXPECT_TRUE(WaitFor([&] { return remote.active() == 0; }));
}

TEST_F(Channel, ARankThatLeavesFailsItsRequestsAndRejoins) {
  FakeEngine remote;
  auto host = Join(&remote);
  ASSERT_TRUE(WaitFor([&] { return server_->RankUp(1).ok(); }));
  Sink s;
  ASSERT_TRUE(server_->engine(1)->Add(Spec("long", 1000000), s.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] { return s.NumTokens() >= 3; }));
  host->Stop();  // the instance goes away mid-request
  auto f = s.WaitFinished();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->finish_reason, engine::FinishReason::kError);
  EXPECT_EQ(f->error.code(), StatusCode::kUnavailable);
  EXPECT_NE(f->error.message().find("data-parallel rank 1"), std::string::npos) << f->error.ToString();
  EXPECT_TRUE(WaitFor([&] { return remote.active() == 0; }));  // the headless side aborted it
  EXPECT_FALSE(server_->RankUp(1).ok());
  EXPECT_EQ(server_->engine(1)->GetStats().num_running, 0);
  host.reset();

  auto again = Join(&remote);
  ASSERT_TRUE(WaitFor([&] { return server_->RankUp(1).ok(); }));
  Sink s2;
  ASSERT_TRUE(server_->engine(1)->Add(Spec("after", 4), s2.Callback()).ok());
  auto f2 = s2.WaitFinished();
  ASSERT_TRUE(f2);
  EXPECT_EQ(f2->finish_reason, engine::FinishReason::kLength);
}

TEST_F(Channel, WrongRankOrModelIsRefusedForGood) {
  FakeEngine remote;
  auto host = Join(&remote, /*rank=*/2);
  ASSERT_TRUE(WaitFor([&] { return !host->fatal().ok(); }));
  EXPECT_NE(host->fatal().message().find("rank 2 is not a headless rank"), std::string::npos)
      << host->fatal().ToString();
  FakeEngine other(/*vocab=*/50);
  auto host2 = Join(&other);
  ASSERT_TRUE(WaitFor([&] { return !host2->fatal().ok(); }));
  EXPECT_NE(host2->fatal().message().find("another model"), std::string::npos) << host2->fatal().ToString();
  EXPECT_FALSE(server_->RankUp(1).ok());
}

TEST_F(Channel, MasterStopFailsRequestsAndHostWaitsToRejoin) {
  FakeEngine remote;
  auto host = Join(&remote);
  ASSERT_TRUE(WaitFor([&] { return server_->RankUp(1).ok(); }));
  Sink s;
  ASSERT_TRUE(server_->engine(1)->Add(Spec("long", 1000000), s.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] { return s.NumTokens() >= 1; }));
  server_->Stop();
  auto f = s.WaitFinished();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->finish_reason, engine::FinishReason::kError);
  EXPECT_TRUE(WaitFor([&] { return !host->joined(); }));
  EXPECT_TRUE(WaitFor([&] { return remote.active() == 0; }));
  EXPECT_TRUE(host->fatal().ok());  // it keeps trying
}

}  // namespace
}  // namespace kvferry::dp
