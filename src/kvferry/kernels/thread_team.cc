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

constexpr int kPartBits = 20;
constexpr uint64_t kPartMask = (uint64_t{1} << kPartBits) - 1;
constexpr uint64_t kOneEachBit = uint64_t{1} << (2 * kPartBits);
constexpr int kGenShift = 2 * kPartBits + 1;
constexpr uint32_t kGenMask = (uint32_t{1} << (64 - kGenShift)) - 1;

uint64_t ClaimWord(uint32_t gen, bool one_each, uint64_t n, uint64_t next) {
  return (static_cast<uint64_t>(gen & kGenMask) << kGenShift) | (one_each ? kOneEachBit : 0) | (n << kPartBits) | next;
}
uint32_t GenOf(uint64_t c) {
  return static_cast<uint32_t>(c >> kGenShift) & kGenMask;
}
uint64_t NOf(uint64_t c) {
  return (c >> kPartBits) & kPartMask;
}
uint64_t NextOf(uint64_t c) {
  return c & kPartMask;
}

}  // namespace

ThreadTeam::ThreadTeam(int size) : size_(size < 1 ? 1 : size) {
  workers_.reserve(size_ - 1);
  for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadTeam::Work(int t, uint32_t gen, bool stop_after_one) {
  uint64_t c = claim_.load(std::memory_order_acquire);
  while (GenOf(c) == (gen & kGenMask) && NextOf(c) < NOf(c)) {
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The claim succeeded for this generation, so job_ is this job's (it was stored before
    // the claim word) and the owner cannot move on before this part is counted done.
    const auto* fn = job_.load(std::memory_order_acquire);
    const uint64_t n = NOf(c);
    (*fn)(t, static_cast<int64_t>(NextOf(c)));
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<int32_t>(n)) done_.notify_one();
    if (stop_after_one) return;
    c = claim_.load(std::memory_order_acquire);
  }
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
    if (stop_.load(std::memory_order_relaxed)) return;
    const uint64_t c = claim_.load(std::memory_order_acquire);
    Work(t, g, (c & kOneEachBit) != 0);
  }
}

void ThreadTeam::Publish(int64_t n, bool one_each, const std::function<void(int, int64_t)>* fn) {
  const uint32_t gen = generation_.load(std::memory_order_relaxed) + 1;
  done_.store(0, std::memory_order_relaxed);
  job_.store(fn, std::memory_order_release);
  claim_.store(ClaimWord(gen, one_each, static_cast<uint64_t>(n), 0), std::memory_order_release);
  generation_.store(gen, std::memory_order_release);
  generation_.notify_all();
}

void ThreadTeam::WaitDone(int64_t n) {
  int32_t d = done_.load(std::memory_order_acquire);
  for (int i = 0; d != n && i < kSpins * 4; ++i) {
    KVF_PAUSE();
    d = done_.load(std::memory_order_acquire);
  }
  while (d != n) {
    done_.wait(d, std::memory_order_acquire);
    d = done_.load(std::memory_order_acquire);
  }
}

void ThreadTeam::RunParts(int64_t n, const std::function<void(int, int64_t)>& fn) {
  if (n <= 0) return;
  if (n > kMaxParts) {  // group consecutive parts so that the claim word can count them
    const int64_t per = (n + kMaxParts - 1) / kMaxParts;
    const std::function<void(int, int64_t)> grouped = [&](int t, int64_t g) {
      for (int64_t i = g * per; i < n && i < (g + 1) * per; ++i) fn(t, i);
    };
    RunParts((n + per - 1) / per, grouped);
    return;
  }
  if (size_ == 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(0, i);
    return;
  }
  Publish(n, /*one_each=*/false, &fn);
  Work(0, generation_.load(std::memory_order_relaxed), /*stop_after_one=*/false);
  WaitDone(n);
}

void ThreadTeam::Run(const std::function<void(int)>& fn) {
  if (size_ == 1) {
    fn(0);
    return;
  }
  const std::function<void(int, int64_t)> each = [&fn](int, int64_t part) { fn(static_cast<int>(part)); };
  Publish(size_, /*one_each=*/true, &each);
  Work(0, generation_.load(std::memory_order_relaxed), /*stop_after_one=*/true);
  WaitDone(size_);
}

}  // namespace kvferry::kernels
