// `kvferry run MODEL_DIR --prompt TEXT [--chat] | --prompt-token-ids 1,2,3 ...`: one request
// through the engine, offline, with the generated text streamed to stdout.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"
#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::apps {
namespace {

struct RunArgs {
  std::string model_dir;
  std::string tokenizer;  // "" = the model's own
  std::vector<int32_t> prompt_token_ids;
  std::string prompt;
  bool chat = false;
  std::string system;
  engine::SamplingParams sampling;
  int threads = 0;
  double timeout_s = 600;
  bool json = false;
};

// The prompt's token ids: given directly, or the text encoded (after rendering it as one user
// message through the model's chat template with --chat).
StatusOr<std::vector<int32_t>> ResolvePrompt(const RunArgs& a, const tokenizer::Tokenizer* tok) {
  if (!a.prompt_token_ids.empty()) return a.prompt_token_ids;
  if (tok == nullptr) return InvalidArgumentError("give the prompt with --prompt TEXT or --prompt-token-ids 1,2,3");
  if (!a.chat) {
    if (a.prompt.empty()) return InvalidArgumentError("--prompt is empty");
    return tok->Encode(a.prompt, /*add_special_tokens=*/true);
  }
  KVF_ASSIGN_OR_RETURN(auto tmpl, tokenizer::ChatTemplate::Load(a.tokenizer.empty() ? a.model_dir : a.tokenizer));
  std::vector<tokenizer::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  messages.push_back({"user", a.prompt});
  KVF_ASSIGN_OR_RETURN(std::string text, tmpl->Render(messages));
  // The rendered template already carries its special tokens as text.
  return tok->Encode(text, /*add_special_tokens=*/false);
}

struct Done {
  Mutex mu;
  CondVar cv;
  std::vector<int32_t> tokens KVF_GUARDED_BY(mu);  // every generated id so far
  bool finished KVF_GUARDED_BY(mu) = false;
  engine::FinishReason reason KVF_GUARDED_BY(mu) = engine::FinishReason::kNone;
  Status error KVF_GUARDED_BY(mu);
};

int Run(const RunArgs& a) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "kvferry run: %s\n", st.ToString().c_str());
    return 1;
  };
  const bool text_mode = a.prompt_token_ids.empty();
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (text_mode || !a.json) {
    auto t = tokenizer::Tokenizer::Load(a.tokenizer.empty() ? a.model_dir : a.tokenizer);
    if (!t.ok()) {
      if (text_mode) return fail(t.status());
    } else {
      tok = std::move(*t);
    }
  }
  StatusOr<std::vector<int32_t>> prompt = ResolvePrompt(a, tok.get());
  if (!prompt.ok()) return fail(prompt.status());
  const std::vector<int32_t> prompt_ids = *prompt;

  engine::EngineOptions o;
  o.model_dir = a.model_dir;
  o.load.num_threads = a.threads;
  o.max_num_seqs = 1;
  auto eng = engine::Engine::Create(o);
  if (!eng.ok()) return fail(eng.status());

  auto done = std::make_shared<Done>();
  engine::RequestSpec spec;
  spec.id = "run-0";
  spec.prompt = prompt_ids;
  spec.sampling = a.sampling;
  Status st = (*eng)->Add(std::move(spec), [done](const engine::Output& out) {
    MutexLock l(done->mu);
    done->tokens.insert(done->tokens.end(), out.new_tokens.begin(), out.new_tokens.end());
    done->cv.NotifyAll();
    if (out.finished) {
      done->finished = true;
      done->reason = out.finish_reason;
      done->error = out.error;
      done->cv.NotifyAll();
    }
  });
  if (!st.ok()) return fail(st);

  const Deadline deadline =
      Deadline::After(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.timeout_s)));
  // Text goes to stdout as it is generated (not from the engine's thread: a slow stdout must
  // not stall the scheduler).
  std::optional<tokenizer::IncrementalDetokenizer> detok;
  const bool stream_text = tok != nullptr && !a.json;
  if (stream_text) detok.emplace(*tok, /*skip_special_tokens=*/true);
  size_t printed = 0;
  std::string text;
  for (;;) {
    std::vector<int32_t> fresh;
    bool finished = false;
    {
      MutexLock l(done->mu);
      while (!done->finished && done->tokens.size() == printed && !deadline.Expired()) {
        done->cv.WaitUntil(done->mu, deadline);
      }
      fresh.assign(done->tokens.begin() + static_cast<std::ptrdiff_t>(printed), done->tokens.end());
      printed = done->tokens.size();
      finished = done->finished;
    }
    if (detok && !fresh.empty()) {
      std::string piece = detok->Add(fresh);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    if (finished || deadline.Expired()) break;
  }
  if (detok) {
    std::string tail = detok->Finish();
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::fputc('\n', stdout);
  }
  // Shutdown aborts the request if the deadline passed; the callback then records kAbort.
  (*eng)->Shutdown(Deadline::After(std::chrono::seconds(0)));
  MutexLock l(done->mu);
  if (done->reason == engine::FinishReason::kError) return fail(done->error);
  if (a.json) {
    nlohmann::json j;
    j["token_ids"] = done->tokens;
    j["finish_reason"] = engine::FinishReasonName(done->reason);
    j["num_prompt_tokens"] = prompt_ids.size();
    if (tok) j["text"] = tok->Decode(done->tokens, /*skip_special_tokens=*/true);
    std::printf("%s\n", j.dump().c_str());
  } else {
    if (!stream_text) {  // no tokenizer in the model directory: print the ids
      std::string line;
      for (size_t i = 0; i < done->tokens.size(); ++i) line += (i ? " " : "") + std::to_string(done->tokens[i]);
      std::printf("%s\n", line.c_str());
    }
    std::fprintf(stderr, "finish_reason: %s, %zu prompt tokens, %zu generated\n",
                 engine::FinishReasonName(done->reason), prompt_ids.size(), done->tokens.size());
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
      "Generate from one prompt offline through the engine. The text streams to stdout as it is\n"
      "generated; --json prints {\"token_ids\", \"text\", \"finish_reason\", \"num_prompt_tokens\"} at the end.\n"
      "The prompt is text (--prompt, encoded with the model's tokenizer.json; --chat renders it as a user\n"
      "message through the model's chat template first) or token ids (--prompt-token-ids).");
  auto a = std::make_shared<RunArgs>();
  a->sampling.temperature = 0;
  run->add_option("MODEL_DIR", a->model_dir, "HF model directory or GGUF file")->required();
  run->add_option("--tokenizer", a->tokenizer, "Tokenizer and chat template from this directory (default: the model's)");
  auto* ids = run->add_option("--prompt-token-ids", a->prompt_token_ids, "Prompt as token ids: 1,2,3")->delimiter(',');
  auto* text = run->add_option("--prompt", a->prompt, "Prompt text");
  ids->excludes(text);
  run->add_flag("--chat", a->chat, "Apply the model's chat template to --prompt (as one user message)")->needs(text);
  run->add_option("--system", a->system, "With --chat: a system message before the prompt")->needs("--chat");
  run->add_option("--max-tokens", a->sampling.max_tokens, "Tokens to generate (default 16)");
  run->add_option("--temperature", a->sampling.temperature, "0 = greedy (default 0)");
  run->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass (default 1)");
  run->add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens (default off)");
  run->add_option("--seed", a->sampling.seed, "Sampling seed (default: engine seed)");
  run->add_flag("--ignore-eos", a->sampling.ignore_eos, "Do not stop at the model's EOS ids");
  run->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  run->add_option("--timeout", a->timeout_s, "Give up after this many seconds (default 600)");
  run->add_flag("--json", a->json, R"(Print {"token_ids":[...],"finish_reason":"..."})");
  run->callback([a] {
    if (a->prompt_token_ids.empty() && a->prompt.empty()) {
      std::fprintf(stderr, "kvferry run: give the prompt with --prompt TEXT or --prompt-token-ids 1,2,3\n");
      ExitCode() = 2;
      return;
    }
    ExitCode() = Run(*a);
  });
}

}  // namespace kvferry::apps
