#include "kvferry/connector/consumer.h"

#include <cstring>

#include <fmt/format.h>

#include "kvferry/connector/side_channel.h"

namespace kvferry::connector {
namespace {

constexpr Duration kLoopTick = std::chrono::milliseconds(50);
constexpr int kQueryThreads = 2;
constexpr size_t kMaxReplyBytes = 1u << 20;

double Secs(Duration d) {
  return std::chrono::duration<double>(d).count();
}
TimePoint Now() {
  return Clock::Real()->Now();
}

std::string SegmentHost(const std::string& segment) {
  std::string host;
  int64_t port = 0;
  return SplitHostPort(segment, &host, &port) ? host : std::string();
}
int64_t SegmentPort(const std::string& segment) {
  std::string host;
  int64_t port = 0;
  return SplitHostPort(segment, &host, &port) ? port : 0;
}

}  // namespace

Consumer::Consumer(const KvTransferConfig& config, engine::Engine* engine, const transfer::TransferEngine* transfer,
                   Duration load_timeout, Metrics* metrics, zmq::context_t* zmq_ctx)
    : config_(config),
      engine_(engine),
      transfer_(transfer),
      segment_host_(SegmentHost(transfer->segment_name())),
      segment_port_(SegmentPort(transfer->segment_name())),
      load_timeout_(load_timeout),
      metrics_(metrics),
      zmq_ctx_(zmq_ctx),
      block_bytes_(engine->kv_bytes_per_block()) {}

Consumer::~Consumer() {
  Shutdown(Deadline::After(std::chrono::seconds(10)));
}

Status Consumer::Start() {
  if (!waker_.ok()) return InternalError("side channel: cannot create an eventfd");
  if (segment_host_.empty() || segment_port_ <= 0) {
    return InternalError("connector: the transfer engine's segment name is not HOST:PORT");
  }
  query_pool_ = std::make_unique<ThreadPool>(kQueryThreads, "kvf-bootq");
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

Status Consumer::Begin(const std::string& request_id, const std::string& transfer_id, const std::string& bootstrap_url,
                       const std::string& engine_id, int64_t dp_rank) {
  MutexLock l(mu_);
  if (stopping_) return UnavailableError("connector is shutting down");
  if (loads_.count(request_id) != 0) {
    return AlreadyExistsError(fmt::format("request {} already has a pending KV load", request_id));
  }
  loads_[request_id] = Load{transfer_id, bootstrap_url, engine_id, dp_rank, LoadState::kBegun};
  return Status::Ok();
}

bool Consumer::Cancel(const std::string& request_id) {
  Command c;
  {
    MutexLock l(mu_);
    auto it = loads_.find(request_id);
    if (it == loads_.end()) return false;
    const Load& ld = it->second;
    c.kind = Command::Kind::kAbort;
    c.pull = Pull{request_id, ld.transfer_id, ld.bootstrap_url, ld.engine_id, ld.dp_rank, {}, true, true};
    loads_.erase(it);
  }
  // The request never ran here: tell the prefiller to free its blocks now.
  Enqueue(std::move(c));
  return true;
}

void Consumer::Abandon(const std::string& transfer_id, const std::string& bootstrap_url, const std::string& engine_id,
                       int64_t dp_rank) {
  if (transfer_id.empty() || bootstrap_url.empty()) return;
  Command c;
  c.kind = Command::Kind::kNotice;
  c.pull = Pull{"refused-" + transfer_id, transfer_id, bootstrap_url, engine_id, dp_rank, {}, true, true};
  Enqueue(std::move(c));
}

bool Consumer::OnOutput(const engine::Output& o) {
  if (!o.finished) return false;
  Command c;
  {
    MutexLock l(mu_);
    auto it = loads_.find(o.request_id);
    if (it == loads_.end()) return false;
    const Load& ld = it->second;
    const bool never_pulled = ld.state == LoadState::kBegun;
    c.kind = Command::Kind::kAbort;
    c.pull = Pull{o.request_id, ld.transfer_id, ld.bootstrap_url, ld.engine_id, ld.dp_rank, {}, true, true};
    loads_.erase(it);
    if (!never_pulled) return true;  // OnAborted already sent the notice, or the load completed
  }
  // Finished (aborted) before the engine asked for its KV: free the prefiller's blocks.
  Enqueue(std::move(c));
  return true;
}

void Consumer::OnNeeded(const std::string& request_id, std::span<const int32_t> block_ids,
                        int num_local_cached_tokens) {
  const bool recompute = config_.load_failure_policy == LoadFailurePolicy::kRecompute;
  Command c;
  Status fail;
  bool nothing_to_fetch = false;
  {
    MutexLock l(mu_);
    auto it = loads_.find(request_id);
    if (stopping_) {
      fail = UnavailableError("the decoder's connector is shutting down");
      if (it != loads_.end()) loads_.erase(it);
    } else if (it == loads_.end() || it->second.state != LoadState::kBegun) {
      fail = FailedPreconditionError(
          fmt::format("request {} waits for remote KV but has no kv_transfer_params with the connector", request_id));
    } else {
      Load& ld = it->second;
      ld.state = LoadState::kLoading;
      const int64_t bs = engine_->block_size();
      const size_t skip = std::min(block_ids.size(), static_cast<size_t>(std::max(0, num_local_cached_tokens) / bs));
      c.kind = Command::Kind::kPull;
      c.pull = Pull{request_id, ld.transfer_id, ld.bootstrap_url, ld.engine_id, ld.dp_rank, {}, false, true};
      c.pull.blocks.assign(block_ids.begin() + static_cast<std::ptrdiff_t>(skip), block_ids.end());
      if (c.pull.blocks.empty()) {
        nothing_to_fetch = true;  // every block is cached here: only free the prefiller's copy
        c.kind = Command::Kind::kAbort;
        c.pull.empty = true;
        loads_.erase(it);
      }
    }
  }
  if (!fail.ok()) {
    metrics_->AddFailedReceive();
    engine_->FinishRemoteKv(request_id, fail, recompute);
    return;
  }
  if (nothing_to_fetch) engine_->FinishRemoteKv(request_id, Status::Ok(), recompute);
  Enqueue(std::move(c));
}

bool Consumer::OnAborted(const std::string& request_id) {
  Command c;
  {
    MutexLock l(mu_);
    auto it = loads_.find(request_id);
    if (it == loads_.end() || it->second.state != LoadState::kLoading) return false;
    const Load& ld = it->second;
    c.kind = Command::Kind::kAbort;
    c.pull = Pull{request_id, ld.transfer_id, ld.bootstrap_url, ld.engine_id, ld.dp_rank, {}, true, true};
    loads_.erase(it);
  }
  Enqueue(std::move(c));
  return true;
}

void Consumer::Shutdown(const Deadline& deadline) {
  {
    MutexLock l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stopping_ = true;
  }
  waker_.Notify();
  if (thread_.joinable()) thread_.join();
  if (query_pool_) query_pool_->Shutdown();  // queued queries skip; running ones end by their deadline
  if (deadline.Expired()) KVF_LOG_WARN("connector: consumer shutdown overran its deadline");
}

int64_t Consumer::pending_loads() const {
  MutexLock l(mu_);
  int64_t n = 0;
  for (const auto& [id, ld] : loads_) n += ld.state == LoadState::kLoading ? 1 : 0;
  return n;
}

void Consumer::Enqueue(Command c) {
  bool queued = false;
  {
    MutexLock l(mu_);
    if (!stopping_) {
      commands_.push_back(std::move(c));
      queued = true;
    }
  }
  if (queued) {
    waker_.Notify();
  } else if (c.kind == Command::Kind::kPull) {
    // Shut down: fail it here (the I/O thread is gone or going).
    Complete(c.pull.request_id, UnavailableError("the decoder's connector is shutting down"), 0, {});
  }
}

void Consumer::Loop() {
  SetCurrentThreadName("kvf-receiver");
  std::vector<std::string> frames;
  while (true) {
    std::vector<zmq::pollitem_t> items = {{nullptr, waker_.fd(), ZMQ_POLLIN, 0}};
    std::vector<std::pair<std::string, zmq::socket_t*>> socks, mons;
    for (auto& [addr, s] : dealers_) {
      items.push_back({s->handle(), 0, ZMQ_POLLIN, 0});
      socks.emplace_back(addr, s.get());
    }
    for (auto& [addr, m] : monitors_) {
      items.push_back({m->handle(), 0, ZMQ_POLLIN, 0});
      mons.emplace_back(addr, m.get());
    }
    Duration wait = kLoopTick;
    const TimePoint now = Now();
    for (const auto& [id, f] : in_flight_)
      wait = std::min<Duration>(wait, std::max<Duration>(Duration::zero(), f.deadline - now));
    PollItems(items, wait);
    waker_.Drain();
    for (size_t i = 0; i < socks.size(); ++i) {
      if ((items[i + 1].revents & ZMQ_POLLIN) == 0) continue;
      for (int n = 0; n < 1024 && RecvMultipart(*socks[i].second, &frames); ++n) HandleReply(socks[i].first, frames);
    }
    std::vector<std::pair<std::string, bool>> gone;  // address, whether it had ever connected
    for (size_t i = 0; i < mons.size(); ++i) {
      if ((items[1 + socks.size() + i].revents & ZMQ_POLLIN) == 0) continue;
      // An event is two frames: 2-byte event id + 4-byte value, then the endpoint.
      for (int n = 0; n < 64 && RecvMultipart(*mons[i].second, &frames); ++n) {
        uint16_t event = 0;
        if (!frames.empty() && frames[0].size() >= 2) std::memcpy(&event, frames[0].data(), 2);
        // A refused (or timed-out) connect is as final as a disconnect: the bootstrap server
        // lists only workers that were listening, so nobody listens there any more (the
        // process died between the decoder's /query and its pull). ZMQ would retry forever.
        if (event == ZMQ_EVENT_DISCONNECTED || event == ZMQ_EVENT_CONNECT_RETRIED) {
          gone.emplace_back(mons[i].first, event == ZMQ_EVENT_DISCONNECTED);
          break;
        }
      }
    }
    for (const auto& [addr, was_connected] : gone) OnPeerGone(addr, was_connected);
    std::deque<Command> cmds;
    bool stop;
    {
      MutexLock l(mu_);
      cmds.swap(commands_);
      stop = stopping_;
    }
    for (auto& c : cmds) Process(std::move(c));
    // Loads whose answer did not come in time.
    const TimePoint after = Now();
    std::vector<std::string> expired;
    for (const auto& [id, f] : in_flight_) {
      if (stop || after >= f.deadline) expired.push_back(id);
    }
    for (const auto& id : expired) {
      const InFlight& f = in_flight_.at(id);
      EndUnanswered(id, stop ? UnavailableError("the decoder's connector shut down during the KV load")
                             : DeadlineExceededError(fmt::format("no answer from prefiller {} for transfer {} within "
                                                                 "{:.1f} s",
                                                                 f.addr, f.transfer_id, Secs(load_timeout_))));
    }
    if (stop) break;
  }
  for (auto& [url, b] : bootstrap_) {
    for (const Pull& p : b.waiters) FailPull(p, UnavailableError("the decoder's connector shut down"));
    b.waiters.clear();
  }
  while (!dealers_.empty()) DropDealer(dealers_.begin()->first);  // sockets close on the thread that used them
}

void Consumer::DropDealer(const std::string& addr) {
  auto d = dealers_.find(addr);
  if (d == dealers_.end()) return;
  zmq_socket_monitor(d->second->handle(), nullptr, 0);  // stop the monitor before closing its reader
  monitors_.erase(addr);
  dealers_.erase(d);
}

void Consumer::EndUnanswered(const std::string& id, const Status& why) {
  InFlight f = std::move(in_flight_.at(id));
  in_flight_.erase(id);
  if (f.aborted) {  // no answer for an aborted load: stop holding its blocks
    engine_->ReleaseHeldBlocks(id);
    return;
  }
  bootstrap_[f.bootstrap_url].map.reset();  // the prefiller may have moved: ask again next time
  Complete(id, why, 0, {});
}

void Consumer::OnPeerGone(const std::string& addr, bool was_connected) {
  if (dealers_.count(addr) == 0) return;  // already handled
  std::vector<std::string> ids;
  for (const auto& [id, f] : in_flight_) {
    if (f.addr == addr) ids.push_back(id);
  }
  const char* what = was_connected ? "closed the side channel" : "refused the side-channel connection";
  KVF_LOG_WARN("connector: prefiller worker {} {}; {} KV load(s) waiting on it end now", addr, what, ids.size());
  for (const auto& id : ids) {
    EndUnanswered(id, UnavailableError(fmt::format("prefiller worker {} {} before answering transfer {} (process "
                                                   "gone or restarted)",
                                                   addr, what, in_flight_.at(id).transfer_id)));
  }
  // Forget every bootstrap answer that lists this worker: the next pull asks the bootstrap
  // server again (a dead prefiller then fails at once; a restarted one gives its new address)
  // and opens a fresh connection.
  for (auto& [url, b] : bootstrap_) {
    if (!b.map) continue;
    bool lists = false;
    for (const auto& [dp, entry] : *b.map)
      for (const auto& [tp, pps] : entry.worker_addr)
        for (const auto& [pp, a] : pps) lists = lists || a == addr;
    if (lists) b.map.reset();
  }
  DropDealer(addr);
}

void Consumer::Process(Command c) {
  switch (c.kind) {
    case Command::Kind::kPull: Resolve(std::move(c.pull)); break;
    case Command::Kind::kAbort: {
      // A real pull still waiting for its bootstrap answer turns into the notice when sent.
      // Either way no write can be under way yet, so the engine may free the blocks now.
      for (const auto& [url, b] : bootstrap_) {
        for (const Pull& p : b.waiters) {
          if (p.request_id == c.pull.request_id && !p.empty) {
            engine_->ReleaseHeldBlocks(c.pull.request_id);
            return;
          }
        }
      }
      // A pull that went out may be answered by a write into the blocks: they stay held until
      // the prefiller's answer (or the load timeout).
      auto f = in_flight_.find(c.pull.request_id);
      if (f != in_flight_.end()) {
        f->second.aborted = true;
      } else {
        engine_->ReleaseHeldBlocks(c.pull.request_id);
      }
      Resolve(std::move(c.pull));
      break;
    }
    case Command::Kind::kNotice: Resolve(std::move(c.pull)); break;
    case Command::Kind::kResolved: OnResolved(c.url, std::move(*c.map)); break;
  }
}

void Consumer::Resolve(Pull pull) {
  BootstrapEntry& b = bootstrap_[pull.bootstrap_url];
  if (b.map) {
    StatusOr<std::string> addr = PickWorker(*b.map, pull);
    if (addr.ok()) {
      Send(std::move(pull), *addr);
      return;
    }
    if (!pull.may_requery) {
      FailAndNotify(std::move(pull), addr.status(), &*b.map);
      return;
    }
    b.map.reset();  // stale (the prefiller restarted?): query again once
  }
  pull.may_requery = false;
  const std::string url = pull.bootstrap_url;
  b.waiters.push_back(std::move(pull));
  if (b.querying) return;
  b.querying = true;
  Status st = query_pool_->Submit([this, url] {
    {
      MutexLock l(mu_);
      if (stopping_) return;
    }
    StatusOr<BootstrapMap> m = QueryBootstrap(url, Deadline::After(config_.connector_timeout));
    Command c;
    c.kind = Command::Kind::kResolved;
    c.url = url;
    c.map = std::move(m);
    Enqueue(std::move(c));
  });
  if (!st.ok()) OnResolved(url, st);
}

void Consumer::OnResolved(const std::string& url, StatusOr<BootstrapMap> map) {
  BootstrapEntry& b = bootstrap_[url];
  b.querying = false;
  std::vector<Pull> waiters = std::move(b.waiters);
  b.waiters.clear();
  if (!map.ok()) {
    const Status st = UnavailableError(
        fmt::format("cannot reach the prefiller's bootstrap server {}: {}", url, map.status().ToString()));
    for (const Pull& p : waiters) FailPull(p, st);
    return;
  }
  b.map = std::move(*map);
  for (Pull& p : waiters) {
    StatusOr<std::string> addr = PickWorker(*b.map, p);
    if (addr.ok()) {
      Send(std::move(p), *addr);
    } else {
      FailAndNotify(std::move(p), addr.status(), &*b.map);
    }
  }
}

StatusOr<std::string> Consumer::PickWorker(const BootstrapMap& map, const Pull& pull) const {
  auto dp = map.end();
  if (pull.dp_rank == kAnyDpRank && !pull.engine_id.empty()) {
    for (auto it = map.begin(); it != map.end(); ++it)
      if (it->second.engine_id == pull.engine_id) dp = it;
    if (dp == map.end() && pull.empty) dp = map.find(0);  // a notice for an unknown engine: rank 0's worker
    if (dp == map.end() && !pull.empty) {
      return FailedPreconditionError(
          fmt::format("remote_engine_id {} does not match any engine that bootstrap server {} lists", pull.engine_id,
                      pull.bootstrap_url));
    }
  } else {
    dp = map.find(std::max<int64_t>(0, pull.dp_rank));
  }
  if (dp == map.end()) {
    return NotFoundError(fmt::format("bootstrap server {} lists no prefiller worker for dp_rank {}", pull.bootstrap_url,
                                     std::max<int64_t>(0, pull.dp_rank)));
  }
  // (The empty pull only frees a transfer_id: it goes to the rank's worker whatever its engine.)
  if (!pull.empty && !pull.engine_id.empty() && dp->second.engine_id != pull.engine_id) {
    return FailedPreconditionError(
        fmt::format("remote_engine_id {} does not match engine {} that bootstrap server {} lists for dp_rank {}",
                    pull.engine_id, dp->second.engine_id, pull.bootstrap_url, dp->first));
  }
  auto tp = dp->second.worker_addr.find(0);
  if (tp == dp->second.worker_addr.end() || tp->second.count(0) == 0) {
    return NotFoundError(
        fmt::format("bootstrap server {} lists no tp 0 / pp 0 worker for dp_rank {}", pull.bootstrap_url, dp->first));
  }
  return tp->second.at(0);
}

zmq::socket_t* Consumer::Dealer(const std::string& addr, Status* st) {
  auto it = dealers_.find(addr);
  if (it != dealers_.end()) return it->second.get();
  try {
    auto s = std::make_unique<zmq::socket_t>(*zmq_ctx_, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxReplyBytes));
    // Watch the connection: ZMQ reconnects silently, so a dead prefiller would otherwise be
    // noticed only by the load timeout.
    const std::string ep = fmt::format("inproc://kvf-consumer-{}-{}", static_cast<const void*>(this), ++monitor_seq_);
    if (zmq_socket_monitor(s->handle(), ep.c_str(), ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED) != 0) {
      throw zmq::error_t();
    }
    // A peer that never answers the TCP handshake (host gone, packets dropped) counts as
    // refused after the connector timeout instead of the kernel's ~2 minutes.
    s->set(zmq::sockopt::connect_timeout,
           static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(config_.connector_timeout).count()));
    auto m = std::make_unique<zmq::socket_t>(*zmq_ctx_, zmq::socket_type::pair);
    m->set(zmq::sockopt::linger, 0);
    m->connect(ep);
    s->connect(addr);
    monitors_[addr] = std::move(m);
    return dealers_.emplace(addr, std::move(s)).first->second.get();
  } catch (const zmq::error_t& e) {
    *st = UnavailableError(fmt::format("side channel: cannot connect to prefiller worker {}: {}", addr, e.what()));
    return nullptr;
  }
}

