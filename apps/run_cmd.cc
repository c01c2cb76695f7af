// `kvferry run MODEL_DIR --prompt-token-ids 1,2,3 ...`: one request through the engine, offline.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"

namespace kvferry::apps {
namespace {

struct RunArgs {
  std::string model_dir;
  std::vector<int32_t> prompt_token_ids;
  // Text prompts (--prompt TEXT, --chat) come with the tokenizer component: resolve them in
  // ResolvePrompt and detokenize in PrintResult.
  engine::SamplingParams sampling;
  int threads = 0;
  double timeout_s = 600;
  bool json = false;
};

StatusOr<std::vector<int32_t>> ResolvePrompt(const RunArgs& a) {
  if (!a.prompt_token_ids.empty()) return a.prompt_token_ids;
  return InvalidArgumentError("give the prompt with --prompt-token-ids (text prompts are not supported yet)");
}

struct Done {
  Mutex mu;
  CondVar cv;
  std::vector<int32_t> tokens KVF_GUARDED_BY(mu);
  bool finished KVF_GUARDED_BY(mu) = false;
  engine::FinishReason reason KVF_GUARDED_BY(mu) = engine::FinishReason::kNone;
  Status error KVF_GUARDED_BY(mu);
};

int Run(const RunArgs& a) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "kvferry run: %s\n", st.ToString().c_str());
    return 1;
  };
  StatusOr<std::vector<int32_t>> prompt = ResolvePrompt(a);
  if (!prompt.ok()) return fail(prompt.status());

  engine::EngineOptions o;
  o.model_dir = a.model_dir;
  o.load.num_threads = a.threads;
  o.max_num_seqs = 1;
  auto eng = engine::Engine::Create(o);
  if (!eng.ok()) return fail(eng.status());

  auto done = std::make_shared<Done>();
  engine::RequestSpec spec;
  spec.id = "run-0";
  spec.prompt = std::move(*prompt);
  spec.sampling = a.sampling;
  Status st = (*eng)->Add(std::move(spec), [done](const engine::Output& out) {
    MutexLock l(done->mu);
    done->tokens.insert(done->tokens.end(), out.new_tokens.begin(), out.new_tokens.end());
    if (out.finished) {
      done->finished = true;
      done->reason = out.finish_reason;
      done->error = out.error;
      done->cv.NotifyAll();
    }
  });
  if (!st.ok()) return fail(st);

  const Deadline deadline = Deadline::After(std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(a.timeout_s)));
  {
    MutexLock l(done->mu);
    while (!done->finished && !deadline.Expired()) done->cv.WaitUntil(done->mu, deadline);
  }
  // Shutdown aborts the request if the deadline passed; the callback then records kAbort.
  (*eng)->Shutdown(Deadline::After(std::chrono::seconds(0)));
  MutexLock l(done->mu);
  if (done->reason == engine::FinishReason::kError) return fail(done->error);
  if (a.json) {
    nlohmann::json j;
    j["token_ids"] = done->tokens;
    j["finish_reason"] = engine::FinishReasonName(done->reason);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string line;
    for (size_t i = 0; i < done->tokens.size(); ++i) line += (i ? " " : "") + std::to_string(done->tokens[i]);
    std::printf("%s\n", line.c_str());
    std::fprintf(stderr, "finish_reason: %s\n", engine::FinishReasonName(done->reason));
  }
  if (done->reason == engine::FinishReason::kAbort) {
    std::fprintf(stderr, "kvferry run: timed out after %.0f s\n", a.timeout_s);
    return 1;
  }
  return 0;
}

}  // namespace

void AddRunCommand(CLI::App& app) {
  CLI::App* run = app.add_subcommand(
      "run",
      "Generate from one prompt offline through the engine and print the token ids.\n"
      "The prompt is given as token ids for now; text prompts (--prompt TEXT, --chat) will come\n"
      "with the tokenizer component.");
  auto a = std::make_shared<RunArgs>();
  a->sampling.temperature = 0;
  run->add_option("MODEL_DIR", a->model_dir, "HF model directory")->required();
  run->add_option("--prompt-token-ids", a->prompt_token_ids, "Prompt as token ids: 1,2,3")
      ->delimiter(',')
      ->required();
  run->add_option("--max-tokens", a->sampling.max_tokens, "Tokens to generate (default 16)");
  run->add_option("--temperature", a->sampling.temperature, "0 = greedy (default 0)");
  run->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass (default 1)");
  run->add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens (default off)");
  run->add_option("--seed", a->sampling.seed, "Sampling seed (default: engine seed)");
  run->add_flag("--ignore-eos", a->sampling.ignore_eos, "Do not stop at the model's EOS ids");
  run->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  run->add_option("--timeout", a->timeout_s, "Give up after this many seconds (default 600)");
  run->add_flag("--json", a->json, R"(Print {"token_ids":[...],"finish_reason":"..."})");
  run->callback([a] { ExitCode() = Run(*a); });
}

}  // namespace kvferry::apps
