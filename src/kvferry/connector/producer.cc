#include "kvferry/connector/producer.h"

#include <fmt/format.h>

#include <limits>

namespace kvferry::connector {
namespace {

using std::chrono::duration_cast;
using Ms = std::chrono::milliseconds;

constexpr Duration kLoopTick = Ms(50);     // timer granularity of the side-channel thread
constexpr Duration kWaitSlice = Ms(100);   // a sender re-checks shutdown this often
constexpr size_t kMaxTombstones = 100000;  // bound on remembered ended transfer_ids

double Secs(Duration d) {
  return std::chrono::duration<double>(d).count();
}

TimePoint Now() {
  return Clock::Real()->Now();
}

}  // namespace

Producer::Producer(const KvTransferConfig& config, engine::Engine* engine, transfer::TransferEngine* te,
                   Metrics* metrics, zmq::context_t* zmq_ctx)
    : config_(config), engine_(engine), te_(te), metrics_(metrics), zmq_ctx_(zmq_ctx) {}

Producer::~Producer() {
  Shutdown(Deadline::After(std::chrono::seconds(10)));
}

Status Producer::Start(const std::string& host) {
  if (!waker_.ok()) return InternalError("side channel: cannot create an eventfd");
  std::string endpoint;
  try {
    router_ = std::make_unique<zmq::socket_t>(*zmq_ctx_, zmq::socket_type::router);
    router_->set(zmq::sockopt::linger, 0);
    router_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxSideChannelMessage));
    router_->bind("tcp://" + host + ":*");
    endpoint = router_->get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    router_.reset();
    return UnavailableError(fmt::format("side channel: cannot bind a ZMQ ROUTER on tcp://{}:* ({})", host, e.what()));
  }
  {
    MutexLock l(mu_);
    endpoint_ = endpoint;
  }
  pool_ = std::make_unique<ThreadPool>(static_cast<size_t>(std::max(1, config_.num_workers)), "kvf-sender");
  thread_ = std::thread([this] { Loop(); });
  KVF_LOG_INFO("connector: side channel (ROUTER) on {}, {} sender threads", endpoint, config_.num_workers);
  return Status::Ok();
}

std::string Producer::endpoint() const {
  MutexLock l(mu_);
  return endpoint_;
}

StatusOr<engine::KvRole> Producer::Begin(const std::string& request_id, const std::string& transfer_id) {
  MutexLock l(mu_);
  if (stopping_) return UnavailableError("connector is shutting down");
  if (by_request_.count(request_id) != 0) {
    return AlreadyExistsError(fmt::format("request {} already has an active KV transfer", request_id));
  }
  auto it = entries_.find(transfer_id);
  if (it != entries_.end()) {
    Entry& e = it->second;
    if (!e.request_id.empty()) {
      return AlreadyExistsError(
          fmt::format("transfer_id {} is already in use by active request {}", transfer_id, e.request_id));
    }
    if (e.aborted) {
      // The decoder gave up before this request arrived: run it without holding anything.
      KVF_LOG_INFO("connector: transfer {} was given up by its decoder; request {} keeps no KV", transfer_id,
                   request_id);
      entries_.erase(it);
      return engine::KvRole::kLocal;
    }
    e.request_id = request_id;  // a pull is already waiting for it: it may now wait the abort timeout
  } else {
    entries_[transfer_id].request_id = request_id;
  }
  gone_.erase(transfer_id);
  by_request_[request_id] = transfer_id;
  return engine::KvRole::kHoldForRemote;
}

bool Producer::Cancel(const std::string& request_id) {
  MutexLock l(mu_);
  auto it = by_request_.find(request_id);
  if (it == by_request_.end()) return false;
  const std::string tid = it->second;
  by_request_.erase(it);
  auto e = entries_.find(tid);
  if (e != entries_.end()) {
    FailWaitingLocked(e->second, FailedPreconditionError(
                                     fmt::format("the prefiller did not accept the request of transfer {}", tid)));
    entries_.erase(e);
  }
  TombstoneLocked(tid, "the prefiller did not accept the request");
  return true;
}

