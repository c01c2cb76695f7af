#include <gtest/gtest.h>

#include <thread>

#include "kvferry/base/base.h"

namespace kvferry {
namespace {

using namespace std::chrono_literals;

TEST(DeadlineTest, FakeClockControlsExpiry) {
  FakeClock clock;
  Deadline d = Deadline::After(10s, &clock);
  EXPECT_FALSE(d.Expired());
  EXPECT_EQ(d.Remaining(), Duration(10s));
  clock.Advance(9s);
  EXPECT_FALSE(d.Expired());
  EXPECT_EQ(d.RemainingMillisForPoll(), 1000);
  clock.Advance(1s);
  EXPECT_TRUE(d.Expired());
  EXPECT_EQ(d.Remaining(), Duration::zero());
  EXPECT_EQ(d.RemainingMillisForPoll(), 0);
}

TEST(DeadlineTest, InfiniteNeverExpiresAndMinPicksEarlier) {
  FakeClock clock;
  Deadline inf = Deadline::Infinite(&clock);
  EXPECT_TRUE(inf.infinite());
  EXPECT_EQ(inf.RemainingMillisForPoll(), -1);
  clock.Advance(std::chrono::hours(1000000));
  EXPECT_FALSE(inf.Expired());
  Deadline a = Deadline::After(1s, &clock);
  EXPECT_EQ(inf.Min(a).at(), a.at());
  EXPECT_EQ(a.Min(inf).at(), a.at());
  // Huge durations saturate instead of overflowing.
  EXPECT_TRUE(Deadline::After(Duration::max(), &clock).infinite());
}

TEST(CondVarTest, WaitUntilTimesOutOnFakeClock) {
  FakeClock clock;
  Mutex mu;
  CondVar cv;
  Deadline d = Deadline::After(50ms, &clock);
  std::thread t([&] {
    std::this_thread::sleep_for(5ms);
    clock.Advance(60ms);
  });
  MutexLock l(mu);
  int spins = 0;
  while (cv.WaitUntil(mu, d) || !d.Expired()) {
    ASSERT_LT(++spins, 100000);
  }
  EXPECT_TRUE(d.Expired());
  t.join();
}

}  // namespace
}  // namespace kvferry
