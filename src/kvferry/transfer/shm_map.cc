#include "kvferry/transfer/shm_map.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "kvferry/transfer/auth.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {
namespace {

struct SharedAllocation {
  size_t size;
  int fd;
};

// Every live SharedMemory of this process, by start address.
struct SharedTable {
  Mutex mu;
  std::map<uint64_t, SharedAllocation> by_addr KVF_GUARDED_BY(mu);
};

SharedTable& Table() {
  static SharedTable* table = new SharedTable;  // never destroyed: used until the process ends
  return *table;
}

size_t PageSize() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Create(size_t size, std::string_view name) {
  if (size == 0) return InvalidArgumentError("SharedMemory: size must be positive");
  std::string n(name.substr(0, 200));
  int fd = memfd_create(n.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ErrnoToStatus(errno, "memfd_create");
  net::Fd owner(fd);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) return ErrnoToStatus(errno, "ftruncate memfd");
  // Peers map it: the size must never change under their mappings (a shrink would SIGBUS them).
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoToStatus(errno, "seal memfd");
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return ResourceExhaustedError(fmt::format("SharedMemory: cannot map {} bytes: {}", size, std::strerror(errno)));
  }
  auto mem = std::unique_ptr<SharedMemory>(new SharedMemory(static_cast<char*>(p), size, owner.Release()));
  SharedTable& t = Table();
  MutexLock l(t.mu);
  t.by_addr[reinterpret_cast<uint64_t>(p)] = SharedAllocation{size, mem->fd_};
  return mem;
}

SharedMemory::~SharedMemory() {
  {
    SharedTable& t = Table();
    MutexLock l(t.mu);
    t.by_addr.erase(reinterpret_cast<uint64_t>(data_));
  }
  munmap(data_, size_);
  close(fd_);
}

net::Fd FindSharedMemory(uint64_t addr, uint64_t length, uint64_t* offset) {
  SharedTable& t = Table();
  MutexLock l(t.mu);
  auto it = t.by_addr.upper_bound(addr);
  if (it == t.by_addr.begin()) return net::Fd();
  --it;
  if (!wire::RangeInside(addr, length, it->first, it->second.size)) return net::Fd();
  int dup = fcntl(it->second.fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return net::Fd();
  *offset = addr - it->first;
  return net::Fd(dup);
}

StatusOr<std::shared_ptr<ShmMapping>> ShmMapping::Open(const std::string& shm_path, const std::string& secret,
                                                       Duration io_timeout, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(net::Fd sock, net::ConnectUnix(shm_path, deadline));
  if (!secret.empty()) KVF_RETURN_IF_ERROR(AuthenticateAsClient(sock.get(), secret, deadline));
  uint8_t head[wire::kDataHeaderSize];
  wire::EncodeDataHeader(wire::DataHeader{0, 0, wire::kOpShmMap}, head);
  KVF_RETURN_IF_ERROR(net::SendAll(sock.get(), head, sizeof(head), deadline));
  uint8_t reply[wire::kShmMapHeaderSize];
  std::vector<net::Fd> fds;
  KVF_RETURN_IF_ERROR(net::RecvWithFds(sock.get(), reply, sizeof(reply), wire::kMaxShmMapRegions, &fds, deadline));
  KVF_ASSIGN_OR_RETURN(size_t count, wire::DecodeShmMapHeader(reply));
  std::vector<uint8_t> body(count * wire::kShmMapEntrySize);
  if (!body.empty()) KVF_RETURN_IF_ERROR(net::RecvAll(sock.get(), body.data(), body.size(), deadline));
  if (fds.size() != count) {
    return DataLossError(fmt::format("shm map reply lists {} regions but carried {} descriptors", count, fds.size()));
  }
  auto m = std::shared_ptr<ShmMapping>(new ShmMapping(std::move(sock), io_timeout));
  std::vector<Region> regions;
  for (size_t i = 0; i < count; ++i) {
    wire::ShmMapEntry e = wire::DecodeShmMapEntry(body.data() + i * wire::kShmMapEntrySize);
    int fd = fds[i].get();
    struct stat st {};
    int seals = fcntl(fd, F_GET_SEALS);
    if (e.length == 0 || e.addr + e.length < e.addr || e.fd_offset + e.length < e.fd_offset ||
        fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < e.fd_offset + e.length || seals < 0 ||
        !(seals & F_SEAL_SHRINK)) {
      KVF_LOG_WARN("transfer: shm region {} of {} is not safely mappable; it goes through the socket", e.id,
                   shm_path);
      continue;
    }
    uint64_t aligned = e.fd_offset & ~static_cast<uint64_t>(PageSize() - 1);
    size_t delta = static_cast<size_t>(e.fd_offset - aligned);
    size_t map_length = (delta + e.length + PageSize() - 1) & ~(PageSize() - 1);
    void* p = mmap(nullptr, map_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(aligned));
    if (p == MAP_FAILED) {
      KVF_LOG_WARN("transfer: cannot map shm region {} ({} bytes): {}", e.id, e.length, std::strerror(errno));
      continue;
    }
    regions.push_back(Region{e.id, e.addr, e.length, static_cast<char*>(p), map_length, static_cast<char*>(p) + delta});
  }
  std::sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) { return a.remote < b.remote; });
  {
    WriterLock l(m->mu_);
    for (Region& r : regions) {
      // The target's registry keeps ranges disjoint; a reply that does not is refused range by range.
      if (!m->regions_.empty() && m->regions_.back().remote + m->regions_.back().length > r.remote) {
        munmap(r.map, r.map_length);
        continue;
      }
      m->regions_.push_back(r);
    }
  }
  ShmMapping* raw = m.get();
  m->watcher_ = std::thread([raw] {
    SetCurrentThreadName("kvf-shm-map");
    raw->Watch();
  });
  return m;
}

