#pragma once
// The bootstrap server (PROTOCOL.md §3) and its clients: prefiller workers
// register their side-channel address; decoders and proxies query the map.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "kvferry/base/base.h"
#include "kvferry/http/http.h"

namespace kvferry::connector {

struct WorkerInfo {
  std::string engine_id;
  int64_t dp_rank = 0;
  int64_t tp_rank = 0;
  int64_t pp_rank = 0;
  std::string addr;  // "tcp://IP:PORT"
};

// dp_rank → {engine_id, tp_rank → pp_rank → addr}
struct DpEntry {
  std::string engine_id;
  std::map<int64_t, std::map<int64_t, std::string>> worker_addr;
};
using BootstrapMap = std::map<int64_t, DpEntry>;

// The registry behind POST /register and GET /query. Thread-safe.
class BootstrapRegistry {
 public:
  // InvalidArgument (→ HTTP 400) for a duplicate (dp, tp, pp) or an engine_id that
  // differs from the one stored for that dp_rank.
  Status Register(const WorkerInfo& w);
  // Register, except that a registration identical to the stored one is OK (a headless rank
  // the master registers again when it reconnects).
  Status Adopt(const WorkerInfo& w);
  // Drops every worker of `dp_rank` (a headless data-parallel rank that left the master: its
  // address is dead). The engine_id is remembered: the rank may register again, under the same
  // engine_id only. No-op if unknown.
  void Deregister(int64_t dp_rank);
  BootstrapMap Snapshot() const;
  // The embedded server's own instance: GET /query answers 503 (Retry-After: 1) until every
  // expected dp rank has registered (and, with none expected, while nothing is registered), so
  // no router ever sees a 200 without workers. Once complete it stays complete: a rank that
  // leaves later (Deregister) is left out of /query, the others go on being served.
  void Expect(int64_t dp_rank);
  bool Complete() const;
  // Handles /register and /query; false for other paths (the caller answers those).
  bool Handle(const http::Request& req, http::Responder& resp);

 private:
  mutable Mutex mu_;
  BootstrapMap map_ KVF_GUARDED_BY(mu_);
  std::set<int64_t> expected_ KVF_GUARDED_BY(mu_);
  std::map<int64_t, std::string> retired_ KVF_GUARDED_BY(mu_);  // dp_rank → engine_id of a dropped rank
  mutable bool completed_ KVF_GUARDED_BY(mu_) = false;          // Complete() latched
};

// JSON of GET /query: {"<dp>": {"engine_id": s, "worker_addr": {"<tp>": {"<pp>": addr}}}}.
std::string EncodeBootstrapMap(const BootstrapMap& m);
StatusOr<BootstrapMap> DecodeBootstrapMap(std::string_view json);
// Parses and validates a /register body.
StatusOr<WorkerInfo> DecodeWorkerInfo(std::string_view json);
std::string EncodeWorkerInfo(const WorkerInfo& w);

// A standalone bootstrap server on host:port.
class BootstrapServer {
 public:
  static StatusOr<std::unique_ptr<BootstrapServer>> Start(const std::string& host, uint16_t port);
  uint16_t port() const { return server_->port(); }
  BootstrapRegistry& registry() { return registry_; }
  void Stop() { server_->Stop(); }

 private:
  BootstrapRegistry registry_;
  std::unique_ptr<http::Server> server_;
};

// POST <base_url>/register with up to `attempts` tries, backoff 1 s then 2 s (capped at
// 10 s), each bounded by `per_call`. The last error when all fail.
Status RegisterWorker(const std::string& base_url, const WorkerInfo& w, Duration per_call, int attempts = 3,
                      Duration first_backoff = std::chrono::seconds(1));
// GET <base_url>/query.
StatusOr<BootstrapMap> QueryBootstrap(const std::string& base_url, const Deadline& deadline);

}  // namespace kvferry::connector
