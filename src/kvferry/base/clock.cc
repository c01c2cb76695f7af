#include "kvferry/base/clock.h"

#include <climits>

namespace kvferry {
namespace {
class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
};
}  // namespace

Clock* Clock::Real() {
  static RealClock* clock = new RealClock();  // never destroyed: usable during static teardown
  return clock;
}

TimePoint FakeClock::Now() const {
  std::lock_guard<std::mutex> l(mu_);
  return now_;
}

void FakeClock::Advance(Duration d) {
  std::lock_guard<std::mutex> l(mu_);
  now_ += d;
}

Deadline Deadline::After(Duration d, const Clock* clock) {
  TimePoint now = clock->Now();
  if (d >= TimePoint::max() - now) return Deadline(clock, TimePoint::max());
  return Deadline(clock, now + d);
}

Duration Deadline::Remaining() const {
  if (infinite()) return Duration::max();
  TimePoint now = clock_->Now();
  return now >= at_ ? Duration::zero() : at_ - now;
}

int Deadline::RemainingMillisForPoll() const {
  if (infinite()) return -1;
  Duration r = Remaining();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r + std::chrono::microseconds(999));
  if (ms.count() > INT_MAX) return INT_MAX;
  return static_cast<int>(ms.count());
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace kvferry
