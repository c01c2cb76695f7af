#include "kvferry/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>

namespace kvferry::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this temperature sampling is greedy (as vLLM's _SAMPLING_EPS).
constexpr double kGreedyEps = 1e-5;

// Max of the finite values; -inf when there are none.
float MaxFinite(const std::vector<float>& x) {
  float m = kNegInf;
  for (float v : x) m = std::max(m, v);
  return m;
}

// Descending value, then ascending id.
void SortDescending(const std::vector<float>& x, std::vector<int32_t>& order, size_t n) {
  auto cmp = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  if (n >= order.size()) {
    std::sort(order.begin(), order.end(), cmp);
  } else {
    std::partial_sort(order.begin(), order.begin() + n, order.end(), cmp);
  }
}

// The first index of x's maximum, NaN ignored; -1 when no value is above -inf. Two passes the
// compiler vectorizes (16 running maxima; then 16-wide compares to find the chunk that holds
// it), on the logits in place. Over a 151,936-token row on the Zen 5 VM: 31 us, against 107 us
// for the branchy scan of a copy (1.7 ms of every 16-sequence decode step).
int32_t FirstArgmax(std::span<const float> x) {
  constexpr size_t kLanes = 16;
  const size_t n = x.size();
  float lane_max[kLanes];
  for (float& v : lane_max) v = kNegInf;
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) lane_max[j] = x[i + j] > lane_max[j] ? x[i + j] : lane_max[j];
  float best = kNegInf;
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  for (float v : lane_max) best = v > best ? v : best;
  if (!(best > kNegInf)) return -1;
  size_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    bool hit = false;
    for (size_t j = 0; j < kLanes; ++j) hit |= x[c + j] == best;
    if (hit) break;
  }
  for (; c < n; ++c)
    if (x[c] == best) return static_cast<int32_t>(c);
  return -1;
}

void FiniteIds(const std::vector<float>& x, std::vector<int32_t>& order) {
  order.clear();
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] != kNegInf) order.push_back(static_cast<int32_t>(i));
}

}  // namespace

bool IsStopToken(int32_t token, const SamplingParams& p, std::span<const int64_t> eos_ids) {
  for (int32_t t : p.stop_token_ids)
    if (t == token) return true;
  if (!p.ignore_eos)
    for (int64_t e : eos_ids)
      if (e == token) return true;
  return false;
}

