#include "kvferry/transfer/registry.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvferry::transfer {
namespace {

TEST(RegistryTest, RegisterContainsUnregister) {
  std::vector<char> a(4096), b(100);
  LocalRegistry r;
  ASSERT_TRUE(r.Register(a.data(), a.size()).ok());
  ASSERT_TRUE(r.Register(b.data(), b.size()).ok());
  auto pa = reinterpret_cast<uint64_t>(a.data());
  EXPECT_TRUE(r.Contains(pa, 4096));
  EXPECT_TRUE(r.Contains(pa + 4095, 1));
  EXPECT_FALSE(r.Contains(pa + 4095, 2));
  EXPECT_FALSE(r.Contains(pa, 0));
  EXPECT_EQ(r.Snapshot().size(), 2u);
  EXPECT_EQ(r.Register(a.data() + 10, 10).code(), StatusCode::kInvalidArgument);  // overlap
  EXPECT_EQ(r.Register(nullptr, 10).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Unregister(a.data() + 1).code(), StatusCode::kNotFound);
  ASSERT_TRUE(r.Unregister(a.data()).ok());
  EXPECT_FALSE(r.Contains(pa, 1));
}

TEST(RegistryTest, AdjacentRegionsDoNotJoin) {
  std::vector<char> mem(200);
  LocalRegistry r;
  ASSERT_TRUE(r.Register(mem.data(), 100).ok());
  ASSERT_TRUE(r.Register(mem.data() + 100, 100).ok());
  auto p = reinterpret_cast<uint64_t>(mem.data());
  EXPECT_TRUE(r.Contains(p + 50, 50));
  EXPECT_FALSE(r.Contains(p + 50, 100));  // spans two buffers: rejected, as Mooncake does
}

}  // namespace
}  // namespace kvferry::transfer
