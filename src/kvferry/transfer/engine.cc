// TransferEngine implementation: wires the registry, the target-side server,
// the batch table and one Peer per opened segment together.
#include <fmt/format.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>

#include "kvferry/transfer/auth.h"
#include "kvferry/transfer/batch.h"
#include "kvferry/transfer/net.h"
#include "kvferry/transfer/peer.h"
#include "kvferry/transfer/registry.h"
#include "kvferry/transfer/server.h"
#include "kvferry/transfer/shm_map.h"
#include "kvferry/transfer/transfer.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {

std::string_view ProtocolName(Protocol p) {
  return p == Protocol::kShm ? "shm" : "tcp";
}

StatusOr<Protocol> ParseProtocol(std::string_view name) {
  if (name == "tcp") return Protocol::kTcp;
  if (name == "shm") return Protocol::kShm;
  if (name == "rdma") {
    return UnavailableError(
        "transfer protocol 'rdma' is not available in this build (no RDMA transport); use tcp or shm");
  }
  return InvalidArgumentError(fmt::format("unknown transfer protocol '{}' (available: tcp, shm)", name));
}

namespace {

// shm: batches up to this size are copied on the submitting thread (see Submit).
constexpr uint64_t kInlineCopyMax = 8ull << 20;

std::string RandomToken() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

// Removes the shm sockets (kvferry-shm-<pid>-<token>.sock) that killed processes left in dir:
// the pid in the name is gone and nothing accepts on the socket. A process in another PID
// namespace sharing the folder still accepts, and keeps its socket. Returns how many it removed.
int RemoveStaleShmSockets(const std::string& dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    int pid = 0;
    if (std::sscanf(name.c_str(), "kvferry-shm-%d-", &pid) != 1 || pid <= 0 || !name.ends_with(".sock")) continue;
    std::error_code type_ec;
    if (!e.is_socket(type_ec)) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;
    const std::string path = e.path().string();
    if (net::UnixSocketRefuses(path) && ::unlink(path.c_str()) == 0) ++removed;
  }
  return removed;
}

// One metadata handshake: connect, (authenticate), send our descriptor, read theirs, close.
StatusOr<wire::Descriptor> FetchDescriptor(const std::string& host, uint16_t port, const std::string& ours,
                                           const std::string& secret, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(net::Fd fd, net::ConnectTcp(host, port, deadline));
  if (!secret.empty()) KVF_RETURN_IF_ERROR(AuthenticateAsClient(fd.get(), secret, deadline));
  std::string frame = wire::EncodeHandshakeFrame(wire::kTypeMetadata, ours);
  KVF_RETURN_IF_ERROR(net::SendAll(fd.get(), frame.data(), frame.size(), deadline));
  uint8_t len_bytes[wire::kHandshakeLengthSize];
  KVF_RETURN_IF_ERROR(net::RecvAll(fd.get(), len_bytes, sizeof(len_bytes), deadline));
  if (std::string_view(reinterpret_cast<char*>(len_bytes), 8) == wire::kAuthMagic) {
    return PermissionDeniedError("the segment requires a shared secret (set KVFERRY_TRANSFER_SECRET)");
  }
  KVF_ASSIGN_OR_RETURN(uint64_t len, wire::DecodeHandshakeLength(len_bytes, wire::kDefaultMaxHandshakeLength));
  std::string payload(len, '\0');
  KVF_RETURN_IF_ERROR(net::RecvAll(fd.get(), payload.data(), payload.size(), deadline));
  KVF_ASSIGN_OR_RETURN(wire::HandshakePayload p, wire::DecodeHandshakePayload(payload));
  if (!p.typed || p.type != wire::kTypeMetadata) {
    return DataLossError("handshake reply has the wrong type");
  }
  return wire::DecodeDescriptor(p.body);
}

class TransferEngineImpl final : public TransferEngine {
 public:
  explicit TransferEngineImpl(const TransferEngineOptions& o) : options_(o), batches_(o.clock) {}

  ~TransferEngineImpl() override {
    std::vector<std::unique_ptr<Segment>> segs;
    {
      MutexLock l(seg_mu_);
      segs.swap(segments_);
    }
    for (auto& s : segs) {
      if (s->peer) s->peer->Stop();
    }
    if (server_) server_->Stop();
  }

