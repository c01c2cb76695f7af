#include "kvferry/transfer/peer.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvferry/transfer/auth.h"
#include "kvferry/transfer/net.h"

namespace kvferry::transfer {

Peer::Peer(PeerOptions options, PeerTarget target, BatchTable* batches, PeerCounters* counters)
    : options_(std::move(options)), batches_(batches), counters_(counters) {
  {
    MutexLock l(mu_);
    target_ = std::move(target);
  }
  int lanes = options_.lanes < 1 ? 1 : options_.lanes;
  for (int i = 0; i < lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    Lane* raw = lane.get();
    lanes_.push_back(std::move(lane));
    raw->thread = std::thread([this, raw, i] {
      SetCurrentThreadName(fmt::format("kvf-lane{}", i));
      RunLane(raw);
    });
  }
}

Peer::~Peer() {
  Stop();
}

void Peer::Enqueue(std::vector<Slice> slices) {
  {
    MutexLock l(mu_);
    if (stopping_) {
      for (const Slice& s : slices) Fail(s, CancelledError("transfer engine is shutting down"));
      return;
    }
    for (Slice& s : slices) queue_.push_back(s);
  }
  if (slices.size() == 1) {
    cv_.NotifyOne();
  } else {
    cv_.NotifyAll();
  }
}

void Peer::CancelExpired(BatchRecord* batch) {
  std::vector<Slice> expired;
  {
    MutexLock l(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->batch == batch && it->deadline.Expired()) {
        expired.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const Slice& s : expired) Fail(s, DeadlineExceededError("transfer deadline passed before the request was sent"));
}

void Peer::UpdateTarget(PeerTarget target) {
  MutexLock l(mu_);
  target.epoch = target_.epoch + 1;
  target_ = std::move(target);
  stale_.store(false, std::memory_order_release);
}

PeerTarget Peer::target() const {
  MutexLock l(mu_);
  return target_;
}

std::shared_ptr<ShmMapping> Peer::mapping() const {
  MutexLock l(mu_);
  return target_.mapping;
}

void Peer::Stop() {
  std::deque<Slice> queued;
  {
    MutexLock l(mu_);
    if (stopping_ && lanes_.empty()) return;
    stopping_ = true;
    queued.swap(queue_);
    for (auto& lane : lanes_) {
      if (lane->fd_for_shutdown >= 0) ::shutdown(lane->fd_for_shutdown, SHUT_RDWR);
    }
  }
  cv_.NotifyAll();
  for (auto& lane : lanes_) {
    if (lane->thread.joinable()) lane->thread.join();
  }
  lanes_.clear();
  for (const Slice& s : queued) Fail(s, CancelledError("transfer engine is shutting down"));
}

void Peer::Fail(const Slice& s, const Status& status) {
  counters_->requests_failed.fetch_add(1, std::memory_order_relaxed);
  batches_->Complete(s.batch, status, 0);
}

Status Peer::Connect(const PeerTarget& t, const Deadline& deadline, int* fd_out) {
  StatusOr<net::Fd> fd = [&]() -> StatusOr<net::Fd> {
    if (options_.protocol == Protocol::kShm) {
      if (t.shm_path.empty()) {
        return FailedPreconditionError(fmt::format(
            "segment {} offers no shm transport (not a kvferry engine?); use protocol tcp", t.segment_name));
      }
      StatusOr<net::Fd> f = net::ConnectUnix(t.shm_path, deadline);
      if (!f.ok() && f.status().code() == StatusCode::kNotFound) {
        return UnavailableError(
            fmt::format("shm socket of segment {} not found: shm needs both engines on one host", t.segment_name));
      }
      return f;
    }
    return net::ConnectTcp(t.data_host, t.data_port, deadline);
  }();
  if (!fd.ok()) return fd.status().WithContext(fmt::format("connect to segment {}", t.segment_name));
  if (!options_.secret.empty()) {
    KVF_RETURN_IF_ERROR(AuthenticateAsClient(fd->get(), options_.secret, deadline)
                            .WithContext(fmt::format("segment {}", t.segment_name)));
  }
  *fd_out = fd->Release();
  return Status::Ok();
}

namespace {
bool UsesV2(const PeerTarget& t, Protocol p) {
  return p == Protocol::kShm || t.tcp_proto_version >= 2;
}
}  // namespace

Status Peer::SendRequest(int fd, const PeerTarget& t, const Slice& s) {
  const bool shm = options_.protocol == Protocol::kShm;
  uint8_t head[wire::kDataHeaderSize + wire::kShmRefSize];
  wire::DataHeader h{s.length, s.remote, wire::MakeOpcode(s.op, UsesV2(t, options_.protocol), t.kvferry, shm)};
  wire::EncodeDataHeader(h, head);
  size_t head_len = wire::kDataHeaderSize;
  if (shm) {
    auto local = reinterpret_cast<uint64_t>(s.local);
    for (int i = 0; i < 8; ++i) head[wire::kDataHeaderSize + i] = static_cast<uint8_t>(local >> (8 * i));
    head_len += wire::kShmRefSize;
  }
  iovec iov[2] = {{head, head_len}, {s.local, s.length}};
  int n = (s.op == Op::kWrite && !shm) ? 2 : 1;
  return net::SendAll(fd, iov, n, s.deadline);
}

Status Peer::ReceiveCompletion(int fd, const PeerTarget& t, const Slice& s, const Deadline& deadline, bool* rejected) {
  const bool shm = options_.protocol == Protocol::kShm;
  *rejected = false;
  if (UsesV2(t, options_.protocol)) {
    uint8_t st[wire::kStatusSize];
    KVF_RETURN_IF_ERROR(net::RecvAll(fd, st, sizeof(st), deadline));
    KVF_ASSIGN_OR_RETURN(uint32_t code, wire::DecodeStatus(st));
    if (code == wire::kCodeRejected) {
      *rejected = true;
      return PermissionDeniedError(
          fmt::format("segment {} rejected {} of {} bytes at 0x{:x}: outside its registered memory", t.segment_name,
                      s.op == Op::kWrite ? "WRITE" : "READ", s.length, s.remote));
    }
    if (code != wire::kCodeOk) {
      *rejected = true;
      return DataLossError(fmt::format("segment {} failed the request (status code {})", t.segment_name, code));
    }
  }
  if (s.op == Op::kRead && !shm) {
    KVF_RETURN_IF_ERROR(net::RecvAllWithIdle(fd, s.local, s.length, options_.io_idle, deadline));
  }
  return Status::Ok();
}

void Peer::RunLane(Lane* lane) {
  int fd = -1;
  uint64_t conn_epoch = 0;
  PeerTarget t;
  std::deque<Slice> inflight;
  auto close_conn = [&] {
    if (fd < 0) return;
    {
      MutexLock l(mu_);
      lane->fd_for_shutdown = -1;
    }
    ::close(fd);
    fd = -1;
  };
  auto fail_inflight = [&](const Status& st) {
    for (const Slice& s : inflight) Fail(s, st);
    inflight.clear();
  };
  // Connects to `target`; the lane then uses that connection, and Stop can shut it down.
  auto open_conn = [&](const PeerTarget& target, const Deadline& deadline) -> Status {
    KVF_RETURN_IF_ERROR(Connect(target, deadline, &fd));
    conn_epoch = target.epoch;
    MutexLock l(mu_);
    lane->fd_for_shutdown = fd;
    if (stopping_) ::shutdown(fd, SHUT_RDWR);
    return Status::Ok();
  };
  {
    // A kvferry target keeps idle connections open: connect now, not with the first slice, so
    // that the first transfer to a segment does not pay the connection set-up (and, with a
    // secret, the authentication) on its critical path. A failure here is retried lazily.
    PeerTarget first;
    bool stopping;
    {
      MutexLock l(mu_);
      first = target_;
      stopping = stopping_;
    }
    if (!stopping && first.kvferry) (void)open_conn(first, Deadline::After(options_.connect_timeout));
  }
  std::vector<Slice> to_send;
  for (;;) {
    to_send.clear();
    {
      MutexLock l(mu_);
      while (inflight.empty() && queue_.empty() && !stopping_) cv_.Wait(mu_);
      if (stopping_) break;
      if (inflight.empty()) t = target_;  // switch targets only between requests
      size_t depth = t.kvferry ? static_cast<size_t>(std::max(1, options_.depth)) : 1;
      while (inflight.size() + to_send.size() < depth && !queue_.empty()) {
        to_send.push_back(queue_.front());
        queue_.pop_front();
      }
    }
    if (fd >= 0 && inflight.empty() && conn_epoch != t.epoch) close_conn();
    for (const Slice& s : to_send) {
      if (s.deadline.Expired()) {
        Fail(s, DeadlineExceededError("transfer deadline passed before the request was sent"));
        continue;
      }
      // shm: a slice inside the target's mapped memory is copied right here (large batches
      // come this way so that the lanes copy in parallel; small ones are copied in Submit).
      if (t.mapping && t.mapping->Copy(s.op, s.local, s.remote, s.length)) {
        (s.op == Op::kWrite ? counters_->bytes_written : counters_->bytes_read)
            .fetch_add(s.length, std::memory_order_relaxed);
        counters_->bytes_mapped.fetch_add(s.length, std::memory_order_relaxed);
        batches_->Complete(s.batch, Status::Ok(), s.length);
        continue;
      }
      if (fd < 0) {
        Status st = open_conn(t, Deadline::After(options_.connect_timeout).Min(s.deadline));
        if (!st.ok()) {
          MarkStale();
          Fail(s, st);
          continue;
        }
      }
      Status st = SendRequest(fd, t, s);
      if (!st.ok()) {
        st = st.WithContext(fmt::format("send to segment {}", t.segment_name));
        MarkStale();
        Fail(s, st);
        fail_inflight(st);
        close_conn();
        continue;
      }
      if (s.op == Op::kWrite && !UsesV2(t, options_.protocol)) {  // v1 WRITE: done once handed to the socket
        counters_->bytes_written.fetch_add(s.length, std::memory_order_relaxed);
        batches_->Complete(s.batch, Status::Ok(), s.length);
        continue;
      }
      inflight.push_back(s);
    }
    if (inflight.empty()) continue;
    Deadline d = inflight.front().deadline;
    for (const Slice& s : inflight) d = d.Min(s.deadline);
    bool rejected = false;
    const Slice front = inflight.front();
    Status st = ReceiveCompletion(fd, t, front, d, &rejected);
    if (st.ok()) {
      inflight.pop_front();
      (front.op == Op::kWrite ? counters_->bytes_written : counters_->bytes_read)
          .fetch_add(front.length, std::memory_order_relaxed);
      batches_->Complete(front.batch, Status::Ok(), front.length);
    } else if (rejected && t.kvferry) {
      inflight.pop_front();  // a kvferry target keeps the connection after a rejection
      Fail(front, st);
    } else {
      if (!rejected) MarkStale();
      fail_inflight(st.WithContext(fmt::format("segment {}", t.segment_name)));
      close_conn();
    }
  }
  fail_inflight(CancelledError("transfer engine is shutting down"));
  close_conn();
}

}  // namespace kvferry::transfer
