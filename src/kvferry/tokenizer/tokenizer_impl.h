#pragma once
// Private: the Tokenizer implementation (loaded by tokenizer_load.cc, run by tokenizer.cc).

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/tokenizer/added_vocab.h"
#include "kvferry/tokenizer/bpe.h"
#include "kvferry/tokenizer/regex.h"
#include "kvferry/tokenizer/tokenizer.h"
#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer {

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };
  Kind kind = Kind::kSplit;
  std::unique_ptr<Regex> regex;  // kSplit, or kByteLevel with use_regex
  Behavior behavior = Behavior::kIsolated;
  bool add_prefix_space = false;  // kByteLevel
};

class TokenizerImpl final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::string_view TokenBytes(int32_t id) const override;
  std::optional<std::string_view> IdToToken(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  bool IsSpecial(int32_t id) const override;
  int32_t vocab_size() const override { return int32_t(token_spans_.size()); }
  std::optional<int32_t> bos_token_id() const override { return bos_id_; }
  std::optional<int32_t> eos_token_id() const override { return eos_id_; }
  std::optional<int32_t> pad_token_id() const override { return pad_id_; }
  const std::vector<int32_t>& stop_token_ids() const override { return stop_ids_; }
  const std::string& bos_token() const override { return bos_token_; }
  const std::string& eos_token() const override { return eos_token_; }

 private:
  friend class TokenizerLoader;
  struct Span {
    uint32_t offset = 0;
    uint32_t size = 0;
    bool present = false;
  };

  void EncodeSegment(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeNormalized(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view bytes, std::vector<int32_t>* out, std::vector<int32_t>* scratch) const;

  // Token strings (vocab spelling) and their decoded bytes, packed; indexed by id.
  std::string token_arena_;
  std::vector<Span> token_spans_;
  std::string bytes_arena_;
  std::vector<Span> bytes_spans_;
  std::vector<bool> special_;
  StringIdMap vocab_;  // token string -> id (model vocab and added tokens)

  BpeMerges merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of each single-byte symbol, -1 if absent
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  std::array<int32_t, 256> byte_fallback_ids_{};  // <0xXX> tokens
  bool ignore_merges_ = false;

  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;  // normalized=true

  std::vector<NormalForm> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<int32_t> prefix_ids_;  // post-processor, when add_special_tokens
  std::vector<int32_t> suffix_ids_;

  std::optional<int32_t> bos_id_, eos_id_, pad_id_;
  std::string bos_token_, eos_token_;
  std::vector<int32_t> stop_ids_;
};

StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace kvferry::tokenizer
