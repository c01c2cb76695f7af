#pragma once
// Registered local memory (private to transfer/). Reader/writer locked: the data
// server holds a reader lock while it touches a region, so UnregisterMemory (the
// writer) waits for in-flight peer accesses to finish.

#include <cstdint>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::transfer {

class LocalRegistry {
 public:
  Status Register(void* addr, size_t length);
  Status Unregister(void* addr);
  // True if [addr, addr+length) lies inside one registered region (length > 0, no wrap).
  bool Contains(uint64_t addr, uint64_t length) const;
  // Same, for callers already holding mu() shared.
  bool ContainsLocked(uint64_t addr, uint64_t length) const KVF_REQUIRES_SHARED(mu_);
  std::vector<RemoteBuffer> Snapshot() const;
  SharedMutex& mu() KVF_RETURN_CAPABILITY(mu_) { return mu_; }

 private:
  mutable SharedMutex mu_;
  std::vector<RemoteBuffer> regions_ KVF_GUARDED_BY(mu_);  // sorted by addr, disjoint
};

}  // namespace kvferry::transfer
