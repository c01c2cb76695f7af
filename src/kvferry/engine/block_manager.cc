#include "kvferry/engine/block_manager.h"

#include <algorithm>
#include <cassert>
#include <unordered_set>

namespace kvferry::engine {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching), blocks_(num_blocks) {
  for (int64_t b = 0; b < num_blocks; ++b) free_.push_back(static_cast<int32_t>(b));
}

uint64_t BlockManager::HashBlock(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent_hash ^ 0x6b76666572727921ull);
  for (int32_t t : tokens) h = Mix(h ^ static_cast<uint32_t>(t));
  return Mix(h + tokens.size());
}

std::vector<int32_t> BlockManager::MatchPrefix(std::span<const int32_t> tokens,
                                               int64_t max_blocks) const {
  std::vector<int32_t> out;
  if (!prefix_caching_) return out;
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / block_size_);
  uint64_t parent = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto chunk = tokens.subspan(i * block_size_, block_size_);
    const uint64_t h = HashBlock(parent, chunk);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const Block& b = blocks_[it->second];
    if (b.parent_hash != parent || !std::equal(chunk.begin(), chunk.end(), b.tokens.begin(), b.tokens.end()))
      break;
    out.push_back(it->second);
    parent = h;
  }
  return out;
}

int64_t BlockManager::NumFreeAfterAcquiring(std::span<const int32_t> blocks) const {
  std::unordered_set<int32_t> seen;
  int64_t n = num_free();
  for (int32_t b : blocks)
    if (blocks_[b].ref == 0 && seen.insert(b).second) --n;
  return n;
}

void BlockManager::Acquire(int32_t block) {
  Block& b = blocks_[block];
  if (b.ref == 0) {
    assert(b.cached);  // only cached-free blocks are handed out by MatchPrefix
    lru_.erase(b.lru_pos);
  }
  ++b.ref;
}

std::optional<int32_t> BlockManager::Allocate() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.front();
    free_.pop_front();
  } else if (!lru_.empty()) {
    id = lru_.front();
    lru_.pop_front();
    Uncache(id);
  } else {
    return std::nullopt;
  }
  blocks_[id].ref = 1;
  return id;
}

void BlockManager::Release(int32_t block) {
  Block& b = blocks_[block];
  assert(b.ref > 0);
  if (--b.ref > 0) return;
  if (b.cached) {
    b.lru_pos = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

uint64_t BlockManager::Commit(int32_t block, uint64_t parent_hash, std::span<const int32_t> tokens) {
  const uint64_t h = HashBlock(parent_hash, tokens);
  Block& b = blocks_[block];
  if (!prefix_caching_ || b.cached || by_hash_.count(h) > 0) return h;
  b.cached = true;
  b.hash = h;
  b.parent_hash = parent_hash;
  b.tokens.assign(tokens.begin(), tokens.end());
  by_hash_.emplace(h, block);
  return h;
}

void BlockManager::Uncache(int32_t block) {
  Block& b = blocks_[block];
  if (!b.cached) return;
  by_hash_.erase(b.hash);
  b.cached = false;
  b.tokens.clear();
  b.tokens.shrink_to_fit();
}

}  // namespace kvferry::engine
