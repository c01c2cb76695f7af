#pragma once
// kvferry/tokenizer: the model's text <-> token ids, and its chat template.
//  - Tokenizer: byte-level BPE loaded from a Hugging Face `tokenizer.json` (normalizer, split
//    pre-tokenizer regex, merges, added/special tokens) plus `tokenizer_config.json` and
//    `generation_config.json` when they sit beside it.
//  - IncrementalDetokenizer: ids in, newly completed UTF-8 text out, for streaming.
//  - ChatTemplate: renders the model's own Jinja `chat_template` (a Jinja subset; an unsupported
//    construct is an error, never a silently different prompt).
// Threading: Tokenizer and ChatTemplate are immutable after Load; every const method is safe to
// call from many threads at once. An IncrementalDetokenizer belongs to one request (one thread at
// a time) and borrows its Tokenizer, which must outlive it.
// Ownership: Load/Create return unique_ptr; string_views returned by the Tokenizer point into it
// and live as long as it does. See docs/tokenizer.md for what is supported.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::tokenizer {

class Tokenizer {
 public:
  // Loads `path`: either a model directory holding tokenizer.json (and optionally
  // tokenizer_config.json, generation_config.json) or the path of a tokenizer.json file (its
  // folder is searched for the other two). Errors: NotFound (no file), InvalidArgument (bad JSON
  // or inconsistent vocab/merges), Unimplemented (a model, normalizer, pre-tokenizer, decoder or
  // post-processor type this implementation does not support; it never guesses).
  static StatusOr<std::unique_ptr<Tokenizer>> Load(std::string_view path);

  // The same from file contents. `tokenizer_config_json` and `generation_config_json` may be empty.
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json = {},
                                                       std::string_view generation_config_json = {});

  virtual ~Tokenizer() = default;

  // Text -> ids, exactly as HF `tokenizers` encodes `text` (no truncation, no padding).
  // `add_special_tokens` applies the post-processor (e.g. Llama-3 prepends <|begin_of_text|>;
  // Qwen adds nothing). Added and special tokens in `text` are matched and never split.
  // Invalid UTF-8 in `text` is first replaced by U+FFFD per maximal subpart (as a browser's
  // TextDecoder or Rust's from_utf8_lossy does), so any byte string is accepted.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = false) const = 0;

  // Ids -> text. Byte sequences that are not valid UTF-8 (a token split inside a character)
  // become U+FFFD. Unknown ids are skipped. `skip_special_tokens` drops special added tokens.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  // The raw bytes a token stands for (its contribution to Decode); empty for an unknown id.
  virtual std::string_view TokenBytes(int32_t id) const = 0;
  // The token's string as it appears in the vocab (byte-level chars, e.g. "Ġthe").
  virtual std::optional<std::string_view> IdToToken(int32_t id) const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  // True for added tokens marked "special" (e.g. <|im_end|>).
  virtual bool IsSpecial(int32_t id) const = 0;

  // One past the largest id (vocab plus added tokens); ids lie in [0, vocab_size()).
  virtual int32_t vocab_size() const = 0;
  // From tokenizer_config.json's bos_token / eos_token / pad_token, when set and known.
  virtual std::optional<int32_t> bos_token_id() const = 0;
  virtual std::optional<int32_t> eos_token_id() const = 0;
  virtual std::optional<int32_t> pad_token_id() const = 0;
  // Ids that end generation: generation_config.json's eos_token_id (int or list) if present,
  // else eos_token_id(). Sorted, unique.
  virtual const std::vector<int32_t>& stop_token_ids() const = 0;
  // The text of bos/eos tokens ("" when unset), as chat templates expect them.
  virtual const std::string& bos_token() const = 0;
  virtual const std::string& eos_token() const = 0;
};

// Streams text out of a growing id sequence without ever emitting half a UTF-8 character:
// bytes of an incomplete character are held back until the character completes. The
// concatenation of every Add() result and Finish() equals tokenizer.Decode(all ids).
// Not thread-safe; borrows `tokenizer`, which must outlive it.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  // Appends ids and returns the newly completed text (possibly empty).
  std::string Add(std::span<const int32_t> ids);
  std::string Add(int32_t id) { return Add(std::span<const int32_t>(&id, 1)); }
  // Ends the stream: held-back bytes that never completed a character become U+FFFD.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // bytes of a character still incomplete
};

// One chat message; for tool calls and other fields use the JSON form of Render.
struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // default: true (append the assistant header)
  std::string tools_json;             // default: "" (no `tools`); else a JSON array
  // default: "" ; else a JSON object of extra template variables, e.g. {"enable_thinking":false}.
  std::string extra_vars_json;
};

class ChatTemplate {
 public:
  // From a tokenizer_config.json's contents: its `chat_template` (a string, or a list of
  // {name, template} where "default" is used) and bos/eos tokens. NotFound if it has none;
  // InvalidArgument/Unimplemented if the template does not parse or uses an unsupported construct.
  static StatusOr<std::unique_ptr<ChatTemplate>> FromTokenizerConfig(std::string_view config_json);
  // Loads `<model_dir>/tokenizer_config.json` (or a chat_template.jinja beside it when the config
  // has no template).
  static StatusOr<std::unique_ptr<ChatTemplate>> Load(std::string_view model_dir);
  // A bare template source with the given bos/eos token strings.
  static StatusOr<std::unique_ptr<ChatTemplate>> Create(std::string_view source, std::string bos_token = "",
                                                        std::string eos_token = "");

  virtual ~ChatTemplate() = default;

  // Renders `messages_json` (a JSON array of OpenAI-style messages: role, content and any other
  // fields such as tool_calls, reasoning_content). InvalidArgument for bad JSON or a
  // raise_exception() in the template (its message is kept); Unimplemented for a construct the
  // interpreter lacks; ResourceExhausted when the output or loop work passes a safety limit.
  virtual StatusOr<std::string> Render(std::string_view messages_json,
                                       const ChatRenderOptions& options = {}) const = 0;
  virtual StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                       const ChatRenderOptions& options = {}) const = 0;
  virtual const std::string& source() const = 0;
};

}  // namespace kvferry::tokenizer
