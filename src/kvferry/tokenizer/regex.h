#pragma once
// Private: the split pre-tokenizer's regex. tokenizer.json patterns are written for Oniguruma
// (what HF tokenizers uses); they are translated to PCRE2 (UTF + UCP, JIT) so the Oniguruma
// meaning is kept where the two differ: \s and \S are the Unicode White_Space property (PCRE2's
// \s misses U+0085), \h is a hex digit, and (?i:...) folds ASCII letters only.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::tokenizer {

// Rewrites an Oniguruma pattern into PCRE2 syntax with the same meaning (for what HF patterns use).
StatusOr<std::string> TranslateOnigPattern(std::string_view pattern);

class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern. InvalidArgument if it does not compile.
  static StatusOr<std::unique_ptr<Regex>> Compile(std::string_view onig_pattern);
  // A literal string to split on.
  static StatusOr<std::unique_ptr<Regex>> Literal(std::string_view text);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  struct Match {
    size_t begin;
    size_t end;
  };
  // Appends the non-overlapping matches of the pattern in `text` (valid UTF-8), left to right.
  // Empty matches are skipped. Thread-safe (match data is per call/thread).
  void FindAll(std::string_view text, std::vector<Match>* out) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

}  // namespace kvferry::tokenizer
