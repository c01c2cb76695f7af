#include "kvferry/base/thread_pool.h"

#include <pthread.h>

namespace kvferry {

void SetCurrentThreadName(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

ThreadPool::ThreadPool(size_t num_threads, std::string name, size_t max_queue)
    : max_queue_(max_queue) {
  if (num_threads == 0) num_threads = 1;
  threads_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) {
    threads_.emplace_back([this, name, i] {
      SetCurrentThreadName(name + "-" + std::to_string(i));
      Run();
    });
  }
}

ThreadPool::~ThreadPool() { Shutdown(); }

Status ThreadPool::Submit(std::function<void()> fn) {
  {
    MutexLock l(mu_);
    if (stopping_) return FailedPreconditionError("thread pool is shut down");
    if (queue_.size() >= max_queue_) return ResourceExhaustedError("thread pool queue is full");
    queue_.push_back(std::move(fn));
  }
  cv_.NotifyOne();
  return Status::Ok();
}

void ThreadPool::Shutdown() {
  {
    MutexLock l(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  cv_.NotifyAll();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

size_t ThreadPool::queued() const {
  MutexLock l(mu_);
  return queue_.size();
}

void ThreadPool::Run() {
  for (;;) {
    std::function<void()> fn;
    {
      MutexLock l(mu_);
      while (queue_.empty() && !stopping_) cv_.Wait(mu_);
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

}  // namespace kvferry
