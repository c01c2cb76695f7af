// The engine with the real tiny model: continuous batching, chunked prefill, prefix caching and
// preemption must not change greedy output, which must equal a plain loop of Model::Forward.

#include <gtest/gtest.h>

#include <random>
#include <set>
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

// (Not "r" + std::to_string(i): g++ 12 warns -Wrestrict on it, a known false positive.)
std::string Id(const char* prefix, size_t i) { return std::string(prefix).append(std::to_string(i)); }

std::unique_ptr<Engine> MakeEngine(EngineOptions o = TinyOptions()) {
  auto e = Engine::Create(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

TEST(EngineTest, GreedyAloneEqualsReferenceLoop) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const auto prompt = RandomPrompt(37, 1);
  const Result r = RunOne(*engine, Greedy("a", prompt, 12));
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.num_outputs, 12);
  EXPECT_EQ(r.outputs_after_finish, 0);
  EXPECT_EQ(r.num_prompt_tokens, 37);
  EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 12));
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.requests_finished_total, 1u);
  EXPECT_EQ(s.prompt_tokens_total, 37u);
  EXPECT_EQ(s.generation_tokens_total, 12u);
  EXPECT_EQ(s.num_running, 0);
}

// The comparison above can fail: a reference that decodes with a wrong block table differs.
TEST(EngineTest, BrokenReferenceDiffers) {
  const auto prompt = RandomPrompt(37, 1);
  const auto good = ReferenceGreedy(prompt, 12);
  const auto bad = ReferenceGreedy(prompt, 12, /*wrong_table=*/true);
  EXPECT_EQ(good[0], bad[0]);  // the prefill's own token is unaffected
  EXPECT_NE(good, bad);
}

TEST(EngineTest, SixteenConcurrentWithChunkedPrefillMatchAlone) {
  EngineOptions o = TinyOptions();
  o.max_num_batched_tokens = 48;  // forces prompts into chunks mixed with decodes
  o.max_num_seqs = 16;
  auto engine = MakeEngine(o);
  ASSERT_NE(engine, nullptr);
  const std::vector<int> lens = {1, 5, 16, 17, 31, 33, 48, 49, 64, 70, 3, 90, 15, 32, 100, 8};
  std::vector<RequestSpec> specs;
  for (size_t i = 0; i < lens.size(); ++i)
    specs.push_back(Greedy(Id("r", i), RandomPrompt(lens[i], 100 + i), 6 + i % 7));

  // Each alone first (also warms nothing: prefix caching is on, so use distinct prompts).
  std::vector<std::vector<int32_t>> alone;
  {
    EngineOptions ao = TinyOptions();
    ao.enable_prefix_caching = false;
    auto solo = MakeEngine(ao);
    ASSERT_NE(solo, nullptr);
    for (const auto& s : specs) alone.push_back(RunOne(*solo, s).tokens);
  }

  Collector c;
  std::vector<std::string> ids;
  for (const auto& s : specs) {
    ids.push_back(s.id);
    ASSERT_TRUE(engine->Add(s, c.Callback()).ok());
  }
  ASSERT_TRUE(c.WaitAll(ids));
  for (size_t i = 0; i < specs.size(); ++i) {
    const Result r = c.Get(specs[i].id);
    EXPECT_EQ(r.tokens, alone[i]) << specs[i].id << " (prompt " << lens[i] << ")";
    EXPECT_EQ(r.tokens, ReferenceGreedy(specs[i].prompt, specs[i].sampling.max_tokens)) << specs[i].id;
    EXPECT_EQ(r.reason, FinishReason::kLength);
  }
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.requests_finished_total, 16u);
  // 16 requests in far fewer steps than run one by one: they were batched.
  int total_tokens = 0;
  for (const auto& sp : specs) total_tokens += sp.sampling.max_tokens;
  EXPECT_LT(s.steps_total, static_cast<uint64_t>(total_tokens));
}

TEST(EngineTest, TwoComputeThreadsMatchReference) {
  EngineOptions o = TinyOptions();
  o.load.num_threads = 2;  // the model's compute team plus the scheduler thread
  o.max_num_batched_tokens = 40;
  auto engine = MakeEngine(o);
  ASSERT_NE(engine, nullptr);
  Collector c;
  std::vector<RequestSpec> specs;
  for (int i = 0; i < 4; ++i) {
    specs.push_back(Greedy(Id("t", i), RandomPrompt(9 + 13 * i, 500 + i), 8));
    ASSERT_TRUE(engine->Add(specs.back(), c.Callback()).ok());
  }
  for (const auto& s : specs) {
    ASSERT_TRUE(c.WaitFinished(s.id));
    EXPECT_EQ(c.Get(s.id).tokens, ReferenceGreedy(s.prompt, 8)) << s.id;
  }
}

