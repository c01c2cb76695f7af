// `kvferry bench engine MODEL_DIR ...`: offline throughput of the engine (continuous batching)
// with random prompts, at most --concurrency requests in flight.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"

namespace kvferry::apps {
namespace {

struct BenchArgs {
  std::string model_dir, kv_dtype = "bf16";
  int num_prompts = 32, input_len = 128, output_len = 64, concurrency = 8, threads = 0;
  int64_t max_num_batched_tokens = 2048;
  double timeout_s = 3600;
  bool json = false;
};

struct Progress {
  Mutex mu;
  CondVar cv;
  int in_flight KVF_GUARDED_BY(mu) = 0;
  int finished KVF_GUARDED_BY(mu) = 0;
  int errors KVF_GUARDED_BY(mu) = 0;
  uint64_t output_tokens KVF_GUARDED_BY(mu) = 0;
  double ttft_sum KVF_GUARDED_BY(mu) = 0;
  std::vector<double> start KVF_GUARDED_BY(mu);
  std::vector<bool> got_first KVF_GUARDED_BY(mu);
};

int RunEngineBench(const BenchArgs& a) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "kvferry bench engine: %s\n", st.ToString().c_str());
    return 1;
  };
  if (a.num_prompts < 1 || a.input_len < 1 || a.output_len < 1 || a.concurrency < 1)
    return fail(InvalidArgumentError("counts and lengths must be >= 1"));
  engine::EngineOptions o;
  o.model_dir = a.model_dir;
  o.load.num_threads = a.threads;
  o.load.show_progress = !a.json;
  o.max_num_seqs = a.concurrency;
  o.max_num_batched_tokens = a.max_num_batched_tokens;
  o.max_model_len = a.input_len + a.output_len + 1;
  o.enable_prefix_caching = false;  // random prompts; keep the figure about compute
  auto dt = kernels::ParseDType(a.kv_dtype);
  if (!dt.ok()) return fail(dt.status());
  o.kv_dtype = *dt;
  auto created = engine::Engine::Create(o);
  if (!created.ok()) return fail(created.status());
  engine::Engine& eng = **created;
  const int64_t vocab = eng.model_config().vocab_size;

  auto prog = std::make_shared<Progress>();
  {
    MutexLock l(prog->mu);
    prog->start.assign(a.num_prompts, 0);
    prog->got_first.assign(a.num_prompts, false);
  }
  std::mt19937 rng(1234);
  const Deadline deadline = Deadline::After(std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(a.timeout_s)));
  const double t0 = NowSeconds();
  for (int i = 0; i < a.num_prompts; ++i) {
    {
      MutexLock l(prog->mu);
      while (prog->in_flight >= a.concurrency && !deadline.Expired()) prog->cv.WaitUntil(prog->mu, deadline);
      if (deadline.Expired()) break;
      ++prog->in_flight;
      prog->start[i] = NowSeconds();
    }
    engine::RequestSpec spec;
    spec.id = "bench-" + std::to_string(i);
    for (int t = 0; t < a.input_len; ++t) spec.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    spec.sampling.temperature = 0;
    spec.sampling.max_tokens = a.output_len;
    spec.sampling.ignore_eos = true;
    Status st = eng.Add(std::move(spec), [prog, i](const engine::Output& out) {
      MutexLock l(prog->mu);
      if (!prog->got_first[i] && !out.new_tokens.empty()) {
        prog->got_first[i] = true;
        prog->ttft_sum += NowSeconds() - prog->start[i];
      }
      prog->output_tokens += out.new_tokens.size();
      if (out.finished) {
        --prog->in_flight;
        ++prog->finished;
        if (out.finish_reason == engine::FinishReason::kError) ++prog->errors;
        prog->cv.NotifyAll();
      }
    });
    if (!st.ok()) return fail(st);
  }
  {
    MutexLock l(prog->mu);
    while (prog->in_flight > 0 && !deadline.Expired()) prog->cv.WaitUntil(prog->mu, deadline);
  }
  const double elapsed = NowSeconds() - t0;
  const engine::EngineStats stats = eng.GetStats();
  eng.Shutdown(Deadline::After(std::chrono::seconds(0)));
  MutexLock l(prog->mu);
  const double out_tps = prog->output_tokens / elapsed;
  const double rps = prog->finished / elapsed;
  const double ttft_ms = prog->finished > 0 ? 1000 * prog->ttft_sum / prog->finished : 0;
  if (a.json) {
    nlohmann::json j;
    j["num_prompts"] = a.num_prompts;
    j["input_len"] = a.input_len;
    j["output_len"] = a.output_len;
    j["concurrency"] = a.concurrency;
    j["elapsed_s"] = elapsed;
    j["finished"] = prog->finished;
    j["errors"] = prog->errors;
    j["output_tokens"] = prog->output_tokens;
    j["output_tok_per_s"] = out_tps;
    j["total_tok_per_s"] = (prog->output_tokens + uint64_t(prog->finished) * a.input_len) / elapsed;
    j["requests_per_s"] = rps;
    j["mean_ttft_ms"] = ttft_ms;
    j["steps"] = stats.steps_total;
    j["preemptions"] = stats.preemptions_total;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("requests %d/%d in %.2f s (errors %d, preemptions %llu, steps %llu)\n",
                prog->finished, a.num_prompts, elapsed, prog->errors,
                static_cast<unsigned long long>(stats.preemptions_total),
                static_cast<unsigned long long>(stats.steps_total));
    std::printf("output %.1f tok/s, %.2f requests/s, mean TTFT %.1f ms\n", out_tps, rps, ttft_ms);
  }
  return prog->finished == a.num_prompts && prog->errors == 0 ? 0 : 1;
}

}  // namespace

void AddEngineBenchCommand(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand(
      "engine", "Offline engine throughput: random prompts, greedy, EOS ignored, prefix cache off");
  auto a = std::make_shared<BenchArgs>();
  cmd->add_option("MODEL_DIR", a->model_dir, "HF model directory or GGUF file")->required();
  cmd->add_option("--num-prompts", a->num_prompts, "Requests (default 32)");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens (default 128)");
  cmd->add_option("--output-len", a->output_len, "Generated tokens (default 64)");
  cmd->add_option("--concurrency", a->concurrency, "Requests in flight (default 8)");
  cmd->add_option("--max-num-batched-tokens", a->max_num_batched_tokens, "Token budget per step (default 2048)");
  cmd->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  cmd->add_option("--kv-dtype", a->kv_dtype, "bf16 | f16 | f32 (default bf16)");
  cmd->add_option("--timeout", a->timeout_s, "Give up after this many seconds (default 3600)");
  cmd->add_flag("--json", a->json, "One JSON object");
  cmd->callback([a] { ExitCode() = RunEngineBench(*a); });
}

}  // namespace kvferry::apps
