#include "kvferry/transfer/batch.h"

#include <fmt/format.h>

namespace kvferry::transfer {

std::pair<BatchId, BatchRecord*> BatchTable::Create(size_t slices, uint64_t total_bytes, uint64_t bytes_done) {
  MutexLock l(mu_);
  uint32_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else {
    index = static_cast<uint32_t>(slots_.size());
    slots_.push_back(std::make_unique<BatchRecord>());
  }
  BatchRecord* b = slots_[index].get();
  uint32_t gen = b->generation + 1;
  *b = BatchRecord{};
  b->generation = gen;
  b->in_use = true;
  b->remaining = slices;
  b->total_bytes = total_bytes;
  b->bytes_done = bytes_done;
  b->start = clock_->Now();
  ++submitted_;
  if (slices == 0) RecordEndLocked(b);
  return {BatchId{index, gen}, b};
}

void BatchTable::RecordEndLocked(BatchRecord* b) {
  if (b->first_error.ok()) {
    ++done_;
  } else {
    ++failed_;
  }
  double us = std::chrono::duration<double, std::micro>(clock_->Now() - b->start).count();
  latency_sum_us_ += us;
  size_t i = 0;
  while (i < kLatencyBucketsUs.size() && us > kLatencyBucketsUs[i]) ++i;
  ++buckets_[i];
}

void BatchTable::Complete(BatchRecord* b, const Status& status, uint64_t bytes) {
  MutexLock l(mu_);
  if (status.ok()) {
    b->bytes_done += bytes;
  } else if (b->first_error.ok()) {
    b->first_error = status;
  }
  if (b->remaining > 0 && --b->remaining == 0) {
    RecordEndLocked(b);
    cv_.NotifyAll();
  }
}

StatusOr<BatchRecord*> BatchTable::FindLocked(BatchId id) {
  if (id.index >= slots_.size() || !slots_[id.index]->in_use || slots_[id.index]->generation != id.generation) {
    return NotFoundError(fmt::format("batch {}/{} is unknown or already released", id.index, id.generation));
  }
  return slots_[id.index].get();
}

void BatchTable::ReleaseLocked(BatchId id, BatchRecord* b) {
  b->in_use = false;
  free_.push_back(id.index);
}

StatusOr<BatchStatus> BatchTable::Poll(BatchId id) {
  MutexLock l(mu_);
  KVF_ASSIGN_OR_RETURN(BatchRecord * b, FindLocked(id));
  BatchStatus out;
  out.bytes_done = b->bytes_done;
  if (b->remaining > 0) return out;
  out.state = b->first_error.ok() ? BatchState::kDone : BatchState::kFailed;
  out.status = b->first_error;
  ReleaseLocked(id, b);
  return out;
}

Status BatchTable::Wait(BatchId id, const Deadline& deadline) {
  MutexLock l(mu_);
  KVF_ASSIGN_OR_RETURN(BatchRecord * b, FindLocked(id));
  while (b->remaining > 0) {
    if (!cv_.WaitUntil(mu_, deadline) && deadline.Expired() && b->remaining > 0) {
      return DeadlineExceededError("wait on transfer batch timed out; the batch is still running");
    }
  }
  Status s = b->first_error;
  ReleaseLocked(id, b);
  return s;
}

void BatchTable::FillStats(TransferStats* stats) const {
  MutexLock l(mu_);
  stats->batches_submitted = submitted_;
  stats->batches_done = done_;
  stats->batches_failed = failed_;
  stats->latency_buckets = buckets_;
  stats->latency_sum_us = latency_sum_us_;
}

}  // namespace kvferry::transfer
