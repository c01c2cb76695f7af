#pragma once
// Private: UTF-8 helpers, the GPT-2 byte-level alphabet, and Unicode normalization forms.

#include <cstdint>
#include <string>
#include <string_view>

#include "kvferry/base/base.h"

namespace kvferry::tokenizer {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

bool IsValidUtf8(std::string_view text);

// Appends `text` to `out` with every ill-formed subsequence replaced by U+FFFD, one per maximal
// subpart (the WHATWG/Unicode "best practice" that TextDecoder and from_utf8_lossy follow).
void AppendSanitizedUtf8(std::string_view text, std::string* out);

// Length of the longest prefix of `bytes` that does not end inside a character that could still
// be completed by more bytes: the held-back tail is a well-formed but incomplete sequence.
size_t CompleteUtf8Prefix(std::string_view bytes);

void AppendUtf8(uint32_t code_point, std::string* out);
// Decodes one code point of valid UTF-8 at `*pos`, advancing it.
uint32_t DecodeUtf8(std::string_view text, size_t* pos);

// The GPT-2 byte-level alphabet: byte b <-> a printable code point.
uint32_t ByteToCodePoint(uint8_t byte);
// -1 when `code_point` is not in the alphabet.
int CodePointToByte(uint32_t code_point);
// Appends the byte-level spelling of `bytes` ("Ġthe" for " the").
void AppendByteLevel(std::string_view bytes, std::string* out);

// Unicode White_Space property.
bool IsUnicodeWhitespace(uint32_t code_point);

enum class NormalForm { kNone, kNfc, kNfd, kNfkc, kNfkd };

// Normalizes valid UTF-8 `text` into `out`. Returns false (and leaves `out` unchanged) when the
// text is already known to be in that form, so the caller can keep using `text`.
bool Normalize(NormalForm form, std::string_view text, std::string* out);

}  // namespace kvferry::tokenizer
