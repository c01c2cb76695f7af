#include "kvferry/transfer/server.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <nlohmann/json.hpp>
#include <vector>

#include "kvferry/transfer/auth.h"
#include "kvferry/transfer/registry.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {
namespace {

// A rejected WRITE from a kvferry peer is drained (so the connection survives)
// only up to this size; larger bodies close the connection instead.
constexpr uint64_t kMaxDrain = 64ull << 20;

Status Drain(int fd, uint64_t n, Duration idle) {
  std::vector<char> sink(std::min<uint64_t>(n, 1 << 16));
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, sink.size()));
    KVF_RETURN_IF_ERROR(net::RecvAllWithIdle(fd, sink.data(), chunk, idle, Deadline::Infinite()));
    n -= chunk;
  }
  return Status::Ok();
}

// Copies between our memory and the peer's with process_vm_{readv,writev}.
// to_local: peer → us (a WRITE into our memory).
Status CopyWithPeer(int pid, uint64_t local, uint64_t remote, uint64_t size, bool to_local) {
  while (size > 0) {
    iovec l{reinterpret_cast<void*>(local), size};
    iovec r{reinterpret_cast<void*>(remote), size};
    ssize_t n = to_local ? process_vm_readv(pid, &l, 1, &r, 1, 0) : process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, to_local ? "process_vm_readv" : "process_vm_writev");
    }
    if (n == 0) return DataLossError("process_vm copy made no progress");
    local += static_cast<uint64_t>(n);
    remote += static_cast<uint64_t>(n);
    size -= static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Server::Server(ServerOptions options, LocalRegistry* registry, std::function<std::string()> descriptor_json,
               ServerCounters* counters)
    : options_(std::move(options)),
      registry_(registry),
      descriptor_json_(std::move(descriptor_json)),
      counters_(counters) {}

Server::~Server() { Stop(); }

Status Server::Bind() {
  KVF_ASSIGN_OR_RETURN(handshake_listen_,
                       net::ListenTcp(options_.listen_host, options_.handshake_port, &handshake_port_));
  KVF_ASSIGN_OR_RETURN(data_listen_, net::ListenTcp(options_.listen_host, options_.data_port, &data_port_));
  if (!options_.shm_path.empty()) {
    KVF_ASSIGN_OR_RETURN(shm_listen_, net::ListenUnix(options_.shm_path));
  }
  return Status::Ok();
}

void Server::Serve() {
  acceptors_.emplace_back([this] { AcceptLoop(Kind::kHandshake, handshake_listen_.get()); });
  acceptors_.emplace_back([this] { AcceptLoop(Kind::kData, data_listen_.get()); });
  if (shm_listen_.valid()) acceptors_.emplace_back([this] { AcceptLoop(Kind::kShm, shm_listen_.get()); });
}

