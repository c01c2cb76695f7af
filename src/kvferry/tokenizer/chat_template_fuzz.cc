// libFuzzer: the Jinja chat-template parser and renderer on arbitrary template text, rendered
// with a small conversation under tight limits. Errors must be Statuses, never crashes or hangs.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/tokenizer/jinja.h"

using namespace kvferry::tokenizer::jinja;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Value* globals = [] {
    auto v = ValueFromJson(
        R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"},
            {"role": "assistant", "content": "<think>x</think>Hello", "tool_calls": [{"function":
            {"name": "f", "arguments": {"a": [1, 2.5, null]}}}]}, {"role": "tool", "content": "ok"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "add_generation_prompt": true,
            "bos_token": "<s>", "eos_token": "</s>"})");
    return new Value(std::move(v).value());
  }();
  std::string_view source(reinterpret_cast<const char*>(data), size);
  auto t = Template::Parse(source);
  if (!t.ok()) return 0;
  Template::Limits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_steps = 200000;
  (void)(*t)->Render(*globals, limits);
  return 0;
}
