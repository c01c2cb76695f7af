// Connector hooks inside one process: a producer engine holds a prompt's KV blocks, the test
// copies their bytes into a consumer engine's blocks (the connector's job), and the consumer
// decodes. Greedy output must equal a colocated run token for token.

#include <gtest/gtest.h>

#include <cstring>
#include <ctime>
#include <thread>

#include "kvferry/engine/engine.h"
#include "kvferry/engine/engine_test_util.h"

namespace kvferry::engine {
namespace {

using testing::Collector;
using testing::Greedy;
using testing::RandomPrompt;
using testing::ReferenceGreedy;
using testing::Result;
using testing::RunOne;
using testing::TinyOptions;

// Records the connector hooks' calls.
class HookRecorder {
 public:
  struct Need {
    std::vector<int32_t> blocks;
    int num_local_cached_tokens = -1;
  };
  ConnectorHooks Hooks() {
    ConnectorHooks h;
    h.on_remote_kv_needed = [this](const std::string& id, std::span<const int32_t> blocks, int cached) {
      MutexLock l(mu_);
      needs_[id] = {std::vector<int32_t>(blocks.begin(), blocks.end()), cached};
      cv_.NotifyAll();
    };
    h.on_remote_kv_aborted = [this](const std::string& id) {
      MutexLock l(mu_);
      aborted_.push_back(id);
      cv_.NotifyAll();
      return write_in_flight_;
    };
    return h;
  }
  bool WaitNeed(const std::string& id, Need* need) {
    const Deadline d = Deadline::After(std::chrono::seconds(60));
    MutexLock l(mu_);
    while (needs_.count(id) == 0) {
      if (!cv_.WaitUntil(mu_, d) && d.Expired()) return false;
    }
    *need = needs_[id];
    return true;
  }
  std::vector<std::string> aborted() {
    MutexLock l(mu_);
    return aborted_;
  }
  // What the abort hook answers: "a write into the blocks may still be in flight".
  void set_write_in_flight(bool v) {
    MutexLock l(mu_);
    write_in_flight_ = v;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  std::map<std::string, Need> needs_ KVF_GUARDED_BY(mu_);
  std::vector<std::string> aborted_ KVF_GUARDED_BY(mu_);
  bool write_in_flight_ KVF_GUARDED_BY(mu_) = false;
};

class ConnectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = Engine::Create(TinyOptions());
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    producer_ = std::move(*p);
    EngineOptions co = TinyOptions();
    co.hooks = hooks_.Hooks();
    co.max_waiting = 2;
    auto c = Engine::Create(co);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    consumer_ = std::move(*c);
    ASSERT_EQ(producer_->kv_bytes_per_block(), consumer_->kv_bytes_per_block());
  }

  // Producer side: prefill with max_tokens 1 and hold the blocks.
  Result Produce(const std::string& id, const std::vector<int32_t>& prompt) {
    RequestSpec s = Greedy(id, prompt, 1);
    s.kv_role = KvRole::kHoldForRemote;
    return RunOne(*producer_, s);
  }

  // The connector's job: copy the blocks the consumer does not have.
  void CopyKv(const std::vector<int32_t>& src, const HookRecorder::Need& need) {
    const size_t bpb = producer_->kv_bytes_per_block();
    ASSERT_EQ(src.size(), need.blocks.size());
    for (size_t i = need.num_local_cached_tokens / consumer_->block_size(); i < src.size(); ++i) {
      std::memcpy(static_cast<char*>(consumer_->kv_base()) + need.blocks[i] * bpb,
                  static_cast<const char*>(producer_->kv_base()) + src[i] * bpb, bpb);
    }
  }

  RequestSpec Consume(const std::string& id, const std::vector<int32_t>& prompt, int max_tokens) {
    RequestSpec s = Greedy(id, prompt, max_tokens);
    s.kv_role = KvRole::kLoadRemote;
    return s;
  }

  HookRecorder hooks_;
  std::unique_ptr<Engine> producer_, consumer_;
};

TEST_F(ConnectorTest, HoldThenLoadEqualsColocated) {
  const auto prompt = RandomPrompt(45, 21);
  const auto colocated = ReferenceGreedy(prompt, 10);

  const Result p = Produce("req", prompt);
  ASSERT_TRUE(p.finished);
  EXPECT_EQ(p.reason, FinishReason::kLength);
  ASSERT_EQ(p.tokens.size(), 1u);
  EXPECT_EQ(p.tokens[0], colocated[0]);
  ASSERT_EQ(p.held_blocks.size(), 3u);  // ceil(45 / 16)
  EXPECT_EQ(producer_->GetStats().blocks_held, 3);
  EXPECT_EQ(producer_->GetStats().blocks_used, 3);
  // The id stays reserved while its blocks are held.
  EXPECT_EQ(producer_->Add(Greedy("req", prompt, 1), [](const Output&) {}).code(),
            StatusCode::kAlreadyExists);

  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 10), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  EXPECT_EQ(need.num_local_cached_tokens, 0);
  ASSERT_EQ(need.blocks.size(), 3u);
  EXPECT_TRUE(testing::WaitStats(*consumer_, [](const EngineStats& s) { return s.num_waiting_remote == 1; }));
  CopyKv(p.held_blocks, need);
  consumer_->FinishRemoteKv("req", Status::Ok(), false);
  ASSERT_TRUE(c.WaitFinished("req"));
  const Result d = c.Get("req");
  EXPECT_EQ(d.tokens, colocated);
  EXPECT_EQ(d.num_cached_tokens, 44);
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);

  producer_->ReleaseHeldBlocks("req");
  ASSERT_TRUE(testing::WaitStats(*producer_, [](const EngineStats& s) { return s.blocks_used == 0; }));
  EXPECT_EQ(producer_->GetStats().blocks_held, 0);
  producer_->ReleaseHeldBlocks("req");  // no-op
}

