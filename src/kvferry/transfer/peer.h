#pragma once
// The initiator side for one remote segment (private to transfer/): a queue of
// slices and `lanes` threads, each owning one persistent connection (TCP, or the
// shm control socket) and keeping up to `depth` requests in flight on it.

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/batch.h"
#include "kvferry/transfer/shm_map.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {

struct Slice {
  BatchRecord* batch = nullptr;
  Op op = Op::kWrite;
  char* local = nullptr;
  uint64_t remote = 0;
  uint64_t length = 0;
  Deadline deadline = Deadline::Infinite();
};

// Where and how lanes connect; replaced on re-handshake.
struct PeerTarget {
  std::string segment_name;
  std::string data_host;
  uint16_t data_port = 0;
  int tcp_proto_version = 1;
  bool kvferry = false;
  std::string shm_path;
  // shm: the target's SharedMemory mapped into this process (null: none). Shared by the
  // submit path and the lanes; the last holder unmaps it after a re-handshake replaced it.
  std::shared_ptr<ShmMapping> mapping;
  uint64_t epoch = 0;  // bumped on every re-handshake; lanes reconnect
};

struct PeerCounters {
  // Relaxed event counters read by GetStats; they publish nothing else.
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_mapped{0};
  std::atomic<uint64_t> requests_failed{0};
};

struct PeerOptions {
  Protocol protocol = Protocol::kTcp;
  int lanes = 4;
  int depth = 8;
  std::string secret;
  Duration connect_timeout = std::chrono::seconds(5);
  Duration io_idle = std::chrono::seconds(30);
};

class Peer {
 public:
  Peer(PeerOptions options, PeerTarget target, BatchTable* batches, PeerCounters* counters);
  ~Peer();  // Stop()
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // Queues slices; lanes start on them at once.
  void Enqueue(std::vector<Slice> slices);
  // Fails queued (not yet sent) slices of `batch` whose deadline passed.
  void CancelExpired(BatchRecord* batch);
  // A connection failed since the last handshake: the next submit should re-handshake.
  bool stale() const { return stale_.load(std::memory_order_acquire); }
  void UpdateTarget(PeerTarget target);
  PeerTarget target() const;
  std::shared_ptr<ShmMapping> mapping() const;
  // Fails everything queued or in flight with Cancelled and joins the lanes.
  void Stop();

 private:
  struct Lane {
    std::thread thread;
    int fd_for_shutdown = -1;  // guarded by Peer::mu_
  };
  void RunLane(Lane* lane);
  Status Connect(const PeerTarget& t, const Deadline& deadline, int* fd_out);
  Status SendRequest(int fd, const PeerTarget& t, const Slice& s);
  Status ReceiveCompletion(int fd, const PeerTarget& t, const Slice& s, const Deadline& deadline, bool* rejected);
  void Fail(const Slice& s, const Status& status);
  void MarkStale() { stale_.store(true, std::memory_order_release); }

  const PeerOptions options_;
  BatchTable* const batches_;
  PeerCounters* const counters_;
  // Set by lanes on connection failure, cleared by UpdateTarget; release/acquire
  // so a submitter that sees it false also sees the new target.
  std::atomic<bool> stale_{false};

  mutable Mutex mu_;
  CondVar cv_;
  PeerTarget target_ KVF_GUARDED_BY(mu_);
  std::deque<Slice> queue_ KVF_GUARDED_BY(mu_);
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Lane>> lanes_;
};

}  // namespace kvferry::transfer
