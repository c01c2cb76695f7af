#pragma once
// Private to kernels/: a fixed team of threads that runs one job at a time on all of them.
// Run() is called from one thread at a time (the owner); it runs part 0 itself. Workers spin
// briefly between jobs (decode issues hundreds of short jobs per token), then sleep.

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
  // Runs fn(t) for every t in [0, size()), t = 0 on the caller; returns when all have returned.
  void Run(const std::function<void(int)>& fn);

 private:
  void WorkerLoop(int t);

  const int size_;
  // The job of the current generation; written by Run before it bumps generation_.
  const std::function<void(int)>* job_ = nullptr;
  // Bumped (release) by Run to publish job_/stop_ to workers, which load it with acquire.
  std::atomic<uint32_t> generation_{0};
  // Workers still running the current job; each decrements with acq_rel so that Run's
  // acquire load of 0 sees all their writes.
  std::atomic<int32_t> pending_{0};
  bool stop_ = false;  // published through generation_
  std::vector<std::thread> workers_;
};

}  // namespace kvferry::kernels
