#include "kvferry/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

namespace kvferry::tokenizer {
namespace {

constexpr std::string_view kWhiteSpace = "\\p{White_Space}";
constexpr std::string_view kNotWhiteSpace = "\\P{White_Space}";

bool IsAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
char OtherCase(char c) { return std::islower(static_cast<unsigned char>(c)) ? char(std::toupper(c)) : char(std::tolower(c)); }

// Copies an escape starting at pattern[i] == '\\' (with a braced argument if any) into *out and
// returns the index after it; rewrites the escapes whose meaning differs.
size_t TranslateEscape(std::string_view p, size_t i, bool in_class, bool fold, std::string* out) {
  if (i + 1 >= p.size()) {
    out->push_back('\\');
    return i + 1;
  }
  char e = p[i + 1];
  switch (e) {
    case 's': out->append(kWhiteSpace); return i + 2;
    case 'S': out->append(kNotWhiteSpace); return i + 2;
    case 'h': out->append(in_class ? "0-9A-Fa-f" : "[0-9A-Fa-f]"); return i + 2;
    case 'H': out->append(in_class ? "\\x00-/:-@G-`g-\\x{10FFFF}" : "[^0-9A-Fa-f]"); return i + 2;
    default: break;
  }
  if ((e == 'p' || e == 'P' || e == 'x') && i + 2 < p.size() && p[i + 2] == '{') {
    size_t close = p.find('}', i + 3);
    if (close != std::string_view::npos) {
      out->append(p.substr(i, close + 1 - i));
      return close + 1;
    }
  }
  if (fold && IsAsciiLetter(e)) {
    // An escaped letter is an escape sequence, never a literal; keep it.
  }
  out->push_back('\\');
  out->push_back(e);
  return i + 2;
}

}  // namespace

StatusOr<std::string> TranslateOnigPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  std::vector<bool> fold_stack;  // fold state to restore at each ')'
  bool fold = false;
  size_t i = 0;
  while (i < p.size()) {
    char c = p[i];
    if (c == '\\') {
      i = TranslateEscape(p, i, false, fold, &out);
    } else if (c == '[') {
      // Character class: copy up to the matching ']' (nested classes are not supported).
      out.push_back('[');
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a literal ']' first
      bool closed = false;
      while (i < p.size()) {
        char d = p[i];
        if (d == ']') {
          out.push_back(']');
          ++i;
          closed = true;
          break;
        }
        if (d == '[') {
          if (p.substr(i, 2) == "[:") {
            size_t end = p.find(":]", i + 2);
            if (end == std::string_view::npos) return InvalidArgumentError("unterminated POSIX class in regex");
            out.append(p.substr(i, end + 2 - i));
            i = end + 2;
            continue;
          }
          return UnimplementedError("nested character classes in a tokenizer regex are not supported");
        }
        if (d == '\\') {
          i = TranslateEscape(p, i, true, fold, &out);
          continue;
        }
        if (fold && IsAsciiLetter(d)) {
          // A range a-z under (?i) gains its other-case twin.
          if (i + 2 < p.size() && p[i + 1] == '-' && IsAsciiLetter(p[i + 2])) {
            out.append(p.substr(i, 3));
            out.push_back(OtherCase(d));
            out.push_back('-');
            out.push_back(OtherCase(p[i + 2]));
            i += 3;
            continue;
          }
          out.push_back(d);
          out.push_back(OtherCase(d));
          ++i;
          continue;
        }
        out.push_back(d);
        ++i;
      }
      if (!closed) return InvalidArgumentError("unterminated character class in regex");
    } else if (c == '(') {
      fold_stack.push_back(fold);
      if (p.substr(i, 4) == "(?i:") {
        out.append("(?:");
        fold = true;
        i += 4;
      } else if (p.substr(i, 4) == "(?i)") {
        return UnimplementedError("a bare (?i) modifier in a tokenizer regex is not supported");
      } else {
        out.push_back('(');
        ++i;
      }
    } else if (c == ')') {
      if (!fold_stack.empty()) {
        fold = fold_stack.back();
        fold_stack.pop_back();
      }
      out.push_back(')');
      ++i;
    } else if (fold && IsAsciiLetter(c)) {
      out.push_back('[');
      out.push_back(c);
      out.push_back(OtherCase(c));
      out.push_back(']');
      ++i;
    } else {
      out.push_back(c);
      ++i;
    }
  }
  return out;
}

Regex::~Regex() {
  if (code_ != nullptr) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

static StatusOr<std::unique_ptr<Regex>> CompilePcre(std::string_view pcre_pattern, uint32_t extra_options,
                                                    void** code_out, bool* jit_out) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre_pattern.data()), pcre_pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | extra_options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return InvalidArgumentError("tokenizer regex does not compile at offset " + std::to_string(offset) + ": " +
                                reinterpret_cast<const char*>(message));
  }
  *jit_out = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  *code_out = code;
  return std::unique_ptr<Regex>();
}

StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view onig_pattern) {
  KVF_ASSIGN_OR_RETURN(std::string translated, TranslateOnigPattern(onig_pattern));
  std::unique_ptr<Regex> regex(new Regex());
  KVF_RETURN_IF_ERROR(CompilePcre(translated, 0, &regex->code_, &regex->jit_).status());
  return regex;
}

StatusOr<std::unique_ptr<Regex>> Regex::Literal(std::string_view text) {
  std::unique_ptr<Regex> regex(new Regex());
  KVF_RETURN_IF_ERROR(CompilePcre(text, PCRE2_LITERAL, &regex->code_, &regex->jit_).status());
  return regex;
}

namespace {
// Per-thread match data and JIT stack, grown on demand.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(16, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};
}  // namespace

void Regex::FindAll(std::string_view text, std::vector<Match>* out) const {
  thread_local MatchScratch scratch;
  auto* code = static_cast<pcre2_code*>(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc;
    if (jit_) {
      rc = pcre2_jit_match(code, subject, text.size(), start, 0, scratch.data, scratch.context);
    } else {
      rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // A resource limit on a pathological input: fall back to the interpreter once, then give up
      // on the rest of this piece (it is kept as one unsplit piece by the caller).
      rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, scratch.data,
                       scratch.context);
      if (rc < 0) break;
    }
    PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
    size_t b = ovector[0], e = ovector[1];
    if (e > b) {
      out->push_back({b, e});
      start = e;
    } else {
      // Empty match: step one character forward.
      size_t next = b + 1;
      while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
      start = next;
    }
  }
}

}  // namespace kvferry::tokenizer
