// Encoding and decoding (the model is loaded by tokenizer_load.cc).
#include <deque>

#include "kvferry/tokenizer/tokenizer_impl.h"

namespace kvferry::tokenizer {

std::vector<int32_t> TokenizerImpl::Encode(std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    AppendSanitizedUtf8(text, &sanitized);
    text = sanitized;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  if (add_special_tokens) out.insert(out.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<AddedTokenMatcher::Match> matches;
  raw_matcher_.FindAll(text, &matches);
  size_t pos = 0;
  for (const auto& m : matches) {
    if (m.begin > pos) EncodeSegment(text.substr(pos, m.begin - pos), &out);
    out.push_back(m.id);
    pos = m.end;
  }
  if (pos < text.size()) EncodeSegment(text.substr(pos), &out);
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

// A stretch of text between raw added tokens: normalize, then split on normalized added tokens.
void TokenizerImpl::EncodeSegment(std::string_view text, std::vector<int32_t>* out) const {
  std::string normalized[2];
  int which = 0;
  for (NormalForm form : normalizers_) {
    if (Normalize(form, text, &normalized[which])) {
      text = normalized[which];
      which ^= 1;
    }
  }
  if (normalized_matcher_.empty()) {
    EncodeNormalized(text, out);
    return;
  }
  std::vector<AddedTokenMatcher::Match> matches;
  normalized_matcher_.FindAll(text, &matches);
  size_t pos = 0;
  for (const auto& m : matches) {
    if (m.begin > pos) EncodeNormalized(text.substr(pos, m.begin - pos), out);
    out->push_back(m.id);
    pos = m.end;
  }
  if (pos < text.size()) EncodeNormalized(text.substr(pos), out);
}

namespace {
// Splits every piece by the matches of `regex` according to `behavior`.
void SplitPieces(const Regex& regex, PreTokenizerStep::Behavior behavior, std::vector<std::string_view>* pieces) {
  using B = PreTokenizerStep::Behavior;
  std::vector<std::string_view> next;
  next.reserve(pieces->size() * 2);
  std::vector<Regex::Match> matches;
  for (std::string_view piece : *pieces) {
    matches.clear();
    regex.FindAll(piece, &matches);
    if (matches.empty()) {
      next.push_back(piece);
      continue;
    }
    size_t pos = 0;
    size_t pending_begin = 0;  // MergedWithNext: start of the piece still open
    bool open = false;
    for (const auto& m : matches) {
      switch (behavior) {
        case B::kIsolated:
          if (m.begin > pos) next.push_back(piece.substr(pos, m.begin - pos));
          next.push_back(piece.substr(m.begin, m.end - m.begin));
          break;
        case B::kRemoved:
          if (m.begin > pos) next.push_back(piece.substr(pos, m.begin - pos));
          break;
        case B::kMergedWithPrevious:
          next.push_back(piece.substr(pos, m.end - pos));
          break;
        case B::kMergedWithNext:
          if (open) {
            next.push_back(piece.substr(pending_begin, m.begin - pending_begin));
          } else if (m.begin > pos) {
            next.push_back(piece.substr(pos, m.begin - pos));
          }
          pending_begin = m.begin;
          open = true;
          break;
      }
      pos = m.end;
    }
    if (behavior == B::kMergedWithNext && open) {
      next.push_back(piece.substr(pending_begin));
    } else if (pos < piece.size()) {
      next.push_back(piece.substr(pos));
    }
  }
  pieces->swap(next);
}
}  // namespace

void TokenizerImpl::EncodeNormalized(std::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return;
  std::vector<std::string_view> pieces{text};
  std::deque<std::string> storage;  // pieces that gained a prefix space
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel && step.add_prefix_space) {
      for (std::string_view& piece : pieces) {
        if (!piece.empty() && piece[0] == ' ') continue;
        std::string& spaced = storage.emplace_back();
        spaced.reserve(piece.size() + 1);
        spaced.push_back(' ');
        spaced.append(piece);
        piece = storage.back();
      }
    }
    if (step.regex != nullptr) {
      auto behavior = step.kind == PreTokenizerStep::Kind::kByteLevel ? PreTokenizerStep::Behavior::kIsolated
                                                                      : step.behavior;
      SplitPieces(*step.regex, behavior, &pieces);
    }
  }
  std::vector<int32_t> scratch;
  for (std::string_view piece : pieces) EncodeWord(piece, out, &scratch);
}

void TokenizerImpl::EncodeWord(std::string_view bytes, std::vector<int32_t>* out, std::vector<int32_t>* sym) const {
  if (bytes.empty()) return;
  if (ignore_merges_) {
    std::string spelled;
    AppendByteLevel(bytes, &spelled);
    int32_t id = vocab_.Find(spelled);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  sym->clear();
  bool last_unk = false;
  for (unsigned char c : bytes) {
    int32_t id = byte_ids_[c];
    if (id >= 0) {
      sym->push_back(id);
      last_unk = false;
    } else if (byte_fallback_ && byte_fallback_ids_[c] >= 0) {
      sym->push_back(byte_fallback_ids_[c]);
      last_unk = false;
    } else if (unk_id_ >= 0) {
      if (!(fuse_unk_ && last_unk)) sym->push_back(unk_id_);
      last_unk = true;
    }
  }
  if (sym->size() == 1) {
    out->push_back((*sym)[0]);
    return;
  }
  BpeMergeWord(merges_, *sym, out);
}

std::string TokenizerImpl::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special_tokens && IsSpecial(id)) continue;
    bytes.append(TokenBytes(id));
  }
  if (IsValidUtf8(bytes)) return bytes;
  std::string text;
  AppendSanitizedUtf8(bytes, &text);
  return text;
}

std::string_view TokenizerImpl::TokenBytes(int32_t id) const {
  if (id < 0 || size_t(id) >= bytes_spans_.size() || !bytes_spans_[id].present) return {};
  const Span& s = bytes_spans_[id];
  return std::string_view(bytes_arena_).substr(s.offset, s.size);
}

std::optional<std::string_view> TokenizerImpl::IdToToken(int32_t id) const {
  if (id < 0 || size_t(id) >= token_spans_.size() || !token_spans_[id].present) return std::nullopt;
  const Span& s = token_spans_[id];
  return std::string_view(token_arena_).substr(s.offset, s.size);
}

std::optional<int32_t> TokenizerImpl::TokenToId(std::string_view token) const {
  int32_t id = vocab_.Find(token);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

bool TokenizerImpl::IsSpecial(int32_t id) const { return id >= 0 && size_t(id) < special_.size() && special_[id]; }

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDetokenizer::Add(std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) continue;
    pending_.append(tokenizer_.TokenBytes(id));
  }
  size_t n = CompleteUtf8Prefix(pending_);
  std::string out;
  AppendSanitizedUtf8(std::string_view(pending_).substr(0, n), &out);
  pending_.erase(0, n);
  return out;
}

std::string IncrementalDetokenizer::Finish() {
  std::string out;
  AppendSanitizedUtf8(pending_, &out);
  pending_.clear();
  return out;
}

}  // namespace kvferry::tokenizer
