#pragma once
// Private: the BPE model over token ids: the merge table and the per-word merge loop.
// Symbols start as one id per byte (byte-level BPE), and pairs are merged lowest rank first,
// leftmost first among equal ranks, as HF tokenizers does.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvferry::tokenizer {

uint64_t HashBytes(std::string_view s);

// string -> id, open addressing over string_views the caller keeps alive.
class StringIdMap {
 public:
  void Reserve(size_t n);
  // Returns false when `key` is already present (the map is unchanged).
  bool Insert(std::string_view key, int32_t id);
  int32_t Find(std::string_view key) const { return Find(key, HashBytes(key)); }
  // With a precomputed HashBytes(key); Prefetch(hash) first hides the cache miss in bulk lookups.
  int32_t Find(std::string_view key, uint64_t hash) const;
  void Prefetch(uint64_t hash) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[hash & (slots_.size() - 1)]);
  }
  size_t size() const { return size_; }

 private:
  struct Slot {
    const char* data = nullptr;
    uint32_t size = 0;
    uint32_t tag = 0;  // high bits of the hash: most mismatches never touch the key bytes
    int32_t id = -1;
  };
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

class BpeMerges {
 public:
  void Reserve(size_t n);
  // Returns false when the pair is already present (the first rank wins).
  bool Insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
  // -1 when (left, right) does not merge; else sets *merged.
  int32_t Rank(int32_t left, int32_t right, int32_t* merged) const;

 private:
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };
  static constexpr uint64_t kEmpty = ~0ull;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

// Merges `symbols` in place (ids, one per initial symbol) and appends the result to *out.
void BpeMergeWord(const BpeMerges& merges, std::vector<int32_t>& symbols, std::vector<int32_t>* out);

}  // namespace kvferry::tokenizer
