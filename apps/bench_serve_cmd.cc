// `kvferry bench serve --url URL ...`: load generator for an OpenAI-compatible server. Random
// token-id prompts on /v1/completions (greedy, ignore_eos, so every request yields exactly
// --output-len tokens) from --concurrency client threads; reports the figures vLLM's
// `bench serve` reports.
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/http/http.h"

namespace kvferry::apps {
namespace {

using json = nlohmann::json;

struct BenchArgs {
  std::string url = "http://127.0.0.1:8000";
  std::string model;
  std::string api_key;
  int concurrency = 4, num_prompts = 16, input_len = 128, output_len = 64;
  int token_id_max = 256;
  uint64_t seed = 0;
  double timeout_s = 600;
  bool stream = false, json_out = false;
};

struct Result {
  bool ok = false;
  std::string error;
  double latency = 0, ttft = 0;
  int64_t output_tokens = 0;
};

// Linear interpolation between closest ranks; 0 for no samples.
double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

std::string Base(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  for (const char* suffix : {"/v1/completions", "/v1"}) {
    const std::string s = suffix;
    if (url.size() >= s.size() && url.compare(url.size() - s.size(), s.size(), s) == 0)
      url.resize(url.size() - s.size());
  }
  return url;
}

http::FetchOptions PostOptions(const BenchArgs& a, std::string body) {
  http::FetchOptions fo;
  fo.method = "POST";
  fo.body = std::move(body);
  if (!a.api_key.empty()) fo.headers.push_back({"Authorization", "Bearer " + a.api_key});
  return fo;
}

Result OneRequest(const BenchArgs& a, const std::string& url, const std::string& model, std::vector<int32_t> prompt) {
  json body = {{"model", model},     {"prompt", prompt},   {"max_tokens", a.output_len},
               {"temperature", 0.0}, {"ignore_eos", true}, {"stream", a.stream}};
  // Token ids in every chunk (vLLM's extension): the first token counts even when its text is
  // empty or held back (a random-weight model's tokens often decode to nothing).
  body["return_token_ids"] = true;
  if (a.stream) body["stream_options"] = {{"include_usage", true}};
  const Deadline deadline =
      Deadline::After(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.timeout_s)));
  Result r;
  const double t0 = NowSeconds();
  if (!a.stream) {
    StatusOr<http::Response> resp = http::Fetch(url, PostOptions(a, body.dump()), deadline);
    r.latency = NowSeconds() - t0;
    r.ttft = r.latency;
    if (!resp.ok()) return r.error = resp.status().ToString(), r;
    if (resp->status != 200) return r.error = fmt::format("HTTP {}: {}", resp->status, resp->body.substr(0, 200)), r;
    json j = json::parse(resp->body, nullptr, false);
    if (j.is_discarded() || !j.contains("usage")) return r.error = "no usage in the answer", r;
    r.output_tokens = j["usage"].value("completion_tokens", int64_t{0});
    r.ok = true;
    return r;
  }
  std::string buf, error;
  bool first = false, done = false;
  int status = 0;
  auto on_headers = [&](const http::Response& h) { status = h.status; };
  auto on_body = [&](std::string_view bytes) {
    buf.append(bytes);
    size_t end;
    while ((end = buf.find("\n\n")) != std::string::npos) {
      std::string event = buf.substr(0, end);
      buf.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      std::string data = event.substr(6);
      if (data == "[DONE]") {
        done = true;
        continue;
      }
      json j = json::parse(data, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) error = j["error"].value("message", std::string("error event"));
      if (!first && j.contains("choices") && !j["choices"].empty() &&
          (!j["choices"][0].value("text", std::string()).empty() ||
           (j["choices"][0].contains("token_ids") && j["choices"][0]["token_ids"].is_array() &&
            !j["choices"][0]["token_ids"].empty()))) {
        first = true;
        r.ttft = NowSeconds() - t0;
      }
      if (j.contains("usage") && j["usage"].is_object())
        r.output_tokens = j["usage"].value("completion_tokens", int64_t{0});
    }
    return true;
  };
  StatusOr<http::Response> resp = http::FetchStream(url, PostOptions(a, body.dump()), on_headers, on_body, deadline);
  r.latency = NowSeconds() - t0;
  if (!resp.ok()) return r.error = resp.status().ToString(), r;
  if (status != 200) return r.error = fmt::format("HTTP {}: {}", status, buf.substr(0, 200)), r;
  if (!error.empty()) return r.error = error, r;
  if (!done) return r.error = "the stream ended without [DONE]", r;
  if (!first) r.ttft = r.latency;
  r.ok = true;
  return r;
}

