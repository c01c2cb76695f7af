#include "kvferry/transfer/registry.h"

#include <fmt/format.h>

#include <algorithm>

#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {

Status LocalRegistry::Register(void* addr, size_t length) {
  if (addr == nullptr || length == 0) return InvalidArgumentError("RegisterMemory: null address or zero length");
  auto a = reinterpret_cast<uint64_t>(addr);
  if (a + length < a) return InvalidArgumentError("RegisterMemory: range wraps around");
  WriterLock l(mu_);
  auto it = std::lower_bound(regions_.begin(), regions_.end(), a,
                             [](const RemoteBuffer& r, uint64_t x) { return r.addr < x; });
  if (it != regions_.end() && it->addr < a + length) {
    return InvalidArgumentError(fmt::format("RegisterMemory: [0x{:x}, +{}) overlaps a registered region", a, length));
  }
  if (it != regions_.begin()) {
    auto prev = std::prev(it);
    if (prev->addr + prev->length > a) {
      return InvalidArgumentError(fmt::format("RegisterMemory: [0x{:x}, +{}) overlaps a registered region", a, length));
    }
  }
  regions_.insert(it, RemoteBuffer{a, length});
  return Status::Ok();
}

Status LocalRegistry::Unregister(void* addr) {
  auto a = reinterpret_cast<uint64_t>(addr);
  WriterLock l(mu_);
  auto it = std::find_if(regions_.begin(), regions_.end(), [a](const RemoteBuffer& r) { return r.addr == a; });
  if (it == regions_.end()) return NotFoundError(fmt::format("UnregisterMemory: 0x{:x} is not a registered region", a));
  regions_.erase(it);
  return Status::Ok();
}

bool LocalRegistry::ContainsLocked(uint64_t addr, uint64_t length) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t x, const RemoteBuffer& r) { return x < r.addr; });
  if (it == regions_.begin()) return false;
  const RemoteBuffer& r = *std::prev(it);
  return wire::RangeInside(addr, length, r.addr, r.length);
}

bool LocalRegistry::Contains(uint64_t addr, uint64_t length) const {
  ReaderLock l(mu_);
  return ContainsLocked(addr, length);
}

std::vector<RemoteBuffer> LocalRegistry::Snapshot() const {
  ReaderLock l(mu_);
  return regions_;
}

}  // namespace kvferry::transfer
