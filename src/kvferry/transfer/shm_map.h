#pragma once
// Same-host memory sharing for the `shm` transport (private to transfer/).
//
// Target side: SharedMemory allocations are listed in a process-wide table so that
// RegisterMemory can find the memfd behind a registered range (FindSharedMemory).
// Initiator side: a ShmMapping is one connection to a target's shm socket over which the
// target sent the memfds of its registered shared ranges; the initiator maps each range
// once and copies with memcpy. A watcher thread per mapping serves the target's revocations
// (UnregisterMemory on the target: unmap, then acknowledge) and unmaps everything when the
// target goes away (EOF), so a dead peer's memory is released and never written again.
// Threading: Copy may run on any number of threads; it holds a reader lock while it copies.

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/net.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::transfer {

// If [addr, addr+length) lies inside one live SharedMemory of this process: a duplicate of its
// memfd (close-on-exec) and the range's offset in it. Otherwise an invalid Fd.
net::Fd FindSharedMemory(uint64_t addr, uint64_t length, uint64_t* offset);

class ShmMapping {
 public:
  // Connects to a target's shm socket, authenticates (if `secret`), asks for its shared
  // regions and maps them. Regions whose memfd is not sealed against shrinking, or is shorter
  // than the range, are skipped (the socket path serves them).
  static StatusOr<std::shared_ptr<ShmMapping>> Open(const std::string& shm_path, const std::string& secret,
                                                    Duration io_timeout, const Deadline& deadline);
  ~ShmMapping();  // stops the watcher, unmaps everything
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;

  // If [remote, remote+length) lies inside one mapped region: copies (WRITE: local → remote,
  // READ: remote → local) and returns true. False when it does not (not shared, revoked, the
  // target is gone): the caller sends the request through the socket, where the target checks it.
  bool Copy(Op op, char* local, uint64_t remote, uint64_t length);
  // False once the target closed the connection (everything is unmapped then).
  bool alive() const;
  size_t mapped_regions() const;

 private:
  struct Region {
    uint64_t id = 0;
    uint64_t remote = 0;  // the target's address of the registered range
    uint64_t length = 0;
    char* map = nullptr;  // page-aligned mapping that covers the range
    size_t map_length = 0;
    char* at = nullptr;  // where `remote` is in our mapping
  };
  explicit ShmMapping(net::Fd sock, Duration io_timeout) : sock_(std::move(sock)), io_timeout_(io_timeout) {}
  void Watch();
  void UnmapAllLocked() KVF_REQUIRES(mu_);

  net::Fd sock_;
  const Duration io_timeout_;
  std::thread watcher_;
  mutable SharedMutex mu_;
  std::vector<Region> regions_ KVF_GUARDED_BY(mu_);  // sorted by remote, disjoint
  bool closed_ KVF_GUARDED_BY(mu_) = false;
};

}  // namespace kvferry::transfer
