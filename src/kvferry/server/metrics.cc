#include "kvferry/server/metrics.h"

#include <fmt/format.h>

namespace kvferry::server {
namespace {

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void Family(std::string* out, const std::string& name, const char* type, const std::string& help) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

template <typename T>
void Sample(std::string* out, const std::string& name, const std::string& labels, T value) {
  *out += fmt::format("{}{{{}}} {}\n", name, labels, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::Render(const std::string& name, const std::string& help, const std::string& labels,
                       std::string* out) const {
  Family(out, name, "histogram", help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    *out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, bounds_[i], cumulative);
  }
  *out += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels, count_);
  *out += fmt::format("{}_sum{{{}}} {}\n", name, labels, sum_);
  *out += fmt::format("{}_count{{{}}} {}\n", name, labels, count_);
}

ServerMetrics::ServerMetrics(std::string model_name)
    : labels_(fmt::format("model_name=\"{}\"", EscapeLabel(model_name))),
      ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 20}),
      e2e_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960}) {}

void ServerMetrics::ObserveTtft(double s) {
  MutexLock l(mu_);
  ttft_.Observe(s);
}

void ServerMetrics::ObserveInterToken(double s) {
  MutexLock l(mu_);
  itl_.Observe(s);
}

void ServerMetrics::ObserveRequest(double e2e, engine::FinishReason reason) {
  MutexLock l(mu_);
  e2e_.Observe(e2e);
  const int r = static_cast<int>(reason);
  if (r >= 0 && r < 5) ++finished_[r];
}

std::string ServerMetrics::Render(const engine::EngineStats& s) const {
  std::string out;
  const std::string& L = labels_;
  auto gauge = [&](const char* name, const char* help, auto v) {
    Family(&out, name, "gauge", help);
    Sample(&out, name, L, v);
  };
  // Counters carry the _total suffix in both the family and the sample, as vLLM's
  // (prometheus_client) exposition does.
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    Family(&out, name, "counter", help);
    Sample(&out, name, L, v);
  };
  gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_running);
  gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled (including those waiting for remote KV).",
        s.num_waiting);
  const double usage = s.blocks_total > 0 ? static_cast<double>(s.blocks_used) / s.blocks_total : 0.0;
  gauge("vllm:kv_cache_usage_perc", "KV cache usage as a fraction of the blocks (1 = full).", usage);
  counter("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries);
  counter("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits);
  counter("vllm:prompt_tokens_total", "Prompt tokens processed.", s.prompt_tokens_total);
  counter("vllm:generation_tokens_total", "Tokens generated.", s.generation_tokens_total);
  counter("vllm:num_preemptions_total", "Requests preempted (recomputed) because KV blocks ran out.",
          s.preemptions_total);
  gauge("kvferry:kv_blocks_used", "KV cache blocks referenced by requests (running, waiting or held).",
        s.blocks_used);
  gauge("kvferry:kv_blocks_free", "KV cache blocks not referenced by any request.", s.blocks_total - s.blocks_used);
  gauge("kvferry:kv_blocks_total", "KV cache blocks in the arena.", s.blocks_total);
  gauge("kvferry:kv_blocks_held", "KV cache blocks held for a remote decoder.", s.blocks_held);
  gauge("kvferry:num_requests_waiting_remote_kv", "Requests parked until their KV arrives from a prefiller.",
        s.num_waiting_remote);
  counter("kvferry:engine_steps_total", "Scheduler steps run.", s.steps_total);
  MutexLock l(mu_);
  Family(&out, "vllm:request_success_total", "counter", "Finished requests by finish reason.");
  const char* reasons[5] = {"none", "stop", "length", "abort", "error"};
  for (int r = 1; r < 5; ++r) {
    out += fmt::format("vllm:request_success_total{{{},finished_reason=\"{}\"}} {}\n", L, reasons[r], finished_[r]);
  }
  ttft_.Render("vllm:time_to_first_token_seconds", "Time to first token (from the request's arrival).", L, &out);
  itl_.Render("vllm:inter_token_latency_seconds", "Time between consecutive outputs of one request.", L, &out);
  e2e_.Render("vllm:e2e_request_latency_seconds", "Request latency from arrival to the last token.", L, &out);
  return out;
}

}  // namespace kvferry::server