  Status Init() {
    if (options_.lanes_per_peer < 1 || options_.lanes_per_peer > 16) {
      return InvalidArgumentError(fmt::format("lanes_per_peer must be 1..16, not {}", options_.lanes_per_peer));
    }
    if (options_.slice_size < 4096) return InvalidArgumentError("slice_size must be at least 4096");
    if (options_.pipeline_depth < 1 || options_.pipeline_depth > 256) {
      return InvalidArgumentError("pipeline_depth must be 1..256");
    }
    if (options_.clock == nullptr) return InvalidArgumentError("clock must not be null");
    secret_ = options_.secret;
    if (secret_.empty()) {
      if (const char* env = std::getenv("KVFERRY_TRANSFER_SECRET")) secret_ = env;
    }
    local_host_ = options_.local_host.empty() ? net::DefaultHostAddress() : options_.local_host;
    std::string listen = options_.listen_host.empty() ? local_host_ : options_.listen_host;
    if (options_.protocol == Protocol::kShm) {
#ifdef PR_SET_PTRACER
      // Under Yama, let same-host targets copy from/to this process (shm transport).
      prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#endif
    }
    const char* tmp = std::getenv("TMPDIR");
    const std::string shm_dir = tmp && *tmp ? tmp : "/tmp";
    // Every engine listens on a shm socket (same-host peers that use shm connect to it).
    if (const int n = RemoveStaleShmSockets(shm_dir); n > 0)
      KVF_LOG_INFO("transfer: removed {} shm socket(s) that killed processes left in {}", n, shm_dir);
    ServerOptions so;
    so.listen_host = listen;
    so.handshake_port = options_.handshake_port;
    so.data_port = options_.data_port;
    so.shm_path = fmt::format("{}/kvferry-shm-{}-{}.sock", shm_dir, getpid(), RandomToken());
    so.secret = secret_;
    so.handshake_timeout = options_.handshake_timeout;
    server_ = std::make_unique<Server>(
        so, &registry_, [this] { return DescriptorJson(); }, &server_counters_);
    Status s = server_->Bind();
    if (!s.ok()) return s.WithContext(fmt::format("transfer engine listening on {}", listen));
    // Everything DescriptorJson reads is set before the first connection is served.
    shm_path_ = so.shm_path;
    segment_name_ = wire::JoinHostPort(local_host_, server_->handshake_port());
    server_->Serve();
    KVF_LOG_INFO("transfer: engine {} up (protocol {}, data port {}, listening on {}, {} lanes/peer)", segment_name_,
                 ProtocolName(options_.protocol), server_->data_port(), listen, options_.lanes_per_peer);
    if (secret_.empty()) {
      KVF_LOG_WARN(
          "transfer: no secret configured (KVFERRY_TRANSFER_SECRET): registered memory is readable and writable by "
          "anyone who can reach {} and data port {}",
          segment_name_, server_->data_port());
    }
    return Status::Ok();
  }

  const std::string& segment_name() const override {
    return segment_name_;
  }
  uint16_t data_port() const override {
    return server_->data_port();
  }
  Protocol protocol() const override {
    return options_.protocol;
  }

  Status RegisterMemory(void* addr, size_t length) override {
    return registry_.Register(addr, length);
  }
  Status UnregisterMemory(void* addr) override {
    uint64_t shared_id = 0;
    KVF_RETURN_IF_ERROR(registry_.Unregister(addr, &shared_id));
    // Same-host peers that mapped it unmap it before we return (or are cut off).
    if (shared_id != 0) server_->RevokeShared(shared_id);
    return Status::Ok();
  }

  StatusOr<SegmentHandle> OpenSegment(std::string_view name) override {
    Segment* seg = nullptr;
    SegmentHandle handle;
    {
      MutexLock l(seg_mu_);
      auto it = by_name_.find(std::string(name));
      if (it != by_name_.end()) {
        seg = segments_[it->second].get();
        handle = SegmentHandle{it->second, seg->generation};
      }
    }
    if (seg != nullptr) {
      if (seg->peer->stale()) KVF_RETURN_IF_ERROR(Refresh(seg));
      return handle;
    }
    KVF_ASSIGN_OR_RETURN(auto host_port, wire::SplitHostPort(name));
    auto fresh = std::make_unique<Segment>();
    fresh->name = std::string(name);
    fresh->host = host_port.first;
    fresh->port = host_port.second;
    KVF_ASSIGN_OR_RETURN(PeerTarget target, Handshake(fresh.get()));
    PeerOptions po;
    po.protocol = options_.protocol;
    po.lanes = options_.lanes_per_peer;
    po.depth = options_.pipeline_depth;
    po.secret = secret_;
    po.connect_timeout = options_.handshake_timeout;
    fresh->peer = std::make_unique<Peer>(po, target, &batches_, &peer_counters_);
    MutexLock l(seg_mu_);
    auto it = by_name_.find(fresh->name);
    if (it != by_name_.end()) {  // lost a race with another opener; use theirs
      return SegmentHandle{it->second, segments_[it->second]->generation};
    }
    uint32_t index = static_cast<uint32_t>(segments_.size());
    fresh->generation = 1;
    by_name_[fresh->name] = index;
    segments_.push_back(std::move(fresh));
    return SegmentHandle{index, 1};
  }