TEST(EngineTest, PrefixCacheHitOnRepeatedPrompt) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const auto prompt = RandomPrompt(40, 7);
  const Result first = RunOne(*engine, Greedy("p1", prompt, 30));
  EXPECT_EQ(first.num_cached_tokens, 0);
  const EngineStats s1 = engine->GetStats();
  EXPECT_EQ(s1.prefix_cache_queries, 40u);
  EXPECT_EQ(s1.prefix_cache_hits, 0u);

  const Result second = RunOne(*engine, Greedy("p2", prompt, 30));
  EXPECT_EQ(second.num_cached_tokens, 32);  // two full blocks; the last token always runs
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(first.tokens, ReferenceGreedy(prompt, 30));
  const EngineStats s2 = engine->GetStats();
  EXPECT_EQ(s2.prefix_cache_queries, 80u);
  EXPECT_EQ(s2.prefix_cache_hits, 32u);
  EXPECT_EQ(s2.blocks_used, 0);

  // Blocks of generated tokens are cached too: p1 computed the KV of 40 + 29 tokens, four full
  // blocks, so a prompt of p1's prompt and output (70 tokens) finds 64 of them.
  std::vector<int32_t> longer = prompt;
  longer.insert(longer.end(), first.tokens.begin(), first.tokens.end());
  const Result third = RunOne(*engine, Greedy("p3", longer, 4));
  EXPECT_EQ(third.num_cached_tokens, 64);
  EXPECT_EQ(third.tokens, ReferenceGreedy(longer, 4));
}

TEST(EngineTest, PreemptionWithTinyCacheKeepsOutputs) {
  EngineOptions o = TinyOptions();
  o.num_kv_blocks = 12;  // 192 tokens for 6 requests that need 5 blocks each at the end
  o.max_num_batched_tokens = 64;
  auto engine = MakeEngine(o);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->max_model_len(), 192);
  Collector c;
  std::vector<RequestSpec> specs;
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    specs.push_back(Greedy(Id("q", i), RandomPrompt(40 + i, 300 + i), 30));
    ids.push_back(specs.back().id);
    ASSERT_TRUE(engine->Add(specs.back(), c.Callback()).ok());
  }
  ASSERT_TRUE(c.WaitAll(ids));
  for (const auto& s : specs) {
    const Result r = c.Get(s.id);
    EXPECT_EQ(r.tokens, ReferenceGreedy(s.prompt, 30)) << s.id;
    EXPECT_EQ(r.outputs_after_finish, 0);
  }
  const EngineStats s = engine->GetStats();
  EXPECT_GT(s.preemptions_total, 0u);
  EXPECT_EQ(s.blocks_used, 0);
}

