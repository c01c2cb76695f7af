// Upstream instances: health rounds, discovery through bootstrap /query, round-robin.
#include "kvferry/proxy/registry.h"

#include <algorithm>

#include <fmt/format.h>

#include "kvferry/connector/connector.h"

namespace kvferry::proxy {

namespace {
std::string TrimSlash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}
std::string RoleName(Role r) {
  return r == Role::kPrefill ? "prefill" : "decode";
}
}  // namespace

Registry::Registry(const ProxyOptions& options, http::Client* client) : options_(options), client_(client) {
  for (const PrefillInstance& p : options_.prefill) {
    auto inst = std::make_unique<Instance>();
    inst->role = Role::kPrefill;
    inst->url = TrimSlash(p.url);
    if (!inst->url.starts_with("http://")) inst->url = "http://" + inst->url;
    auto u = http::ParseUrl(inst->url);
    std::string host = u.ok() ? u->host : "localhost";
    if (host.find(':') != std::string::npos) host = "[" + host + "]";
    inst->bootstrap_url = fmt::format("http://{}:{}", host, p.bootstrap_port);
    instances_.push_back(std::move(inst));
  }
  num_prefill_ = instances_.size();
  for (const std::string& d : options_.decode) {
    auto inst = std::make_unique<Instance>();
    inst->role = Role::kDecode;
    inst->url = TrimSlash(d);
    if (!inst->url.starts_with("http://")) inst->url = "http://" + inst->url;
    instances_.push_back(std::move(inst));
  }
  MutexLock l(mu_);
  state_.resize(instances_.size());
}

Registry::~Registry() {
  Stop();
}

void Registry::Start() {
  thread_ = std::thread([this] {
    SetCurrentThreadName("kvf-proxy-health");
    for (;;) {
      CheckOnce();
      MutexLock l(mu_);
      // While an instance is out of rotation, look again sooner: one that was still
      // starting (or restarted) joins within a fraction of a second, not a whole interval.
      bool all_healthy = true;
      for (const State& s : state_) all_healthy = all_healthy && s.healthy;
      Duration wait =
          all_healthy ? options_.health_interval : std::min<Duration>(options_.health_interval, kRecheckDown);
      Deadline next = Deadline::After(wait);
      while (!stop_ && !next.Expired()) cv_.WaitUntil(mu_, next);
      if (stop_) return;
    }
  });
}

void Registry::Stop() {
  {
    MutexLock l(mu_);
    stop_ = true;
    cv_.NotifyAll();
  }
  if (thread_.joinable()) thread_.join();
}

void Registry::CheckOnce() {
  {
    MutexLock l(mu_);
    outstanding_ += static_cast<int>(instances_.size());
  }
  for (size_t i = 0; i < instances_.size(); ++i) {
    http::CallOptions o;
    o.timeout = options_.health_timeout;
    client_->Fetch(instances_[i]->url + "/health", o, [this, i](StatusOr<http::Response> r) { OnHealth(i, r); });
  }
  // Each check is bounded by health_timeout (a /query after /health by another); wait a
  // little longer than both, so a stuck round cannot stall the next one for long.
  Deadline bound = Deadline::After(options_.health_timeout * 2 + std::chrono::seconds(1));
  MutexLock l(mu_);
  while (outstanding_ > 0 && !stop_ && !bound.Expired()) cv_.WaitUntil(mu_, bound);
}

void Registry::Done() {
  MutexLock l(mu_);
  --outstanding_;
  cv_.NotifyAll();
}

