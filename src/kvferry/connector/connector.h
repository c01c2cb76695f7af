#pragma once
// kvferry/connector: the MooncakeConnector (PROTOCOL.md §1, §3, §4).
// config.h: --kv-transfer-config and VLLM_MOONCAKE_* parsing. bootstrap.h: the
// bootstrap server and its clients. The side-channel codec (side_channel.h) is private.
// Connector (below): drives prefill/decode pairs on top of the engine's connector hooks
// and the transfer engine.
//
// Threading: every type documents its own. Connector's methods are thread-safe; the
// hooks it returns run on the engine's scheduler thread and never block (they hand
// work to the connector's own threads).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/connector/bootstrap.h"
#include "kvferry/connector/config.h"
#include "kvferry/engine/engine.h"

namespace kvferry::connector {

struct ConnectorOptions {
  KvTransferConfig config;
  // IP this instance advertises for its side channel (ZMQ ROUTER) and its transfer-engine
  // segment. Empty: the host's primary non-loopback IPv4 address, else 127.0.0.1.
  std::string advertise_host;
  // Host the embedded bootstrap server binds ("0.0.0.0" = every interface).
  std::string bootstrap_bind_host = "0.0.0.0";
  int64_t dp_rank = 0;  // this worker's data-parallel rank (tp = pp = 0: one worker per rank)
  // The dp ranks the embedded bootstrap server (started by this worker) waits for before GET
  // /query answers 200. Empty (default): just `dp_rank`. A server with several data-parallel
  // ranks lists every rank (local and headless) here on the worker that starts the server; the
  // other ranks' workers name it in config.bootstrap_server_address.
  std::vector<int64_t> expect_dp_ranks;
  // The HTTP port this instance serves on. With config.engine_id empty the engine id is
  // StableEngineId(advertised host, instance_port, dp_rank); 0 (unknown): a random UUID.
  int instance_port = 0;
  // Decoder: how long one load waits for the prefiller's answer once its pull was sent.
  // Zero (default): config.abort_request_timeout + 60 s, as PROTOCOL.md §4 says.
  Duration load_timeout = Duration::zero();
};

// kv_transfer_params of one request (PROTOCOL.md §2), as the server parsed them.
struct RequestKvParams {
  bool do_remote_decode = false;   // proxy → prefiller: hold the KV for a decoder
  bool do_remote_prefill = false;  // proxy → decoder: load the KV from a prefiller
  std::string transfer_id;
  std::string remote_bootstrap_addr;  // "http://HOST:PORT"
  std::string remote_engine_id;
  std::optional<int64_t> remote_dp_rank;
};

// Prometheus-visible counters (both roles).
struct ConnectorStats {
  uint64_t transfers_total = 0;  // KV transfers completed (sent by P, received by D)
  uint64_t transfer_bytes_total = 0;
  uint64_t transfer_blocks_total = 0;
  uint64_t transfer_descriptors_total = 0;
  uint64_t failed_transfers_total = 0;   // P: writes or pulls that failed
  uint64_t failed_receives_total = 0;    // D: loads that failed (error, timeout, bad peer)
  uint64_t expired_requests_total = 0;   // P: held blocks freed by the abort timeout
  uint64_t rejected_messages_total = 0;  // P: side-channel messages that failed to decode
  int64_t held_requests = 0;             // P: requests whose blocks are held now
  int64_t waiting_pulls = 0;             // P: decoder pulls waiting for their prefill now
  int64_t pending_loads = 0;             // D: requests waiting for remote KV now
};

// The MooncakeConnector of one serving instance (one worker: tp = pp = 1).
//
// Lifecycle: Create → pass Hooks() into engine::EngineOptions → engine::Engine::Create →
// Start(engine) → per request: BeginRequest before Engine::Add, OnOutput for each of its
// outputs → Shutdown before the engine shuts down.
class Connector {
 public:
  static StatusOr<std::unique_ptr<Connector>> Create(const ConnectorOptions& options);
  virtual ~Connector() = default;

  // The hooks to install in the engine (they call back into this connector).
  virtual engine::ConnectorHooks Hooks() = 0;

  // Registers the engine's KV arena with the transfer engine, binds the side channel,
  // starts the embedded bootstrap server (producer/both, unless an external one is
  // configured) and registers this worker. Errors name what failed (port taken,
  // bootstrap unreachable after the retries, ...).
  virtual Status Start(engine::Engine* engine) = 0;

  // Called before Engine::Add for a request that carried kv_transfer_params (or none:
  // params.do_remote_* false → kLocal). Returns the engine KvRole to use. Errors:
  // InvalidArgument (a leg this role cannot take, missing transfer_id or bootstrap address),
  // AlreadyExists (a second active request with this transfer_id). On OK the server must
  // either Add the request and feed OnOutput until its final output, or call
  // CancelRequest if Add failed.
  virtual StatusOr<engine::KvRole> BeginRequest(const std::string& request_id, const RequestKvParams& params) = 0;
  virtual void CancelRequest(const std::string& request_id) = 0;
  // The server refused a request carrying these params before (or when) BeginRequest ran: bad
  // body, unknown model, overload, duplicate transfer_id. Routers send the other leg anyway, so a
  // refused prefill leg makes pulls for its transfer_id get ERROR at once, and a refused decode
  // leg tells its prefiller (the empty pull) to free the blocks now. `why` is what the client got.
  virtual void OnRejected(const RequestKvParams& params, const Status& why) = 0;
  // Every Output of a request BeginRequest accepted (the final one carries held_blocks).
  virtual void OnOutput(const engine::Output& output) = 0;

  // True once the worker is registered with its bootstrap server (producer/both) or
  // started (consumer): what /health reports.
  virtual bool Ready() const = 0;
  virtual ConnectorStats GetStats() const = 0;
  // Prometheus text lines for /metrics (kvferry:kv_transfer_* counters, the transfer duration
  // histogram, descriptors per transfer).
  virtual std::string MetricsText() const = 0;
  virtual const KvTransferConfig& config() const = 0;
  // "http://HOST:PORT" of the bootstrap server this worker registered with ("" for consumer).
  virtual std::string bootstrap_url() const = 0;
  // The data-parallel rank this worker registered under (ConnectorOptions.dp_rank).
  virtual int64_t dp_rank() const = 0;
  // The embedded bootstrap server's map (every registered rank), or nullopt when this worker
  // started none (consumer, a rank > 0 or an external server).
  virtual std::optional<BootstrapMap> BootstrapSnapshot() const = 0;
  // Producer/both once started: "tcp://IP:PORT" of this worker's side channel (what it
  // registered); "" otherwise.
  virtual std::string worker_endpoint() const = 0;
  // The embedded bootstrap server's map, for workers of other processes (headless
  // data-parallel ranks, docs/serve.md): AdoptWorker registers one again when its rank
  // reconnects (OK when it is registered as it is; InvalidArgument as /register otherwise);
  // DropWorkers forgets a rank that left (its address is dead; it may return under the same
  // engine_id only). FailedPrecondition / no-op when this worker started no server.
  virtual Status AdoptWorker(const WorkerInfo& worker) = 0;
  virtual void DropWorkers(int64_t dp_rank) = 0;

  // Stops the side channel and the sender pool, fails pending loads (policy applies), frees
  // held blocks, stops the embedded bootstrap server. Idempotent.
  virtual void Shutdown(const Deadline& deadline) = 0;
};

}  // namespace kvferry::connector