void Consumer::Send(Pull pull, const std::string& addr) {
  if (!pull.empty && !StillLoading(pull.request_id)) {
    pull.empty = true;  // aborted while its bootstrap query ran: only the notice goes out
    pull.blocks.clear();
  }
  Status st;
  zmq::socket_t* s = Dealer(addr, &st);
  if (s == nullptr) {
    FailPull(pull, st);
    return;
  }
  XferMetadata m;
  m.remote_hostname = segment_host_;
  m.remote_port = segment_port_;
  ReqBlocks rb;
  rb.transfer_id = pull.transfer_id;
  rb.groups.push_back(pull.blocks);
  m.req_blocks.emplace(pull.request_id, std::move(rb));
  m.kv_caches_base_addr = {reinterpret_cast<uint64_t>(engine_->kv_base())};
  m.block_lens = {static_cast<int64_t>(block_bytes_)};
  m.kv_block_lens = {static_cast<int64_t>(block_bytes_)};
  m.kvferry_model = model_fingerprint_;
  st = SendMultipart(*s, {EncodeXferMetadata(m)});
  if (!st.ok()) {
    FailPull(pull, st.WithContext("prefiller worker " + addr));
    return;
  }
  if (pull.empty) {
    KVF_LOG_DEBUG("connector: told {} to free transfer {}", addr, pull.transfer_id);
    return;
  }
  const TimePoint now = Now();
  in_flight_[pull.request_id] =
      InFlight{pull.transfer_id, pull.bootstrap_url, addr, pull.blocks.size() * block_bytes_, now, now + load_timeout_};
}

