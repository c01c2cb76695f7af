#pragma once
// Private to kernels/: a fixed team of threads that runs one job at a time.
//
// A job is n independent parts. RunParts hands them out dynamically: every thread, the caller
// included, claims the next part until none is left, and the call returns when every part has
// finished. A worker that is not running (the OS gave its core to an HTTP thread, the
// scheduler, a transfer or the load generator) is not waited for: the threads that are running
// take its share, so a busy neighbour slows a step by the parts it holds, not by a whole
// scheduling slice at every barrier. Run is the static form for measurements that need each
// thread exactly once (bandwidth, FMA peak).
//
// Workers spin briefly between jobs (decode issues hundreds of short jobs per token), then
// sleep on a futex, so an idle engine uses no CPU. Both methods are called from one thread at
// a time (the owner).

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace kvferry::kernels {

class ThreadTeam {
 public:
  // size >= 1 threads in all, the caller included.
  explicit ThreadTeam(int size);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int size() const { return size_; }
  // Most parts one job hands out one by one (larger jobs are grouped into runs of parts).
  static constexpr int64_t kMaxParts = (int64_t{1} << 20) - 1;

  // Runs fn(t, i) once for every part i in [0, n), on whichever threads
  // claim it; t in [0, size()) is the thread running it (for per-thread scratch), 0 being the
  // caller. Returns when every part has returned.
  void RunParts(int64_t n, const std::function<void(int t, int64_t part)>& fn);
  // Runs fn(t) for every t in [0, size()), each on its own thread, concurrently when the OS
  // allows; returns when all have returned.
  void Run(const std::function<void(int)>& fn);

 private:
  void WorkerLoop(int t);
  void Publish(int64_t n, bool one_each, const std::function<void(int, int64_t)>* fn);
  // Claims and runs parts of the job of generation `gen` until none is left, or after one
  // part with stop_after_one; claims nothing once the job is no longer current.
  void Work(int t, uint32_t gen, bool stop_after_one);
  void WaitDone(int64_t n);

  const int size_;
  // The job's function; written before claim_ is published for it.
  std::atomic<const std::function<void(int, int64_t)>*> job_{nullptr};
  // The claim word: generation (23 bits) | one-each flag | n (20 bits) | next part (20 bits).
  // A part is claimed by CAS-incrementing `next` while the generation still matches, so a
  // worker that wakes late for a finished job claims nothing from the next one.
  std::atomic<uint64_t> claim_{0};
  // Parts finished in the current job; the owner waits for it to reach n.
  std::atomic<int32_t> done_{0};
  // Bumped (release) by the owner for each job; workers sleep on it.
  std::atomic<uint32_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
};

}  // namespace kvferry::kernels