TEST_F(ConnectorTest, ReleaseBeforeFinishFreesAtFinish) {
  RequestSpec s = Greedy("early", RandomPrompt(40, 30), 3);
  s.kv_role = KvRole::kHoldForRemote;
  Collector c;
  OutputCallback collect = c.Callback();
  // From the first Output's callback (on the scheduler thread): the release is applied before
  // the next step, while two tokens are still to come.
  Engine* producer = producer_.get();
  ASSERT_TRUE(producer_->Add(s, [collect, producer](const Output& o) {
    if (!o.finished && o.new_tokens.size() == 1) producer->ReleaseHeldBlocks(o.request_id);
    collect(o);
  }).ok());
  ASSERT_TRUE(c.WaitFinished("early"));
  EXPECT_EQ(c.Get("early").reason, FinishReason::kLength);
  EXPECT_TRUE(c.Get("early").held_blocks.empty());
  const EngineStats st = producer_->GetStats();
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.blocks_held, 0);
}

TEST_F(ConnectorTest, AbortedHoldRequestHoldsNothing) {
  RequestSpec s = Greedy("ab", RandomPrompt(40, 31), 3000);
  s.kv_role = KvRole::kHoldForRemote;
  Collector c;
  OutputCallback collect = c.Callback();
  Engine* producer = producer_.get();
  ASSERT_TRUE(producer_->Add(s, [collect, producer](const Output& o) {
    producer->Abort(o.request_id);  // from the first Output on: applied before the next step
    collect(o);
  }).ok());
  ASSERT_TRUE(c.WaitFinished("ab"));
  EXPECT_EQ(c.Get("ab").reason, FinishReason::kAbort);
  EXPECT_TRUE(c.Get("ab").held_blocks.empty());
  EXPECT_EQ(producer_->GetStats().blocks_used, 0);
}

// Held blocks can leave a waiting request without room: the scheduler must sleep (no spinning)
// until ReleaseHeldBlocks, then run it.
TEST(ConnectorBlocksTest, WaitingForHeldBlocksSleepsThenRuns) {
  EngineOptions o = TinyOptions();
  o.num_kv_blocks = 4;
  auto created = Engine::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Engine& e = **created;
  RequestSpec hold = Greedy("hold", RandomPrompt(40, 40), 1);
  hold.kv_role = KvRole::kHoldForRemote;
  const Result h = RunOne(e, hold);
  ASSERT_EQ(h.held_blocks.size(), 3u);

  Collector c;
  const auto prompt = RandomPrompt(40, 41);  // needs 3 blocks, 1 is free
  ASSERT_TRUE(e.Add(Greedy("next", prompt, 5), c.Callback()).ok());
  ASSERT_TRUE(testing::WaitStats(e, [](const EngineStats& s) { return s.num_waiting == 1; }));
  const uint64_t steps = e.GetStats().steps_total;
  const std::clock_t cpu0 = std::clock();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double cpu_s = double(std::clock() - cpu0) / CLOCKS_PER_SEC;
  EXPECT_LT(cpu_s, 0.1) << "the idle scheduler burns CPU";
  EXPECT_EQ(e.GetStats().steps_total, steps);
  EXPECT_FALSE(c.Get("next").finished);

  e.ReleaseHeldBlocks("hold");
  ASSERT_TRUE(c.WaitFinished("next"));
  EXPECT_EQ(c.Get("next").tokens, ReferenceGreedy(prompt, 5));
}

// Without the copy the consumer decodes from empty KV and the output differs: the test above
// really depends on the transferred bytes.
TEST_F(ConnectorTest, LoadWithoutTheBytesDiffers) {
  const auto prompt = RandomPrompt(45, 21);
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 10), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  consumer_->FinishRemoteKv("req", Status::Ok(), false);
  ASSERT_TRUE(c.WaitFinished("req"));
  EXPECT_NE(c.Get("req").tokens, ReferenceGreedy(prompt, 10));
}

