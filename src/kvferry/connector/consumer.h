#pragma once
// Private: the decoder side of the connector (PROTOCOL.md §3, §4). For each kLoadRemote
// request the engine parks, it finds the prefiller's worker through its bootstrap server
// (cached per address, one query in flight per address), sends the pull on a ZMQ DEALER
// (one per prefiller worker), and reports the answer to the engine with FinishRemoteKv.
//
// Threading: every method is thread-safe. One I/O thread owns the DEALER sockets, the
// bootstrap cache and the in-flight pulls; bootstrap queries (blocking HTTP, bounded by
// VLLM_MOONCAKE_CONNECTOR_TIMEOUT) run on a small pool. The hooks run on the engine's
// scheduler thread and only enqueue.

#include <zmq.hpp>

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/connector/bootstrap.h"
#include "kvferry/connector/config.h"
#include "kvferry/connector/metrics.h"
#include "kvferry/connector/zmq_util.h"
#include "kvferry/engine/engine.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::connector {

// A load's prefiller rank is the one whose engine id it names (no remote_dp_rank was given).
inline constexpr int64_t kAnyDpRank = -1;

class Consumer {
 public:
  // `engine`, `transfer`, `metrics` and `zmq_ctx` must outlive this object. `transfer` is this
  // instance's transfer engine, whose segment ("host:port") prefillers write into.
  Consumer(const KvTransferConfig& config, engine::Engine* engine, const transfer::TransferEngine* transfer,
           Duration load_timeout, Metrics* metrics, zmq::context_t* zmq_ctx);
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  Status Start();

  // A do_remote_prefill request (params already validated by the caller). `dp_rank` kAnyDpRank:
  // the prefiller rank whose engine is `engine_id` (rank 0 when engine_id is empty).
  Status Begin(const std::string& request_id, const std::string& transfer_id, const std::string& bootstrap_url,
               const std::string& engine_id, int64_t dp_rank);
  bool Cancel(const std::string& request_id);
  // The server refused a decode leg before it became a request (validation, overload, ...):
  // the prefiller is told (the empty pull) so it frees that transfer's blocks at once.
  void Abandon(const std::string& transfer_id, const std::string& bootstrap_url, const std::string& engine_id,
               int64_t dp_rank);
  bool OnOutput(const engine::Output& output);
  // The engine hooks.
  void OnNeeded(const std::string& request_id, std::span<const int32_t> block_ids, int num_local_cached_tokens);
  // True when a pull for the request may be out: the engine keeps its blocks until this
  // consumer calls ReleaseHeldBlocks (on the prefiller's answer, or the load timeout).
  bool OnAborted(const std::string& request_id);

  // Fails pending loads (the load-failure policy applies) and joins the threads. Idempotent.
  void Shutdown(const Deadline& deadline);

  int64_t pending_loads() const;

 private:
  enum class LoadState { kBegun, kLoading };
  struct Load {
    std::string transfer_id;
    std::string bootstrap_url;
    std::string engine_id;
    int64_t dp_rank = 0;
    LoadState state = LoadState::kBegun;
  };
  // One pull on its way through the I/O thread.
  struct Pull {
    std::string request_id;
    std::string transfer_id;
    std::string bootstrap_url;
    std::string engine_id;
    int64_t dp_rank = 0;
    std::vector<int64_t> blocks;
    bool empty = false;       // the abort notice: frees the prefiller's blocks
    bool may_requery = true;  // a cached bootstrap map that does not fit is queried again once
  };
  struct Command {
    // kNotice: only the empty pull for a transfer no local request owns.
    enum class Kind { kPull, kAbort, kNotice, kResolved } kind = Kind::kPull;
    Pull pull;                                  // kPull, kAbort, kNotice
    std::string url;                            // kResolved
    std::optional<StatusOr<BootstrapMap>> map;  // kResolved
  };
  struct BootstrapEntry {
    std::optional<BootstrapMap> map;
    bool querying = false;
    std::vector<Pull> waiters;
  };
  struct InFlight {
    std::string transfer_id;
    std::string bootstrap_url;
    std::string addr;
    uint64_t bytes = 0;
    TimePoint start{};
    TimePoint deadline{};
    bool aborted = false;  // the request is gone; its blocks are released on the answer
  };

  void Enqueue(Command c);
  void Loop();
  void Process(Command c);
  void Resolve(Pull pull);
  void OnResolved(const std::string& url, StatusOr<BootstrapMap> map);
  StatusOr<std::string> PickWorker(const BootstrapMap& map, const Pull& pull) const;
  void Send(Pull pull, const std::string& addr);
  void HandleReply(const std::string& addr, const std::vector<std::string>& frames);
  void FailPull(const Pull& pull, const Status& st);
  // A real pull that cannot be sent (`why`): fails it, and when `map` names a worker for its dp
  // rank, still sends that worker the empty pull so the prefiller frees the blocks now.
  void FailAndNotify(Pull pull, const Status& why, const BootstrapMap* map);
  // Ends a load: the engine learns the outcome. No-op if the load is gone (aborted, finished).
  void Complete(const std::string& request_id, const Status& st, uint64_t bytes, Duration took);
  bool StillLoading(const std::string& request_id);
  zmq::socket_t* Dealer(const std::string& addr, Status* st);
  // Ends an in-flight load whose answer will not come: an aborted one releases its held blocks,
  // any other fails with `why`; the bootstrap answer it used is forgotten.
  void EndUnanswered(const std::string& id, const Status& why);
  // The side channel to a prefiller worker closed (the process died or restarted), or its
  // first connect was refused: its reply can no longer come, so its loads end now instead of
  // at the load timeout.
  void OnPeerGone(const std::string& addr, bool was_connected);
  void DropDealer(const std::string& addr);

  const KvTransferConfig config_;
  engine::Engine* const engine_;
  const transfer::TransferEngine* const transfer_;
  const std::string segment_host_;
  const int64_t segment_port_;
  const Duration load_timeout_;
  Metrics* const metrics_;
  zmq::context_t* const zmq_ctx_;
  const uint64_t block_bytes_;
  const std::string model_fingerprint_ = engine_->model_fingerprint();  // sent with every pull
  Waker waker_;
  std::unique_ptr<ThreadPool> query_pool_;
  std::thread thread_;

  // I/O thread only.
  std::map<std::string, BootstrapEntry> bootstrap_;
  std::map<std::string, std::unique_ptr<zmq::socket_t>> dealers_;  // by "tcp://IP:PORT"
  // Per dealer, a PAIR socket receiving its ZMQ_EVENT_DISCONNECTED events (zmq_socket_monitor).
  std::map<std::string, std::unique_ptr<zmq::socket_t>> monitors_;
  uint64_t monitor_seq_ = 0;
  std::map<std::string, InFlight> in_flight_;  // by request id

  mutable Mutex mu_;
  std::map<std::string, Load> loads_ KVF_GUARDED_BY(mu_);
  std::deque<Command> commands_ KVF_GUARDED_BY(mu_);
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  bool shut_down_ KVF_GUARDED_BY(mu_) = false;
};

}  // namespace kvferry::connector
