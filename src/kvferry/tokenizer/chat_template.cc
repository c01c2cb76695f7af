// ChatTemplate: a tokenizer_config.json's chat_template rendered by the Jinja subset interpreter
// with the variables transformers' apply_chat_template passes.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/gguf_tokenizer.h"
#include "kvferry/tokenizer/jinja.h"
#include "kvferry/tokenizer/tokenizer.h"
#include "kvferry/tokenizer/tokenizer_impl.h"

namespace kvferry::tokenizer {
namespace {

using jinja::Value;

class ChatTemplateImpl final : public ChatTemplate {
 public:
  ChatTemplateImpl(std::string source, std::unique_ptr<jinja::Template> t, std::string bos, std::string eos)
      : source_(std::move(source)), template_(std::move(t)), bos_(std::move(bos)), eos_(std::move(eos)) {}

  StatusOr<std::string> Render(std::string_view messages_json, const ChatRenderOptions& options) const override {
    auto messages = jinja::ValueFromJson(messages_json);
    if (!messages.ok()) return InvalidArgumentError("chat messages: " + messages.status().message());
    if (!messages->is_array()) return InvalidArgumentError("chat messages: expected a JSON array");
    return RenderValue(std::move(messages).value(), options);
  }

  StatusOr<std::string> Render(std::span<const ChatMessage> messages, const ChatRenderOptions& options) const override {
    jinja::Array list;
    for (const ChatMessage& m : messages) {
      jinja::Object o;
      o.Set("role", Value(m.role));
      o.Set("content", Value(m.content));
      list.push_back(Value(std::move(o)));
    }
    return RenderValue(Value(std::move(list)), options);
  }

  const std::string& source() const override { return source_; }

 private:
  StatusOr<std::string> RenderValue(Value messages, const ChatRenderOptions& options) const {
    jinja::Object globals;
    globals.Set("messages", std::move(messages));
    Value tools = Value::None();
    if (!options.tools_json.empty()) {
      auto t = jinja::ValueFromJson(options.tools_json);
      if (!t.ok()) return InvalidArgumentError("tools: " + t.status().message());
      if (!t->is_array() && !t->is_none()) return InvalidArgumentError("tools: expected a JSON array");
      tools = std::move(t).value();
    }
    globals.Set("tools", std::move(tools));
    globals.Set("documents", Value::None());
    globals.Set("add_generation_prompt", Value(options.add_generation_prompt));
    if (!bos_.empty()) globals.Set("bos_token", Value(bos_));
    if (!eos_.empty()) globals.Set("eos_token", Value(eos_));
    if (!options.extra_vars_json.empty()) {
      auto extra = jinja::ValueFromJson(options.extra_vars_json);
      if (!extra.ok() || !extra->is_object()) return InvalidArgumentError("extra template variables: expected a JSON object");
      for (const auto& [k, v] : extra->object().items) globals.Set(k, v);
    }
    return template_->Render(Value(std::move(globals)));
  }

  std::string source_;
  std::unique_ptr<jinja::Template> template_;
  std::string bos_, eos_;
};

std::string TokenText(const nlohmann::ordered_json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return "";
}

}  // namespace

StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Create(std::string_view source, std::string bos_token,
                                                             std::string eos_token) {
  auto t = jinja::Template::Parse(source);
  if (!t.ok()) return t.status().WithContext("chat_template");
  return std::unique_ptr<ChatTemplate>(new ChatTemplateImpl(std::string(source), std::move(t).value(),
                                                            std::move(bos_token), std::move(eos_token)));
}

StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::FromTokenizerConfig(std::string_view config_json) {
  auto config = nlohmann::ordered_json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) return InvalidArgumentError("tokenizer_config.json: not a JSON object");
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return NotFoundError("tokenizer_config.json has no chat_template");
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        source = entry["template"].get<std::string>();
      }
    }
    if (source.empty()) return NotFoundError("tokenizer_config.json: chat_template list has no 'default' entry");
  } else {
    return InvalidArgumentError("tokenizer_config.json: chat_template is neither a string nor a list");
  }
  return Create(source, TokenText(config, "bos_token"), TokenText(config, "eos_token"));
}

StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Load(std::string_view model_dir) {
  if (IsGgufPath(model_dir)) {  // a GGUF model file: its tokenizer.chat_template
    KVF_ASSIGN_OR_RETURN(GgufTokenizerFiles files, TokenizerFilesFromGguf(std::string(model_dir)));
    return FromTokenizerConfig(files.tokenizer_config_json);
  }
  namespace fs = std::filesystem;
  fs::path dir(model_dir);
  KVF_ASSIGN_OR_RETURN(std::string config, ReadFileToString((dir / "tokenizer_config.json").string()));
  auto result = FromTokenizerConfig(config);
  std::error_code ec;
  if (!result.ok() && result.status().code() == StatusCode::kNotFound && fs::exists(dir / "chat_template.jinja", ec)) {
    KVF_ASSIGN_OR_RETURN(std::string source, ReadFileToString((dir / "chat_template.jinja").string()));
    auto parsed = nlohmann::ordered_json::parse(config, nullptr, false);
    return Create(source, TokenText(parsed, "bos_token"), TokenText(parsed, "eos_token"));
  }
  return result;
}

}  // namespace kvferry::tokenizer
