#pragma once
// Sampling of one token from one row of logits, with a per-request RNG.
//
// Order (as vLLM): min_tokens mask of stop/EOS ids, repetition penalty (HF: over prompt and
// output, positive logits divided, negative multiplied), frequency and presence penalties
// (OpenAI: over output tokens). Greedy (temperature 0) takes the argmax (lowest id on ties).
// Otherwise: logits / temperature, then min_p (drop tokens with p < min_p * p_max), top_k (keep
// the k largest logits; ties at the k-th value kept), top_p (keep, in descending order, each
// token whose predecessors' mass is < top_p), softmax over what is left, and one uniform draw
// inverted through the CDF in token-id order. Logprobs are the log-softmax of that final
// distribution (for greedy: of the penalized logits); masked tokens are never listed.
//
// Threading: pure functions; an Rng belongs to one request.

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "kvferry/engine/engine.h"

namespace kvferry::engine {

// Reproducible across platforms: mt19937_64 (fully specified by the standard) and our own
// conversion to double (std::uniform_real_distribution is implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  std::mt19937_64 gen_;
};

struct SamplerInput {
  std::span<const float> logits;  // vocab_size values
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt;  // for the repetition penalty
  std::span<const int32_t> output;  // generated so far
  std::span<const int64_t> eos_ids;  // the model's (ignored with ignore_eos)
};

// Reusable buffers, so that a step does not allocate per request.
struct SamplerScratch {
  std::vector<float> logits;
  std::vector<int32_t> order;
  std::vector<int32_t> counts;
};

// Returns the sampled token; fills `logprob` when non-null (params->logprobs >= 0).
int32_t SampleToken(const SamplerInput& in, Rng& rng, SamplerScratch& scratch,
                    TokenLogprob* logprob);

// Whether `token` ends the request given its params and the model's EOS ids.
bool IsStopToken(int32_t token, const SamplingParams& p, std::span<const int64_t> eos_ids);

}  // namespace kvferry::engine
