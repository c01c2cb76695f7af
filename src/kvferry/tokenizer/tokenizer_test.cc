#include "kvferry/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/regex.h"
#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer {
namespace {

using nlohmann::json;

constexpr const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string ByteLevel(std::string_view s) {
  std::string out;
  AppendByteLevel(s, &out);
  return out;
}

// A tiny byte-level BPE: ids 0..255 are the bytes, then merges h+e, he+l, hel+l, hell+o, " "+w.
json TinyTokenizer(bool pair_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevel(std::string(1, char(b)))] = b;
  std::vector<std::pair<std::string, std::string>> merges = {{"h", "e"}, {"he", "l"}, {"hel", "l"}, {"hell", "o"},
                                                             {ByteLevel(" "), "w"}};
  json merge_list = json::array();
  int id = 256;
  for (auto& [a, b] : merges) {
    vocab[a + b] = id++;
    if (pair_merges) {
      merge_list.push_back({a, b});
    } else {
      merge_list.push_back(a + " " + b);
    }
  }
  json added = json::array();
  added.push_back({{"id", 300}, {"content", "<|end|>"}, {"special", true}, {"normalized", false},
                   {"lstrip", false}, {"rstrip", false}, {"single_word", false}});
  added.push_back({{"id", 301}, {"content", "<tool>"}, {"special", false}, {"normalized", false}});
  return json{{"version", "1.0"},
              {"added_tokens", added},
              {"normalizer", {{"type", "NFC"}}},
              {"pre_tokenizer",
               {{"type", "Sequence"},
                {"pretokenizers",
                 {{{"type", "Split"}, {"pattern", {{"Regex", kQwenPattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                  {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
              {"post_processor", {{"type", "ByteLevel"}}},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
}

std::unique_ptr<Tokenizer> MakeTiny(bool pair_merges = true) {
  auto t = Tokenizer::FromJson(TinyTokenizer(pair_merges).dump(), R"({"eos_token": "<|end|>"})");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

TEST(TokenizerTest, EncodesWithMergesInBothFormats) {
  for (bool pairs : {true, false}) {
    auto t = MakeTiny(pairs);
    EXPECT_EQ(t->Encode("hello"), (std::vector<int32_t>{259}));
    EXPECT_EQ(t->Encode("hello world"), (std::vector<int32_t>{259, 260, 'o', 'r', 'l', 'd'}));
    EXPECT_EQ(t->vocab_size(), 302);
  }
}

TEST(TokenizerTest, AddedTokensAreNeverSplit) {
  auto t = MakeTiny();
  EXPECT_EQ(t->Encode("hello<|end|>hello"), (std::vector<int32_t>{259, 300, 259}));
  EXPECT_EQ(t->Encode("<tool><|end|>"), (std::vector<int32_t>{301, 300}));
  EXPECT_TRUE(t->IsSpecial(300));
  EXPECT_FALSE(t->IsSpecial(301));
  EXPECT_EQ(t->eos_token_id(), 300);
  EXPECT_EQ(t->stop_token_ids(), (std::vector<int32_t>{300}));
  EXPECT_EQ(t->Decode(std::vector<int32_t>{259, 300}, /*skip_special_tokens=*/true), "hello");
  EXPECT_EQ(t->Decode(std::vector<int32_t>{259, 300}), "hello<|end|>");
}

TEST(TokenizerTest, InvalidUtf8BecomesReplacementChars) {
  auto t = MakeTiny();
  std::string bad = "a\xff" "b\xe4\xbd";
  std::string expected = "a\xEF\xBF\xBD" "b\xEF\xBF\xBD";
  EXPECT_EQ(t->Decode(t->Encode(bad)), expected);
}

TEST(TokenizerTest, RoundTripsAndStreamsWholeCharacters) {
  auto t = MakeTiny();
  std::string text = "héllo wörld 你好 👍🏽 e\u0301 \r\n\t  x";
  std::vector<int32_t> ids = t->Encode(text);
  EXPECT_EQ(t->Decode(ids), "héllo wörld 你好 👍🏽 é \r\n\t  x");  // NFC composes e + U+0301
  IncrementalDetokenizer detok(*t);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = detok.Add(id);
    EXPECT_TRUE(IsValidUtf8(piece));
    streamed += piece;
  }
  streamed += detok.Finish();
  EXPECT_EQ(streamed, t->Decode(ids));
}

TEST(TokenizerTest, IncrementalDetokenizerFlushesIncompleteTail) {
  auto t = MakeTiny();
  IncrementalDetokenizer detok(*t);
  EXPECT_EQ(detok.Add(0xE4), "");
  EXPECT_EQ(detok.Add(0xBD), "");
  EXPECT_EQ(detok.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.Add(0xE4), "");
  EXPECT_EQ(detok.Add('a'), "\xEF\xBF\xBD" "a");
}

TEST(TokenizerTest, LookupsWork) {
  auto t = MakeTiny();
  EXPECT_EQ(t->TokenToId("hello"), 259);
  EXPECT_EQ(t->TokenToId(ByteLevel(" ") + "w"), 260);
  EXPECT_EQ(t->IdToToken(260), ByteLevel(" ") + "w");
  EXPECT_EQ(t->TokenBytes(260), " w");
  EXPECT_FALSE(t->IdToToken(5000).has_value());
  EXPECT_EQ(t->TokenBytes(-1), "");
}

TEST(TokenizerTest, UnsupportedPartsAreErrors) {
  json j = TinyTokenizer(true);
  j["model"]["type"] = "Unigram";
  EXPECT_EQ(Tokenizer::FromJson(j.dump()).status().code(), StatusCode::kUnimplemented);
  j = TinyTokenizer(true);
  j["normalizer"] = {{"type", "Precompiled"}};
  EXPECT_EQ(Tokenizer::FromJson(j.dump()).status().code(), StatusCode::kUnimplemented);
  j = TinyTokenizer(true);
  j["model"]["merges"].push_back({"zz", "q"});
  EXPECT_EQ(Tokenizer::FromJson(j.dump()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromJson("{not json").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::Load("/nonexistent/dir").status().code(), StatusCode::kNotFound);
}

TEST(TokenizerTest, PostProcessorTemplateAddsBos) {
  json j = TinyTokenizer(true);
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|end|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<|end|>", {{"id", "<|end|>"}, {"ids", {300}}, {"tokens", {"<|end|>"}}}}}}};
  auto t = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->Encode("hello", true), (std::vector<int32_t>{300, 259}));
  EXPECT_EQ((*t)->Encode("hello", false), (std::vector<int32_t>{259}));
}

TEST(RegexTest, TranslatesOnigurumaDifferences) {
  EXPECT_EQ(*TranslateOnigPattern(R"(\s+(?!\S))"), R"(\p{White_Space}+(?!\P{White_Space}))");
  EXPECT_EQ(*TranslateOnigPattern(R"((?i:'s|'t)x)"), R"((?:'[sS]|'[tT])x)");
  EXPECT_EQ(*TranslateOnigPattern(R"([^\s\p{L}])"), R"([^\p{White_Space}\p{L}])");
  auto re = Regex::Compile(kQwenPattern);
  ASSERT_TRUE(re.ok());
  std::vector<Regex::Match> m;
  std::string text = "Hello's  world\n\n 123";
  (*re)->FindAll(text, &m);
  std::vector<std::string> pieces;
  for (auto& x : m) pieces.push_back(text.substr(x.begin, x.end - x.begin));
  EXPECT_EQ(pieces, (std::vector<std::string>{"Hello", "'s", " ", " world", "\n\n", " ", "1", "2", "3"}));
}

TEST(UnicodeTest, SanitizesMaximalSubparts) {
  std::string out;
  AppendSanitizedUtf8("\xF0\x9F\x98" "a\xC0\x80\xED\xA0\x80", &out);
  EXPECT_EQ(out, "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD\xEF\xBF\xBD" "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(CompleteUtf8Prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xF0\x9F\x98\x80"), 6u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\x80"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE0\x80"), 4u);  // E0 80 can never complete
}

}  // namespace
}  // namespace kvferry::tokenizer

#include "kvferry/tokenizer/fuzz_util.h"

namespace kvferry::tokenizer {
namespace {
TEST(FuzzSupportTest, SmallTokenizerLoads) {
  auto t = Tokenizer::FromJson(fuzz::SmallTokenizerJson());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->Decode((*t)->Encode("the <|im_end|> 你好")), "the <|im_end|> 你好");
}
}  // namespace
}  // namespace kvferry::tokenizer
