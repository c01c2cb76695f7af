#include "kvferry/server/metrics.h"

#include <fmt/format.h>

#include <map>
#include <string_view>

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

void AddEngineStats(const engine::EngineStats& s, engine::EngineStats* t) {
  t->num_running += s.num_running;
  t->num_waiting += s.num_waiting;
  t->num_waiting_remote += s.num_waiting_remote;
  t->blocks_total += s.blocks_total;
  t->blocks_used += s.blocks_used;
  t->blocks_held += s.blocks_held;
  t->prefix_cache_queries += s.prefix_cache_queries;
  t->prefix_cache_hits += s.prefix_cache_hits;
  t->prompt_tokens_total += s.prompt_tokens_total;
  t->generation_tokens_total += s.generation_tokens_total;
  t->preemptions_total += s.preemptions_total;
  t->requests_finished_total += s.requests_finished_total;
  t->steps_total += s.steps_total;
}

std::string MergeExpositions(const std::vector<std::pair<std::string, std::string>>& pages, const std::string& label) {
  struct Fam {
    std::string header;  // HELP and TYPE lines
    std::string samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Fam> fams;
  for (const auto& [value, text] : pages) {
    const std::string add = value.empty() ? "" : fmt::format("{}=\"{}\"", label, EscapeLabel(value));
    std::string current;
    size_t at = 0;
    while (at < text.size()) {
      size_t nl = text.find('\n', at);
      if (nl == std::string::npos) nl = text.size();
      const std::string_view line(text.data() + at, nl - at);
      at = nl + 1;
      if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
        std::string_view rest = line.substr(7);
        current = std::string(rest.substr(0, rest.find(' ')));
        auto [it, fresh] = fams.try_emplace(current);
        if (fresh) order.push_back(current);
        // Only the first page's header lines are kept.
        if (it->second.samples.empty() && it->second.header.find(std::string(line.substr(0, 7))) == std::string::npos) {
          it->second.header.append(line);
          it->second.header += '\n';
        }
        continue;
      }
      if (line.empty() || line[0] == '#') continue;
      if (current.empty()) {
        current = std::string(line.substr(0, line.find_first_of("{ ")));
        if (fams.try_emplace(current).second) order.push_back(current);
      }
      std::string& out = fams[current].samples;
      const size_t brace = line.find('{');
      const size_t space = line.find(' ');
      if (add.empty()) {
        out.append(line);
      } else if (brace != std::string_view::npos && brace < space) {
        const bool no_labels = brace + 1 < line.size() && line[brace + 1] == '}';
        out.append(line.substr(0, brace + 1));
        out += add;
        if (!no_labels) out += ',';
        out.append(line.substr(brace + 1));
      } else {
        out.append(line.substr(0, space));
        out += '{';
        out += add;
        out += '}';
        out.append(line.substr(space));
      }
      out += '\n';
    }
  }
  std::string merged;
  for (const std::string& name : order) {
    merged += fams[name].header;
    merged += fams[name].samples;
  }
  return merged;
}

}  // namespace kvferry::server
