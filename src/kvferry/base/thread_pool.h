#pragma once
// A fixed-size pool of worker threads running queued closures in FIFO order.
// Thread-safe. The destructor stops intake, runs what is queued, and joins.

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/base/mutex.h"
#include "kvferry/base/status.h"

namespace kvferry {

class ThreadPool {
 public:
  // `name` prefixes the threads' names (visible in top/gdb, 15 chars max).
  // max_queue bounds the backlog: Submit beyond it is ResourceExhausted.
  ThreadPool(size_t num_threads, std::string name, size_t max_queue = 1 << 20);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues `fn`. FailedPrecondition after Shutdown(); ResourceExhausted when full.
  Status Submit(std::function<void()> fn);
  // Stops intake, finishes queued work and joins the threads. Idempotent.
  void Shutdown();
  size_t size() const { return threads_.size(); }
  size_t queued() const;

 private:
  void Run();

  const size_t max_queue_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> queue_ KVF_GUARDED_BY(mu_);
  bool stopping_ KVF_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Names the calling thread (truncated to 15 bytes).
void SetCurrentThreadName(const std::string& name);

}  // namespace kvferry