void Consumer::HandleReply(const std::string& addr, const std::vector<std::string>& frames) {
  if (frames.empty()) return;
  StatusOr<XferResponse> r = DecodeXferResponse(frames.back());
  if (!r.ok()) {
    KVF_LOG_WARN("connector: undecodable reply from prefiller {}: {}", addr, r.status().ToString());
    return;
  }
  const TimePoint now = Now();
  auto finish = [&](const std::string& id, const Status& st) {
    auto it = in_flight_.find(id);
    if (it == in_flight_.end() || it->second.addr != addr) return;  // aborted, timed out, or a notice
    InFlight f = std::move(it->second);
    in_flight_.erase(it);
    if (f.aborted) {  // the prefiller is done with the blocks of an aborted load
      engine_->ReleaseHeldBlocks(id);
      return;
    }
    Complete(id, st, f.bytes, now - f.start);
  };
  for (const auto& id : r->ok_reqs) finish(id, Status::Ok());
  const std::string why = r->err_msg.empty() ? std::string("no reason given") : r->err_msg;
  for (const auto& id : r->err_reqs) {
    auto it = in_flight_.find(id);
    const std::string tid = it == in_flight_.end() ? std::string() : it->second.transfer_id;
    finish(id, UnavailableError(fmt::format("prefiller {} could not send transfer {}: {}", addr, tid, why)));
  }
  if (r->status == XferStatus::kError && r->err_reqs.empty()) {
    // An ERROR that names no request fails every pull waiting on this worker.
    std::vector<std::string> ids;
    for (const auto& [id, f] : in_flight_) {
      if (f.addr == addr) ids.push_back(id);
    }
    for (const auto& id : ids) finish(id, UnavailableError(fmt::format("prefiller {} answered ERROR: {}", addr, why)));
  }
}

