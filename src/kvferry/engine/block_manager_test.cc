#include "kvferry/engine/block_manager.h"

#include <gtest/gtest.h>

#include <numeric>

namespace kvferry::engine {
namespace {

std::vector<int32_t> Iota(int n, int32_t first = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(BlockManagerTest, AllocateFreeAndRefCounts) {
  BlockManager bm(4, 16, true);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_used(), 0);
  // Fresh blocks come out in id order (contiguous ids coalesce into one transfer).
  auto a = bm.Allocate(), b = bm.Allocate();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(*a, 0);
  EXPECT_EQ(*b, 1);
  EXPECT_EQ(bm.ref_count(0), 1);
  EXPECT_EQ(bm.num_used(), 2);
  bm.Commit(0, 0, Iota(16));
  bm.Acquire(0);  // shared by a second owner
  EXPECT_EQ(bm.ref_count(0), 2);
  bm.Release(0);
  EXPECT_EQ(bm.ref_count(0), 1);
  EXPECT_EQ(bm.num_used(), 2);
  bm.Release(0);
  bm.Release(1);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_cached_free(), 1);  // block 0 keeps its KV for later hits
}

TEST(BlockManagerTest, RunsOutOfBlocks) {
  BlockManager bm(3, 16, true);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(bm.Allocate().has_value());
  EXPECT_FALSE(bm.Allocate().has_value());
  EXPECT_EQ(bm.num_free(), 0);
  bm.Release(1);
  auto again = bm.Allocate();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, 1);
}

TEST(BlockManagerTest, PrefixHitsFollowTheChain) {
  BlockManager bm(8, 4, true);
  const std::vector<int32_t> prompt = Iota(10, 100);  // 2 full blocks + 2 tokens
  auto b0 = *bm.Allocate(), b1 = *bm.Allocate();
  uint64_t h0 = bm.Commit(b0, 0, std::span(prompt).subspan(0, 4));
  uint64_t h1 = bm.Commit(b1, h0, std::span(prompt).subspan(4, 4));
  EXPECT_NE(h0, h1);
  EXPECT_EQ(h1, BlockManager::HashBlock(h0, std::span(prompt).subspan(4, 4)));

  EXPECT_EQ(bm.MatchPrefix(prompt, 100), (std::vector<int32_t>{b0, b1}));
  EXPECT_EQ(bm.MatchPrefix(prompt, 1), (std::vector<int32_t>{b0}));
  // Same second block after a different first block: the chain breaks at block 0.
  std::vector<int32_t> other = prompt;
  other[0] = 7;
  EXPECT_TRUE(bm.MatchPrefix(other, 100).empty());
  // Same first block, different second: one block.
  other = prompt;
  other[5] = 7;
  EXPECT_EQ(bm.MatchPrefix(other, 100), (std::vector<int32_t>{b0}));
  // Partial blocks never match.
  EXPECT_TRUE(bm.MatchPrefix(std::span(prompt).subspan(0, 3), 100).empty());

  // A committed block stays matchable after its owner released it, and Acquire takes it back
  // out of the LRU.
  bm.Release(b1);
  bm.Release(b0);
  EXPECT_EQ(bm.num_used(), 0);
  auto hit = bm.MatchPrefix(prompt, 100);
  ASSERT_EQ(hit.size(), 2u);
  EXPECT_EQ(bm.NumFreeAfterAcquiring(hit), 6);
  for (int32_t b : hit) bm.Acquire(b);
  EXPECT_EQ(bm.num_used(), 2);
  EXPECT_EQ(bm.num_cached_free(), 0);
}

TEST(BlockManagerTest, DuplicateContentRegistersOnce) {
  BlockManager bm(4, 4, true);
  const auto toks = Iota(4);
  auto a = *bm.Allocate(), b = *bm.Allocate();
  bm.Commit(a, 0, toks);
  bm.Commit(b, 0, toks);  // same content computed twice: the first stays the cached one
  EXPECT_EQ(bm.MatchPrefix(toks, 1), (std::vector<int32_t>{a}));
  bm.Release(b);  // not cached: straight to the free list
  EXPECT_EQ(bm.num_cached_free(), 0);
}

TEST(BlockManagerTest, LruEvictsLeastRecentlyReleasedFirst) {
  BlockManager bm(3, 2, true);
  std::vector<std::vector<int32_t>> seqs = {{1, 2}, {3, 4}, {5, 6}};
  std::vector<int32_t> ids;
  for (auto& s : seqs) {
    ids.push_back(*bm.Allocate());
    bm.Commit(ids.back(), 0, s);
  }
  // Release order 1, 0, 2: block 1 is the least recently used.
  bm.Release(ids[1]);
  bm.Release(ids[0]);
  bm.Release(ids[2]);
  EXPECT_EQ(bm.num_cached_free(), 3);
  auto fresh = bm.Allocate();  // no free block left: evicts the LRU one
  ASSERT_TRUE(fresh.has_value());
  EXPECT_EQ(*fresh, ids[1]);
  EXPECT_TRUE(bm.MatchPrefix(seqs[1], 1).empty());  // its cache entry is gone
  EXPECT_EQ(bm.MatchPrefix(seqs[0], 1).size(), 1u);
  EXPECT_EQ(bm.MatchPrefix(seqs[2], 1).size(), 1u);
  // A hit refreshes nothing by itself, but an acquired block cannot be evicted.
  bm.Acquire(ids[0]);
  auto next = bm.Allocate();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(*next, ids[2]);
  EXPECT_FALSE(bm.Allocate().has_value());
  EXPECT_EQ(bm.ref_count(ids[0]), 1);
}

TEST(BlockManagerTest, CachingOffNeverMatches) {
  BlockManager bm(2, 2, false);
  auto a = *bm.Allocate();
  bm.Commit(a, 0, std::vector<int32_t>{1, 2});
  EXPECT_TRUE(bm.MatchPrefix(std::vector<int32_t>{1, 2}, 1).empty());
  bm.Release(a);
  EXPECT_EQ(bm.num_cached_free(), 0);
  EXPECT_EQ(bm.num_free(), 2);
}

}  // namespace
}  // namespace kvferry::engine
