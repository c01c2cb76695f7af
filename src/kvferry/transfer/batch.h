#pragma once
// Batch bookkeeping (private to transfer/): a slot table of in-flight batches
// with generation-checked ids, completion from transport threads, and waiting.

#include <cstdint>
#include <memory>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::transfer {

struct BatchRecord {
  uint32_t generation = 0;
  bool in_use = false;
  size_t remaining = 0;  // slices not yet completed
  Status first_error;
  uint64_t bytes_done = 0;
  uint64_t total_bytes = 0;
  TimePoint start;
  bool expired_swept = false;  // queued slices were cancelled at the deadline
};

class BatchTable {
 public:
  explicit BatchTable(const Clock* clock) : clock_(clock) {}
  // Creates a batch expecting `slices` completions (0 = already done); `bytes_done` were
  // moved already (shm copies made by the submitter).
  std::pair<BatchId, BatchRecord*> Create(size_t slices, uint64_t total_bytes, uint64_t bytes_done = 0);
  // Called once per slice by transport threads. `bytes` counts on success.
  void Complete(BatchRecord* batch, const Status& status, uint64_t bytes);
  StatusOr<BatchStatus> Poll(BatchId id);
  // Waits until done or deadline; on done releases the slot. `on_deadline` runs
  // (without the lock) once when `batch_deadline` passes, to cancel queued work.
  Status Wait(BatchId id, const Deadline& deadline);
  // Finished-batch counters for stats.
  void FillStats(TransferStats* stats) const;

 private:
  StatusOr<BatchRecord*> FindLocked(BatchId id) KVF_REQUIRES(mu_);
  void ReleaseLocked(BatchId id, BatchRecord* b) KVF_REQUIRES(mu_);
  void RecordEndLocked(BatchRecord* b) KVF_REQUIRES(mu_);

  const Clock* const clock_;
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<std::unique_ptr<BatchRecord>> slots_ KVF_GUARDED_BY(mu_);
  std::vector<uint32_t> free_ KVF_GUARDED_BY(mu_);
  uint64_t submitted_ KVF_GUARDED_BY(mu_) = 0;
  uint64_t done_ KVF_GUARDED_BY(mu_) = 0;
  uint64_t failed_ KVF_GUARDED_BY(mu_) = 0;
  std::array<uint64_t, kLatencyBucketsUs.size() + 1> buckets_ KVF_GUARDED_BY(mu_){};
  double latency_sum_us_ KVF_GUARDED_BY(mu_) = 0;
};

}  // namespace kvferry::transfer