void Consumer::FailPull(const Pull& pull, const Status& st) {
  if (pull.empty) {
    KVF_LOG_WARN("connector: could not tell the prefiller to free transfer {}: {}", pull.transfer_id, st.ToString());
    return;
  }
  Complete(pull.request_id, st, 0, {});
}

void Consumer::FailAndNotify(Pull pull, const Status& why, const BootstrapMap* map) {
  FailPull(pull, why);
  if (pull.empty || map == nullptr) return;
  pull.empty = true;
  pull.blocks.clear();
  StatusOr<std::string> addr = PickWorker(*map, pull);
  if (addr.ok()) Send(std::move(pull), *addr);
}

void Consumer::Complete(const std::string& request_id, const Status& st, uint64_t bytes, Duration took) {
  {
    MutexLock l(mu_);
    auto it = loads_.find(request_id);
    if (it == loads_.end() || it->second.state != LoadState::kLoading) return;
    loads_.erase(it);
  }
  const bool recompute = config_.load_failure_policy == LoadFailurePolicy::kRecompute;
  if (st.ok()) {
    // The prefiller's FINISH says its writes landed: order them before the engine reads the blocks.
    transfer_->AcquirePeerWrites();
    metrics_->RecordTransfer(bytes, block_bytes_ > 0 ? bytes / block_bytes_ : 0, 0, Secs(took));
  } else {
    metrics_->AddFailedReceive();
    KVF_LOG_WARN("connector: KV load of request {} failed ({}): {}", request_id, recompute ? "recomputing" : "failing",
                 st.ToString());
  }
  engine_->FinishRemoteKv(request_id, st, recompute);
}

bool Consumer::StillLoading(const std::string& request_id) {
  MutexLock l(mu_);
  auto it = loads_.find(request_id);
  return it != loads_.end() && it->second.state == LoadState::kLoading;
}

}  // namespace kvferry::connector