  StatusOr<SegmentInfo> GetSegmentInfo(SegmentHandle h) override {
    KVF_ASSIGN_OR_RETURN(Segment * seg, Find(h));
    MutexLock l(seg->mu);
    return seg->info;
  }

  StatusOr<BatchId> Submit(std::span<const TransferRequest> requests) override {
    uint64_t total = 0;
    for (const TransferRequest& r : requests) total += r.length;
    Duration d = options_.batch_timeout_base + options_.batch_timeout_per_byte * static_cast<int64_t>(total);
    return Submit(requests, Deadline::After(d, options_.clock));
  }

  StatusOr<BatchId> Submit(std::span<const TransferRequest> requests, const Deadline& deadline) override {
    // Validate everything before creating the batch: a bad request fails fast. Batches name
    // one or a few segments: a short vector beats a map here (this path is per batch).
    struct SegRef {
      uint32_t index;
      Segment* seg;
      std::shared_ptr<ShmMapping> mapping;
    };
    std::vector<SegRef> segs;
    auto seg_of = [&segs](uint32_t index) -> SegRef& {
      for (SegRef& s : segs) {
        if (s.index == index) return s;
      }
      return segs.front();  // unreachable: every request's segment was added while validating
    };
    uint64_t total = 0;
    size_t slices = 0;
    const uint64_t slice = options_.slice_size;
    for (const TransferRequest& r : requests) {
      if (r.length == 0) continue;
      if (r.local == nullptr) return InvalidArgumentError("transfer request has a null local address");
      if (!registry_.Contains(reinterpret_cast<uint64_t>(r.local), r.length)) {
        return InvalidArgumentError(fmt::format(
            "local range [{}, +{}) of a transfer request is not inside registered memory", r.local, r.length));
      }
      if (r.op != Op::kRead && r.op != Op::kWrite) return InvalidArgumentError("transfer request has a bad op");
      bool known = false;
      for (const SegRef& s : segs) known = known || s.index == r.segment.index;
      if (!known) {
        KVF_ASSIGN_OR_RETURN(Segment * seg, Find(r.segment));
        segs.push_back(SegRef{r.segment.index, seg, nullptr});
      }
      total += r.length;
      slices += (r.length + slice - 1) / slice;
    }
    for (SegRef& s : segs) {
      if (s.seg->peer->stale()) KVF_RETURN_IF_ERROR(Refresh(s.seg));
      if (options_.protocol == Protocol::kShm) s.mapping = s.seg->peer->mapping();
    }
    // shm: requests inside a same-host target's mapped SharedMemory are copied here and now,
    // with memcpy: no thread hand-off and no system call. The rest is sliced for the lanes.
    // A batch larger than kInlineCopyMax goes to the lanes whole: they copy its slices through
    // the same mapping in parallel, which beats one thread once the copy leaves the caches.
    std::vector<bool> copied;
    uint64_t copied_bytes = 0;
    if (options_.protocol == Protocol::kShm && total <= kInlineCopyMax) {
      uint64_t written = 0, read = 0;
      for (size_t i = 0; i < requests.size(); ++i) {
        const TransferRequest& r = requests[i];
        if (r.length == 0) continue;
        ShmMapping* m = seg_of(r.segment.index).mapping.get();
        if (m == nullptr || !m->Copy(r.op, static_cast<char*>(r.local), r.remote, r.length)) continue;
        if (copied.empty()) copied.assign(requests.size(), false);
        copied[i] = true;
        copied_bytes += r.length;
        (r.op == Op::kWrite ? written : read) += r.length;
        slices -= (r.length + slice - 1) / slice;
      }
      if (written) peer_counters_.bytes_written.fetch_add(written, std::memory_order_relaxed);
      if (read) peer_counters_.bytes_read.fetch_add(read, std::memory_order_relaxed);
      if (copied_bytes) peer_counters_.bytes_mapped.fetch_add(copied_bytes, std::memory_order_relaxed);
    }
    auto [id, batch] = batches_.Create(slices, total, copied_bytes);
    if (slices == 0) return id;
    std::map<Segment*, std::vector<Slice>> per_peer;
    for (size_t i = 0; i < requests.size(); ++i) {
      const TransferRequest& r = requests[i];
      if (r.length == 0 || (!copied.empty() && copied[i])) continue;
      std::vector<Slice>& out = per_peer[seg_of(r.segment.index).seg];
      for (uint64_t off = 0; off < r.length; off += slice) {
        Slice s;
        s.batch = batch;
        s.op = r.op;
        s.local = static_cast<char*>(r.local) + off;
        s.remote = r.remote + off;
        s.length = std::min<uint64_t>(slice, r.length - off);
        s.deadline = deadline;
        out.push_back(s);
      }
    }
    {
      MutexLock l(inflight_mu_);
      Inflight& f = inflight_peers_[id.index];
      f.record = batch;
      f.peers.clear();
      for (auto& [seg, v] : per_peer) f.peers.push_back(seg->peer.get());
    }
    for (auto& [seg, v] : per_peer) seg->peer->Enqueue(std::move(v));
    return id;
  }

