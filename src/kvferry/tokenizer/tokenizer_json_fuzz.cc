// libFuzzer: the tokenizer.json / tokenizer_config.json / generation_config.json loader on
// arbitrary bytes. Bad input must be a Status, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  // The first byte picks which file the rest stands for.
  std::string_view body = input.empty() ? input : input.substr(1);
  int which = input.empty() ? 0 : data[0] % 3;
  static const char* kMinimal =
      R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},)"
      R"("pre_tokenizer":{"type":"ByteLevel"},"decoder":{"type":"ByteLevel"}})";
  auto t = which == 0   ? kvferry::tokenizer::Tokenizer::FromJson(body)
           : which == 1 ? kvferry::tokenizer::Tokenizer::FromJson(kMinimal, body)
                        : kvferry::tokenizer::Tokenizer::FromJson(kMinimal, {}, body);
  if (t.ok()) {
    std::vector<int32_t> ids = (*t)->Encode("ab ba <s>");
    (void)(*t)->Decode(ids);
  }
  return 0;
}
