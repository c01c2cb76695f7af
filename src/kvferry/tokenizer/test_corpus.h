#pragma once
// Test-only: deterministic strings that stress a byte-level BPE tokenizer (scripts, emoji, marks,
// numbers, code, whitespace, special tokens, invalid UTF-8), for the oracle test and benchmark.

#include <random>
#include <string>
#include <vector>

namespace kvferry::tokenizer::testing {

inline const std::vector<std::string>& Fragments() {
  static const std::vector<std::string> f = {
      // English, contractions in mixed case, punctuation
      "Hello, world!", "I'm sure they'll say it's fine; we've seen THEY'RE 'RIGHT' don't", "O'Neil's",
      "The quick brown fox jumps over the lazy dog.", "e.g. U.S.A. -- em—dash… “quotes” ‘single’",
      "'S 'T 'Re 'VE 'M 'LL 'D 'x", "'\u017F 'K (long s, Kelvin sign)", "İstanbul ıi ß ẞ ǅ",
      // CJK, kana, Hangul (precomposed and as conjoining jamo, which NFC composes)
      "你好，世界！我们今天学习分词。", "日本語のテキスト、カタカナとひらがな。", "한국어 문장입니다.",
      "\u1100\u1161\u11A8", "繁體中文與简体中文混合", "ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ",
      // emoji: ZWJ families, skin tones, flags, keycaps, variation selectors
      "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "1️⃣#️⃣", "❤️", "🧑🏿‍💻 coding", "😀😃😄😁",
      // combining marks, NFC-sensitive text, other scripts
      "e\u0301", "a\u0308o\u0308u\u0308", "Z\u0351\u0328\u0353a\u0352\u0331l\u0317g\u0316o", "Å vs A\u030A vs \u212B",
      "नमस्ते दुनिया", "مرحبا بالعالم", "שלום עולם", "สวัสดีชาวโลก", "Привет, мир!", "Ελληνικά κείμενα",
      "\u1E9B\u0323", "\uFB01 ligature", "ｶﾀｶﾅ",
      // numbers
      "1234567890", "3.14159", "1,000,000", "x=42;y=-7.5e10", "２０２４年", "٣٤٥", "Ⅻ ½ ²",
      // code
      "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
      "if __name__ == \"__main__\":\n    main()", "<div class=\"a\">&nbsp;</div>", "SELECT * FROM t WHERE id=1;",
      "std::vector<int32_t> v{1, 2, 3};", "// comment\n/* block */", "{\"key\": [1, 2, {\"a\": null}]}",
      // whitespace runs and line breaks
      "   ", "\t\t", "\n\n\n", "\r\n", "  \n  \n", " \u00A0 ", "\u3000", "\u0085", "\uFEFF", "\u2028\u2029",
      "a  b   c    d", "trailing   ", "\v\f", " \t \n \r ",
      // special tokens inside text, and look-alikes that must not match
      "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|im_sta",
      "<|im_start|>user\nhi<|im_end|>", "<<|im_end|>>", "< |im_end| >", "<|IM_END|>",
      // invalid UTF-8: stray continuation, truncated sequences, overlong, surrogate, out of range
      "\x80", "abc\xff", "\xe4\xbd", "\xf0\x9f\x98", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xfe\xfe",
      "ok\xe2\x82", "\xc3",
  };
  return f;
}

// `count` strings: every fragment alone, then random concatenations of 2..6 fragments joined by
// random separators.
inline std::vector<std::string> OracleStrings(size_t count) {
  const auto& f = Fragments();
  std::vector<std::string> out(f.begin(), f.end());
  std::mt19937 rng(20240611);
  const std::vector<std::string> seps = {"", " ", "  ", "\n", "\t", ", ", "\r\n", " \n "};
  while (out.size() < count) {
    int n = 2 + int(rng() % 5);
    std::string s;
    for (int i = 0; i < n; ++i) {
      if (i > 0) s += seps[rng() % seps.size()];
      s += f[rng() % f.size()];
    }
    if (rng() % 10 == 0) {  // a random byte somewhere
      s.insert(s.begin() + (rng() % (s.size() + 1)), char(rng() % 256));
    }
    out.push_back(std::move(s));
  }
  return out;
}

// About `bytes` of valid UTF-8 mixed text (prose, CJK, code, numbers, emoji) for benchmarks.
inline std::string MixedText(size_t bytes) {
  const std::vector<std::string> parts = {
      "The quick brown fox jumps over the lazy dog. It's a well-known pangram, isn't it? ",
      "Large language models split text into tokens before they read it; the split matters. ",
      "你好，世界！我们今天学习分词，然后测试速度。", "日本語のテキスト、カタカナとひらがな。",
      "def f(x):\n    return x ** 2 + 3 * x - 7\n\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
      "Revenue grew 12.5% to $1,234,567 in 2024 (vs. 987,654 in 2023). ", "👍🏽 🎉 👨‍👩‍👧 ",
      "Привет, мир! Ελληνικά κείμενα. ", "\n\n", "   indented line\n",
  };
  std::mt19937 rng(7);
  std::string s;
  while (s.size() < bytes) s += parts[rng() % parts.size()];
  return s;
}

}  // namespace kvferry::tokenizer::testing