struct Shared {
  Mutex mu;
  CondVar cv;
  int next KVF_GUARDED_BY(mu) = 0;
  int finished KVF_GUARDED_BY(mu) = 0;
  int failed KVF_GUARDED_BY(mu) = 0;
  std::vector<Result> results KVF_GUARDED_BY(mu);
  std::string first_error KVF_GUARDED_BY(mu);
};

int RunBench(const BenchArgs& a) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "kvferry bench serve: %s\n", st.ToString().c_str());
    return 1;
  };
  if (a.num_prompts < 1 || a.input_len < 1 || a.output_len < 1 || a.concurrency < 1 || a.token_id_max < 1)
    return fail(InvalidArgumentError("counts, lengths and --token-id-max must be >= 1"));
  const std::string base = Base(a.url);
  std::string model = a.model;
  if (model.empty()) {
    http::FetchOptions fo;
    if (!a.api_key.empty()) fo.headers.push_back({"Authorization", "Bearer " + a.api_key});
    StatusOr<http::Response> r = http::Fetch(base + "/v1/models", fo, Deadline::After(std::chrono::seconds(30)));
    if (!r.ok()) return fail(r.status());
    json j = json::parse(r->body, nullptr, false);
    if (r->status != 200 || j.is_discarded() || !j.contains("data") || j["data"].empty())
      return fail(
          UnavailableError(fmt::format("GET {}/v1/models answered {}: {}", base, r->status, r->body.substr(0, 200))));
    model = j["data"][0].value("id", std::string());
  }
  // Prompts are drawn up front so every run with the same seed sends the same requests.
  std::mt19937 rng(static_cast<uint32_t>(a.seed));
  std::vector<std::vector<int32_t>> prompts(a.num_prompts);
  for (auto& p : prompts)
    for (int t = 0; t < a.input_len; ++t)
      p.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(a.token_id_max)));

  auto sh = std::make_shared<Shared>();
  const std::string url = base + "/v1/completions";
  const double t0 = NowSeconds();
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min(a.concurrency, a.num_prompts); ++w) {
    workers.emplace_back([&, sh] {
      for (;;) {
        int i;
        {
          MutexLock l(sh->mu);
          if (sh->next >= a.num_prompts) return;
          i = sh->next++;
        }
        Result r = OneRequest(a, url, model, prompts[i]);
        MutexLock l(sh->mu);
        ++sh->finished;
        if (!r.ok) {
          ++sh->failed;
          if (sh->first_error.empty()) sh->first_error = r.error;
        }
        sh->results.push_back(std::move(r));
        sh->cv.NotifyAll();
      }
    });
  }
  {
    // Progress on stderr about once a second; the workers' own deadlines bound this loop.
    MutexLock l(sh->mu);
    while (sh->finished < a.num_prompts) {
      sh->cv.WaitUntil(sh->mu, Deadline::After(std::chrono::seconds(1)));
      std::fprintf(stderr, "\rbench serve: %d/%d done, %d failed, %.1f s", sh->finished, a.num_prompts, sh->failed,
                   NowSeconds() - t0);
    }
    std::fprintf(stderr, "\n");
  }
  for (auto& t : workers) t.join();
  const double elapsed = NowSeconds() - t0;

  MutexLock l(sh->mu);
  std::vector<double> ttft, tpot, e2e;
  int64_t out_tokens = 0;
  int ok = 0;
  for (const Result& r : sh->results) {
    if (!r.ok) continue;
    ++ok;
    out_tokens += r.output_tokens;
    ttft.push_back(1000 * r.ttft);
    e2e.push_back(1000 * r.latency);
    if (a.stream && r.output_tokens > 1)
      tpot.push_back(1000 * (r.latency - r.ttft) / static_cast<double>(r.output_tokens - 1));
    if (!a.stream && r.output_tokens > 0) tpot.push_back(1000 * r.latency / static_cast<double>(r.output_tokens));
  }
  const double req_s = ok / elapsed, tok_s = static_cast<double>(out_tokens) / elapsed;
  if (a.json_out) {
    json j = {{"model", model},
              {"concurrency", a.concurrency},
              {"num_prompts", a.num_prompts},
              {"input_len", a.input_len},
              {"output_len", a.output_len},
              {"stream", a.stream},
              {"duration_s", elapsed},
              {"completed", ok},
              {"failed", sh->failed},
              {"output_tokens", out_tokens},
              {"req_s", req_s},
              {"output_tok_s", tok_s},
              {"ttft_mean_ms", Mean(ttft)},
              {"ttft_p50_ms", Percentile(ttft, 0.5)},
              {"ttft_p99_ms", Percentile(ttft, 0.99)},
              {"tpot_mean_ms", Mean(tpot)},
              {"tpot_p50_ms", Percentile(tpot, 0.5)},
              {"tpot_p99_ms", Percentile(tpot, 0.99)},
              {"e2el_p50_ms", Percentile(e2e, 0.5)},
              {"e2el_p99_ms", Percentile(e2e, 0.99)}};
    if (!sh->first_error.empty()) j["first_error"] = sh->first_error;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model %s, concurrency %d, %d prompts of %d tokens, %d output tokens each%s\n", model.c_str(),
                a.concurrency, a.num_prompts, a.input_len, a.output_len, a.stream ? ", streamed" : "");
    std::printf("successful requests:   %d (failed %d)\n", ok, sh->failed);
    if (!sh->first_error.empty()) std::printf("first error:           %s\n", sh->first_error.c_str());
    std::printf("duration:              %.2f s\n", elapsed);
    std::printf("request throughput:    %.2f req/s\n", req_s);
    std::printf("output throughput:     %.1f tok/s\n", tok_s);
    std::printf("TTFT ms  mean %.1f  p50 %.1f  p99 %.1f%s\n", Mean(ttft), Percentile(ttft, 0.5), Percentile(ttft, 0.99),
                a.stream ? "" : "  (not streamed: the whole request)");
    std::printf("TPOT ms  mean %.2f  p50 %.2f  p99 %.2f%s\n", Mean(tpot), Percentile(tpot, 0.5), Percentile(tpot, 0.99),
                a.stream ? "" : "  (not streamed: latency / tokens)");
  }
  return sh->failed == 0 ? 0 : 1;
}

}  // namespace

void AddServeBenchCommand(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand(
      "serve",
      "Load-test an OpenAI-compatible server: random token-id prompts on /v1/completions, greedy, EOS ignored.\n"
      "Without --stream, TTFT is the whole request's latency and TPOT is latency / output tokens.");
  auto a = std::make_shared<BenchArgs>();
  cmd->add_option("--url", a->url, "Server base URL (default http://127.0.0.1:8000)");
  cmd->add_option("--model", a->model, "Model name to request (default: the first of /v1/models)");
  cmd->add_option("--api-key", a->api_key, "Sent as 'Authorization: Bearer KEY'");
  cmd->add_option("--concurrency", a->concurrency, "Requests in flight (default 4)");
  cmd->add_option("--num-prompts", a->num_prompts, "Requests in all (default 16)");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens (default 128)");
  cmd->add_option("--output-len", a->output_len, "Generated tokens per request (default 64)");
  cmd->add_option("--token-id-max", a->token_id_max, "Prompt token ids are drawn from [0, N) (default 256)");
  cmd->add_option("--seed", a->seed, "Seed of the random prompts (default 0)");
  cmd->add_option("--timeout", a->timeout_s, "Per-request timeout in seconds (default 600)");
  cmd->add_flag("--stream", a->stream, "Stream the answers (SSE): measures TTFT and TPOT");
  cmd->add_flag("--json", a->json_out, "Print one JSON object with the figures");
  cmd->callback([a] { ExitCode() = RunBench(*a); });
}

}  // namespace kvferry::apps