void Producer::Reject(const std::string& transfer_id, const std::string& why) {
  if (transfer_id.empty()) return;
  MutexLock l(mu_);
  auto it = entries_.find(transfer_id);
  if (it != entries_.end()) {
    if (!it->second.request_id.empty()) return;  // an accepted request owns the id (a duplicate was refused)
    FailWaitingLocked(it->second, FailedPreconditionError(fmt::format("transfer {}: {}", transfer_id, why)));
    entries_.erase(it);
  }
  TombstoneLocked(transfer_id, why);
}

bool Producer::OnOutput(const engine::Output& o) {
  std::optional<Run> run;
  bool release = false;
  {
    MutexLock l(mu_);
    auto it = by_request_.find(o.request_id);
    if (it == by_request_.end()) return false;
    if (!o.finished) return true;
    const std::string tid = it->second;
    by_request_.erase(it);
    auto eit = entries_.find(tid);
    if (eit == entries_.end()) {  // shut down meanwhile
      release = !o.held_blocks.empty();
    } else {
      Entry& e = eit->second;
      if (o.finish_reason == engine::FinishReason::kLength && !o.held_blocks.empty() && !e.aborted && !stopping_) {
        e.finished = true;
        e.blocks = o.held_blocks;
        e.expire = Now() + config_.abort_request_timeout;
        if (!e.waiting.empty()) {
          e.in_flight = true;
          run = Run{std::move(e.waiting.front()), e.blocks, e.request_id};
          e.waiting.erase(e.waiting.begin());
        }
      } else {
        release = !o.held_blocks.empty();
        std::string why = e.aborted
                              ? std::string("the decoder aborted the request")
                              : fmt::format("the prefill of request {} ended with '{}', not by reaching max_tokens",
                                            o.request_id, engine::FinishReasonName(o.finish_reason));
        FailWaitingLocked(e, FailedPreconditionError(fmt::format("transfer {}: {}", tid, why)));
        entries_.erase(eit);
        TombstoneLocked(tid, why);
      }
    }
  }
  if (release) engine_->ReleaseHeldBlocks(o.request_id);
  if (run) Submit(std::move(*run));
  return true;
}

void Producer::Shutdown(const Deadline& deadline) {
  std::vector<std::string> release;
  {
    MutexLock l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stopping_ = true;
    for (auto it = entries_.begin(); it != entries_.end();) {
      Entry& e = it->second;
      FailWaitingLocked(e, UnavailableError("the prefiller is shutting down"));
      if (e.in_flight) {  // its sender frees the blocks
        ++it;
        continue;
      }
      if (e.finished) release.push_back(e.request_id);
      it = entries_.erase(it);
    }
  }
  // Senders see stopping_ and give up within kWaitSlice.
  if (pool_) pool_->Shutdown();
  {
    MutexLock l(mu_);
    loop_stop_ = true;
  }
  waker_.Notify();
  if (thread_.joinable()) thread_.join();
  router_.reset();
  for (const auto& id : release) engine_->ReleaseHeldBlocks(id);
  if (deadline.Expired()) KVF_LOG_WARN("connector: producer shutdown overran its deadline");
}

int64_t Producer::held_requests() const {
  MutexLock l(mu_);
  int64_t n = 0;
  for (const auto& [tid, e] : entries_) n += e.finished ? 1 : 0;
  return n;
}

int64_t Producer::waiting_pulls() const {
  MutexLock l(mu_);
  int64_t n = 0;
  for (const auto& [tid, e] : entries_) n += static_cast<int64_t>(e.waiting.size());
  return n;
}

void Producer::Loop() {
  SetCurrentThreadName("kvf-sidechan");
  std::vector<std::string> frames;
  while (true) {
    std::vector<zmq::pollitem_t> items = {{router_->handle(), 0, ZMQ_POLLIN, 0}, {nullptr, waker_.fd(), ZMQ_POLLIN, 0}};
    PollItems(items, kLoopTick);
    waker_.Drain();
    // Bounded per round so timers and replies keep running under a flood.
    for (int i = 0; i < 1024 && RecvMultipart(*router_, &frames); ++i) HandleMessage(std::move(frames));
    std::deque<std::vector<std::string>> replies;
    bool stop;
    {
      MutexLock l(mu_);
      replies.swap(outbound_);
      stop = loop_stop_;
    }
    for (const auto& r : replies) {
      Status st = SendMultipart(*router_, r);
      if (!st.ok()) KVF_LOG_WARN("connector: side-channel reply dropped: {}", st.ToString());
    }
    if (stop) break;
    Timers();
  }
}

