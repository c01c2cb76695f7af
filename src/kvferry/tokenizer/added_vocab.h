#pragma once
// Private: finds added tokens (e.g. <|im_start|>) in text so they are never split by BPE.
// Leftmost-longest matching over a byte trie, as HF's AddedVocabulary does with Aho-Corasick.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvferry::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

class AddedTokenMatcher {
 public:
  struct Match {
    size_t begin;  // including stripped whitespace
    size_t end;
    int32_t id;
  };
  // `tokens` must outlive the matcher.
  void Build(const std::vector<AddedToken>& tokens, bool normalized);
  bool empty() const { return nodes_.size() <= 1; }
  // Appends the matches in `text`, left to right, non-overlapping.
  void FindAll(std::string_view text, std::vector<Match>* out) const;

 private:
  struct Node {
    int32_t token = -1;  // index into tokens_, when a token ends here
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
  };
  int32_t Child(int32_t node, uint8_t byte) const;
  std::vector<Node> nodes_;
  const std::vector<AddedToken>* tokens_ = nullptr;
  bool first_byte_[256] = {};
};

}  // namespace kvferry::tokenizer
