#pragma once
// The target side of the transfer engine (private to transfer/): the handshake
// daemon, the TCP data server and the shm control server. One accept thread per
// listener and one thread per connection (bounded), all joined by Stop().

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "kvferry/base/base.h"
#include "kvferry/transfer/net.h"
#include "kvferry/transfer/registry.h"

namespace kvferry::transfer {

struct ServerCounters {
  // Plain event counters read by GetStats; relaxed order (no data published through them).
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
  std::atomic<uint64_t> rejected{0};
};

struct ServerOptions {
  std::string listen_host;
  uint16_t handshake_port = 0;
  uint16_t data_port = 0;
  std::string shm_path;  // empty: no shm control server
  std::string secret;    // empty: no authentication
  uint64_t max_handshake_length = 1 << 20;
  Duration io_timeout = std::chrono::seconds(30);  // stall bound inside one request
  Duration handshake_timeout = std::chrono::seconds(5);
  size_t max_connections = 4096;
};

class Server {
 public:
  // descriptor_json: returns our current segment descriptor (JSON text).
  Server(ServerOptions options, LocalRegistry* registry, std::function<std::string()> descriptor_json,
         ServerCounters* counters);
  ~Server();
  // Binds the listeners (ports known after this) without serving yet.
  Status Bind();
  // Starts the accept threads. REQUIRES: Bind() succeeded.
  void Serve();
  void Stop();
  // Tells every same-host initiator that mapped shared region `id` to stop using it and waits
  // until each has unmapped it or disconnected (at most io_timeout per initiator; one that
  // does not answer in time is disconnected and a warning logged).
  void RevokeShared(uint64_t id);
  uint16_t handshake_port() const { return handshake_port_; }
  uint16_t data_port() const { return data_port_; }

 private:
  enum class Kind { kHandshake, kData, kShm };
  struct Conn {
    net::Fd fd;  // guarded by Server::mu_ when closed/shutdown from another thread
    std::thread thread;
    // Set by the connection thread as its last action; read by the reaper
    // (acquire) before joining.
    std::atomic<bool> done{false};
  };

  void AcceptLoop(Kind kind, int listen_fd);
  void ServeHandshake(Conn* conn);
  void ServeData(Conn* conn, bool shm);
  // A `kOpShmMap` request on the shm socket: hands over the shared regions, then serves
  // revocations until the initiator disconnects.
  void ServeMap(int fd);
  // One initiator that mapped our shared regions.
  struct MapClient {
    int fd = -1;
    Mutex send_mu;  // one sender at a time; taken before Server::map_mu_
    Mutex mu;
    CondVar cv;
    std::set<uint64_t> ids KVF_GUARDED_BY(mu);  // regions it has mapped and not yet given back
    bool closed KVF_GUARDED_BY(mu) = false;
  };
  void ReapLocked() KVF_REQUIRES(mu_);

  const ServerOptions options_;
  LocalRegistry* const registry_;
  const std::function<std::string()> descriptor_json_;
  ServerCounters* const counters_;
  uint16_t handshake_port_ = 0;
  uint16_t data_port_ = 0;
  net::Fd handshake_listen_, data_listen_, shm_listen_;
  std::vector<std::thread> acceptors_;

  // Requests on different connections touching the same memory are ordered only
  // through the network (a peer waits for one reply before sending the next
  // request). An acq_rel RMW before and after each access makes that ordering
  // visible to the C++ memory model (and to TSan), at the cost of one atomic op.
  std::atomic<uint64_t> access_order_{0};

 public:
  // An acquire on access_order_: see TransferEngine::AcquirePeerWrites.
  void AcquireServedAccesses() const { (void)access_order_.load(std::memory_order_acquire); }

 private:
  Mutex map_mu_;
  std::list<std::shared_ptr<MapClient>> map_clients_ KVF_GUARDED_BY(map_mu_);  // shared with RevokeShared callers

  Mutex mu_;
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  std::list<std::unique_ptr<Conn>> conns_ KVF_GUARDED_BY(mu_);
};

}  // namespace kvferry::transfer
