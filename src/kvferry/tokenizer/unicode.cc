#include "kvferry/tokenizer/unicode.h"

#include <simdjson.h>
#include <utf8proc.h>

#include <array>
#include <cstdlib>

namespace kvferry::tokenizer {

bool IsValidUtf8(std::string_view text) { return simdjson::validate_utf8(text.data(), text.size()); }

namespace {
// For a lead byte: the number of continuation bytes, and the allowed range of the first one.
struct Lead {
  int need;
  uint8_t lo;
  uint8_t hi;
};
inline Lead LeadOf(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b >= 0xE0 && b <= 0xEF) return {2, uint8_t(b == 0xE0 ? 0xA0 : 0x80), uint8_t(b == 0xED ? 0x9F : 0xBF)};
  if (b >= 0xF0 && b <= 0xF4) return {3, uint8_t(b == 0xF0 ? 0x90 : 0x80), uint8_t(b == 0xF4 ? 0x8F : 0xBF)};
  return {-1, 0, 0};
}
}  // namespace

void AppendSanitizedUtf8(std::string_view text, std::string* out) {
  if (IsValidUtf8(text)) {
    out->append(text);
    return;
  }
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    if (b < 0x80) {
      out->push_back(char(b));
      ++i;
      continue;
    }
    Lead lead = LeadOf(b);
    if (lead.need < 0) {
      out->append(kReplacementChar);
      ++i;
      continue;
    }
    size_t j = i + 1;
    int k = 0;
    while (k < lead.need && j < n) {
      uint8_t c = s[j];
      uint8_t lo = k == 0 ? lead.lo : 0x80, hi = k == 0 ? lead.hi : 0xBF;
      if (c < lo || c > hi) break;
      ++j;
      ++k;
    }
    if (k == lead.need) {
      out->append(text.substr(i, j - i));
    } else {
      out->append(kReplacementChar);
    }
    i = j;
  }
}

size_t CompleteUtf8Prefix(std::string_view bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  // A held-back tail is a lead byte followed by fewer continuation bytes than it needs.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    size_t start = n - back;
    uint8_t b = s[start];
    if (b < 0x80) return n;
    if (b < 0xC0) continue;  // continuation byte: keep looking for the lead
    Lead lead = LeadOf(b);
    if (lead.need < 0 || int(back - 1) >= lead.need) return n;
    for (size_t j = start + 1; j < n; ++j) {
      uint8_t lo = j == start + 1 ? lead.lo : 0x80, hi = j == start + 1 ? lead.hi : 0xBF;
      if (s[j] < lo || s[j] > hi) return n;
    }
    return start;
  }
  return n;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

uint32_t DecodeUtf8(std::string_view text, size_t* pos) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = *pos;
  uint8_t b = s[i];
  if (b < 0x80) {
    *pos = i + 1;
    return b;
  }
  int need = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
  uint32_t cp = b & (0x3F >> need);
  for (int k = 1; k <= need && i + k < text.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
  *pos = std::min(text.size(), i + 1 + need);
  return cp;
}

namespace {
struct ByteTables {
  std::array<uint32_t, 256> byte_to_cp;
  std::array<int16_t, 324> cp_to_byte;  // every alphabet code point is < 324
  ByteTables() {
    cp_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_cp[b] = printable ? b : 256 + extra++;
      cp_to_byte[byte_to_cp[b]] = int16_t(b);
    }
  }
};
const ByteTables& Tables() {
  static const ByteTables tables;
  return tables;
}
}  // namespace

uint32_t ByteToCodePoint(uint8_t byte) { return Tables().byte_to_cp[byte]; }

int CodePointToByte(uint32_t cp) { return cp < 324 ? Tables().cp_to_byte[cp] : -1; }

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const auto& t = Tables();
  for (unsigned char c : bytes) AppendUtf8(t.byte_to_cp[c], out);
}

bool IsUnicodeWhitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool Normalize(NormalForm form, std::string_view text, std::string* out) {
  if (form == NormalForm::kNone) return false;
  // Below U+0300 every character is stable under NFC and NFD (no decomposition, ccc 0), and for
  // ASCII also under the compatibility forms. Lead bytes < 0xCC mean code points < U+0300.
  bool compat = form == NormalForm::kNfkc || form == NormalForm::kNfkd;
  bool quick = true;
  for (unsigned char c : text) {
    if (compat ? c >= 0x80 : c >= 0xCC) {
      quick = false;
      break;
    }
  }
  if (quick) return false;
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::kNfd: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::kNfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::kNfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::kNone: break;
  }
  utf8proc_uint8_t* result = nullptr;
  utf8proc_ssize_t len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                      utf8proc_ssize_t(text.size()), &result, utf8proc_option_t(options));
  if (len < 0) {
    std::free(result);
    return false;
  }
  out->assign(reinterpret_cast<const char*>(result), size_t(len));
  std::free(result);
  return true;
}

}  // namespace kvferry::tokenizer
