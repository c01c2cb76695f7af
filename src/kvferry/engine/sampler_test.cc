#include "kvferry/engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <vector>

namespace kvferry::engine {
namespace {

const std::vector<float> kLogits = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f};

struct Fixture {
  SamplingParams p;
  std::vector<int32_t> prompt, output;
  std::vector<int64_t> eos;
  SamplerScratch scratch;

  int32_t Sample(Rng& rng, TokenLogprob* lp = nullptr, std::span<const float> logits = kLogits) {
    SamplerInput in{logits, &p, prompt, output, eos};
    return SampleToken(in, rng, scratch, lp);
  }
  // The processed distribution as {token: logprob}, via logprobs = vocab.
  std::map<int32_t, double> Dist() {
    p.logprobs = static_cast<int>(kLogits.size());
    Rng rng(1);
    TokenLogprob lp;
    Sample(rng, &lp);
    std::map<int32_t, double> d;
    for (auto [t, l] : lp.top) d[t] = l;
    return d;
  }
};

// log-softmax of `x` over the ids in `keep`.
std::map<int32_t, double> LogSoftmax(const std::vector<double>& x, const std::vector<int32_t>& keep) {
  double sum = 0;
  for (int32_t t : keep) sum += std::exp(x[t]);
  std::map<int32_t, double> d;
  for (int32_t t : keep) d[t] = x[t] - std::log(sum);
  return d;
}

void ExpectDist(const std::map<int32_t, double>& got, const std::map<int32_t, double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (auto [t, l] : want) {
    ASSERT_TRUE(got.count(t)) << "token " << t;
    EXPECT_NEAR(got.at(t), l, 1e-5) << "token " << t;
  }
}

TEST(SamplerTest, GreedyIsArgmaxLowestIdOnTies) {
  Fixture f;
  f.p.temperature = 0;
  Rng rng(0);
  EXPECT_EQ(f.Sample(rng), 2);
  std::vector<float> tie = {1, 5, 5, 0};
  EXPECT_EQ(f.Sample(rng, nullptr, tie), 1);
}

// A vocabulary of real size: the maximum in every position (the whole-chunk part and the tail
// past the last multiple of 16), the first of equal maxima, NaN never chosen, and the answer
// with and without logprobs (which takes the path that copies the logits) the same.
TEST(SamplerTest, GreedyOnALargeVocabFindsTheFirstMaximum) {
  Fixture f;
  f.p.temperature = 0;
  Rng rng(0);
  constexpr int64_t kVocab = 151936 + 7;
  std::vector<float> x(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 4.0f;
  for (int64_t at : {int64_t{0}, int64_t{15}, int64_t{16}, int64_t{77777}, kVocab - 8, kVocab - 1}) {
    std::vector<float> y = x;
    y[at] = 9.0f;
    EXPECT_EQ(f.Sample(rng, nullptr, y), at);
    TokenLogprob lp;
    f.p.logprobs = 0;
    EXPECT_EQ(f.Sample(rng, &lp, y), at);
    f.p.logprobs = -1;
    if (at + 40 < kVocab) {
      y[at + 40] = 9.0f;  // a later tie loses
      y[at + 3] = std::nanf("");
      EXPECT_EQ(f.Sample(rng, nullptr, y), at);
    }
  }
  std::vector<float> masked(kVocab, -std::numeric_limits<float>::infinity());
  masked[kVocab - 2] = -1e30f;
  EXPECT_EQ(f.Sample(rng, nullptr, masked), kVocab - 2);
}

TEST(SamplerTest, RepetitionPenaltyHf) {
  Fixture f;
  f.p.temperature = 0;
  f.p.repetition_penalty = 2.0;
  f.prompt = {2, 4};
  f.output = {4};
  // Positive logits are divided, negative multiplied: [1, 2, 1.5, 0.5, -2].
  ExpectDist(f.Dist(), LogSoftmax({1, 2, 1.5, 0.5, -2}, {0, 1, 2, 3, 4}));
  f.p.logprobs = -1;
  Rng rng(0);
  EXPECT_EQ(f.Sample(rng), 1);
}

TEST(SamplerTest, FrequencyAndPresencePenaltiesOpenAi) {
  Fixture f;
  f.p.temperature = 0;
  f.p.frequency_penalty = 0.5;
  f.p.presence_penalty = 0.25;
  f.prompt = {0};        // the prompt does not count for these
  f.output = {2, 2, 3};  // 2: 3 - 2*0.5 - 0.25 = 1.75; 3: 0.5 - 0.5 - 0.25 = -0.25
  ExpectDist(f.Dist(), LogSoftmax({1, 2, 1.75, -0.25, -1}, {0, 1, 2, 3, 4}));
}

TEST(SamplerTest, TemperatureScales) {
  Fixture f;
  f.p.temperature = 2.0;
  ExpectDist(f.Dist(), LogSoftmax({0.5, 1, 1.5, 0.25, -0.5}, {0, 1, 2, 3, 4}));
}

TEST(SamplerTest, TopKMask) {
  Fixture f;
  f.p.top_k = 2;
  ExpectDist(f.Dist(), LogSoftmax({1, 2, 3, 0.5, -1}, {1, 2}));
}

TEST(SamplerTest, TopPMask) {
  // p = [0.0844, 0.2294, 0.6236, 0.0512, 0.0114].
  Fixture f;
  f.p.top_p = 0.8;  // 0.6236 < 0.8 so token 1 stays; 0.853 >= 0.8 drops the rest
  ExpectDist(f.Dist(), LogSoftmax({1, 2, 3, 0.5, -1}, {1, 2}));
  Fixture g;
  g.p.top_p = 0.6;  // the top token alone covers it
  ExpectDist(g.Dist(), LogSoftmax({1, 2, 3, 0.5, -1}, {2}));
  Fixture h;
  h.p.top_p = 0.9;
  ExpectDist(h.Dist(), LogSoftmax({1, 2, 3, 0.5, -1}, {0, 1, 2}));
}

TEST(SamplerTest, MinPMask) {
  Fixture f;
  f.p.min_p = 0.1;  // cut at 0.1 * 0.6236 = 0.0624: drops 0.0512 and 0.0114
  ExpectDist(f.Dist(), LogSoftmax({1, 2, 3, 0.5, -1}, {0, 1, 2}));
}

TEST(SamplerTest, MinTokensMasksEosAndStopIds) {
  Fixture f;
  f.p.temperature = 0;
  f.eos = {2};
  f.p.stop_token_ids = {1};
  f.p.min_tokens = 2;
  f.output = {4};
  Rng rng(0);
  EXPECT_EQ(f.Sample(rng), 0);
  f.output = {4, 4};  // reached min_tokens: EOS allowed again
  EXPECT_EQ(f.Sample(rng), 2);
  EXPECT_TRUE(IsStopToken(2, f.p, f.eos));
  EXPECT_TRUE(IsStopToken(1, f.p, f.eos));
  f.p.ignore_eos = true;
  EXPECT_FALSE(IsStopToken(2, f.p, f.eos));
  EXPECT_TRUE(IsStopToken(1, f.p, f.eos));
}

TEST(SamplerTest, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  Fixture f;
  std::vector<int32_t> a, b, c;
  Rng r1(42), r2(42), r3(43);
  for (int i = 0; i < 200; ++i) {
    a.push_back(f.Sample(r1));
    b.push_back(f.Sample(r2));
    c.push_back(f.Sample(r3));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Frequencies match softmax(kLogits).
  std::map<int32_t, int> counts;
  Rng rng(7);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[f.Sample(rng)];
  const auto want = LogSoftmax({1, 2, 3, 0.5, -1}, {0, 1, 2, 3, 4});
  for (auto [t, l] : want) EXPECT_NEAR(counts[t] / double(n), std::exp(l), 0.015) << "token " << t;
}

TEST(SamplerTest, LogprobsSumToOneAndIncludeTheSampledToken) {
  Fixture f;
  f.p.temperature = 0.7;
  f.p.top_k = 4;
  f.p.logprobs = 5;
  Rng rng(3);
  TokenLogprob lp;
  const int32_t tok = f.Sample(rng, &lp);
  EXPECT_EQ(lp.token, tok);
  double sum = 0;
  bool found = false;
  for (size_t i = 0; i < lp.top.size(); ++i) {
    sum += std::exp(lp.top[i].second);
    if (i > 0) {
      EXPECT_GE(lp.top[i - 1].second, lp.top[i].second);
    }
    if (lp.top[i].first == tok) {
      found = true;
      EXPECT_FLOAT_EQ(lp.top[i].second, lp.logprob);
    }
  }
  EXPECT_EQ(lp.top.size(), 4u);  // the masked token is not listed
  EXPECT_NEAR(sum, 1.0, 1e-5);
  EXPECT_TRUE(found);
  // logprobs = 0: the sampled token's logprob only.
  f.p.logprobs = 0;
  f.Sample(rng, &lp);
  EXPECT_TRUE(lp.top.empty());
  EXPECT_LE(lp.logprob, 0);
}

TEST(SamplerTest, ValidateNamesTheField) {
  auto check = [](auto mutate, const std::string& field) {
    SamplingParams p;
    mutate(p);
    Status st = ValidateSamplingParams(p, 100);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_NE(st.message().find(field), std::string::npos) << st.ToString();
  };
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}, 100).ok());
  check([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  check([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  check([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  check([](SamplingParams& p) { p.min_p = 1.5; }, "min_p");
  check([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  check([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  check([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  check([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  check([](SamplingParams& p) { p.min_tokens = 20; }, "min_tokens");
  check([](SamplingParams& p) { p.stop_token_ids = {100}; }, "stop_token_ids");
  check([](SamplingParams& p) { p.logprobs = -2; }, "logprobs");
}

}  // namespace
}  // namespace kvferry::engine
