// Prints the tokenizer's figures: load time of the real Qwen tokenizer.json, and encode
// throughput on ~1 MB of mixed text, ours vs the npm HF tokenizers reference in the same run.
// Usage: tokenizer_benchmark [MODEL_DIR]   (default: the Qwen3 tokenizer from the npm oracles)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/oracle_util.h"
#include "kvferry/tokenizer/test_corpus.h"
#include "kvferry/tokenizer/tokenizer.h"

using namespace kvferry::tokenizer;
using Clock = std::chrono::steady_clock;

static double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : testing::QwenModelDir().string();
  std::vector<double> loads;
  std::unique_ptr<Tokenizer> tok;
  for (int i = 0; i < 5; ++i) {
    auto start = Clock::now();
    auto t = Tokenizer::Load(dir);
    loads.push_back(Ms(start, Clock::now()));
    if (!t.ok()) {
      std::fprintf(stderr, "load failed: %s\n", t.status().ToString().c_str());
      return 1;
    }
    tok = std::move(t).value();
  }
  std::sort(loads.begin(), loads.end());
  std::printf("load %s: best %.1f ms, median %.1f ms (5 runs)\n", dir.c_str(), loads[0], loads[2]);

  std::string text = testing::MixedText(1 << 20);
  size_t tokens = 0;
  double best = 1e9;
  for (int i = 0; i < 5; ++i) {
    auto start = Clock::now();
    tokens = tok->Encode(text).size();
    best = std::min(best, Ms(start, Clock::now()));
  }
  double ours = text.size() / 1e6 / (best / 1e3);
  std::printf("kvferry encode: %zu bytes -> %zu tokens, best of 5 %.1f ms = %.2f MB/s\n", text.size(), tokens, best,
              ours);

  if (argc > 1 || !testing::OracleSetupProblem().empty()) return 0;
  auto text_path = testing::TempPath("bench.txt"), in_path = testing::TempPath("bench_in.json"),
       out_path = testing::TempPath("bench_out.json");
  std::ofstream(text_path, std::ios::binary) << text;
  nlohmann::json in = {{"tokenizer", dir + "/tokenizer.json"}, {"config", dir + "/tokenizer_config.json"},
                       {"bench_file", text_path.string()}, {"bench_repeats", 3}};
  std::ofstream(in_path) << in.dump();
  if (testing::RunNode("tokenize.mjs", in_path.string(), out_path.string()) != 0) return 1;
  nlohmann::json out = nlohmann::json::parse(std::ifstream(out_path));
  double js_s = out["bench"]["seconds"].get<double>();
  double theirs = out["bench"]["bytes"].get<double>() / 1e6 / js_s;
  std::printf("@huggingface/tokenizers (node) encode: %zu tokens, best of 3 %.1f ms = %.2f MB/s; load %.1f ms\n",
              out["bench"]["tokens"].get<size_t>(), js_s * 1e3, theirs, out["load_ms"].get<double>());
  std::printf("tokens equal: %s; speed-up %.1fx\n", out["bench"]["tokens"].get<size_t>() == tokens ? "yes" : "NO",
              ours / theirs);
  for (auto& p : {text_path, in_path, out_path}) std::filesystem::remove(p);
  return 0;
}
