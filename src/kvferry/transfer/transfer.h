#pragma once
// kvferry/transfer: the transfer engine. Registers local memory, opens remote
// segments by name ("IP:PORT", a Mooncake P2P handshake address), and moves bytes
// with batches of READ/WRITE requests. Wire-compatible with Mooncake's P2P
// handshake + TCP transport (shared/PROTOCOL-TRANSFER.md); `shm` moves bytes
// between processes on one host with a single copy.
//
// Threading: every method is thread-safe. Transfers progress on the engine's own
// transport threads; callers only submit, poll and wait.
// Ownership: the caller owns all registered memory and must keep it mapped until
// it is unregistered; memory named by a submitted batch must stay valid until the
// batch completes (a Wait that times out does NOT end the batch: it still runs to
// its own deadline).

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::transfer {

enum class Protocol {
  kTcp,  // Mooncake-compatible TCP (any host).
  kShm,  // Same host only: the target copies straight between the two processes.
};
std::string_view ProtocolName(Protocol p);
// "tcp" / "shm"; "rdma" is a clear Unavailable (no RDMA transport in this build).
StatusOr<Protocol> ParseProtocol(std::string_view name);

struct TransferEngineOptions {
  // Host written into the segment name ("host:port") that peers connect to.
  // Default (empty): the first non-loopback IPv4 address of this host, else 127.0.0.1.
  std::string local_host;
  // Address the handshake and data listeners bind to. Default (empty): local_host.
  // "0.0.0.0" listens on every interface, only when asked for.
  std::string listen_host;
  // Handshake ("rpc") port; 0 picks a free one. The segment name carries it.
  uint16_t handshake_port = 0;
  // TCP data port; 0 picks a free one. Advertised in the segment descriptor.
  uint16_t data_port = 0;
  // Transport this engine uses as an initiator. As a target, an engine always serves
  // TCP (for Mooncake peers) and, with kShm, also same-host shm peers.
  Protocol protocol = Protocol::kTcp;
  // Persistent TCP (or shm control) connections per peer. Default 4, 1..16.
  int lanes_per_peer = 4;
  // Requests larger than this are split into slices spread over the lanes. Default 1 MiB.
  size_t slice_size = 1 << 20;
  // Requests in flight on one lane against a kvferry peer (Mooncake peers get 1).
  int pipeline_depth = 8;
  // Shared secret. Empty: read KVFERRY_TRANSFER_SECRET; if that is empty too, no
  // authentication (Mooncake-compatible) and a startup warning that registered
  // memory is open to anyone who can reach the ports.
  std::string secret;
  // Per-batch deadline when Submit gets none: base + per_byte * total bytes.
  Duration batch_timeout_base = std::chrono::seconds(30);
  Duration batch_timeout_per_byte = std::chrono::nanoseconds(1);
  // Timeout of one handshake (connect + request + reply). Default 5 s.
  Duration handshake_timeout = std::chrono::seconds(5);
  // Time source for deadlines. Never null.
  const Clock* clock = Clock::Real();
};

// A remote segment opened by OpenSegment. Typed; stale handles are rejected.
struct SegmentHandle {
  uint32_t index = 0;
  uint32_t generation = 0;
  bool operator==(const SegmentHandle&) const = default;
};

// A submitted batch. The generation makes a reused slot's old id invalid.
struct BatchId {
  uint32_t index = 0;
  uint32_t generation = 0;
  bool operator==(const BatchId&) const = default;
};

enum class Op : uint8_t { kRead = 0, kWrite = 1 };

struct TransferRequest {
  Op op = Op::kWrite;
  // Local source (WRITE) or destination (READ); must lie in locally registered memory.
  void* local = nullptr;
  SegmentHandle segment;
  // Absolute address in the target process (descriptor buffer addr + offset).
  uint64_t remote = 0;
  uint64_t length = 0;  // 0 completes at once, nothing is sent
};

enum class BatchState { kPending, kDone, kFailed };

struct BatchStatus {
  BatchState state = BatchState::kPending;
  Status status;            // first failure when kFailed
  uint64_t bytes_done = 0;  // bytes of successfully completed slices
};

// A registered buffer as a remote descriptor lists it.
struct RemoteBuffer {
  uint64_t addr = 0;
  uint64_t length = 0;
};

struct SegmentInfo {
  std::string name;       // the descriptor's "name"
  std::string data_host;  // host data connections go to
  uint16_t data_port = 0;
  int tcp_proto_version = 1;
  bool kvferry_peer = false;  // speaks kvferry's extensions (pipelining, shm, auth)
  std::vector<RemoteBuffer> buffers;
};

// Latency histogram buckets (microseconds, upper bounds; the last is +Inf).
inline constexpr std::array<double, 14> kLatencyBucketsUs = {10,   50,    100,   250,   500,    1000,    2500,
                                                             5000, 10000, 25000, 50000, 100000, 1000000, 10000000};

struct TransferStats {
  uint64_t bytes_written = 0;  // initiator: WRITE bytes acknowledged
  uint64_t bytes_read = 0;     // initiator: READ bytes received
  // initiator, shm: the part of bytes_written + bytes_read copied straight through a mapping
  // of the target's SharedMemory (the rest went through the shm or TCP socket).
  uint64_t bytes_mapped = 0;
  uint64_t batches_submitted = 0;
  uint64_t batches_done = 0;
  uint64_t batches_failed = 0;
  uint64_t requests_failed = 0;   // slices that failed
  uint64_t handshakes = 0;        // outgoing metadata handshakes
  uint64_t served_bytes_in = 0;   // target: bytes written into our memory by peers
  uint64_t served_bytes_out = 0;  // target: bytes read from our memory by peers
  uint64_t served_rejected = 0;   // target: requests rejected (range, auth, malformed)
  // Batch latency histogram: counts per kLatencyBucketsUs bucket (+1 for +Inf).
  std::array<uint64_t, kLatencyBucketsUs.size() + 1> latency_buckets{};
  double latency_sum_us = 0;
};

// Memory that `shm` peers on this host can map (a sealed memfd, MAP_SHARED). Register a
// range inside it with TransferEngine::RegisterMemory (as any memory); a same-host `shm`
// initiator then maps that range once and copies into and out of it with memcpy, no system
// call per request. Memory not made here is served through the shm socket instead (one
// process_vm_readv/writev per request by the target).
// Threading: immutable after Create. Ownership: unregister every range inside it from every
// engine before destroying it; peers' mappings are revoked by UnregisterMemory.
class SharedMemory {
 public:
  // `size` bytes (> 0), zeroed, readable and writable. `name` shows in /proc/PID/maps as
  // "/memfd:NAME". ResourceExhausted when the memory is not available.
  static StatusOr<std::unique_ptr<SharedMemory>> Create(size_t size, std::string_view name = "kvferry-shm");
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  SharedMemory(char* data, size_t size, int fd) : data_(data), size_(size), fd_(fd) {}
  char* data_;
  size_t size_;
  int fd_;
};

class TransferEngine {
 public:
  // Binds the listeners and starts serving. Errors: InvalidArgument for bad
  // options, AlreadyExists for a port in use, Unavailable for an unusable protocol.
  static StatusOr<std::unique_ptr<TransferEngine>> Create(const TransferEngineOptions& options);
  virtual ~TransferEngine() = default;

  // "host:handshake_port": what peers pass to OpenSegment.
  virtual const std::string& segment_name() const = 0;
  virtual uint16_t data_port() const = 0;
  virtual Protocol protocol() const = 0;

  // Makes [addr, addr+length) readable and writable by authorised peers and usable
  // as a local source/destination. InvalidArgument for null/empty/overlapping ranges.
  virtual Status RegisterMemory(void* addr, size_t length) = 0;
  // Waits for in-flight peer accesses to the region, then removes it. NotFound if
  // `addr` does not start a registered region.
  virtual Status UnregisterMemory(void* addr) = 0;

  // Handshakes with "host:port" (cached; the same name returns the same handle).
  // A segment whose connections failed is re-handshaken on the next open or submit.
  virtual StatusOr<SegmentHandle> OpenSegment(std::string_view name) = 0;
  // The descriptor learned at the last handshake.
  virtual StatusOr<SegmentInfo> GetSegmentInfo(SegmentHandle segment) = 0;

  // Starts a batch. The deadline defaults to options' base + per-byte. Fails fast
  // (no batch created) on an invalid request: unknown segment, local range not
  // registered. Remote ranges are checked by the target.
  virtual StatusOr<BatchId> Submit(std::span<const TransferRequest> requests) = 0;
  virtual StatusOr<BatchId> Submit(std::span<const TransferRequest> requests, const Deadline& deadline) = 0;
  // Non-blocking. Once it reports kDone/kFailed the id is released (NotFound after).
  virtual StatusOr<BatchStatus> Poll(BatchId id) = 0;
  // Blocks until the batch ends or `deadline`. On end: the batch's status (OK or the
  // first failure) and the id is released. On timeout: DeadlineExceeded and the
  // batch keeps running (poll or wait again).
  virtual Status Wait(BatchId id, const Deadline& deadline) = 0;
  // Submit + Wait until the batch's own deadline.
  virtual Status Transfer(std::span<const TransferRequest> requests) = 0;

  virtual TransferStats GetStats() const = 0;

  // Orders every access peers have made to this engine's registered memory so far (through
  // its target side) before what the calling thread does next. Call it when a peer's message
  // says its writes landed (e.g. a KV connector's FINISH), before using the written memory:
  // the bytes are there already; this makes the ordering explicit to the C++ memory model
  // (and to TSan, which cannot see ordering that goes through another process).
  virtual void AcquirePeerWrites() const = 0;
};

}  // namespace kvferry::transfer
