#pragma once
// kvferry/dp: data-parallel ranks in other processes — headless instances (`kvferry serve
// --headless`) that run engine ranks only and join the master's API server over one channel
// per instance (docs/serve.md, "Headless ranks"). The master's side is a RankServer: it listens on
// --data-parallel-rpc-port and stands in for each remote rank with an engine::Engine and a
// connector::Connector, so the API server treats local and remote ranks alike. The headless side is a
// RankHost: it dials the master, runs what it is sent on its engines, streams outputs back,
// and reconnects with backoff when the channel drops.
//
// Threading: both own their threads (an accept or connect loop, a reader and a writer per
// channel); every method is thread-safe. Outputs of remote requests are delivered on the
// channel's reader thread, in order per request.
// Ownership: RankServer owns the stand-ins it hands out (valid until it is destroyed); both
// borrow the engines and connectors in their options, which must outlive them.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/connector/connector.h"
#include "kvferry/engine/engine.h"

namespace kvferry::dp {

struct RankServerOptions {
  std::string bind_host = "0.0.0.0";
  int port = 29550;  // 0: any free port (tests)
  int dp_size = 1;
  // Ranks [first_remote_rank, dp_size) run in headless instances.
  int first_remote_rank = 1;
  // A local engine of the same model: model config, max_model_len, block size. Required.
  const engine::Engine* model_engine = nullptr;
  // The master's kv config (nullopt: colocated); the stand-in connectors report it, with the
  // engine_id each remote rank joins with.
  std::optional<connector::KvTransferConfig> kv_config;
  // Rank 0's connector worker, which runs the embedded bootstrap server: a remote rank's worker
  // is dropped from it when the rank leaves and registered again when it rejoins. May be null.
  connector::Connector* bootstrap_owner = nullptr;
  Duration ping_interval = std::chrono::seconds(1);
  Duration idle_timeout = std::chrono::seconds(5);  // a silent headless instance is gone after this
};

class RankServer {
 public:
  // Listens; Unavailable naming the address when the port cannot be bound.
  static StatusOr<std::unique_ptr<RankServer>> Start(const RankServerOptions& options);
  virtual ~RankServer() = default;  // Stop()

  // The stand-ins for remote rank `dp_rank` (first_remote_rank <= dp_rank < dp_size); the
  // connector is null without a kv config. Add on the engine fails with Unavailable while the
  // rank is not connected; a rank that leaves ends its requests in flight with an Unavailable
  // error naming the rank and why.
  virtual engine::Engine* engine(int dp_rank) = 0;
  virtual connector::Connector* connector(int dp_rank) = 0;
  // OK when the rank is connected and (with a connector) its worker is ready and registered;
  // Unavailable saying why not otherwise.
  virtual Status RankUp(int dp_rank) const = 0;
  virtual int port() const = 0;
  // Closes every channel (requests in flight end with errors) and stops listening.
  virtual void Stop() = 0;
};

struct RankHostOptions {
  std::string master_host;  // --data-parallel-address
  int master_port = 29550;  // --data-parallel-rpc-port
  struct Rank {
    int dp_rank = 0;
    engine::Engine* engine = nullptr;           // required
    connector::Connector* connector = nullptr;  // null: colocated
  };
  std::vector<Rank> ranks;
  std::string instance;  // how the master names this instance in logs ("host")
  Duration ping_interval = std::chrono::seconds(1);
  Duration idle_timeout = std::chrono::seconds(5);
  Duration stats_interval = std::chrono::milliseconds(500);
  Duration max_backoff = std::chrono::seconds(5);  // between connection attempts
};

class RankHost {
 public:
  // Starts the connect loop (it does not wait for the master).
  static StatusOr<std::unique_ptr<RankHost>> Start(const RankHostOptions& options);
  virtual ~RankHost() = default;  // Stop()

  virtual bool joined() const = 0;
  // Set when the master refused the join for good (another model, a rank it does not have):
  // the instance should exit with it. OK otherwise.
  virtual Status fatal() const = 0;
  // Leaves the master (requests running here are aborted) and stops reconnecting.
  virtual void Stop() = 0;
};

}  // namespace kvferry::dp
