#include "apps/bench_transfer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

namespace kvferry::apps {
namespace {

// Anonymous, pre-faulted memory on transparent huge pages where the kernel allows
// (fewer page-table walks for the copies), so page faults stay out of the figures.
class Buffer {
 public:
  explicit Buffer(uint64_t size) : size_(size) {
    constexpr uint64_t kHuge = 2 << 20;
    map_size_ = size + kHuge;
    void* p = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      data_ = nullptr;
      return;
    }
    map_ = static_cast<char*>(p);
    data_ = reinterpret_cast<char*>((reinterpret_cast<uint64_t>(map_) + kHuge - 1) & ~(kHuge - 1));
    madvise(data_, size_, MADV_HUGEPAGE);
    std::memset(data_, 0, size_);
  }
  ~Buffer() {
    if (map_) munmap(map_, map_size_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint64_t size_;
  uint64_t map_size_ = 0;
  char* map_ = nullptr;
  char* data_ = nullptr;
};

uint8_t PatternByte(uint64_t offset, uint64_t seed) {
  uint64_t x = (offset + 1) * 0x9E3779B97F4A7C15ull ^ seed;
  x ^= x >> 29;
  return static_cast<uint8_t>(x ^ (x >> 8));
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

std::atomic<bool> g_stop{false};
void OnSignal(int) {
  g_stop.store(true);
}

}  // namespace

StatusOr<std::pair<int, std::string>> SpawnTransferTarget(transfer::Protocol protocol, uint64_t buffer_size) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
  std::string proto(transfer::ProtocolName(protocol));
  std::string size = std::to_string(buffer_size);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    dup2(pipefd[1], STDOUT_FILENO);
    // The child's logs (startup lines, the no-secret warning) would only clutter the figures.
    execl("/proc/self/exe", "kvferry", "--log-level", "error", "bench", "transfer", "--mode", "target", "--listen",
          "127.0.0.1", "--protocol", proto.c_str(), "--buffer-size", size.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(pipefd[1]);
  std::string line;
  Deadline deadline = Deadline::After(std::chrono::seconds(30));
  while (line.find('\n') == std::string::npos) {
    pollfd p{pipefd[0], POLLIN, 0};
    int rc = poll(&p, 1, deadline.RemainingMillisForPoll());
    if (rc <= 0) {
      close(pipefd[0]);
      StopChild(pid);
      return DeadlineExceededError("target process did not print its segment name within 30 s");
    }
    char buf[256];
    ssize_t n = read(pipefd[0], buf, sizeof(buf));
    if (n <= 0) {
      close(pipefd[0]);
      StopChild(pid);
      return UnavailableError("target process exited before printing its segment name");
    }
    line.append(buf, static_cast<size_t>(n));
  }
  close(pipefd[0]);
  line.resize(line.find('\n'));
  return std::make_pair(static_cast<int>(pid), line);
}

void StopChild(int pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

Status RunTransferTarget(transfer::Protocol protocol, const std::string& listen, uint64_t buffer_size,
                         uint16_t handshake_port, uint16_t data_port) {
  transfer::TransferEngineOptions o;
  o.protocol = protocol;
  o.local_host = listen;
  o.handshake_port = handshake_port;
  o.data_port = data_port;
  KVF_ASSIGN_OR_RETURN(auto engine, transfer::TransferEngine::Create(o));
  // SharedMemory, so that same-host shm initiators map it once and copy with memcpy (TCP peers
  // and Mooncake see ordinary registered memory). Touched once, so page faults stay out of the figures.
  KVF_ASSIGN_OR_RETURN(std::unique_ptr<transfer::SharedMemory> buf,
                       transfer::SharedMemory::Create(buffer_size, "kvferry-bench-target"));
  std::memset(buf->data(), 0, buf->size());
  KVF_RETURN_IF_ERROR(engine->RegisterMemory(buf->data(), buf->size()));
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  fmt::print("{}\n", engine->segment_name());
  std::fflush(stdout);
  KVF_LOG_INFO("bench target: serving {} at 0x{:x} on {} until SIGINT/SIGTERM", FormatBytes(buffer_size),
               reinterpret_cast<uint64_t>(buf->data()), engine->segment_name());
  while (!g_stop.load()) usleep(20000);
  transfer::TransferStats st = engine->GetStats();
  KVF_RETURN_IF_ERROR(engine->UnregisterMemory(buf->data()));  // before buf goes
  KVF_LOG_INFO("bench target: served {} in, {} out, {} rejected", FormatBytes(st.served_bytes_in),
               FormatBytes(st.served_bytes_out), st.served_rejected);
  return Status::Ok();
}

StatusOr<TransferBenchResult> RunTransferBench(const TransferBenchConfig& c, bool progress) {
  if (c.block_size == 0 || c.batch < 1 || c.threads < 1 || c.duration_s <= 0) {
    return InvalidArgumentError("block size, batch, threads and duration must be positive");
  }
  const uint64_t per_thread = c.block_size * static_cast<uint64_t>(c.batch);
  const uint64_t needed = per_thread * static_cast<uint64_t>(c.threads);
  int child = -1;
  std::string target = c.target;
  if (target.empty()) {
    KVF_ASSIGN_OR_RETURN(auto spawned, SpawnTransferTarget(c.protocol, needed));
    child = spawned.first;
    target = spawned.second;
  }
  struct ChildGuard {
    int pid;
    ~ChildGuard() { StopChild(pid); }
  } guard{child};

  transfer::TransferEngineOptions o;
  o.protocol = c.protocol;
  o.local_host = c.local_host;
  o.lanes_per_peer = c.lanes;
  o.slice_size = c.slice_size;
  KVF_ASSIGN_OR_RETURN(auto engine, transfer::TransferEngine::Create(o));
  // Local area: the bench region plus, for --verify, a second region to read back into.
  Buffer local(needed * (c.verify ? 2 : 1));
  if (local.data() == nullptr) return ResourceExhaustedError("cannot map local buffer");
  KVF_RETURN_IF_ERROR(engine->RegisterMemory(local.data(), local.size()));
  KVF_ASSIGN_OR_RETURN(transfer::SegmentHandle seg, engine->OpenSegment(target));
  KVF_ASSIGN_OR_RETURN(transfer::SegmentInfo info, engine->GetSegmentInfo(seg));
  if (info.buffers.empty()) return FailedPreconditionError(fmt::format("segment {} has no registered memory", target));
  transfer::RemoteBuffer remote = info.buffers[0];
  if (remote.length < c.remote_offset || remote.length - c.remote_offset < needed) {
    return FailedPreconditionError(fmt::format("segment {}'s first buffer has {} but the bench needs {} at offset {}",
                                               target, FormatBytes(remote.length), FormatBytes(needed),
                                               FormatBytes(c.remote_offset)));
  }
  remote.addr += c.remote_offset;
  remote.length -= c.remote_offset;

  TransferBenchResult r;
  r.target = target;
  if (c.verify) {
    for (uint64_t i = 0; i < needed; ++i) local.data()[i] = static_cast<char>(PatternByte(i, 42));
    std::memset(local.data() + needed, 0, needed);
    std::vector<transfer::TransferRequest> w, rd;
    for (uint64_t off = 0; off < needed; off += c.block_size) {
      uint64_t len = std::min(c.block_size, needed - off);
      w.push_back({transfer::Op::kWrite, local.data() + off, seg, remote.addr + off, len});
      rd.push_back({transfer::Op::kRead, local.data() + needed + off, seg, remote.addr + off, len});
    }
    KVF_RETURN_IF_ERROR(engine->Transfer(w).WithContext("verify write"));
    KVF_RETURN_IF_ERROR(engine->Transfer(rd).WithContext("verify read back"));
    if (std::memcmp(local.data(), local.data() + needed, needed) != 0) {
      return DataLossError("verify: data read back differs from data written");
    }
    r.verified = true;
  }

  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> lat(static_cast<size_t>(c.threads));
  std::vector<Status> errors(static_cast<size_t>(c.threads));
  std::vector<uint64_t> bytes(static_cast<size_t>(c.threads), 0);
  double start = NowSeconds();
  std::vector<std::thread> workers;
  for (int t = 0; t < c.threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<transfer::TransferRequest> reqs;
      uint64_t base = per_thread * static_cast<uint64_t>(t);
      for (int i = 0; i < c.batch; ++i) {
        uint64_t off = base + c.block_size * static_cast<uint64_t>(i);
        reqs.push_back({c.op, local.data() + off, seg, remote.addr + off, c.block_size});
      }
      while (!stop.load(std::memory_order_relaxed)) {
        double t0 = NowSeconds();
        Status s = engine->Transfer(reqs);
        if (!s.ok()) {
          errors[static_cast<size_t>(t)] = s;
          stop = true;
          return;
        }
        lat[static_cast<size_t>(t)].push_back((NowSeconds() - t0) * 1e6);
        bytes[static_cast<size_t>(t)] += per_thread;
      }
    });
  }
  double next_report = start + 1;
  while (NowSeconds() - start < c.duration_s && !stop.load()) {
    usleep(10000);
    if (progress && NowSeconds() >= next_report) {
      fmt::print(stderr, "\r  {:.0f}/{:.0f} s ...", NowSeconds() - start, c.duration_s);
      next_report += 1;
    }
  }
  stop = true;
  for (auto& w : workers) w.join();
  if (progress) fmt::print(stderr, "\r                    \r");
  double elapsed = NowSeconds() - start;
  for (const Status& s : errors) KVF_RETURN_IF_ERROR(s);
  std::vector<double> all;
  for (int t = 0; t < c.threads; ++t) {
    r.bytes += bytes[static_cast<size_t>(t)];
    all.insert(all.end(), lat[static_cast<size_t>(t)].begin(), lat[static_cast<size_t>(t)].end());
  }
  r.batches = all.size();
  r.bytes_mapped = engine->GetStats().bytes_mapped;
  r.seconds = elapsed;
  r.gbps = static_cast<double>(r.bytes) / elapsed / 1e9;
  r.p50_us = Percentile(all, 0.50);
  r.p99_us = Percentile(all, 0.99);
  return r;
}

MemcpyResult RunMemcpyBench(uint64_t block_size, double duration_s, int batch) {
  const uint64_t n = static_cast<uint64_t>(std::max(batch, 1));
  Buffer src(block_size * n), dst(block_size * n);
  MemcpyResult r;
  if (!src.data() || !dst.data()) return r;
  std::memset(src.data(), 1, block_size * n);
  for (int i = 0; i < 3; ++i) std::memcpy(dst.data(), src.data(), block_size * n);
  double start = NowSeconds();
  uint64_t iters = 0;
  double now = start;
  while (now - start < duration_s) {
    for (int i = 0; i < 16; ++i) {
      for (uint64_t b = 0; b < n; ++b) {
        std::memcpy(dst.data() + b * block_size, src.data() + b * block_size, block_size);
        asm volatile("" : : "r"(dst.data()) : "memory");
      }
    }
    iters += 16 * n;
    now = NowSeconds();
  }
  r.seconds = now - start;
  r.bytes = iters * block_size;
  r.gbps = static_cast<double>(r.bytes) / r.seconds / 1e9;
  return r;
}

}  // namespace kvferry::apps