TEST_F(ConnectorTest, LocalPrefixHitIsNotFetched) {
  const auto prompt = RandomPrompt(45, 22);
  const auto colocated = ReferenceGreedy(prompt, 8);
  // Warm the consumer's prefix cache with the first 32 tokens (+ one more so they are computed).
  std::vector<int32_t> head(prompt.begin(), prompt.begin() + 33);
  ASSERT_TRUE(RunOne(*consumer_, Greedy("warm", head, 1)).finished);

  const Result p = Produce("req", prompt);
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 8), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  EXPECT_EQ(need.num_local_cached_tokens, 32);
  CopyKv(p.held_blocks, need);  // the last block only
  consumer_->FinishRemoteKv("req", Status::Ok(), false);
  ASSERT_TRUE(c.WaitFinished("req"));
  EXPECT_EQ(c.Get("req").tokens, colocated);
  producer_->ReleaseHeldBlocks("req");
}

TEST_F(ConnectorTest, FailureWithRecomputeRunsThePrefillLocally) {
  const auto prompt = RandomPrompt(40, 23);
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 8), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  consumer_->FinishRemoteKv("req", UnavailableError("peer gone"), /*recompute=*/true);
  ASSERT_TRUE(c.WaitFinished("req"));
  const Result r = c.Get("req");
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 8));
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);
}

TEST_F(ConnectorTest, FailureWithoutRecomputeIsAnError) {
  const auto prompt = RandomPrompt(40, 24);
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 8), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  EXPECT_TRUE(testing::WaitStats(*consumer_, [](const EngineStats& s) { return s.blocks_used > 0; }));
  consumer_->FinishRemoteKv("req", UnavailableError("peer gone"), /*recompute=*/false);
  ASSERT_TRUE(c.WaitFinished("req"));
  const Result r = c.Get("req");
  EXPECT_EQ(r.reason, FinishReason::kError);
  EXPECT_EQ(r.error.code(), StatusCode::kUnavailable);
  EXPECT_NE(r.error.message().find("peer gone"), std::string::npos);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);
}

TEST_F(ConnectorTest, AbortParkedCallsHookAndFrees) {
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("req", RandomPrompt(30, 25), 8), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  consumer_->Abort("req");
  ASSERT_TRUE(c.WaitFinished("req"));
  EXPECT_EQ(c.Get("req").reason, FinishReason::kAbort);
  EXPECT_EQ(hooks_.aborted(), std::vector<std::string>{"req"});
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);
  consumer_->FinishRemoteKv("req", Status::Ok(), false);  // late: ignored
}

TEST_F(ConnectorTest, AbortDuringAWriteKeepsTheBlocksUntilReleased) {
  hooks_.set_write_in_flight(true);
  Collector c;
  const auto prompt = RandomPrompt(40, 28);
  ASSERT_TRUE(consumer_->Add(Consume("req", prompt, 8), c.Callback()).ok());
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("req", &need));
  consumer_->Abort("req");
  ASSERT_TRUE(c.WaitFinished("req"));
  EXPECT_EQ(c.Get("req").reason, FinishReason::kAbort);
  // The peer may still write into them: nobody else may get these blocks yet.
  EngineStats s = consumer_->GetStats();
  EXPECT_EQ(s.blocks_used, static_cast<int64_t>(need.blocks.size()));
  EXPECT_EQ(s.blocks_held, static_cast<int64_t>(need.blocks.size()));
  // The id stays in use until the release.
  EXPECT_EQ(consumer_->Add(Consume("req", prompt, 8), c.Callback()).code(), StatusCode::kAlreadyExists);
  consumer_->ReleaseHeldBlocks("req");
  const Deadline d = Deadline::After(std::chrono::seconds(10));
  while (consumer_->GetStats().blocks_used != 0 && !d.Expired()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);
  EXPECT_EQ(consumer_->GetStats().blocks_held, 0);
}

TEST_F(ConnectorTest, ParkedRequestsDoNotHoldUpOthersAndCountAsWaiting) {
  Collector c;
  ASSERT_TRUE(consumer_->Add(Consume("r1", RandomPrompt(30, 26), 4), c.Callback()).ok());
  ASSERT_TRUE(consumer_->Add(Consume("r2", RandomPrompt(30, 27), 4), c.Callback()).ok());
  // max_waiting = 2: the queue is full of parked requests.
  Status st = consumer_->Add(Greedy("r3", RandomPrompt(10, 1), 4), c.Callback());
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  HookRecorder::Need need;
  ASSERT_TRUE(hooks_.WaitNeed("r1", &need));
  ASSERT_TRUE(hooks_.WaitNeed("r2", &need));
  consumer_->FinishRemoteKv("r2", UnavailableError("x"), true);
  ASSERT_TRUE(c.WaitFinished("r2"));  // r1 still parked
  EXPECT_TRUE(testing::WaitStats(*consumer_, [](const EngineStats& s) { return s.num_waiting_remote == 1; }));
  // A local request runs past the parked one.
  const auto prompt = RandomPrompt(12, 2);
  const Result local = RunOne(*consumer_, Greedy("local", prompt, 5));
  EXPECT_EQ(local.tokens, ReferenceGreedy(prompt, 5));
  consumer_->Abort("r1");
  ASSERT_TRUE(c.WaitFinished("r1"));
  EXPECT_EQ(consumer_->GetStats().blocks_used, 0);
}

}  // namespace
}  // namespace kvferry::engine