int32_t SampleToken(const SamplerInput& in, Rng& rng, SamplerScratch& scratch, TokenLogprob* logprob) {
  const SamplingParams& p = *in.params;
  const int64_t vocab = static_cast<int64_t>(in.logits.size());
  const bool greedy = p.temperature < kGreedyEps;
  const bool rep = p.repetition_penalty != 1.0;
  const bool freq = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
  const bool masks = static_cast<int>(in.output.size()) < p.min_tokens;
  if (greedy && !rep && !freq && !masks && logprob == nullptr) {
    // Plain greedy: nothing changes the logits, so no copy.
    const int32_t t = FirstArgmax(in.logits);
    if (t >= 0) return t;
  }
  std::vector<float>& x = scratch.logits;
  x.assign(in.logits.begin(), in.logits.end());
  auto in_vocab = [&](int64_t t) { return t >= 0 && t < vocab; };

  if (masks) {
    for (int32_t t : p.stop_token_ids)
      if (in_vocab(t)) x[t] = kNegInf;
    if (!p.ignore_eos)
      for (int64_t e : in.eos_ids)
        if (in_vocab(e)) x[e] = kNegInf;
  }
  if (rep || freq) {
    std::vector<int32_t>& counts = scratch.counts;  // output occurrences; -1 = prompt only
    counts.assign(vocab, 0);
    for (int32_t t : in.output)
      if (in_vocab(t)) ++counts[t];
    if (rep)
      for (int32_t t : in.prompt)
        if (in_vocab(t) && counts[t] == 0) counts[t] = -1;
    const float rp = static_cast<float>(p.repetition_penalty);
    for (int64_t t = 0; t < vocab; ++t) {
      const int32_t c = counts[t];
      if (c == 0 || x[t] == kNegInf) continue;
      if (rep) x[t] = x[t] > 0 ? x[t] / rp : x[t] * rp;
      if (freq && c > 0) x[t] -= static_cast<float>(p.frequency_penalty * c + p.presence_penalty);
    }
  }

  int32_t token = -1;
  if (greedy) {
    token = FirstArgmax(x);
  } else {
    const float inv_t = static_cast<float>(1.0 / p.temperature);
    for (float& v : x) v *= inv_t;
    float m = MaxFinite(x);
    if (p.min_p > 0 && m != kNegInf) {
      const float cut = m + static_cast<float>(std::log(p.min_p));
      for (float& v : x)
        if (v < cut) v = kNegInf;
    }
    if (p.top_k > 0 && p.top_k < vocab) {
      FiniteIds(x, scratch.order);
      if (static_cast<int64_t>(scratch.order.size()) > p.top_k) {
        auto kth = scratch.order.begin() + (p.top_k - 1);
        std::nth_element(scratch.order.begin(), kth, scratch.order.end(),
                         [&](int32_t a, int32_t b) { return x[a] > x[b]; });
        const float cut = x[*kth];
        for (float& v : x)
          if (v < cut) v = kNegInf;
      }
    }
    if (p.top_p < 1.0 && m != kNegInf) {
      FiniteIds(x, scratch.order);
      SortDescending(x, scratch.order, scratch.order.size());
      double sum = 0;
      for (int32_t t : scratch.order) sum += std::exp(static_cast<double>(x[t] - m));
      double cum = 0;
      for (int32_t t : scratch.order) {
        if (cum >= p.top_p * sum) {
          x[t] = kNegInf;
        } else {
          cum += std::exp(static_cast<double>(x[t] - m));
        }
      }
    }
    m = MaxFinite(x);
    if (m != kNegInf) {
      double sum = 0;
      for (float v : x) sum += std::exp(static_cast<double>(v - m));
      const double u = rng.Uniform() * sum;
      double cum = 0;
      for (int64_t t = 0; t < vocab; ++t) {
        if (x[t] == kNegInf) continue;
        cum += std::exp(static_cast<double>(x[t] - m));
        token = static_cast<int32_t>(t);
        if (cum > u) break;
      }
    }
  }
  if (token < 0) {
    // Everything was masked (e.g. a vocab of stop tokens under min_tokens): raw argmax.
    x.assign(in.logits.begin(), in.logits.end());
    token = static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
  }

  if (logprob != nullptr) {
    const float m = MaxFinite(x);
    double sum = 0;
    for (float v : x) sum += std::exp(static_cast<double>(v - m));
    const double lse = static_cast<double>(m) + std::log(sum);
    auto lp = [&](int32_t t) { return static_cast<float>(static_cast<double>(x[t]) - lse); };
    logprob->token = token;
    logprob->logprob = lp(token);
    logprob->top.clear();
    if (p.logprobs > 0) {
      FiniteIds(x, scratch.order);
      const size_t n = std::min<size_t>(p.logprobs, scratch.order.size());
      SortDescending(x, scratch.order, n);
      for (size_t i = 0; i < n; ++i) logprob->top.emplace_back(scratch.order[i], lp(scratch.order[i]));
    }
  }
  return token;
}

Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size) {
  auto bad = [](const std::string& field, const std::string& want) {
    return InvalidArgumentError(field + " must be " + want);
  };
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) return bad("temperature", ">= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p", "in (0, 1]");
  if (p.top_k < -1) return bad("top_k", "-1, 0 (off) or positive");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p", "in [0, 1]");
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty)) return bad("repetition_penalty", "> 0");
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2)) return bad("presence_penalty", "in [-2, 2]");
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2)) return bad("frequency_penalty", "in [-2, 2]");
  if (p.max_tokens < 1) return bad("max_tokens", ">= 1");
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens) return bad("min_tokens", "in [0, max_tokens]");
  for (int32_t t : p.stop_token_ids)
    if (t < 0 || t >= vocab_size)
      return bad("stop_token_ids", "token ids below the vocab size " + std::to_string(vocab_size));
  if (p.logprobs < -1 || p.logprobs > vocab_size)
    return bad("logprobs", "-1 (off) or in [0, vocab size " + std::to_string(vocab_size) + "]");
  return Status::Ok();
}

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "none";
}

}  // namespace kvferry::engine
