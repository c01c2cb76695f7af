#include "kvferry/engine/engine_test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

namespace kvferry::engine::testing {

const std::string& TinyModelDir() {
  static const std::string* dir = [] {
    auto* d = new std::string(::testing::TempDir() + "/kvf_engine_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(*d);
    // ctest runs every test in a process of its own: each would leave a model behind.
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(TinyModelDir(), ec);
    });
    model::MakeTinyOptions o;
    o.seed = 11;
    o.dtype = model::DType::kF32;
    o.show_progress = false;
    Status st = model::MakeTinyModel(*d, o);
    if (!st.ok()) {
      ADD_FAILURE() << st.ToString();
    }
    return d;
  }();
  return *dir;
}

EngineOptions TinyOptions() {
  EngineOptions o;
  o.model_dir = TinyModelDir();
  o.load.num_threads = 1;
  o.load.show_progress = false;
  o.kv_dtype = model::DType::kF32;
  o.num_kv_blocks = 256;
  o.max_num_batched_tokens = 256;
  return o;
}

model::Model& ReferenceModel() {
  static model::Model* m = [] {
    model::LoadOptions lo;
    lo.num_threads = 1;
    lo.show_progress = false;
    auto loaded = model::Model::Load(TinyModelDir(), lo);
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status().ToString();
      std::abort();
    }
    return loaded->release();
  }();
  return *m;
}

std::vector<int32_t> RandomPrompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 500);
  return t;
}

std::vector<int32_t> ReferenceGreedy(const std::vector<int32_t>& prompt, int max_tokens, bool wrong_table) {
  model::Model& m = ReferenceModel();
  const int64_t bs = 16;
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_tokens;
  const int64_t nblocks = (total + bs - 1) / bs;
  auto cache = m.CreateKvCache({.num_blocks = 2 * nblocks + 1, .block_size = bs, .dtype = model::DType::kF32});
  EXPECT_TRUE(cache.ok());
  std::vector<int32_t> table(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) table[i] = static_cast<int32_t>(i);
  auto argmax = [](std::span<const float> row) {
    return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
  };
  model::ForwardOutput out;
  model::SequenceInput in{prompt, 0, table, false};
  EXPECT_TRUE(m.Forward({&in, 1}, **cache, &out).ok());
  std::vector<int32_t> gen = {argmax(out.Row(0))};
  if (wrong_table) table[0] = static_cast<int32_t>(2 * nblocks);  // never written: zeros
  while (static_cast<int>(gen.size()) < max_tokens) {
    const int32_t last = gen.back();
    model::SequenceInput step{{&last, 1}, static_cast<int64_t>(prompt.size() + gen.size() - 1), table, false};
    EXPECT_TRUE(m.Forward({&step, 1}, **cache, &out).ok());
    gen.push_back(argmax(out.Row(0)));
  }
  return gen;
}

OutputCallback Collector::Callback() {
  return [this](const Output& o) {
    MutexLock l(mu_);
    Result& r = results_[o.request_id];
    if (r.finished) ++r.outputs_after_finish;
    r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
    r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
    ++r.num_outputs;
    r.num_prompt_tokens = o.num_prompt_tokens;
    r.num_cached_tokens = o.num_cached_tokens;
    if (o.finished) {
      r.finished = true;
      r.reason = o.finish_reason;
      r.error = o.error;
      r.held_blocks = o.held_blocks;
    }
    cv_.NotifyAll();
  };
}

bool Collector::WaitFinished(const std::string& id, Duration timeout) {
  return WaitAll({id}, timeout);
}

bool Collector::WaitAll(const std::vector<std::string>& ids, Duration timeout) {
  const Deadline d = Deadline::After(timeout);
  MutexLock l(mu_);
  while (true) {
    bool all = true;
    for (const auto& id : ids) all = all && results_[id].finished;
    if (all) return true;
    if (!cv_.WaitUntil(mu_, d) && d.Expired()) return false;
  }
}

bool Collector::WaitOutputs(const std::string& id, int n, Duration timeout) {
  const Deadline d = Deadline::After(timeout);
  MutexLock l(mu_);
  while (results_[id].num_outputs < n) {
    if (!cv_.WaitUntil(mu_, d) && d.Expired()) return false;
  }
  return true;
}

Result Collector::Get(const std::string& id) {
  MutexLock l(mu_);
  return results_[id];
}

Result RunOne(Engine& engine, RequestSpec spec) {
  Collector c;
  const std::string id = spec.id;
  Status st = engine.Add(std::move(spec), c.Callback());
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return {};
  EXPECT_TRUE(c.WaitFinished(id)) << id;
  return c.Get(id);
}

RequestSpec Greedy(const std::string& id, std::vector<int32_t> prompt, int max_tokens) {
  RequestSpec s;
  s.id = id;
  s.prompt = std::move(prompt);
  s.sampling.temperature = 0;
  s.sampling.max_tokens = max_tokens;
  s.sampling.ignore_eos = true;
  return s;
}

bool WaitStats(Engine& engine, const std::function<bool(const EngineStats&)>& pred, Duration timeout) {
  const Deadline d = Deadline::After(timeout);
  while (!d.Expired()) {
    if (pred(engine.GetStats())) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred(engine.GetStats());
}

}  // namespace kvferry::engine::testing
