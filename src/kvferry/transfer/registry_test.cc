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
  uint64_t shared_id = 7;
  EXPECT_EQ(r.Unregister(a.data() + 1, &shared_id).code(), StatusCode::kNotFound);
  ASSERT_TRUE(r.Unregister(a.data(), &shared_id).ok());
  EXPECT_EQ(shared_id, 0u);  // plain memory: no peer mapped it
  EXPECT_FALSE(r.Contains(pa, 1));
  EXPECT_TRUE(r.SnapshotShared(64).empty());
}

TEST(RegistryTest, RangesInsideSharedMemoryCarryTheirMemfd) {
  auto mem = SharedMemory::Create(3 << 20, "registry-test");
  ASSERT_TRUE(mem.ok()) << mem.status().ToString();
  std::vector<char> plain(4096);
  LocalRegistry r;
  ASSERT_TRUE(r.Register((*mem)->data() + 4096 + 5, 1 << 20).ok());
  ASSERT_TRUE(r.Register(plain.data(), plain.size()).ok());
  std::vector<SharedRegion> shared = r.SnapshotShared(64);
  ASSERT_EQ(shared.size(), 1u);
  EXPECT_EQ(shared[0].entry.addr, reinterpret_cast<uint64_t>((*mem)->data()) + 4096 + 5);
  EXPECT_EQ(shared[0].entry.length, 1u << 20);
  EXPECT_EQ(shared[0].entry.fd_offset, 4096u + 5);
  ASSERT_TRUE(shared[0].fd.valid());
  EXPECT_NE(shared[0].entry.id, 0u);
  EXPECT_TRUE(r.SnapshotShared(0).empty());
  // A range that runs past the end of the SharedMemory is not offered for mapping (it is
  // registered: the registry never touches the memory itself).
  ASSERT_TRUE(r.Register((*mem)->data() + (3 << 20) - 100, 200).ok());
  EXPECT_EQ(r.SnapshotShared(64).size(), 1u);
  uint64_t shared_id = 0;
  ASSERT_TRUE(r.Unregister((*mem)->data() + (3 << 20) - 100, &shared_id).ok());
  EXPECT_EQ(shared_id, 0u);
  ASSERT_TRUE(r.Unregister(plain.data(), &shared_id).ok());
  EXPECT_EQ(shared_id, 0u);
  ASSERT_TRUE(r.Unregister((*mem)->data() + 4096 + 5, &shared_id).ok());
  EXPECT_EQ(shared_id, shared[0].entry.id);
  EXPECT_TRUE(r.SnapshotShared(64).empty());
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