void Producer::Reply(const std::vector<std::string>& envelope, const XferResponse& r) {
  std::vector<std::string> frames = envelope;
  frames.push_back(EncodeXferResponse(r));
  {
    MutexLock l(mu_);
    outbound_.push_back(std::move(frames));
  }
  waker_.Notify();
}

void Producer::HandleMessage(std::vector<std::string> frames) {
  if (frames.size() < 2) {  // a ROUTER always prefixes the peer identity
    metrics_->AddRejected();
    KVF_LOG_WARN("connector: side-channel message with {} frames ignored", frames.size());
    return;
  }
  std::string payload = std::move(frames.back());
  frames.pop_back();
  StatusOr<XferMetadata> m = DecodeXferMetadata(payload);
  if (!m.ok()) {
    metrics_->AddRejected();
    KVF_LOG_WARN("connector: rejected a side-channel message of {} bytes: {}", payload.size(), m.status().ToString());
    XferResponse r;
    r.status = XferStatus::kError;
    r.err_msg = "kvferry prefiller: " + m.status().message();
    Reply(frames, r);
    return;
  }
  auto ctx = std::make_shared<PullCtx>();
  ctx->envelope = std::move(frames);
  ctx->segment = fmt::format("{}:{}", m->remote_hostname, m->remote_port);
  ctx->total = m->req_blocks.size();
  ctx->remaining = ctx->total;
  // Checks that concern the whole message: the decoder's memory layout must match ours.
  const uint64_t bpb = engine_->kv_bytes_per_block();
  Status layout;
  if (m->remote_hostname.empty() || m->remote_port <= 0 || m->remote_port > 65535) {
    layout = InvalidArgumentError(fmt::format("bad decoder segment '{}:{}'", m->remote_hostname, m->remote_port));
  } else if (m->remote_tp_size != 1 || m->remote_pp_size != 1) {
    layout = UnimplementedError(fmt::format("decoder tp_size {} / pp_size {}: only tp = pp = 1 is supported",
                                            m->remote_tp_size, m->remote_pp_size));
  } else if (m->kv_caches_base_addr.size() != 1 || m->block_lens.size() != 1) {
    layout = InvalidArgumentError(
        fmt::format("decoder registered {} KV regions ({} block_lens); this prefiller has 1 (one KV arena per worker)",
                    m->kv_caches_base_addr.size(), m->block_lens.size()));
  } else if (m->block_lens[0] <= 0 || static_cast<uint64_t>(m->block_lens[0]) != bpb ||
             (!m->kv_block_lens.empty() &&
              (m->kv_block_lens.size() != 1 || static_cast<uint64_t>(m->kv_block_lens[0]) != bpb))) {
    layout = FailedPreconditionError(fmt::format(
        "KV block size mismatch: the decoder's block is {} bytes, the prefiller's {} bytes (both sides need "
        "the same model, --block-size and KV dtype)",
        m->block_lens[0], bpb));
  } else if (!m->kvferry_model.empty() && !model_fingerprint_.empty() && m->kvferry_model != model_fingerprint_) {
    layout = FailedPreconditionError(
        fmt::format("model mismatch: the decoder serves {}, this prefiller {} (a prefiller and its decoders must load "
                    "the same model file)",
                    m->kvferry_model, model_fingerprint_));
  } else {
    ctx->remote_base = m->kv_caches_base_addr[0];
    ctx->remote_block_len = static_cast<uint64_t>(m->block_lens[0]);
  }
  if (!layout.ok()) {
    KVF_LOG_WARN("connector: pull from {} refused: {}", ctx->segment, layout.ToString());
    XferResponse r;
    r.status = XferStatus::kError;
    for (const auto& [id, rb] : m->req_blocks) r.err_reqs.push_back(id);
    r.err_msg = "kvferry prefiller: " + layout.message();
    metrics_->AddFailedTransfer(r.err_reqs.size());
    Reply(ctx->envelope, r);
    // The decoder cannot use these blocks: free them now rather than at the abort timeout.
    std::vector<std::string> release;
    {
      MutexLock l(mu_);
      for (const auto& [id, rb] : m->req_blocks) {
        if (rb.transfer_id.empty()) continue;
        std::string r_id = AbortTransferLocked(rb.transfer_id);
        if (!r_id.empty()) release.push_back(std::move(r_id));
      }
    }
    for (const auto& id : release) engine_->ReleaseHeldBlocks(id);
    return;
  }
  if (ctx->total == 0) {
    Reply(ctx->envelope, XferResponse{});
    return;
  }
  for (auto& [d_req_id, rb] : m->req_blocks) {
    Job job{ctx, d_req_id, rb.transfer_id, {}, Now()};
    size_t non_empty = 0;
    for (const auto& g : rb.groups) non_empty += g.empty() ? 0 : 1;
    Status bad;
    if (rb.groups.size() > 1 && non_empty > 0) {
      bad = UnimplementedError(
          fmt::format("request {} names {} KV cache groups; this prefiller has 1", d_req_id, rb.groups.size()));
    } else if (non_empty == 1) {
      job.blocks = rb.groups[0];
      for (int64_t b : job.blocks) {
        if (b < 0) {
          bad = InvalidArgumentError(fmt::format("request {}: negative block id {}", d_req_id, b));
          break;
        }
      }
    }
    if (rb.transfer_id.empty()) bad = InvalidArgumentError(fmt::format("request {}: empty transfer_id", d_req_id));
    if (!bad.ok()) {
      MutexLock l(mu_);
      FinishJobLocked(job, bad);
      continue;
    }
    Dispatch(std::move(job));
  }
}