void Registry::OnHealth(size_t i, const StatusOr<http::Response>& r) {
  Instance& inst = *instances_[i];
  bool ok = r.ok() && r->status == 200;
  std::string why = !r.ok() ? r.status().ToString() : fmt::format("/health answered {}", r->status);
  if (ok && inst.role == Role::kPrefill) {
    bool query;
    {
      MutexLock l(mu_);
      // New, or back after being down (it may have restarted with new engine ids).
      query = !state_[i].known || !state_[i].healthy;
    }
    if (query) {
      http::CallOptions o;
      o.timeout = options_.health_timeout;
      client_->Fetch(inst.bootstrap_url + "/query", o, [this, i](StatusOr<http::Response> q) { OnQuery(i, q); });
      return;  // OnQuery calls Done()
    }
  }
  {
    MutexLock l(mu_);
    State& s = state_[i];
    // A check that timed out may only mean the instance is busy: it leaves the rotation
    // after kTimeoutsToFail in a row. A refused connection or a non-200 answer is definite.
    bool timed_out = !r.ok() && r.status().code() == StatusCode::kDeadlineExceeded;
    s.timeouts = timed_out ? s.timeouts + 1 : 0;
    if (timed_out && s.healthy && s.timeouts < kTimeoutsToFail) {
      KVF_LOG_WARN("proxy: {} instance {}: health check {} of {} timed out", RoleName(inst.role), inst.url, s.timeouts,
                   kTimeoutsToFail);
      --outstanding_;
      cv_.NotifyAll();
      return;
    }
    if (ok && !s.healthy) KVF_LOG_INFO("proxy: {} instance {} is healthy", RoleName(inst.role), inst.url);
    if (!ok && (s.healthy || s.last_error != why)) {
      KVF_LOG_WARN("proxy: {} instance {} out of rotation: {}", RoleName(inst.role), inst.url, why);
    }
    s.healthy = ok;
    s.last_error = ok ? "" : why;
    --outstanding_;
    cv_.NotifyAll();
  }
}

void Registry::OnQuery(size_t i, const StatusOr<http::Response>& r) {
  Instance& inst = *instances_[i];
  std::string why;
  std::vector<std::pair<int64_t, std::string>> ranks;
  if (!r.ok()) {
    why = fmt::format("bootstrap {}/query: {}", inst.bootstrap_url, r.status().ToString());
  } else if (r->status != 200) {
    why = fmt::format("bootstrap {}/query answered {}", inst.bootstrap_url, r->status);
  } else {
    auto map = connector::DecodeBootstrapMap(r->body);
    if (!map.ok()) {
      why = fmt::format("bootstrap {}/query: {}", inst.bootstrap_url, map.status().message());
    } else {
      for (const auto& [dp, entry] : *map) ranks.emplace_back(dp, entry.engine_id);
      if (ranks.empty()) why = fmt::format("bootstrap {}/query: no worker registered yet", inst.bootstrap_url);
    }
  }
  MutexLock l(mu_);
  State& s = state_[i];
  if (why.empty()) {
    std::string list;
    for (const auto& [dp, e] : ranks) list += fmt::format("{}{}→{}", list.empty() ? "" : ", ", dp, e);
    KVF_LOG_INFO("proxy: prefill instance {} ready, dp ranks: {}", inst.url, list);
    s.ranks = std::move(ranks);
    s.known = true;
    s.healthy = true;
    s.last_error.clear();
  } else {
    if (s.healthy || s.last_error != why) KVF_LOG_WARN("proxy: prefill instance {}: {}", inst.url, why);
    s.healthy = false;
    s.last_error = why;
  }
  --outstanding_;
  cv_.NotifyAll();
}

StatusOr<PrefillPick> Registry::PickPrefill() {
  MutexLock l(mu_);
  size_t total = 0;
  for (size_t i = 0; i < num_prefill_; ++i) {
    if (state_[i].healthy && state_[i].known) total += state_[i].ranks.size();
  }
  if (total == 0) return UnavailableError("no healthy prefill instance");
  size_t k = next_prefill_++ % total;
  for (size_t i = 0; i < num_prefill_; ++i) {
    const State& s = state_[i];
    if (!s.healthy || !s.known) continue;
    if (k < s.ranks.size()) return PrefillPick{instances_[i].get(), s.ranks[k].first, s.ranks[k].second};
    k -= s.ranks.size();
  }
  return InternalError("prefill round-robin out of range");
}