  StatusOr<BatchStatus> Poll(BatchId id) override {
    SweepIfExpired(id);
    StatusOr<BatchStatus> s = batches_.Poll(id);
    if (s.ok() && s->state != BatchState::kPending) ForgetPeers(id);
    return s;
  }

  Status Wait(BatchId id, const Deadline& deadline) override {
    // Wake at the batch's own deadline too, to cancel requests still queued then.
    for (;;) {
      Deadline step = deadline.Min(Deadline::After(std::chrono::milliseconds(50), options_.clock));
      Status s = batches_.Wait(id, step);
      if (s.code() != StatusCode::kDeadlineExceeded || !s.message().starts_with("wait on transfer batch")) {
        ForgetPeers(id);
        return s;
      }
      SweepIfExpired(id);
      if (deadline.Expired()) return s;
    }
  }

  Status Transfer(std::span<const TransferRequest> requests) override {
    KVF_ASSIGN_OR_RETURN(BatchId id, Submit(requests));
    return Wait(id, Deadline::Infinite(options_.clock));
  }

  void AcquirePeerWrites() const override {
    if (server_) server_->AcquireServedAccesses();
  }

  TransferStats GetStats() const override {
    TransferStats st;
    batches_.FillStats(&st);
    st.bytes_written = peer_counters_.bytes_written.load(std::memory_order_relaxed);
    st.bytes_read = peer_counters_.bytes_read.load(std::memory_order_relaxed);
    st.bytes_mapped = peer_counters_.bytes_mapped.load(std::memory_order_relaxed);
    st.requests_failed = peer_counters_.requests_failed.load(std::memory_order_relaxed);
    st.handshakes = handshakes_.load(std::memory_order_relaxed);
    st.served_bytes_in = server_counters_.bytes_in.load(std::memory_order_relaxed);
    st.served_bytes_out = server_counters_.bytes_out.load(std::memory_order_relaxed);
    st.served_rejected = server_counters_.rejected.load(std::memory_order_relaxed);
    return st;
  }

 private:
  struct Segment {
    uint32_t generation = 0;
    std::string name, host;
    uint16_t port = 0;
    Mutex mu;  // serialises handshakes of this segment; guards info
    SegmentInfo info;
    std::unique_ptr<Peer> peer;
  };

  std::string DescriptorJson() {
    wire::Descriptor d;
    d.name = segment_name_;
    d.tcp_data_port = server_->data_port();
    d.tcp_proto_version = 2;
    d.buffers = registry_.Snapshot();
    d.kvferry_version = 1;
    d.kvferry_shm_path = shm_path_;
    d.kvferry_auth = !secret_.empty();
    return wire::EncodeDescriptor(d);
  }

  StatusOr<Segment*> Find(SegmentHandle h) {
    MutexLock l(seg_mu_);
    if (h.index >= segments_.size() || segments_[h.index]->generation != h.generation) {
      return NotFoundError(fmt::format("segment handle {}/{} is unknown", h.index, h.generation));
    }
    return segments_[h.index].get();
  }