void Producer::Dispatch(Job job) {
  std::optional<Run> run;
  std::string release, preopen;
  {
    MutexLock l(mu_);
    const std::string tid = job.transfer_id;
    if (stopping_) {
      FinishJobLocked(job, UnavailableError("the prefiller is shutting down"));
      return;
    }
    auto it = entries_.find(tid);
    if (job.blocks.empty()) {
      release = AbortTransferLocked(tid);
      FinishJobLocked(job, Status::Ok());
    } else {
      if (it == entries_.end()) {
        auto g = gone_.find(tid);
        if (g != gone_.end()) {
          FinishJobLocked(job, FailedPreconditionError(fmt::format("transfer {}: {}", tid, g->second.why)));
          return;
        }
        it = entries_.emplace(tid, Entry{}).first;
      }
      Entry& e = it->second;
      if (e.aborted) {
        FinishJobLocked(job, AbortedError(fmt::format("transfer {} was aborted by the decoder", tid)));
      } else if (e.finished && !e.in_flight) {
        e.in_flight = true;
        run = Run{std::move(job), e.blocks, e.request_id};
      } else {
        // The prefill is still running: open the decoder's segment meanwhile (handshake, lane
        // connections, shm socket), once per segment, so the write does not wait for it.
        if (opened_segments_.insert(job.ctx->segment).second) preopen = job.ctx->segment;
        e.waiting.push_back(std::move(job));
      }
    }
  }
  if (!release.empty()) engine_->ReleaseHeldBlocks(release);
  if (run) Submit(std::move(*run));
  if (!preopen.empty()) {
    // Best effort: a failure here shows again, with its reason, when the write opens it.
    (void)pool_->Submit([this, segment = std::move(preopen)] { (void)te_->OpenSegment(segment); });
  }
}

std::string Producer::AbortTransferLocked(const std::string& tid) {
  // The decoder gave up: free at once, and fail any real pull still waiting for it.
  std::string release;
  auto it = entries_.find(tid);
  if (it == entries_.end()) {
    if (gone_.count(tid) == 0) {  // not seen yet: remember, so its prefill holds nothing
      Entry& e = entries_[tid];
      e.aborted = true;
      e.placeholder_until = Now() + config_.abort_request_timeout;
    }
    return release;
  }
  Entry& e = it->second;
  FailWaitingLocked(e, AbortedError(fmt::format("transfer {} was aborted by the decoder", tid)));
  if (e.in_flight) {
    // Its sender frees the blocks when done.
  } else if (e.finished) {
    release = e.request_id;
    entries_.erase(it);
    TombstoneLocked(tid, "the decoder aborted the request");
  } else {
    e.aborted = true;
    e.placeholder_until = Now() + config_.abort_request_timeout;
    release = e.request_id;  // still prefilling (or not arrived): the engine frees at its finish
  }
  return release;
}

