#pragma once
// Private: the prefiller side of the connector (PROTOCOL.md §4). Holds finished prefills'
// KV blocks keyed by transfer_id, answers decoders' pulls on a ZMQ ROUTER by writing the
// blocks into the decoder with the transfer engine, and frees what nobody pulled after the
// abort timeout.
//
// Threading: every method is thread-safe. One side-channel thread owns the ROUTER socket
// (receives pulls, sends replies, runs the timers); a pool of num_workers sender threads
// runs the transfers. OnOutput runs on the engine's scheduler thread and never blocks.

#include <zmq.hpp>

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/connector/config.h"
#include "kvferry/connector/metrics.h"
#include "kvferry/connector/side_channel.h"
#include "kvferry/connector/zmq_util.h"
#include "kvferry/engine/engine.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::connector {

class Producer {
 public:
  // `engine`, `te`, `metrics` and `zmq_ctx` must outlive this object.
  Producer(const KvTransferConfig& config, engine::Engine* engine, transfer::TransferEngine* te, Metrics* metrics,
           zmq::context_t* zmq_ctx);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Binds the ROUTER on tcp://host:<random port> and starts the threads.
  Status Start(const std::string& host);
  // "tcp://IP:PORT" of the ROUTER (what the worker registers).
  std::string endpoint() const;

  // A do_remote_decode request: kHoldForRemote, or kLocal when the decoder already gave up
  // on this transfer_id. AlreadyExists for a transfer_id or request id in use.
  StatusOr<engine::KvRole> Begin(const std::string& request_id, const std::string& transfer_id);
  // False when the request is not one of ours.
  bool Cancel(const std::string& request_id);
  // The server refused a prefill leg with this transfer_id before it became a request (bad
  // body, unknown model, overload, duplicate id, ...): pulls for it get ERROR with `why` at once,
  // now and for the abort timeout. No-op when an accepted request holds the id.
  void Reject(const std::string& transfer_id, const std::string& why);
  bool OnOutput(const engine::Output& output);

  // Fails waiting pulls, stops the threads, frees held blocks. Idempotent.
  void Shutdown(const Deadline& deadline);

  int64_t held_requests() const;
  int64_t waiting_pulls() const;

 private:
  // One side-channel message (it may name several decoder requests).
  struct PullCtx {
    std::vector<std::string> envelope;  // routing frames to answer on
    std::string segment;                // decoder's transfer-engine segment "host:port"
    uint64_t remote_base = 0;
    uint64_t remote_block_len = 0;
    size_t total = 0;
    size_t remaining = 0;  // guarded by Producer::mu_
  };
  // One decoder request of a message.
  struct Job {
    std::shared_ptr<PullCtx> ctx;
    std::string d_req_id;
    std::string transfer_id;
    std::vector<int64_t> blocks;  // decoder block ids; empty = the decoder aborted
    TimePoint arrived{};          // when the pull came in (its waits are bounded from here)
  };
  struct Entry {
    std::string request_id;  // empty: a placeholder (the pull came before the request)
    bool finished = false;   // the prefill finished and its blocks are held
    std::vector<int32_t> blocks;
    TimePoint expire{};      // when held blocks are freed unpulled
    bool in_flight = false;  // a sender is writing the blocks now
    bool aborted = false;    // the decoder sent the empty pull
    TimePoint placeholder_until{};
    std::vector<Job> waiting;  // pulls waiting for the prefill
  };
  struct Gone {
    std::string why;
    TimePoint until;
  };
  struct Run {
    Job job;
    std::vector<int32_t> held;
    std::string request_id;
  };

  void Loop();
  void HandleMessage(std::vector<std::string> frames);
  void Dispatch(Job job);
  void Submit(Run run);
  void Execute(Run run);
  Status Write(const Job& job, const std::vector<int32_t>& held, uint64_t* bytes, uint64_t* descriptors);
  void Timers();
  void Reply(const std::vector<std::string>& envelope, const XferResponse& r);
  void FinishJobLocked(const Job& job, const Status& st) KVF_REQUIRES(mu_);
  void FailWaitingLocked(Entry& e, const Status& st) KVF_REQUIRES(mu_);
  // The decoder gave up on `tid` (empty pull, unusable layout): frees or marks it. Returns the
  // request id whose blocks the caller must release outside the lock ("" for none).
  std::string AbortTransferLocked(const std::string& tid) KVF_REQUIRES(mu_);
  void TombstoneLocked(const std::string& transfer_id, std::string why) KVF_REQUIRES(mu_);

  const KvTransferConfig config_;
  engine::Engine* const engine_;
  const std::string model_fingerprint_ = engine_->model_fingerprint();  // checked against each pull's
  transfer::TransferEngine* const te_;
  Metrics* const metrics_;
  zmq::context_t* const zmq_ctx_;
  Waker waker_;

  // Owned by the side-channel thread once it runs (Start hands it over).
  std::unique_ptr<zmq::socket_t> router_;
  std::unique_ptr<ThreadPool> pool_;
  std::thread thread_;

  mutable Mutex mu_;
  std::string endpoint_ KVF_GUARDED_BY(mu_);
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  bool loop_stop_ KVF_GUARDED_BY(mu_) = false;
  bool shut_down_ KVF_GUARDED_BY(mu_) = false;
  std::map<std::string, Entry> entries_ KVF_GUARDED_BY(mu_);           // by transfer_id
  std::map<std::string, std::string> by_request_ KVF_GUARDED_BY(mu_);  // request_id → transfer_id
  std::map<std::string, Gone> gone_ KVF_GUARDED_BY(mu_);               // recently ended transfer_ids
  std::set<std::string> opened_segments_ KVF_GUARDED_BY(mu_);          // decoders' segments opened early
  std::deque<std::vector<std::string>> outbound_ KVF_GUARDED_BY(mu_);  // replies to send
};

}  // namespace kvferry::connector
