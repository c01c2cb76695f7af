#include "kvferry/tokenizer/bpe.h"

#include <algorithm>
#include <cstring>
#include <queue>

namespace kvferry::tokenizer {

uint64_t HashBytes(std::string_view s) {
  // FNV-1a over 8-byte words, then a final mix: fast for short tokens.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x9E3779B97F4A7C15ull;
  h ^= h >> 32;
  return h;
}

static uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

void StringIdMap::Reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  size_ = 0;
  for (const Slot& s : old)
    if (s.id >= 0) Insert(std::string_view(s.data, s.size), s.id);
}

bool StringIdMap::Insert(std::string_view key, int32_t id) {
  if ((size_ + 1) * 2 > slots_.size()) Reserve(std::max<size_t>(16, slots_.size()));
  size_t mask = slots_.size() - 1;
  uint64_t hash = HashBytes(key);
  uint32_t tag = uint32_t(hash >> 32);
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.id < 0) {
      s = {key.data(), uint32_t(key.size()), tag, id};
      ++size_;
      return true;
    }
    if (s.tag == tag && std::string_view(s.data, s.size) == key) return false;
  }
}

int32_t StringIdMap::Find(std::string_view key, uint64_t hash) const {
  if (slots_.empty()) return -1;
  size_t mask = slots_.size() - 1;
  uint32_t tag = uint32_t(hash >> 32);
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.id < 0) return -1;
    if (s.tag == tag && s.size == key.size() && std::memcmp(s.data, key.data(), key.size()) == 0) return s.id;
  }
}

void BpeMerges::Reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  size_ = 0;
  for (const Slot& s : old)
    if (s.key != kEmpty) Insert(int32_t(s.key >> 32), int32_t(s.key & 0xffffffffu), s.rank, s.merged);
}

bool BpeMerges::Insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  if ((size_ + 1) * 2 > slots_.size()) Reserve(std::max<size_t>(16, slots_.size()));
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  size_t mask = slots_.size() - 1;
  for (size_t i = Mix(key) & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.key == kEmpty) {
      s = {key, rank, merged};
      ++size_;
      return true;
    }
    if (s.key == key) return false;
  }
}

int32_t BpeMerges::Rank(int32_t left, int32_t right, int32_t* merged) const {
  if (slots_.empty()) return -1;
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  size_t mask = slots_.size() - 1;
  for (size_t i = Mix(key) & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.key == kEmpty) return -1;
    if (s.key == key) {
      *merged = s.merged;
      return s.rank;
    }
  }
}

namespace {

// Few symbols: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties). O(n^2), but
// no allocation, which wins for ordinary words.
void MergeSmall(const BpeMerges& merges, std::vector<int32_t>& sym) {
  while (sym.size() > 1) {
    int32_t best_rank = -1, best_merged = 0;
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      int32_t merged;
      int32_t rank = merges.Rank(sym[i], sym[i + 1], &merged);
      if (rank >= 0 && (best_rank < 0 || rank < best_rank)) {
        best_rank = rank;
        best_pos = i;
        best_merged = merged;
      }
    }
    if (best_rank < 0) break;
    sym[best_pos] = best_merged;
    sym.erase(sym.begin() + best_pos + 1);
  }
}

// Many symbols: a linked list plus a priority queue, O(n log n) (long runs of one script).
void MergeLarge(const BpeMerges& merges, std::vector<int32_t>& sym) {
  const int n = int(sym.size());
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    int32_t merged;
    int32_t rank = merges.Rank(sym[pos], sym[next[pos]], &merged);
    if (rank >= 0) queue.push({rank, pos, sym[pos], sym[next[pos]]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    Cand c = queue.top();
    queue.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    int r = next[c.pos];
    if (sym[c.pos] != c.left || sym[r] != c.right) continue;  // stale
    int32_t merged;
    merges.Rank(c.left, c.right, &merged);
    sym[c.pos] = merged;
    alive[r] = false;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  size_t w = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) sym[w++] = sym[i];
  sym.resize(w);
}

}  // namespace

void BpeMergeWord(const BpeMerges& merges, std::vector<int32_t>& symbols, std::vector<int32_t>* out) {
  if (symbols.size() <= 48) {
    MergeSmall(merges, symbols);
  } else {
    MergeLarge(merges, symbols);
  }
  out->insert(out->end(), symbols.begin(), symbols.end());
}

}  // namespace kvferry::tokenizer