void Producer::Submit(Run run) {
  auto shared = std::make_shared<Run>(std::move(run));
  Status st = pool_->Submit([this, shared] { Execute(std::move(*shared)); });
  if (!st.ok()) {
    // The pool is shut: run it here (it fails fast on stopping_ and frees the blocks).
    Execute(std::move(*shared));
  }
}

void Producer::Execute(Run run) {
  const TimePoint start = Now();
  uint64_t bytes = 0, descriptors = 0;
  bool stopping;
  {
    MutexLock l(mu_);
    stopping = stopping_;
  }
  Status st =
      stopping ? UnavailableError("the prefiller is shutting down") : Write(run.job, run.held, &bytes, &descriptors);
  const double secs = Secs(Now() - start);
  if (st.ok()) {
    metrics_->RecordTransfer(bytes, run.job.blocks.size(), descriptors, secs);
    KVF_LOG_DEBUG("connector: sent transfer {} ({} blocks, {} bytes, {} descriptors) to {} in {:.3f} ms",
                  run.job.transfer_id, run.job.blocks.size(), bytes, descriptors, run.job.ctx->segment, secs * 1e3);
  } else {
    KVF_LOG_WARN("connector: sending transfer {} to {} failed: {}", run.job.transfer_id, run.job.ctx->segment,
                 st.ToString());
  }
  {
    MutexLock l(mu_);
    const std::string& tid = run.job.transfer_id;
    auto it = entries_.find(tid);
    if (it != entries_.end() && it->second.in_flight) {
      FailWaitingLocked(it->second,
                        FailedPreconditionError(fmt::format("transfer {} was already pulled by another request", tid)));
      entries_.erase(it);
    }
    TombstoneLocked(tid, st.ok() ? "already pulled" : "its send failed: " + st.message());
    FinishJobLocked(run.job, st);
  }
  engine_->ReleaseHeldBlocks(run.request_id);
}

Status Producer::Write(const Job& job, const std::vector<int32_t>& held, uint64_t* bytes, uint64_t* descriptors) {
  const PullCtx& ctx = *job.ctx;
  const size_t n = job.blocks.size();
  if (n > held.size()) {
    return FailedPreconditionError(
        fmt::format("the decoder asked for {} blocks of transfer {}, the prefiller holds {} (do the prompts differ?)",
                    n, job.transfer_id, held.size()));
  }
  const size_t off = held.size() - n;  // a decoder with a local prefix hit wants our last n blocks
  const uint64_t bpb = engine_->kv_bytes_per_block();
  char* const base = static_cast<char*>(engine_->kv_base());
  const uint64_t max_remote_block = (std::numeric_limits<uint64_t>::max() - ctx.remote_base) / ctx.remote_block_len;
  KVF_ASSIGN_OR_RETURN(transfer::SegmentHandle seg, te_->OpenSegment(ctx.segment));
  std::vector<transfer::TransferRequest> reqs;
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && held[off + j] == held[off + j - 1] + 1 && job.blocks[j] == job.blocks[j - 1] + 1) ++j;
    const uint64_t run = j - i;
    if (static_cast<uint64_t>(job.blocks[i]) + run > max_remote_block) {
      return InvalidArgumentError(fmt::format("decoder block id {} is out of range", job.blocks[i]));
    }
    transfer::TransferRequest r;
    r.op = transfer::Op::kWrite;
    r.local = base + static_cast<uint64_t>(held[off + i]) * bpb;
    r.segment = seg;
    r.remote = ctx.remote_base + static_cast<uint64_t>(job.blocks[i]) * ctx.remote_block_len;
    r.length = run * bpb;
    reqs.push_back(r);
    i = j;
  }
  KVF_ASSIGN_OR_RETURN(transfer::BatchId id, te_->Submit(reqs));
  while (true) {
    Status st = te_->Wait(id, Deadline::After(kWaitSlice));
    if (st.code() == StatusCode::kDeadlineExceeded) {
      // Our slice ran out, or the batch itself timed out: Poll tells which.
      StatusOr<transfer::BatchStatus> p = te_->Poll(id);
      if (!p.ok()) return st.WithContext("transfer engine");  // ended with DeadlineExceeded
      if (p->state == transfer::BatchState::kFailed) return p->status.WithContext("transfer engine");
      if (p->state == transfer::BatchState::kDone) st = Status::Ok();
    }
    if (st.code() != StatusCode::kDeadlineExceeded) {
      if (!st.ok()) return st.WithContext("transfer engine");
      *bytes = n * bpb;
      *descriptors = reqs.size();
      return Status::Ok();
    }
    MutexLock l(mu_);
    if (stopping_) return UnavailableError("the prefiller shut down mid-transfer");
  }
}