// Everything at once: shared prefixes (prefix-cache hits, shared blocks), a cache too small for
// the load (preemption, LRU eviction), a small token budget (chunked prefill) and aborts.
TEST(EngineTest, RandomizedWorkloadMatchesReference) {
  EngineOptions o = TinyOptions();
  o.num_kv_blocks = 20;
  o.max_num_batched_tokens = 24;
  o.max_num_seqs = 6;
  auto engine = MakeEngine(o);
  ASSERT_NE(engine, nullptr);
  std::mt19937 rng(2024);
  const std::vector<std::vector<int32_t>> prefixes = {RandomPrompt(32, 1), RandomPrompt(20, 2),
                                                      RandomPrompt(48, 3)};
  Collector c;
  std::vector<RequestSpec> specs;
  std::vector<std::string> ids;
  std::set<std::string> aborted;
  for (int i = 0; i < 30; ++i) {
    std::vector<int32_t> prompt = prefixes[rng() % prefixes.size()];
    if (rng() % 4 == 0) prompt.resize(1 + rng() % prompt.size());
    const auto tail = RandomPrompt(static_cast<int>(rng() % 30), 1000 + i);
    prompt.insert(prompt.end(), tail.begin(), tail.end());
    specs.push_back(Greedy(Id("w", i), prompt, 1 + static_cast<int>(rng() % 40)));
    ids.push_back(specs.back().id);
    ASSERT_TRUE(engine->Add(specs.back(), c.Callback()).ok());
    if (i % 7 == 3) {
      engine->Abort(Id("w", i - 1));
      aborted.insert(Id("w", i - 1));
    }
  }
  ASSERT_TRUE(c.WaitAll(ids));
  int checked = 0;
  for (const auto& s : specs) {
    const Result r = c.Get(s.id);
    EXPECT_EQ(r.outputs_after_finish, 0) << s.id;
    const auto ref = ReferenceGreedy(s.prompt, s.sampling.max_tokens);
    if (aborted.count(s.id) > 0 && r.reason == FinishReason::kAbort) {
      // A prefix of the reference: what it produced before the abort was right.
      ASSERT_LE(r.tokens.size(), ref.size()) << s.id;
      EXPECT_EQ(r.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + r.tokens.size())) << s.id;
      continue;
    }
    EXPECT_EQ(r.reason, FinishReason::kLength) << s.id;
    EXPECT_EQ(r.tokens, ref) << s.id;
    ++checked;
  }
  EXPECT_GE(checked, 25);
  const EngineStats st = engine->GetStats();
  EXPECT_GT(st.preemptions_total, 0u);
  EXPECT_GT(st.prefix_cache_hits, 0u);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.num_running + st.num_waiting, 0);
}

TEST(EngineTest, AbortFreesAllBlocks) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  Collector c;
  OutputCallback collect = c.Callback();
  Engine* e = engine.get();
  int seen = 0;  // scheduler thread only
  int64_t used_before = -1;  // written on the scheduler thread before the final Output
  // Abort from the third Output's callback: applied before the next step, whatever the load.
  ASSERT_TRUE(e->Add(Greedy("long", RandomPrompt(50, 2), 3000), [&, e, collect](const Output& o) {
    if (++seen == 3) {
      used_before = e->GetStats().blocks_used;
      e->Abort(o.request_id);
    }
    collect(o);
  }).ok());
  ASSERT_TRUE(c.WaitOutputs("long", 3));
  ASSERT_TRUE(c.WaitFinished("long"));
  EXPECT_EQ(c.Get("long").tokens.size(), 3u);
  EXPECT_EQ(used_before, 4);  // 50 + 2 tokens computed: 4 blocks
  const Result r = c.Get("long");
  EXPECT_EQ(r.reason, FinishReason::kAbort);
  EXPECT_EQ(r.outputs_after_finish, 0);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.num_running, 0);
  EXPECT_EQ(s.num_waiting, 0);
  engine->Abort("long");     // unknown now: no-op
  engine->Abort("unknown");  // no-op
  // The id is free again.
  const Result again = RunOne(*engine, Greedy("long", RandomPrompt(5, 3), 2));
  EXPECT_EQ(again.reason, FinishReason::kLength);
}

TEST(EngineTest, AddValidation) {
  EngineOptions o = TinyOptions();
  o.max_model_len = 64;
  auto engine = MakeEngine(o);
  ASSERT_NE(engine, nullptr);
  Collector c;
  Status st = engine->Add(Greedy("x", RandomPrompt(64, 1), 4), c.Callback());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("max_model_len"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("64"), std::string::npos) << st.ToString();
  EXPECT_EQ(engine->Add(Greedy("x", {}, 4), c.Callback()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Add(Greedy("x", {1, 100000}, 4), c.Callback()).code(), StatusCode::kInvalidArgument);
  RequestSpec bad = Greedy("x", {1, 2}, 4);
  bad.sampling.top_p = 2;
  st = engine->Add(bad, c.Callback());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("top_p"), std::string::npos);

  // Generation stops at max_model_len.
  const Result r = RunOne(*engine, Greedy("fill", RandomPrompt(60, 1), 100));
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.tokens.size(), 4u);

  // Duplicate ids while live.
  ASSERT_TRUE(engine->Add(Greedy("dup", RandomPrompt(10, 1), 50), c.Callback()).ok());
  EXPECT_EQ(engine->Add(Greedy("dup", RandomPrompt(10, 1), 5), c.Callback()).code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(c.WaitFinished("dup"));

  engine->Shutdown(Deadline::After(std::chrono::seconds(30)));
  EXPECT_EQ(engine->Add(Greedy("late", {1, 2}, 4), c.Callback()).code(), StatusCode::kFailedPrecondition);
  engine->Shutdown(Deadline::After(std::chrono::seconds(1)));  // idempotent
}

