#pragma once
// Fuzz-only: a small self-contained byte-level BPE tokenizer.json (Qwen's split regex, NFC,
// special and non-special added tokens) so the encode fuzzer needs no downloaded files.

#include <string>

#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer::fuzz {

inline std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

inline std::string SmallTokenizerJson() {
  auto bl = [](const std::string& bytes) {
    std::string s;
    AppendByteLevel(bytes, &s);
    return s;
  };
  std::string vocab, merges;
  int id = 0;
  for (int b = 0; b < 256; ++b) vocab += (b ? "," : "") + JsonQuote(bl(std::string(1, char(b)))) + ":" + std::to_string(id++);
  const char* pairs[][2] = {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"i", "n"}, {" ", "a"}, {"\xe4", "\xbd"}, {"\xe4\xbd", "\xa0"},
                            {" ", " "}, {"  ", "  "}, {"e", "r"}, {"o", "n"}};
  for (auto& p : pairs) {
    std::string a = bl(p[0]), b = bl(p[1]);
    vocab += "," + JsonQuote(a + b) + ":" + std::to_string(id++);
    merges += std::string(merges.empty() ? "" : ",") + "[" + JsonQuote(a) + "," + JsonQuote(b) + "]";
  }
  std::string pattern =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+)";
  return R"({"version":"1.0","added_tokens":[)"
         R"({"id":1000,"content":"<|im_end|>","special":true,"normalized":false},)"
         R"({"id":1001,"content":"<tool>","special":false,"normalized":true,"lstrip":true,"rstrip":true}],)"
         R"("normalizer":{"type":"NFC"},)"
         R"("pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":")" +
         pattern +
         R"("},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]},)"
         R"("post_processor":{"type":"ByteLevel"},"decoder":{"type":"ByteLevel"},)"
         R"("model":{"type":"BPE","vocab":{)" +
         vocab + R"(},"merges":[)" + merges + "]}}";
}

}  // namespace kvferry::tokenizer::fuzz
