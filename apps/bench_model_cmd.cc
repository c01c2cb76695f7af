// `kvferry bench model` (prefill/decode tokens per second with the decode roofline measured
// in the same run) and `kvferry bench membw` (memory read bandwidth).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"
#include "kvferry/model/model.h"

namespace kvferry::apps {
namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double MeasureMembw(int threads, size_t bytes, int reps) {
  auto c = kernels::Compute::Create({.num_threads = threads});
  return c.ok() ? (*c)->MeasureReadBandwidth(bytes, reps) : 0;
}

struct ModelArgs {
  std::string dir, kv_dtype = "bf16";
  int64_t prompt_len = 512, gen_len = 128, batch = 1, chunk = 0;
  int threads = 0, warmup = 1;
  bool json = false;
};

int RunModelBench(const ModelArgs& a) {
  if (a.prompt_len < 1 || a.gen_len < 0 || a.batch < 1) {
    std::fprintf(stderr, "kvferry bench model: bad lengths\n");
    return 2;
  }
  auto loaded = model::Model::Load(a.dir, {.num_threads = a.threads, .show_progress = !a.json});
  if (!loaded.ok()) {
    std::fprintf(stderr, "kvferry bench model: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  model::Model& m = **loaded;
  const model::ModelConfig& c = m.config();
  const kernels::DType kvdt = *kernels::ParseDType(a.kv_dtype);
  const int64_t bs = 16;
  const int64_t per_seq = (a.prompt_len + a.gen_len + bs - 1) / bs;
  auto cache = m.CreateKvCache({.num_blocks = per_seq * a.batch, .block_size = bs, .dtype = kvdt});
  if (!cache.ok()) {
    std::fprintf(stderr, "kvferry bench model: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  std::vector<std::vector<int32_t>> tables(a.batch), prompts(a.batch);
  std::mt19937 rng(1234);
  for (int64_t s = 0; s < a.batch; ++s) {
    for (int64_t b = 0; b < per_seq; ++b) tables[s].push_back(static_cast<int32_t>(s * per_seq + b));
    for (int64_t i = 0; i < a.prompt_len; ++i)
      prompts[s].push_back(static_cast<int32_t>(rng() % std::min<int64_t>(c.vocab_size, 32000)));
  }
  const int64_t chunk = a.chunk > 0 ? a.chunk : a.prompt_len;
  model::ForwardOutput out;
  auto prefill = [&]() -> Status {
    for (int64_t p = 0; p < a.prompt_len; p += chunk) {
      const int64_t n = std::min(chunk, a.prompt_len - p);
      std::vector<model::SequenceInput> batch;
      for (int64_t s = 0; s < a.batch; ++s)
        batch.push_back({std::span<const int32_t>(prompts[s].data() + p, n), p, tables[s], false});
      KVF_RETURN_IF_ERROR(m.Forward(batch, **cache, &out));
    }
    return Status::Ok();
  };
  for (int w = 0; w < a.warmup; ++w) {
    Status st = prefill();
    if (!st.ok()) {
      std::fprintf(stderr, "kvferry bench model: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  const int threads = a.threads > 0 ? a.threads : static_cast<int>(std::thread::hardware_concurrency());
  // The roofline's bandwidth is sampled before the prefill and again after the decode, and the
  // better sample counts: on a shared host one sample can land in a neighbour's burst and
  // understate the machine (a decode "above" its roofline).
  const double membw_before = MeasureMembw(threads, size_t{1} << 30, 5);
  const double peak_gflops = m.compute().MeasurePeakGflops(5);

  m.compute().ResetProfile();
  auto t0 = std::chrono::steady_clock::now();
  Status st = prefill();
  const double prefill_s = Seconds(t0);
  const kernels::Compute::Profile pp = m.compute().profile();
  if (!st.ok()) {
    std::fprintf(stderr, "kvferry bench model: %s\n", st.ToString().c_str());
    return 1;
  }
  std::vector<int32_t> next(a.batch);
  for (int64_t s = 0; s < a.batch; ++s) {
    auto row = out.Row(s);
    next[s] = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
  }
  m.compute().ResetProfile();
  t0 = std::chrono::steady_clock::now();
  for (int64_t g = 0; g < a.gen_len; ++g) {
    std::vector<model::SequenceInput> batch;
    for (int64_t s = 0; s < a.batch; ++s)
      batch.push_back({std::span<const int32_t>(&next[s], 1), a.prompt_len + g, tables[s], false});
    st = m.Forward(batch, **cache, &out);
    if (!st.ok()) {
      std::fprintf(stderr, "kvferry bench model: %s\n", st.ToString().c_str());
      return 1;
    }
    for (int64_t s = 0; s < a.batch; ++s) {
      auto row = out.Row(s);
      next[s] = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    }
  }
  const double decode_s = Seconds(t0);
  const kernels::Compute::Profile dp = m.compute().profile();
  const double membw_after = MeasureMembw(threads, size_t{1} << 30, 5);
  const double membw = std::max(membw_before, membw_after);
  auto breakdown = [](const kernels::Compute::Profile& p, double total) {
    return nlohmann::json{{"gemm_s", p.gemm_s},
                          {"gemm_gflop_s", p.gemm_s > 0 ? p.gemm_flop / p.gemm_s / 1e9 : 0},
                          {"gemv_s", p.gemv_s},
                          {"gemv_gbps", p.gemv_s > 0 ? p.gemv_bytes / p.gemv_s / 1e9 : 0},
                          {"attention_s", p.attention_s},
                          {"attention_gflop_s", p.attention_s > 0 ? p.attention_flop / p.attention_s / 1e9 : 0},
                          {"elementwise_s", p.other_s},
                          {"rest_s", total - p.gemm_s - p.gemv_s - p.attention_s - p.other_s}};
  };
  const nlohmann::json prefill_parts = breakdown(pp, prefill_s), decode_parts = breakdown(dp, decode_s);
  // Prefill's physical limit: the matrix products' flops per token at the FMA peak.
  const double gemm_flop_per_token = pp.gemm_flop / static_cast<double>(a.batch * a.prompt_len);
  const double prefill_ceiling =
      peak_gflops > 0 && gemm_flop_per_token > 0 ? peak_gflops * 1e9 / gemm_flop_per_token : 0;
  const double prefill_tok_s = a.batch * a.prompt_len / prefill_s;
  const double decode_tok_s = a.gen_len > 0 ? a.batch * a.gen_len / decode_s : 0;
  // Bytes one decode step reads: the weights once, plus each sequence's KV (mean context).
  const double kv_token_bytes =
      static_cast<double>(c.num_layers * 2 * c.num_kv_heads * c.head_dim) * kernels::DTypeSize(kvdt);
  const double step_bytes =
      static_cast<double>(m.decode_weight_bytes()) + a.batch * kv_token_bytes * (a.prompt_len + a.gen_len / 2.0);
  const double roofline = membw > 0 ? a.batch * membw * 1e9 / step_bytes : 0;
  if (a.json) {
    nlohmann::json j = {{"model", a.dir},
                        {"engine", m.Describe()},
                        {"weights", m.DescribeWeightMemory()},
                        {"threads", threads},
                        {"batch", a.batch},
                        {"prompt_len", a.prompt_len},
                        {"gen_len", a.gen_len},
                        {"kv_dtype", a.kv_dtype},
                        {"prefill_s", prefill_s},
                        {"decode_s", decode_s},
                        {"prefill_tok_s", prefill_tok_s},
                        {"decode_tok_s", decode_tok_s},
                        {"membw_gbps", membw},
                        {"membw_before_gbps", membw_before},
                        {"membw_after_gbps", membw_after},
                        {"decode_step_bytes", step_bytes},
                        {"decode_roofline_tok_s", roofline},
                        {"decode_vs_roofline", roofline > 0 ? decode_tok_s / roofline : 0},
                        {"fma_peak_gflops", peak_gflops},
                        {"prefill_gemm_flop_per_token", gemm_flop_per_token},
                        {"prefill_ceiling_tok_s", prefill_ceiling},
                        {"prefill_vs_ceiling", prefill_ceiling > 0 ? prefill_tok_s / prefill_ceiling : 0},
                        {"prefill_breakdown", prefill_parts},
                        {"decode_breakdown", decode_parts}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model:    %s\n", m.Describe().c_str());
    std::printf("weights:  %s\n", m.DescribeWeightMemory().c_str());
    std::printf("prefill:  %lld x %lld tokens in %.3f s = %.1f tok/s\n", static_cast<long long>(a.batch),
                static_cast<long long>(a.prompt_len), prefill_s, prefill_tok_s);
    std::printf("decode:   %lld x %lld tokens in %.3f s = %.2f tok/s\n", static_cast<long long>(a.batch),
                static_cast<long long>(a.gen_len), decode_s, decode_tok_s);
    std::printf(
        "membw:    %.1f GB/s read (best of %.1f before the prefill, %.1f after the decode); %.1f MB per decode "
        "step -> roofline %.2f tok/s; decode at %.0f%% of it\n",
        membw, membw_before, membw_after, step_bytes / 1e6, roofline, roofline > 0 ? 100 * decode_tok_s / roofline : 0);
    auto show = [](const char* what, const nlohmann::json& b) {
      std::printf(
          "%s GEMM %.3f s (%.1f GFLOP/s), GEMV %.3f s (%.1f GB/s), attention %.3f s (%.1f GFLOP/s), "
          "elementwise %.3f s, rest %.3f s\n",
          what, b["gemm_s"].get<double>(), b["gemm_gflop_s"].get<double>(), b["gemv_s"].get<double>(),
          b["gemv_gbps"].get<double>(), b["attention_s"].get<double>(), b["attention_gflop_s"].get<double>(),
          b["elementwise_s"].get<double>(), b["rest_s"].get<double>());
    };
    if (peak_gflops > 0) {
      std::printf(
          "compute:  f32 FMA peak %.0f GFLOP/s; %.2f GFLOP of matrix products per prompt token -> prefill "
          "ceiling %.0f tok/s; prefill at %.0f%% of it\n",
          peak_gflops, gemm_flop_per_token / 1e9, prefill_ceiling, 100 * prefill_tok_s / prefill_ceiling);
    }
    show("prefill:  ", prefill_parts);
    show("decode:   ", decode_parts);
  }
  return 0;
}

}  // namespace

void AddModelBenchCommands(CLI::App& bench) {
  auto ma = std::make_shared<ModelArgs>();
  CLI::App* mb = bench.add_subcommand("model", "Prefill and decode tokens/s of a model directory");
  mb->add_option("MODEL_DIR", ma->dir, "HF model directory or GGUF file")->required();
  mb->add_option("--prompt-len", ma->prompt_len, "Prompt tokens per sequence (default 512)");
  mb->add_option("--gen-len", ma->gen_len, "Decode steps (default 128)");
  mb->add_option("--batch", ma->batch, "Sequences (default 1)");
  mb->add_option("--threads", ma->threads, "Compute threads (default: all cores)");
  mb->add_option("--chunk", ma->chunk, "Prefill chunk size (default: the whole prompt)");
  mb->add_option("--kv-dtype", ma->kv_dtype, "KV cache dtype: bf16 | f32 (default bf16)")
      ->check(CLI::IsMember({"bf16", "f32", "f16"}));
  mb->add_option("--warmup", ma->warmup, "Untimed prefill runs first (default 1)");
  mb->add_flag("--json", ma->json, "Print one JSON object");
  mb->callback([ma] { ExitCode() = RunModelBench(*ma); });

  struct MembwArgs {
    int threads = 0, reps = 10;
    std::string size = "1GiB";
    bool json = false;
  };
  auto wa = std::make_shared<MembwArgs>();
  CLI::App* mw = bench.add_subcommand("membw", "Memory read bandwidth (all threads, best of reps)");
  mw->add_option("--threads", wa->threads, "Threads (default: all cores)");
  mw->add_option("--size", wa->size, "Bytes to read per rep (default 1GiB)");
  mw->add_option("--reps", wa->reps, "Repetitions (default 10)");
  mw->add_flag("--json", wa->json, "Print one JSON object");
  mw->callback([wa] {
    auto bytes = ParseByteSize(wa->size);
    if (!bytes.ok()) {
      std::fprintf(stderr, "kvferry bench membw: %s\n", bytes.status().ToString().c_str());
      ExitCode() = 2;
      return;
    }
    const int threads = wa->threads > 0 ? wa->threads : static_cast<int>(std::thread::hardware_concurrency());
    const double gbps = MeasureMembw(threads, static_cast<size_t>(*bytes), wa->reps);
    if (wa->json) {
      std::printf("%s\n", nlohmann::json({{"gbps", gbps}, {"threads", threads}, {"bytes", *bytes}}).dump().c_str());
    } else {
      std::printf("memory read bandwidth: %.1f GB/s (%d threads)\n", gbps, threads);
    }
    ExitCode() = gbps > 0 ? 0 : 1;
  });
}

}  // namespace kvferry::apps
