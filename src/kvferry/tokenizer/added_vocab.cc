#include "kvferry/tokenizer/added_vocab.h"

#include <algorithm>

#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer {

void AddedTokenMatcher::Build(const std::vector<AddedToken>& tokens, bool normalized) {
  tokens_ = &tokens;
  nodes_.assign(1, Node{});
  std::fill(std::begin(first_byte_), std::end(first_byte_), false);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const AddedToken& token = tokens[t];
    if (token.content.empty() || token.normalized != normalized) continue;
    int32_t node = 0;
    for (unsigned char c : token.content) {
      int32_t child = Child(node, c);
      if (child < 0) {
        child = int32_t(nodes_.size());
        auto& kids = nodes_[node].children;
        kids.insert(std::lower_bound(kids.begin(), kids.end(), std::make_pair(c, int32_t(-1))),
                    std::make_pair(c, child));
        nodes_.push_back(Node{});
      }
      node = child;
    }
    if (nodes_[node].token < 0) nodes_[node].token = int32_t(t);  // the first definition wins
    first_byte_[static_cast<unsigned char>(token.content[0])] = true;
  }
}

int32_t AddedTokenMatcher::Child(int32_t node, uint8_t byte) const {
  const auto& kids = nodes_[node].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(byte, int32_t(-1)));
  return it != kids.end() && it->first == byte ? it->second : -1;
}

namespace {
// Word characters for single_word tokens: letters, digits and '_' (ASCII), and any non-ASCII
// code point that is not whitespace (an approximation of Rust's char::is_alphanumeric).
bool IsWordChar(uint32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return !IsUnicodeWhitespace(c);
}
uint32_t CodePointBefore(std::string_view text, size_t pos) {
  size_t start = pos;
  do {
    --start;
  } while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80);
  size_t p = start;
  return DecodeUtf8(text, &p);
}
}  // namespace

void AddedTokenMatcher::FindAll(std::string_view text, std::vector<Match>* out) const {
  if (empty()) return;
  size_t prev_end = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = Child(node, static_cast<unsigned char>(text[j]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& token = (*tokens_)[best];
    if (token.single_word) {
      bool ok = (i == 0 || !IsWordChar(CodePointBefore(text, i)));
      if (ok && best_end < text.size()) {
        size_t p = best_end;
        ok = !IsWordChar(DecodeUtf8(text, &p));
      }
      if (!ok) {
        ++i;
        continue;
      }
    }
    size_t begin = i, end = best_end;
    if (token.lstrip) {
      while (begin > prev_end) {
        size_t p = begin;
        do {
          --p;
        } while (p > prev_end && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80);
        size_t q = p;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, &q))) break;
        begin = p;
      }
    }
    if (token.rstrip) {
      while (end < text.size()) {
        size_t q = end;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, &q))) break;
        end = q;
      }
    }
    out->push_back({begin, end, token.id});
    prev_end = end;
    i = end;
  }
}

}  // namespace kvferry::tokenizer