StatusOr<Instance*> Registry::PickDecode() {
  MutexLock l(mu_);
  size_t total = 0;
  for (size_t i = num_prefill_; i < instances_.size(); ++i) total += state_[i].healthy ? 1 : 0;
  if (total == 0) return UnavailableError("no healthy decode instance");
  size_t k = next_decode_++ % total;
  for (size_t i = num_prefill_; i < instances_.size(); ++i) {
    if (!state_[i].healthy) continue;
    if (k == 0) return instances_[i].get();
    --k;
  }
  return InternalError("decode round-robin out of range");
}

void Registry::MarkDown(Instance* instance, const Status& why) {
  MutexLock l(mu_);
  for (size_t i = 0; i < instances_.size(); ++i) {
    if (instances_[i].get() != instance) continue;
    if (state_[i].healthy) {
      KVF_LOG_WARN("proxy: {} instance {} out of rotation: {}", RoleName(instance->role), instance->url,
                   why.ToString());
    }
    state_[i].healthy = false;
    state_[i].last_error = why.ToString();
  }
}

bool Registry::AllPrefillersKnown() const {
  MutexLock l(mu_);
  for (size_t i = 0; i < num_prefill_; ++i) {
    if (!state_[i].known) return false;
  }
  return true;
}

bool Registry::Ready() const {
  return NotReadyReason().empty();
}

bool Registry::WaitReady(const Deadline& deadline) const {
  for (;;) {
    if (Ready()) return true;
    if (deadline.Expired()) return false;
    MutexLock l(mu_);
    cv_.WaitUntil(mu_, Deadline::After(std::chrono::milliseconds(20)));
  }
}

std::string Registry::NotReadyReason() const {
  MutexLock l(mu_);
  std::string out;
  bool any_p = false, any_d = false;
  for (size_t i = 0; i < instances_.size(); ++i) {
    const State& s = state_[i];
    if (i < num_prefill_ && !s.known) {
      out += fmt::format("prefill instance {} not discovered yet{}{}; ", instances_[i]->url,
                         s.last_error.empty() ? "" : ": ", s.last_error);
    }
    if (s.healthy) (i < num_prefill_ ? any_p : any_d) = true;
  }
  if (!any_p) out += "no healthy prefill instance; ";
  if (!any_d) out += "no healthy decode instance; ";
  if (!out.empty()) out.resize(out.size() - 2);
  return out;
}

void Registry::AppendMetrics(std::string* out) const {
  std::vector<std::pair<bool, bool>> st;
  {
    MutexLock l(mu_);
    for (const State& s : state_) st.emplace_back(s.healthy, s.known);
  }
  auto label = [](const Instance& i) { return fmt::format("role=\"{}\",instance=\"{}\"", RoleName(i.role), i.url); };
  *out += "# HELP kvferry_proxy_instance_healthy 1 while the instance is in rotation.\n";
  *out += "# TYPE kvferry_proxy_instance_healthy gauge\n";
  for (size_t i = 0; i < instances_.size(); ++i) {
    *out += fmt::format("kvferry_proxy_instance_healthy{{{}}} {}\n", label(*instances_[i]), st[i].first ? 1 : 0);
  }
  *out += "# HELP kvferry_proxy_upstream_requests_total Legs sent to the instance.\n";
  *out += "# TYPE kvferry_proxy_upstream_requests_total counter\n";
  for (const auto& i : instances_) {
    *out += fmt::format("kvferry_proxy_upstream_requests_total{{{}}} {}\n", label(*i),
                        i->requests.load(std::memory_order_relaxed));
  }
  *out +=
      "# HELP kvferry_proxy_upstream_errors_total Legs to the instance that failed (transport error, timeout or "
      "5xx).\n";
  *out += "# TYPE kvferry_proxy_upstream_errors_total counter\n";
  for (const auto& i : instances_) {
    *out += fmt::format("kvferry_proxy_upstream_errors_total{{{}}} {}\n", label(*i),
                        i->errors.load(std::memory_order_relaxed));
  }
}

}  // namespace kvferry::proxy
