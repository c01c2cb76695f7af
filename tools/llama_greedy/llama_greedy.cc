// llama_greedy: llama.cpp's greedy continuations of token-id prompts, with the top-1 - top-2
// logit margin of every step, as one JSON object per prompt. The reference side of
// tests/llama_cpp_greedy (kvferry's continuations are checked against its output). Never built
// by CI: it links llama.cpp (commit 34af94c, ../shared/peers/README.md).
//
//   g++ -O2 -std=c++17 tools/llama_greedy/llama_greedy.cc -I/tmp/llama.cpp/include \
//       -I/tmp/llama.cpp/ggml/include -L/tmp/llama.cpp/build/bin -lllama -lggml -lggml-base \
//       -Wl,-rpath,/tmp/llama.cpp/build/bin -o /tmp/llama_greedy
//   /tmp/llama_greedy MODEL.gguf PROMPTS.txt N_STEPS THREADS > OUT.jsonl
//
// PROMPTS.txt: one prompt a line, token ids separated by spaces. Each prompt runs in a fresh
// KV cache (f16, llama.cpp's default), the whole prompt in one batch, then one token a step.
// Output line: {"prompt":i,"n_prompt":n,"fnv1a64":"<hex of the model file>","tokens":[...],
// "margins":[...]} (margin of step s: top-1 minus top-2 logit before token s was chosen).

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

namespace {

uint64_t Fnv1a64(const char* path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      h ^= static_cast<unsigned char>(buf[i]);
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

void Quiet(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s MODEL.gguf PROMPTS.txt N_STEPS THREADS\n", argv[0]);
    return 2;
  }
  const int n_steps = std::atoi(argv[3]), threads = std::atoi(argv[4]);
  std::vector<std::vector<llama_token>> prompts;
  {
    std::ifstream in(argv[2]);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ss(line);
      std::vector<llama_token> p;
      for (llama_token t; ss >> t;) p.push_back(t);
      if (!p.empty()) prompts.push_back(p);
    }
  }
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());

  llama_log_set(Quiet, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (model == nullptr) {
    std::fprintf(stderr, "cannot load %s\n", argv[1]);
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(longest + n_steps + 16);
  cp.n_batch = cp.n_ctx;
  cp.n_ubatch = cp.n_ctx;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) {
    std::fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  const uint64_t hash = Fnv1a64(argv[1]);
  for (size_t i = 0; i < prompts.size(); ++i) {
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<llama_token> cur = prompts[i];
    std::vector<llama_token> out;
    std::vector<float> margins;
    llama_batch batch = llama_batch_get_one(cur.data(), static_cast<int32_t>(cur.size()));
    for (int s = 0; s < n_steps; ++s) {
      if (llama_decode(ctx, batch) != 0) {
        std::fprintf(stderr, "llama_decode failed (prompt %zu step %d)\n", i, s);
        return 1;
      }
      const float* logits = llama_get_logits_ith(ctx, -1);
      int best = 0, second = -1;
      for (int v = 1; v < n_vocab; ++v) {
        if (logits[v] > logits[best]) {
          second = best;
          best = v;
        } else if (second < 0 || logits[v] > logits[second]) {
          second = v;
        }
      }
      out.push_back(best);
      margins.push_back(logits[best] - logits[second]);
      cur.assign(1, best);
      batch = llama_batch_get_one(cur.data(), 1);
    }
    std::printf("{\"prompt\":%zu,\"n_prompt\":%zu,\"fnv1a64\":\"%016" PRIx64 "\",\"tokens\":[", i, prompts[i].size(),
                hash);
    for (size_t s = 0; s < out.size(); ++s) std::printf("%s%d", s ? "," : "", out[s]);
    std::printf("],\"margins\":[");
    for (size_t s = 0; s < margins.size(); ++s) std::printf("%s%.4f", s ? "," : "", margins[s]);
    std::printf("]}\n");
  }
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
