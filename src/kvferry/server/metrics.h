#pragma once
// Prometheus metrics of the serving front end (private to server/): latency histograms fed from
// engine output callbacks, and a renderer that adds the engine's published counters. Names follow
// vLLM's (docs/serve.md lists them) so vLLM dashboards work. Thread-safe: observations take a
// mutex for a few adds and never wait on anything else.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"

namespace kvferry::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);
  // Appends the _bucket/_sum/_count lines of `name` with the label set `labels` ("k=\"v\"").
  void Render(const std::string& name, const std::string& help, const std::string& labels, std::string* out) const;

 private:
  const std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(std::string model_name);

  void ObserveTtft(double seconds);
  void ObserveInterToken(double seconds);
  void ObserveRequest(double e2e_seconds, engine::FinishReason reason);

  // The whole /metrics page (without connector lines).
  std::string Render(const engine::EngineStats& stats) const;

 private:
  const std::string labels_;
  mutable Mutex mu_;
  Histogram ttft_ KVF_GUARDED_BY(mu_);
  Histogram itl_ KVF_GUARDED_BY(mu_);
  Histogram e2e_ KVF_GUARDED_BY(mu_);
  uint64_t finished_[5] KVF_GUARDED_BY(mu_) = {};  // by FinishReason
};

// Adds `s` to `*total` (every field: gauges and counters of several ranks add up).
void AddEngineStats(const engine::EngineStats& s, engine::EngineStats* total);

// Merges Prometheus text pages into one: each family's HELP/TYPE once, then every page's
// samples of it, each page's with `label="<page label>"` added (none for an empty page label).
// Lines other than "# HELP"/"# TYPE" comments and samples are dropped.
std::string MergeExpositions(const std::vector<std::pair<std::string, std::string>>& pages, const std::string& label);

}  // namespace kvferry::server
