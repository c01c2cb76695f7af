#pragma once
// Private to model/: a progress line on stderr ("WHAT: 45% (450/988 MB)"), shown only when
// stderr is a terminal and the work has taken more than half a second.

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace kvferry::model {

class Progress {
 public:
  Progress(std::string what, uint64_t total, bool enabled)
      : what_(std::move(what)), total_(total), enabled_(enabled && ::isatty(STDERR_FILENO)) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() {
    if (shown_) std::fprintf(stderr, "\n");
  }
  void Update(uint64_t done) {
    if (!enabled_) return;
    const double el = std::chrono::duration<double>(Clock::now() - start_).count();
    if (el < 0.5 || (el - last_ < 0.1 && done < total_)) return;
    last_ = el;
    shown_ = true;
    std::fprintf(stderr, "\r%s: %3d%% (%llu/%llu MB)", what_.c_str(),
                 total_ ? static_cast<int>(100 * done / total_) : 100,
                 static_cast<unsigned long long>(done >> 20),
                 static_cast<unsigned long long>(total_ >> 20));
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_;
  uint64_t total_;
  bool enabled_;
  bool shown_ = false;
  double last_ = 0;
  Clock::time_point start_ = Clock::now();
};

}  // namespace kvferry::model
