#pragma once
// Private to kvferry/proxy: the upstream instances, their health and discovered dp
// ranks, and round-robin selection.
//
// Threading: thread-safe. One health thread runs rounds of /health (and, for a
// prefiller that is new or coming back, bootstrap /query) through the async
// client; request threads pick instances and report transport failures.
// Lifetime: the http::Client must outlive the Registry's callbacks: destroy the
// client (which finishes every call) before the Registry.

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/http/http.h"
#include "kvferry/proxy/proxy.h"

namespace kvferry::proxy {

enum class Role { kPrefill, kDecode };

struct Instance {
  Role role = Role::kDecode;
  std::string url;            // base URL, no trailing slash
  std::string bootstrap_url;  // prefill only: "http://HOST:PORT" (also the remote_bootstrap_addr)
  // Counters for /metrics (relaxed: nothing else is published through them).
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> errors{0};
};

struct PrefillPick {
  Instance* instance = nullptr;
  int64_t dp_rank = 0;
  std::string engine_id;
};

class Registry {
 public:
  Registry(const ProxyOptions& options, http::Client* client);
  ~Registry();

  // Starts the health thread (first round at once). Stop() joins it.
  void Start();
  void Stop();

  // Round-robin over the (prefiller, dp rank) pairs of healthy, known prefillers.
  // Unavailable when there is none.
  StatusOr<PrefillPick> PickPrefill();
  StatusOr<Instance*> PickDecode();
  // A transport failure on a leg: out of rotation until /health answers 200.
  void MarkDown(Instance* instance, const Status& why);

  bool AllPrefillersKnown() const;
  bool Ready() const;
  // Blocks until Ready() or the deadline.
  bool WaitReady(const Deadline& deadline) const;
  // One line per instance: why /health says no ("" when ready).
  std::string NotReadyReason() const;
  void AppendMetrics(std::string* out) const;

  // One health round; returns once every check finished or after a bound.
  void CheckOnce();

 private:
  struct State {
    bool healthy = false;
    bool known = false;                                  // prefill: dp ranks learned from /query
    std::vector<std::pair<int64_t, std::string>> ranks;  // dp_rank → engine_id
    std::string last_error;
    int timeouts = 0;  // health checks in a row that timed out
  };
  static constexpr int kTimeoutsToFail = 3;
  static constexpr Duration kRecheckDown = std::chrono::milliseconds(250);
  void OnHealth(size_t i, const StatusOr<http::Response>& r);
  void OnQuery(size_t i, const StatusOr<http::Response>& r);
  void Done();

  const ProxyOptions options_;
  http::Client* const client_;
  std::vector<std::unique_ptr<Instance>> instances_;  // prefillers first; fixed after construction
  size_t num_prefill_ = 0;

  mutable Mutex mu_;
  mutable CondVar cv_;
  std::vector<State> state_ KVF_GUARDED_BY(mu_);
  uint64_t next_prefill_ KVF_GUARDED_BY(mu_) = 0;
  uint64_t next_decode_ KVF_GUARDED_BY(mu_) = 0;
  int outstanding_ KVF_GUARDED_BY(mu_) = 0;
  bool stop_ KVF_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvferry::proxy
