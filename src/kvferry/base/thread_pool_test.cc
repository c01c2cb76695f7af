#include <gtest/gtest.h>

#include <atomic>

#include "kvferry/base/base.h"

namespace kvferry {
namespace {

TEST(ThreadPoolTest, RunsEverythingQueuedBeforeShutdown) {
  std::atomic<int> sum{0};
  {
    ThreadPool pool(3, "tp");
    for (int i = 1; i <= 1000; ++i) {
      ASSERT_TRUE(pool.Submit([&sum, i] { sum += i; }).ok());
    }
  }
  EXPECT_EQ(sum.load(), 500500);
}

TEST(ThreadPoolTest, RejectsAfterShutdownAndWhenFull) {
  ThreadPool pool(1, "tp", /*max_queue=*/1);
  Mutex mu;
  mu.Lock();  // block the single worker
  ASSERT_TRUE(pool.Submit([&] { MutexLock l(mu); }).ok());
  // The worker may or may not have taken the first closure yet; fill the queue.
  Status s;
  for (int i = 0; i < 3 && s.ok(); ++i) s = pool.Submit([] {});
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  mu.Unlock();
  pool.Shutdown();
  EXPECT_EQ(pool.Submit([] {}).code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvferry
