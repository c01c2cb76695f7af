// `kvferry tokenize`: the tokenizer and chat template from the command line, for scripting and
// debugging.
//   kvferry tokenize MODEL_DIR "some text"          -> ids, comma-separated
//   kvferry tokenize MODEL_DIR --ids 1,2,3          -> decoded text
//   kvferry tokenize MODEL_DIR --chat '[{"role":"user","content":"hi"}]'  -> rendered prompt
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "apps/commands.h"
#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::apps {
namespace {

struct TokenizeArgs {
  std::string model_dir;
  std::string text;
  bool text_given = false;  // TEXT was on the command line (it may be "", which encodes to [])
  std::string ids;
  std::string chat;
  std::string tools;
  std::string vars;
  bool add_special_tokens = false;
  bool skip_special_tokens = false;
  bool no_generation_prompt = false;
  bool show_tokens = false;
  bool chat_ids = false;
};

std::string ReadArgOrStdin(const std::string& value) {
  if (value != "-") return value;
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

// Comma-separated ids; an empty list prints "[]" (as HF tokenizers show an empty encoding), so
// that a script can tell it from a missing output line.
void PrintIds(const std::vector<int32_t>& ids, const tokenizer::Tokenizer& tok, bool show_tokens) {
  if (ids.empty()) {
    std::printf("[]\n");
    return;
  }
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += show_tokens ? " " : ",";
    line += std::to_string(ids[i]);
    if (show_tokens) line += "=" + std::string(tok.IdToToken(ids[i]).value_or("?"));
  }
  std::printf("%s\n", line.c_str());
}

int Run(const TokenizeArgs& a) {
  int modes = a.text_given + !a.ids.empty() + !a.chat.empty();
  if (modes != 1) {
    std::fprintf(stderr, "tokenize: give exactly one of TEXT, --ids or --chat\n");
    return 2;
  }
  if (!a.chat.empty()) {
    auto tmpl = tokenizer::ChatTemplate::Load(a.model_dir);
    if (!tmpl.ok()) {
      std::fprintf(stderr, "tokenize: %s\n", tmpl.status().ToString().c_str());
      return 1;
    }
    tokenizer::ChatRenderOptions options;
    options.add_generation_prompt = !a.no_generation_prompt;
    options.tools_json = a.tools;
    options.extra_vars_json = a.vars;
    auto prompt = (*tmpl)->Render(ReadArgOrStdin(a.chat), options);
    if (!prompt.ok()) {
      std::fprintf(stderr, "tokenize: %s\n", prompt.status().ToString().c_str());
      return 1;
    }
    if (!a.chat_ids) {
      std::fwrite(prompt->data(), 1, prompt->size(), stdout);
      return 0;
    }
    auto tok = tokenizer::Tokenizer::Load(a.model_dir);
    if (!tok.ok()) {
      std::fprintf(stderr, "tokenize: %s\n", tok.status().ToString().c_str());
      return 1;
    }
    PrintIds((*tok)->Encode(*prompt, a.add_special_tokens), **tok, a.show_tokens);
    return 0;
  }
  auto tok = tokenizer::Tokenizer::Load(a.model_dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenize: %s\n", tok.status().ToString().c_str());
    return 1;
  }
  if (!a.ids.empty()) {
    std::vector<int32_t> ids;
    std::stringstream ss(ReadArgOrStdin(a.ids));
    std::string item;
    while (std::getline(ss, item, ',')) {
      size_t b = item.find_first_not_of(" \t\r\n"), e = item.find_last_not_of(" \t\r\n");
      if (b == std::string::npos) continue;
      item = item.substr(b, e - b + 1);
      char* end = nullptr;
      long v = std::strtol(item.c_str(), &end, 10);
      if (end == item.c_str() || *end != '\0' || v < 0 || v >= (*tok)->vocab_size()) {
        std::fprintf(stderr, "tokenize: bad id '%s' (vocab size %d)\n", item.c_str(), (*tok)->vocab_size());
        return 2;
      }
      ids.push_back(int32_t(v));
    }
    std::string text = (*tok)->Decode(ids, a.skip_special_tokens);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
    return 0;
  }
  PrintIds((*tok)->Encode(ReadArgOrStdin(a.text), a.add_special_tokens), **tok, a.show_tokens);
  return 0;
}

}  // namespace

void AddTokenizeCommand(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Encode TEXT to ids, decode --ids, or render a --chat conversation with the model's chat template.\n"
      "MODEL_DIR is a Hugging Face model directory (tokenizer.json, tokenizer_config.json) or a GGUF file.");
  cmd->add_option("MODEL_DIR", args->model_dir, "model directory (or a tokenizer.json path, or a GGUF file)")->required();
  CLI::Option* text = cmd->add_option(
      "TEXT", args->text, "text to encode ('-' reads stdin); prints comma-separated ids, [] for none");
  cmd->add_option("--ids", args->ids, "comma-separated ids to decode ('-' reads stdin)");
  cmd->add_option("--chat", args->chat, "JSON array of messages to render ('-' reads stdin)");
  cmd->add_option("--tools", args->tools, "with --chat: JSON array of tools");
  cmd->add_option("--vars", args->vars, "with --chat: JSON object of extra template variables");
  cmd->add_flag("--no-generation-prompt", args->no_generation_prompt, "with --chat: no assistant header at the end");
  cmd->add_flag("--chat-ids", args->chat_ids, "with --chat: print the prompt's ids instead of its text");
  cmd->add_flag("--add-special-tokens", args->add_special_tokens, "apply the post-processor (e.g. BOS)");
  cmd->add_flag("--skip-special-tokens", args->skip_special_tokens, "with --ids: drop special tokens");
  cmd->add_flag("--show-tokens", args->show_tokens, "print id=token pairs");
  cmd->callback([args, text] {
    args->text_given = text->count() > 0;
    ExitCode() = Run(*args);
  });
}

}  // namespace kvferry::apps