ShmMapping::~ShmMapping() {
  if (sock_.valid()) ::shutdown(sock_.get(), SHUT_RDWR);
  if (watcher_.joinable()) watcher_.join();
  WriterLock l(mu_);
  UnmapAllLocked();
}

void ShmMapping::UnmapAllLocked() {
  for (Region& r : regions_) munmap(r.map, r.map_length);
  regions_.clear();
  closed_ = true;
}

bool ShmMapping::Copy(Op op, char* local, uint64_t remote, uint64_t length) {
  ReaderLock l(mu_);
  auto it = std::upper_bound(regions_.begin(), regions_.end(), remote,
                             [](uint64_t x, const Region& r) { return x < r.remote; });
  if (it == regions_.begin()) return false;
  const Region& r = *std::prev(it);
  if (!wire::RangeInside(remote, length, r.remote, r.length)) return false;
  char* at = r.at + (remote - r.remote);
  if (op == Op::kWrite) {
    std::memcpy(at, local, length);
  } else {
    std::memcpy(local, at, length);
  }
  return true;
}

bool ShmMapping::alive() const {
  ReaderLock l(mu_);
  return !closed_;
}

size_t ShmMapping::mapped_regions() const {
  ReaderLock l(mu_);
  return regions_.size();
}

void ShmMapping::Watch() {
  const int fd = sock_.get();
  for (;;) {
    uint8_t frame[wire::kShmControlSize];
    if (!net::WaitReadable(fd, Deadline::Infinite()).ok() ||
        !net::RecvAll(fd, frame, sizeof(frame), Deadline::After(io_timeout_)).ok()) {
      break;
    }
    StatusOr<std::pair<uint32_t, uint64_t>> c = wire::DecodeShmControl(frame);
    if (!c.ok() || c->first != wire::kShmRevoke) break;
    {
      // Waits for copies in progress (they hold the reader lock), so none touches it after this.
      WriterLock l(mu_);
      auto it = std::find_if(regions_.begin(), regions_.end(), [&](const Region& r) { return r.id == c->second; });
      if (it != regions_.end()) {
        munmap(it->map, it->map_length);
        regions_.erase(it);
      }
    }
    wire::EncodeShmControl(wire::kShmRevoked, c->second, frame);
    if (!net::SendAll(fd, frame, sizeof(frame), Deadline::After(io_timeout_)).ok()) break;
  }
  // The target is gone (or broke the protocol): release its memory now, not when we are destroyed.
  WriterLock l(mu_);
  UnmapAllLocked();
}

}  // namespace kvferry::transfer