void Producer::Timers() {
  std::vector<std::string> release;
  {
    MutexLock l(mu_);
    const TimePoint now = Now();
    for (auto it = entries_.begin(); it != entries_.end();) {
      Entry& e = it->second;
      if (e.finished && !e.in_flight && now >= e.expire) {
        KVF_LOG_WARN("connector: request {} (transfer {}) was not pulled within {:.1f} s; freeing its KV blocks",
                     e.request_id, it->first, Secs(config_.abort_request_timeout));
        metrics_->AddExpired();
        release.push_back(e.request_id);
        const std::string tid = it->first;
        it = entries_.erase(it);
        TombstoneLocked(tid, "its KV expired unpulled (VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT)");
        continue;
      }
      // A pull whose transfer_id no prefill request claimed is kept only briefly: routers send
      // the decode leg even when the prefill leg was refused elsewhere or never sent.
      const bool unclaimed = e.request_id.empty();
      const Duration limit = unclaimed ? std::min(config_.unclaimed_pull_timeout, config_.abort_request_timeout)
                                       : config_.abort_request_timeout;
      for (size_t i = 0; i < e.waiting.size();) {
        if (now < e.waiting[i].arrived + limit) {
          ++i;
          continue;
        }
        FinishJobLocked(
            e.waiting[i],
            unclaimed
                ? NotFoundError(fmt::format("no prefill request with transfer_id {} reached this prefiller within "
                                            "{:.1f} s (KVFERRY_UNCLAIMED_PULL_TIMEOUT): was its prefill leg "
                                            "refused, or sent to another prefiller?",
                                            it->first, Secs(limit)))
                : DeadlineExceededError(
                      fmt::format("timed out after {:.1f} s waiting for the prefill of transfer {} on the prefiller",
                                  Secs(limit), it->first)));
        e.waiting.erase(e.waiting.begin() + static_cast<std::ptrdiff_t>(i));
        if (unclaimed && e.waiting.empty()) {
          // The decoder has given up on it: a prefill leg that still comes holds no KV.
          e.aborted = true;
          e.placeholder_until = now + config_.abort_request_timeout;
        }
      }
      if (e.request_id.empty() && e.waiting.empty() && (!e.aborted || now >= e.placeholder_until)) {
        it = entries_.erase(it);
        continue;
      }
      ++it;
    }
    for (auto it = gone_.begin(); it != gone_.end();) it = now >= it->second.until ? gone_.erase(it) : std::next(it);
  }
  for (const auto& id : release) engine_->ReleaseHeldBlocks(id);
}

void Producer::FinishJobLocked(const Job& job, const Status& st) {
  PullCtx& ctx = *job.ctx;
  --ctx.remaining;
  XferResponse r;
  if (st.ok()) {
    r.ok_reqs.push_back(job.d_req_id);
  } else {
    if (!job.blocks.empty()) metrics_->AddFailedTransfer();
    r.err_reqs.push_back(job.d_req_id);
    r.err_msg = "kvferry prefiller: " + st.message();
  }
  if (ctx.remaining > 0) {
    r.status = XferStatus::kContinue;
  } else {
    r.status = (!st.ok() && ctx.total == 1) ? XferStatus::kError : XferStatus::kFinish;
  }
  std::vector<std::string> frames = ctx.envelope;
  frames.push_back(EncodeXferResponse(r));
  outbound_.push_back(std::move(frames));
  waker_.Notify();
}

void Producer::FailWaitingLocked(Entry& e, const Status& st) {
  for (const Job& j : e.waiting) FinishJobLocked(j, st);
  e.waiting.clear();
}

void Producer::TombstoneLocked(const std::string& transfer_id, std::string why) {
  if (gone_.size() >= kMaxTombstones) gone_.erase(gone_.begin());
  gone_[transfer_id] = Gone{std::move(why), Now() + config_.abort_request_timeout};
}

}  // namespace kvferry::connector