  // Handshake with the segment and build its lanes' target.
  StatusOr<PeerTarget> Handshake(Segment* seg) {
    MutexLock l(seg->mu);
    handshakes_.fetch_add(1, std::memory_order_relaxed);
    StatusOr<wire::Descriptor> d =
        FetchDescriptor(seg->host, seg->port, DescriptorJson(), secret_, Deadline::After(options_.handshake_timeout));
    if (!d.ok()) return d.status().WithContext(fmt::format("handshake with segment {}", seg->name));
    KVF_ASSIGN_OR_RETURN(auto data_host, wire::SplitHostPort(d->name));
    seg->info.name = d->name;
    seg->info.data_host = data_host.first;
    seg->info.data_port = d->tcp_data_port;
    seg->info.tcp_proto_version = d->tcp_proto_version;
    seg->info.kvferry_peer = d->kvferry_version > 0;
    seg->info.buffers = d->buffers;
    if (options_.protocol == Protocol::kShm && d->kvferry_shm_path.empty()) {
      return FailedPreconditionError(fmt::format(
          "segment {} offers no shm transport (protocol shm needs a kvferry engine on this host)", seg->name));
    }
    PeerTarget t;
    t.segment_name = seg->name;
    t.data_host = data_host.first;
    t.data_port = d->tcp_data_port;
    t.tcp_proto_version = d->tcp_proto_version;
    t.kvferry = d->kvferry_version > 0;
    t.shm_path = d->kvferry_shm_path;
    if (options_.protocol == Protocol::kShm) {
      // Map the target's shared memory once; without it (older kvferry, nothing shared, an
      // error) every request goes through the shm socket as before.
      StatusOr<std::shared_ptr<ShmMapping>> m =
          ShmMapping::Open(t.shm_path, secret_, std::chrono::seconds(30), Deadline::After(options_.handshake_timeout));
      if (m.ok()) {
        t.mapping = std::move(*m);
      } else {
        KVF_LOG_DEBUG("transfer: no shm mapping of segment {}: {}", seg->name, m.status().ToString());
      }
    }
    KVF_LOG_DEBUG("transfer: handshake with {} → data {}:{} v{} kvferry={} buffers={}", seg->name, t.data_host,
                  t.data_port, t.tcp_proto_version, t.kvferry, d->buffers.size());
    return t;
  }

  Status Refresh(Segment* seg) {
    KVF_ASSIGN_OR_RETURN(PeerTarget t, Handshake(seg));
    seg->peer->UpdateTarget(std::move(t));
    KVF_LOG_INFO("transfer: re-handshake with segment {} done", seg->name);
    return Status::Ok();
  }

  void SweepIfExpired(BatchId id) {
    Inflight f;
    {
      MutexLock l(inflight_mu_);
      auto it = inflight_peers_.find(id.index);
      if (it == inflight_peers_.end()) return;
      f = it->second;
    }
    // Peer::CancelExpired only touches queued slices whose own deadline passed.
    for (Peer* p : f.peers) p->CancelExpired(f.record);
  }

  void ForgetPeers(BatchId id) {
    MutexLock l(inflight_mu_);
    inflight_peers_.erase(id.index);
  }

  const TransferEngineOptions options_;
  std::string secret_;
  std::string local_host_;
  std::string segment_name_;
  std::string shm_path_;
  LocalRegistry registry_;
  ServerCounters server_counters_;
  PeerCounters peer_counters_;
  BatchTable batches_;
  std::unique_ptr<Server> server_;
  // Outgoing handshakes; relaxed counter.
  std::atomic<uint64_t> handshakes_{0};

  Mutex seg_mu_;
  std::vector<std::unique_ptr<Segment>> segments_ KVF_GUARDED_BY(seg_mu_);
  std::map<std::string, uint32_t> by_name_ KVF_GUARDED_BY(seg_mu_);

  struct Inflight {
    BatchRecord* record = nullptr;
    std::vector<Peer*> peers;
  };
  Mutex inflight_mu_;
  std::map<uint32_t, Inflight> inflight_peers_ KVF_GUARDED_BY(inflight_mu_);
};

}  // namespace

StatusOr<std::unique_ptr<TransferEngine>> TransferEngine::Create(const TransferEngineOptions& options) {
  auto engine = std::make_unique<TransferEngineImpl>(options);
  KVF_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<TransferEngine>(std::move(engine));
}

}  // namespace kvferry::transfer
