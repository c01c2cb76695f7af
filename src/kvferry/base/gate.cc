#include "kvferry/base/gate.h"

namespace kvferry {

bool Gate::TryEnter() {
  MutexLock l(mu_);
  if (closed_) return false;
  ++inside_;
  return true;
}

void Gate::Leave() {
  MutexLock l(mu_);
  if (--inside_ == 0) cv_.NotifyAll();
}

Status Gate::Close(const Deadline& deadline) {
  MutexLock l(mu_);
  closed_ = true;
  while (inside_ > 0) {
    if (!cv_.WaitUntil(mu_, deadline) && deadline.Expired()) {
      if (inside_ == 0) break;
      return DeadlineExceededError("gate close: work still inside");
    }
  }
  return Status::Ok();
}

bool Gate::closed() const {
  MutexLock l(mu_);
  return closed_;
}

int64_t Gate::inside() const {
  MutexLock l(mu_);
  return inside_;
}

}  // namespace kvferry
