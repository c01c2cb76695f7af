// `kvferry model make-tiny DIR ...`: writes a deterministic random-weight model in HF layout (and
// GGUF files of it); `kvferry model convert DIR OUT.gguf`: an HF directory to GGUF.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "kvferry/base/base.h"
#include "kvferry/model/model.h"

namespace kvferry::apps {

void AddModelCommand(CLI::App& app) {
  CLI::App* model = app.add_subcommand("model", "Model directory tools");
  model->require_subcommand(1);
  CLI::App* tiny = model->add_subcommand(
      "make-tiny",
      "Write a deterministic random-weight model (config.json, generation_config.json,\n"
      "model.safetensors, tokenizer.json, tokenizer_config.json) into DIR");
  struct Args {
    std::string dir, arch = "qwen2", dtype = "bf16";
    model::MakeTinyOptions o;
    bool tie = false, no_tie = false;
    std::vector<std::string> gguf;
  };
  auto args = std::make_shared<Args>();
  tiny->add_option("DIR", args->dir, "Output directory")->required();
  tiny->add_option("--arch", args->arch, "qwen2 | llama | qwen3 (default qwen2)")
      ->check(CLI::IsMember({"qwen2", "llama", "qwen3"}));
  tiny->add_option("--like", args->o.like, "Take the exact shape of: qwen2.5-0.5b")
      ->check(CLI::IsMember({"qwen2.5-0.5b"}));
  tiny->add_option("--seed", args->o.seed, "Random seed (default 0)");
  tiny->add_option("--dtype", args->dtype, "Weight dtype: bf16 | f16 | f32 (default bf16)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  tiny->add_option("--hidden", args->o.hidden_size, "Hidden size (default 64)");
  tiny->add_option("--layers", args->o.num_layers, "Layers (default 2)");
  tiny->add_option("--heads", args->o.num_heads, "Attention heads (default 4)");
  tiny->add_option("--kv-heads", args->o.num_kv_heads, "KV heads (default 2)");
  tiny->add_option("--head-dim", args->o.head_dim, "Head dim (default hidden/heads)");
  tiny->add_option("--intermediate", args->o.intermediate_size, "MLP size (default 128)");
  tiny->add_option("--vocab", args->o.vocab_size, "Vocab size (default 512)");
  tiny->add_option("--max-pos", args->o.max_position_embeddings, "max_position_embeddings (default 4096)");
  tiny->add_option("--rope-theta", args->o.rope_theta, "RoPE theta (default 1e6 Qwen, 5e5 Llama)");
  tiny->add_option("--rope-scaling", args->o.rope_scaling,
                   "none | linear | llama3 | yarn (default llama3 for llama, else none)")
      ->check(CLI::IsMember({"none", "linear", "llama3", "yarn"}));
  tiny->add_option("--logit-scale", args->o.logit_scale, "Multiply the logits by this (default 1: std ~2)")
      ->check(CLI::PositiveNumber);
  tiny->add_flag("--tie", args->tie, "Tie the output projection to the embedding");
  tiny->add_flag("--no-tie", args->no_tie, "Separate lm_head.weight");
  tiny->add_option("--gguf", args->gguf,
                   "Also write DIR/model-TYPE.gguf for each TYPE: f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"}));
  tiny->callback([args] {
    model::MakeTinyOptions o = args->o;
    o.arch = *model::ParseArchitecture(args->arch);
    o.dtype = *kernels::ParseDType(args->dtype);
    if (args->tie) o.tie_word_embeddings = 1;
    if (args->no_tie) o.tie_word_embeddings = 0;
    Status st = model::MakeTinyModel(args->dir, o);
    if (!st.ok()) {
      std::fprintf(stderr, "kvferry model make-tiny: %s\n", st.ToString().c_str());
      ExitCode() = 1;
      return;
    }
    std::printf("wrote %s\n", args->dir.c_str());
    for (const std::string& t : args->gguf) {
      const std::string path = args->dir + "/model-" + t + ".gguf";
      model::GgufConvertOptions co;
      co.type = *model::ParseGgufFileType(t);
      st = model::ConvertToGguf(args->dir, path, co);
      if (!st.ok()) {
        std::fprintf(stderr, "kvferry model make-tiny: %s\n", st.ToString().c_str());
        ExitCode() = 1;
        return;
      }
      std::printf("wrote %s\n", path.c_str());
    }
  });

  CLI::App* convert = model->add_subcommand(
      "convert", "Convert an HF model directory to one GGUF file (llama.cpp's layout and names)");
  struct ConvertArgs {
    std::string dir, out, type = "f32";
  };
  auto cargs = std::make_shared<ConvertArgs>();
  convert->add_option("DIR", cargs->dir, "HF model directory")->required();
  convert->add_option("OUT", cargs->out, "GGUF file to write")->required();
  convert->add_option("--type", cargs->type, "f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m (default f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"}));
  convert->callback([cargs] {
    model::GgufConvertOptions co;
    co.type = *model::ParseGgufFileType(cargs->type);
    Status st = model::ConvertToGguf(cargs->dir, cargs->out, co);
    if (!st.ok()) {
      std::fprintf(stderr, "kvferry model convert: %s\n", st.ToString().c_str());
      ExitCode() = 1;
      return;
    }
    std::printf("wrote %s\n", cargs->out.c_str());
  });
}

}  // namespace kvferry::apps
