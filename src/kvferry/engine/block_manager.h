#pragma once
// BlockManager: the KV cache's block allocator with reference counts and a prefix cache.
//
// Blocks are ids in [0, num_blocks). A block is either referenced (ref_count > 0, owned by one
// or more requests), free (unreferenced, no cached content), or cached-free (unreferenced but
// still holding the KV of a full block registered under its chain hash; kept in an LRU and
// evicted on demand by Allocate). Prefix caching keys a full block by
// hash(parent block's hash, the block's token ids); a lookup walks a prompt's full blocks from
// the start and stops at the first miss. The block's tokens are stored and compared on a hit,
// so a 64-bit hash collision can never serve the wrong KV.
//
// Threading: not thread-safe; owned by the engine's scheduler thread.

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>
#include <deque>

namespace kvferry::engine {

class BlockManager {
 public:
  // REQUIRES: num_blocks > 0, block_size > 0.
  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching);
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks Allocate can hand out now: free plus cached-free.
  int64_t num_free() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Blocks with ref_count > 0.
  int64_t num_used() const { return num_blocks() - num_free(); }
  // Unreferenced blocks that still hold cached KV (evictable).
  int64_t num_cached_free() const { return static_cast<int64_t>(lru_.size()); }
  int ref_count(int32_t block) const { return blocks_[block].ref; }

  // The chain hash of one full block.
  static uint64_t HashBlock(uint64_t parent_hash, std::span<const int32_t> tokens);

  // The cached blocks holding the longest prefix of `tokens` in whole blocks, at most
  // `max_blocks` of them. Does not reference them (call Acquire). Empty when prefix caching
  // is off.
  std::vector<int32_t> MatchPrefix(std::span<const int32_t> tokens, int64_t max_blocks) const;
  // num_free() after Acquire of each of `blocks` (cached-free ones stop being allocatable).
  int64_t NumFreeAfterAcquiring(std::span<const int32_t> blocks) const;

  // Adds a reference to a referenced or cached-free block (a prefix hit).
  void Acquire(int32_t block);
  // A block with ref_count 1: a free one, else the least recently used cached-free one (its
  // cache entry is dropped). nullopt when num_free() == 0.
  std::optional<int32_t> Allocate();
  // Drops a reference. At zero a cached block goes to the LRU's most recent end, others to the
  // free list. Release a request's blocks last to first so that its tail is evicted first.
  void Release(int32_t block);

  // Registers `block` (referenced, full, KV computed for `tokens`) under
  // HashBlock(parent_hash, tokens) and returns that hash. If the hash already names another
  // block, or caching is off, nothing is registered; the hash is returned all the same so the
  // caller can continue its chain.
  uint64_t Commit(int32_t block, uint64_t parent_hash, std::span<const int32_t> tokens);

 private:
  struct Block {
    int ref = 0;
    bool cached = false;  // registered in by_hash_
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    std::vector<int32_t> tokens;  // when cached
    std::list<int32_t>::iterator lru_pos;  // valid when cached and ref == 0
  };
  void Uncache(int32_t block);

  const int64_t block_size_;
  const bool prefix_caching_;
  std::vector<Block> blocks_;
  std::deque<int32_t> free_;   // unreferenced, not cached; lowest ids first initially
  std::list<int32_t> lru_;     // unreferenced, cached; front = least recently used
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace kvferry::engine
