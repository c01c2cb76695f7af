#include "kvferry/kernels/thread_team.h"

#include <chrono>
#include <string>

#include "kvferry/base/base.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KVF_PAUSE() _mm_pause()
#else
#define KVF_PAUSE() std::this_thread::yield()
#endif

namespace kvferry::kernels {
namespace {
// Spin iterations (~40 ns each) before sleeping on the futex: about 50 µs.
constexpr int kSpins = 1200;
}  // namespace

ThreadTeam::ThreadTeam(int size) : size_(size < 1 ? 1 : size) {
  workers_.reserve(size_ - 1);
  for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadTeam::~ThreadTeam() {
  stop_ = true;
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadTeam::WorkerLoop(int t) {
  SetCurrentThreadName("kvf-compute-" + std::to_string(t));
  uint32_t seen = 0;
  for (;;) {
    uint32_t g = generation_.load(std::memory_order_acquire);
    for (int i = 0; g == seen && i < kSpins; ++i) {
      KVF_PAUSE();
      g = generation_.load(std::memory_order_acquire);
    }
    while (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_) return;
    (*job_)(t);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void ThreadTeam::Run(const std::function<void(int)>& fn) {
  if (size_ == 1) {
    fn(0);
    return;
  }
  job_ = &fn;
  pending_.store(size_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  fn(0);
  int32_t p = pending_.load(std::memory_order_acquire);
  for (int i = 0; p != 0 && i < kSpins * 4; ++i) {
    KVF_PAUSE();
    p = pending_.load(std::memory_order_acquire);
  }
  while (p != 0) {
    pending_.wait(p, std::memory_order_acquire);
    p = pending_.load(std::memory_order_acquire);
  }
}

}  // namespace kvferry::kernels
