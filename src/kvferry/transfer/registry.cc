#include "kvferry/transfer/registry.h"

#include <fcntl.h>
#include <fmt/format.h>

#include <algorithm>

#include "kvferry/transfer/shm_map.h"

namespace kvferry::transfer {

Status LocalRegistry::Register(void* addr, size_t length) {
  if (addr == nullptr || length == 0) return InvalidArgumentError("RegisterMemory: null address or zero length");
  auto a = reinterpret_cast<uint64_t>(addr);
  if (a + length < a) return InvalidArgumentError("RegisterMemory: range wraps around");
  uint64_t fd_offset = 0;
  net::Fd memfd = FindSharedMemory(a, length, &fd_offset);
  WriterLock l(mu_);
  auto it = std::lower_bound(regions_.begin(), regions_.end(), a,
                             [](const Entry& r, uint64_t x) { return r.buf.addr < x; });
  if (it != regions_.end() && it->buf.addr < a + length) {
    return InvalidArgumentError(fmt::format("RegisterMemory: [0x{:x}, +{}) overlaps a registered region", a, length));
  }
  if (it != regions_.begin()) {
    auto prev = std::prev(it);
    if (prev->buf.addr + prev->buf.length > a) {
      return InvalidArgumentError(fmt::format("RegisterMemory: [0x{:x}, +{}) overlaps a registered region", a, length));
    }
  }
  Entry e;
  e.buf = RemoteBuffer{a, length};
  e.id = next_id_++;
  if (memfd.valid()) {
    e.memfd = std::move(memfd);
    e.fd_offset = fd_offset;
  }
  regions_.insert(it, std::move(e));
  return Status::Ok();
}

Status LocalRegistry::Unregister(void* addr, uint64_t* shared_id) {
  *shared_id = 0;
  auto a = reinterpret_cast<uint64_t>(addr);
  WriterLock l(mu_);
  auto it = std::find_if(regions_.begin(), regions_.end(), [a](const Entry& r) { return r.buf.addr == a; });
  if (it == regions_.end()) return NotFoundError(fmt::format("UnregisterMemory: 0x{:x} is not a registered region", a));
  if (it->memfd.valid()) *shared_id = it->id;
  regions_.erase(it);
  return Status::Ok();
}

bool LocalRegistry::ContainsLocked(uint64_t addr, uint64_t length) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t x, const Entry& r) { return x < r.buf.addr; });
  if (it == regions_.begin()) return false;
  const RemoteBuffer& r = std::prev(it)->buf;
  return wire::RangeInside(addr, length, r.addr, r.length);
}

bool LocalRegistry::Contains(uint64_t addr, uint64_t length) const {
  ReaderLock l(mu_);
  return ContainsLocked(addr, length);
}

std::vector<RemoteBuffer> LocalRegistry::Snapshot() const {
  ReaderLock l(mu_);
  std::vector<RemoteBuffer> out;
  out.reserve(regions_.size());
  for (const Entry& e : regions_) out.push_back(e.buf);
  return out;
}

std::vector<SharedRegion> LocalRegistry::SnapshotShared(size_t max) const {
  ReaderLock l(mu_);
  std::vector<SharedRegion> out;
  for (const Entry& e : regions_) {
    if (!e.memfd.valid() || out.size() >= max) continue;
    int dup = fcntl(e.memfd.get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) continue;  // out of descriptors: this region goes through the socket
    out.push_back(SharedRegion{wire::ShmMapEntry{e.id, e.buf.addr, e.buf.length, e.fd_offset}, net::Fd(dup)});
  }
  return out;
}

}  // namespace kvferry::transfer
