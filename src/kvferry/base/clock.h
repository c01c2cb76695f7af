#pragma once
// Injectable time: every blocking call in kvferry takes a Deadline, and every
// Deadline comes from a Clock, so timeout tests can run on a FakeClock.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace kvferry {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;

// Thread-safe. Implementations must be monotonic.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // The process-wide real monotonic clock. Never null, never destroyed.
  static Clock* Real();
};

// A clock that only moves when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(TimePoint start = TimePoint{} + std::chrono::hours(1)) : now_(start) {}
  TimePoint Now() const override;
  void Advance(Duration d);

 private:
  mutable std::mutex mu_;
  TimePoint now_;
};

// A point in time on a given clock after which an operation gives up.
class Deadline {
 public:
  // Never expires.
  static Deadline Infinite(const Clock* clock = Clock::Real()) { return Deadline(clock, TimePoint::max()); }
  static Deadline After(Duration d, const Clock* clock = Clock::Real());
  static Deadline At(TimePoint t, const Clock* clock = Clock::Real()) { return Deadline(clock, t); }

  bool infinite() const { return at_ == TimePoint::max(); }
  bool Expired() const { return !infinite() && clock_->Now() >= at_; }
  // Time left, clamped at zero; Duration::max() when infinite.
  Duration Remaining() const;
  // Remaining() in whole milliseconds for poll(2)-style APIs: -1 when infinite, rounded up.
  int RemainingMillisForPoll() const;
  TimePoint at() const { return at_; }
  const Clock* clock() const { return clock_; }
  // The earlier of the two (same clock assumed).
  Deadline Min(const Deadline& other) const { return other.at_ < at_ ? other : *this; }

 private:
  Deadline(const Clock* clock, TimePoint at) : clock_(clock), at_(at) {}
  const Clock* clock_;
  TimePoint at_;
};

// Seconds since an arbitrary epoch as a double, for figures.
double NowSeconds();

}  // namespace kvferry