void Server::Stop() {
  {
    MutexLock l(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& c : conns_) {
      if (c->fd.valid()) ::shutdown(c->fd.get(), SHUT_RDWR);
    }
  }
  for (net::Fd* fd : {&handshake_listen_, &data_listen_, &shm_listen_}) {
    if (fd->valid()) ::shutdown(fd->get(), SHUT_RDWR);
  }
  for (auto& t : acceptors_) t.join();
  acceptors_.clear();
  std::list<std::unique_ptr<Conn>> conns;
  {
    MutexLock l(mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) c->thread.join();
  if (!options_.shm_path.empty()) ::unlink(options_.shm_path.c_str());
}

void Server::ReapLocked() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if ((*it)->done.load(std::memory_order_acquire)) {
      (*it)->thread.join();
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void Server::AcceptLoop(Kind kind, int listen_fd) {
  SetCurrentThreadName(kind == Kind::kHandshake ? "kvf-hs-accept" : kind == Kind::kData ? "kvf-tcp-accept"
                                                                                       : "kvf-shm-accept");
  for (;;) {
    StatusOr<net::Fd> fd = net::Accept(listen_fd);
    if (!fd.ok()) {
      MutexLock l(mu_);
      if (stopping_) return;
      KVF_LOG_WARN("transfer: accept failed: {}", fd.status().ToString());
      if (fd.status().code() == StatusCode::kResourceExhausted) ::usleep(10000);
      continue;
    }
    net::TuneSocket(fd->get(), kind != Kind::kShm);
    MutexLock l(mu_);
    if (stopping_) return;
    ReapLocked();
    if (conns_.size() >= options_.max_connections) {
      KVF_LOG_WARN("transfer: {} connections open, refusing a new one", conns_.size());
      continue;  // fd closes
    }
    auto conn = std::make_unique<Conn>();
    conn->fd = std::move(*fd);
    Conn* c = conn.get();
    conns_.push_back(std::move(conn));
    c->thread = std::thread([this, c, kind] {
      if (kind == Kind::kHandshake) {
        ServeHandshake(c);
      } else {
        ServeData(c, kind == Kind::kShm);
      }
      {
        MutexLock l(mu_);
        c->fd.Reset();
      }
      c->done.store(true, std::memory_order_release);
    });
  }
}

void Server::ServeMap(int fd) {
  auto client = std::make_shared<MapClient>();
  client->fd = fd;
  {
    MutexLock send(client->send_mu);  // no revocation goes out before the reply
    std::vector<SharedRegion> regions;
    {
      // The snapshot and the listing happen under map_mu_, which RevokeShared takes after the
      // region left the registry: a region is either not in our snapshot or we are listed.
      MutexLock l(map_mu_);
      regions = registry_->SnapshotShared(wire::kMaxShmMapRegions);
      MutexLock c(client->mu);
      for (const SharedRegion& r : regions) client->ids.insert(r.entry.id);
      map_clients_.push_back(client);
    }
    std::vector<wire::ShmMapEntry> entries;
    std::vector<int> fds;
    for (const SharedRegion& r : regions) {
      entries.push_back(r.entry);
      fds.push_back(r.fd.get());
    }
    std::string reply = wire::EncodeShmMapReply(entries);
    Status s = net::SendWithFds(fd, reply.data(), reply.size(), fds, Deadline::After(options_.io_timeout));
    if (!s.ok()) KVF_LOG_DEBUG("transfer: shm map reply failed: {}", s.ToString());
    KVF_LOG_DEBUG("transfer: {} shared regions handed to a same-host peer", entries.size());
  }  // our duplicates of the memfds close here; the peer holds its own
  for (;;) {
    uint8_t frame[wire::kShmControlSize];
    if (!net::WaitReadable(fd, Deadline::Infinite()).ok() ||
        !net::RecvAll(fd, frame, sizeof(frame), Deadline::After(options_.io_timeout)).ok()) {
      break;
    }
    StatusOr<std::pair<uint32_t, uint64_t>> c = wire::DecodeShmControl(frame);
    if (!c.ok() || c->first != wire::kShmRevoked) break;
    MutexLock l(client->mu);
    client->ids.erase(c->second);
    client->cv.NotifyAll();
  }
  {
    MutexLock l(map_mu_);
    map_clients_.remove(client);
  }
  MutexLock l(client->mu);
  client->closed = true;  // a dead peer's mappings died with it
  client->cv.NotifyAll();
}

void Server::RevokeShared(uint64_t id) {
  std::vector<std::shared_ptr<MapClient>> holders;
  {
    MutexLock l(map_mu_);
    for (auto& c : map_clients_) {
      MutexLock cl(c->mu);
      if (c->ids.count(id) && !c->closed) holders.push_back(c);
    }
  }
  for (auto& c : holders) {
    uint8_t frame[wire::kShmControlSize];
    wire::EncodeShmControl(wire::kShmRevoke, id, frame);
    MutexLock send(c->send_mu);
    {
      MutexLock l(c->mu);
      if (c->closed) continue;  // its fd may already be closed or reused
      if (!net::SendAll(c->fd, frame, sizeof(frame), Deadline::After(options_.io_timeout)).ok()) continue;
    }
  }
  for (auto& c : holders) {
    Deadline deadline = Deadline::After(options_.io_timeout);
    MutexLock l(c->mu);
    while (c->ids.count(id) && !c->closed) {
      if (!c->cv.WaitUntil(c->mu, deadline) && deadline.Expired()) {
        KVF_LOG_WARN("transfer: a same-host peer did not give back shared region {} within {} ms; disconnecting it",
                     id, std::chrono::duration_cast<std::chrono::milliseconds>(options_.io_timeout).count());
        ::shutdown(c->fd, SHUT_RDWR);
        break;
      }
    }
  }
}

void Server::ServeHandshake(Conn* conn) {
  SetCurrentThreadName("kvf-hs");
  int fd = conn->fd.get();
  Deadline deadline = Deadline::After(options_.handshake_timeout);
  if (!options_.secret.empty()) {
    Status s = AuthenticateAsServer(fd, options_.secret, deadline);
    if (!s.ok()) {
      counters_->rejected.fetch_add(1, std::memory_order_relaxed);
      KVF_LOG_WARN("transfer: handshake connection rejected: {}", s.ToString());
      return;
    }
  }
  uint8_t len_bytes[wire::kHandshakeLengthSize];
  if (!net::RecvAll(fd, len_bytes, sizeof(len_bytes), deadline).ok()) return;
  StatusOr<uint64_t> len = wire::DecodeHandshakeLength(len_bytes, options_.max_handshake_length);
  if (!len.ok()) {
    KVF_LOG_DEBUG("transfer: bad handshake frame: {}", len.status().ToString());
    return;
  }
  std::string payload(*len, '\0');
  if (!net::RecvAll(fd, payload.data(), payload.size(), deadline).ok()) return;
  StatusOr<wire::HandshakePayload> p = wire::DecodeHandshakePayload(payload);
  if (!p.ok() || !nlohmann::json::accept(p->body.begin(), p->body.end())) {
    KVF_LOG_DEBUG("transfer: handshake body rejected");
    return;
  }
  std::string reply;
  if (!p->typed) {
    reply = wire::EncodeUntypedHandshakeFrame(wire::ConnectionReplyBody());
  } else {
    std::string body;
    switch (p->type) {
      case wire::kTypeMetadata: body = descriptor_json_(); break;
      case wire::kTypeProbe: body = wire::ProbeReplyBody(); break;
      case wire::kTypeNotify: body = wire::NotifyReplyBody(); break;
      default: body = wire::ConnectionReplyBody(); break;
    }
    reply = wire::EncodeHandshakeFrame(p->type, body);
  }
  if (!net::SendAll(fd, reply.data(), reply.size(), deadline).ok()) return;
  ::shutdown(fd, SHUT_WR);
  char sink[256];
  // Wait (bounded) for the client to close, as Mooncake's daemon does.
  while (net::WaitReadable(fd, deadline).ok()) {
    ssize_t n = ::recv(fd, sink, sizeof(sink), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
  }
}

void Server::ServeData(Conn* conn, bool shm) {
  SetCurrentThreadName(shm ? "kvf-shm" : "kvf-tcp");
  int fd = conn->fd.get();
  int peer_pid = 0;
  if (shm) {
    StatusOr<int> pid = net::PeerPid(fd);
    if (!pid.ok()) return;
    peer_pid = *pid;
  }
  if (!options_.secret.empty()) {
    Status s = AuthenticateAsServer(fd, options_.secret, Deadline::After(options_.handshake_timeout));
    if (!s.ok()) {
      counters_->rejected.fetch_add(1, std::memory_order_relaxed);
      KVF_LOG_WARN("transfer: data connection rejected: {}", s.ToString());
      return;
    }
  }
  std::vector<uint8_t> pending;  // status frames not yet sent
  auto flush = [&]() -> bool {
    if (pending.empty()) return true;
    bool ok = net::SendAll(fd, pending.data(), pending.size(), Deadline::After(options_.io_timeout)).ok();
    pending.clear();
    return ok;
  };
  auto add_status = [&](uint32_t code) {
    uint8_t st[wire::kStatusSize];
    wire::EncodeStatus(code, st);
    pending.insert(pending.end(), st, st + sizeof(st));
  };
  for (;;) {
    // Batch status frames while more requests are already waiting; flush before blocking.
    if (!pending.empty() && (net::Readable(fd) == 0 || pending.size() >= 4 * wire::kStatusSize)) {
      if (!flush()) return;
    }
    if (!net::WaitReadable(fd, Deadline::Infinite()).ok()) return;
    uint8_t hb[wire::kDataHeaderSize + wire::kShmRefSize];
    if (!net::RecvAll(fd, hb, wire::kDataHeaderSize, Deadline::After(options_.io_timeout)).ok()) return;
    wire::DataHeader h = wire::DecodeDataHeader(hb);
    if (shm && h.opcode == wire::kOpShmMap && pending.empty()) {
      // Only a process of our own user (or root) gets our memory's descriptors.
      StatusOr<uint32_t> uid = net::PeerUid(fd);
      if (!uid.ok() || (*uid != geteuid() && *uid != 0)) {
        counters_->rejected.fetch_add(1, std::memory_order_relaxed);
        KVF_LOG_WARN("transfer: shm map request from another user refused");
        return;
      }
      ServeMap(fd);
      return;
    }
    const bool v2 = wire::IsV2(h.opcode);
    const bool ext = wire::IsKvferryOp(h.opcode);
    const bool shm_ref = ext && wire::IsShmRef(h.opcode);
    const bool write = wire::IsWriteOp(h.opcode);
    if (shm_ref != shm) {  // shm requests only on the shm socket, and only shm requests there
      counters_->rejected.fetch_add(1, std::memory_order_relaxed);
      if (v2) add_status(wire::kCodeRejected);
      flush();
      return;
    }
    uint64_t peer_addr = 0;
    if (shm_ref) {
      if (!net::RecvAll(fd, hb + wire::kDataHeaderSize, wire::kShmRefSize, Deadline::After(options_.io_timeout)).ok()) return;
      for (int i = 7; i >= 0; --i) peer_addr = (peer_addr << 8) | hb[wire::kDataHeaderSize + i];
    }
    ReaderLock regions(registry_->mu());
    if (!registry_->ContainsLocked(h.addr, h.size)) {
      counters_->rejected.fetch_add(1, std::memory_order_relaxed);
      KVF_LOG_DEBUG("transfer: rejected {} of {} bytes at 0x{:x}", write ? "WRITE" : "READ", h.size, h.addr);
      if (v2) add_status(wire::kCodeRejected);
      if (!ext) {
        flush();
        return;  // Mooncake behaviour: close without reading the body
      }
      if (write && !shm_ref) {
        if (h.size > kMaxDrain || !Drain(fd, h.size, options_.io_timeout).ok()) {
          flush();
          return;
        }
      }
      continue;
    }
    void* mem = reinterpret_cast<void*>(h.addr);
    access_order_.fetch_add(1, std::memory_order_acq_rel);
    struct OrderAfter {
      std::atomic<uint64_t>& a;
      ~OrderAfter() { a.fetch_add(1, std::memory_order_acq_rel); }
    } order_after{access_order_};
    if (shm_ref) {
      Status s = CopyWithPeer(peer_pid, h.addr, peer_addr, h.size, write);
      if (!s.ok()) KVF_LOG_WARN("transfer: shm copy of {} bytes failed: {}", h.size, s.ToString());
      (write ? counters_->bytes_in : counters_->bytes_out).fetch_add(s.ok() ? h.size : 0, std::memory_order_relaxed);
      add_status(s.ok() ? wire::kCodeOk : wire::kCodeCopyFailed);
      continue;
    }
    if (write) {
      if (!net::RecvAllWithIdle(fd, mem, h.size, options_.io_timeout, Deadline::Infinite()).ok()) return;
      counters_->bytes_in.fetch_add(h.size, std::memory_order_relaxed);
      if (v2) add_status(wire::kCodeOk);
    } else {
      if (v2) add_status(wire::kCodeOk);
      iovec iov[2] = {{pending.data(), pending.size()}, {mem, h.size}};
      Status s = net::SendAll(fd, iov, 2, Deadline::After(options_.io_timeout + std::chrono::nanoseconds(h.size * 4)));
      pending.clear();
      if (!s.ok()) return;
      counters_->bytes_out.fetch_add(h.size, std::memory_order_relaxed);
    }
  }
}

}  // namespace kvferry::transfer
