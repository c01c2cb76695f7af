#pragma once
// Registered local memory (private to transfer/). Reader/writer locked: the data
// server holds a reader lock while it touches a region, so UnregisterMemory (the
// writer) waits for in-flight peer accesses to finish. A region inside a SharedMemory
// also keeps a duplicate of its memfd, which the shm server hands to same-host peers.

#include <cstdint>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/net.h"
#include "kvferry/transfer/transfer.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {

// A registered region that peers may map, with its own duplicate of the memfd.
struct SharedRegion {
  wire::ShmMapEntry entry;
  net::Fd fd;
};

class LocalRegistry {
 public:
  Status Register(void* addr, size_t length);
  // *shared_id: the region's id if peers could map it (they must be told), else 0.
  Status Unregister(void* addr, uint64_t* shared_id);
  // True if [addr, addr+length) lies inside one registered region (length > 0, no wrap).
  bool Contains(uint64_t addr, uint64_t length) const;
  // Same, for callers already holding mu() shared.
  bool ContainsLocked(uint64_t addr, uint64_t length) const KVF_REQUIRES_SHARED(mu_);
  std::vector<RemoteBuffer> Snapshot() const;
  // The regions inside SharedMemory (at most `max`), each with a fresh duplicate of its memfd.
  std::vector<SharedRegion> SnapshotShared(size_t max) const;
  SharedMutex& mu() KVF_RETURN_CAPABILITY(mu_) { return mu_; }

 private:
  struct Entry {
    RemoteBuffer buf;
    uint64_t id = 0;
    net::Fd memfd;  // invalid: not inside a SharedMemory
    uint64_t fd_offset = 0;
  };
  mutable SharedMutex mu_;
  std::vector<Entry> regions_ KVF_GUARDED_BY(mu_);  // sorted by addr, disjoint
  uint64_t next_id_ KVF_GUARDED_BY(mu_) = 1;
};

}  // namespace kvferry::transfer
