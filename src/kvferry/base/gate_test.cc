#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "kvferry/base/base.h"

namespace kvferry {
namespace {

using namespace std::chrono_literals;

TEST(GateTest, CloseWaitsForWorkInsideAndRefusesNewWork) {
  Gate gate;
  ASSERT_TRUE(gate.TryEnter());
  std::atomic<bool> left{false};
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);
    left = true;
    gate.Leave();
  });
  EXPECT_TRUE(gate.Close(Deadline::After(5s)).ok());
  EXPECT_TRUE(left);
  EXPECT_FALSE(gate.TryEnter());
  Gate::Holder h(gate);
  EXPECT_FALSE(h.entered());
  t.join();
}

TEST(GateTest, CloseIsBounded) {
  Gate gate;
  ASSERT_TRUE(gate.TryEnter());
  Status s = gate.Close(Deadline::After(10ms));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(gate.closed());
  EXPECT_EQ(gate.inside(), 1);
  gate.Leave();
  EXPECT_TRUE(gate.Close(Deadline::After(10ms)).ok());
}

}  // namespace
}  // namespace kvferry