TEST(EngineTest, EngineCreateRejectsBadOptions) {
  EngineOptions o = TinyOptions();
  o.num_kv_blocks = 4;
  o.max_model_len = 100;  // 4 blocks hold 64 tokens
  auto e = Engine::Create(o);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  o = TinyOptions();
  o.model_dir = "/nonexistent/kvferry";
  EXPECT_FALSE(Engine::Create(o).ok());
}

TEST(EngineTest, SeededSamplingIndependentOfBatch) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  auto spec = [](const std::string& id, uint64_t seed) {
    RequestSpec s;
    s.id = id;
    s.prompt = RandomPrompt(20, 9);
    s.sampling.temperature = 1.0;
    s.sampling.top_p = 0.95;
    s.sampling.top_k = 50;
    s.sampling.seed = seed;
    s.sampling.max_tokens = 16;
    s.sampling.ignore_eos = true;
    return s;
  };
  const Result alone = RunOne(*engine, spec("alone", 5));
  Collector c;
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    RequestSpec s = Greedy(Id("noise", i), RandomPrompt(10 + 7 * i, 50 + i), 10);
    ids.push_back(s.id);
    ASSERT_TRUE(engine->Add(s, c.Callback()).ok());
  }
  ASSERT_TRUE(engine->Add(spec("batched", 5), c.Callback()).ok());
  ASSERT_TRUE(engine->Add(spec("other", 6), c.Callback()).ok());
  ids.push_back("batched");
  ids.push_back("other");
  ASSERT_TRUE(c.WaitAll(ids));
  EXPECT_EQ(c.Get("batched").tokens, alone.tokens);
  EXPECT_NE(c.Get("other").tokens, alone.tokens);
}

TEST(EngineTest, StopTokenAndLogprobs) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const auto prompt = RandomPrompt(25, 4);
  const auto ref = ReferenceGreedy(prompt, 6);
  RequestSpec s = Greedy("stop", prompt, 6);
  s.sampling.stop_token_ids = {ref[2]};
  s.sampling.logprobs = 3;
  const Result r = RunOne(*engine, s);
  EXPECT_EQ(r.reason, FinishReason::kStop);
  // Stops at the first occurrence of the stop id, which is included.
  const auto first = std::find(ref.begin(), ref.end(), ref[2]) - ref.begin();
  EXPECT_EQ(r.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
  ASSERT_EQ(r.logprobs.size(), r.tokens.size());
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    EXPECT_EQ(r.logprobs[i].token, r.tokens[i]);
    ASSERT_EQ(r.logprobs[i].top.size(), 3u);
    EXPECT_EQ(r.logprobs[i].top[0].first, r.tokens[i]);  // greedy: the top one
    EXPECT_FLOAT_EQ(r.logprobs[i].top[0].second, r.logprobs[i].logprob);
  }
}

TEST(EngineTest, ShutdownDrainsThenAborts) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  Collector c;
  ASSERT_TRUE(engine->Add(Greedy("short", RandomPrompt(10, 1), 5), c.Callback()).ok());
  // A remote load that never completes (no connector): still live at the deadline.
  RequestSpec parked = Greedy("parked", RandomPrompt(10, 2), 5);
  parked.kv_role = KvRole::kLoadRemote;
  ASSERT_TRUE(engine->Add(parked, c.Callback()).ok());
  ASSERT_TRUE(testing::WaitStats(*engine, [](const EngineStats& s) { return s.num_waiting_remote == 1; }));
  const Deadline d = Deadline::After(std::chrono::seconds(2));
  engine->Shutdown(d);
  EXPECT_TRUE(d.Expired());  // it waited for the drain deadline
  ASSERT_TRUE(c.WaitAll({"short", "parked"}, std::chrono::seconds(5)));
  EXPECT_EQ(c.Get("short").reason, FinishReason::kLength);
  EXPECT_EQ(c.Get("parked").reason, FinishReason::kAbort);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.num_waiting, 0);
}

TEST(EngineTest, IdleShutdownIsPrompt) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const Deadline d = Deadline::After(std::chrono::seconds(30));
  engine->Shutdown(d);
  EXPECT_GT(d.Remaining(), std::chrono::seconds(20));
}

}  // namespace
}  // namespace kvferry::engine
