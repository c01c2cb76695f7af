// libFuzzer: OpenAI request bodies (completions and chat) from any client.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/server/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvferry::server;
  std::string_view body(reinterpret_cast<const char*>(data), size);
  std::string param;
  auto c = ParseGenerateRequest(body, GenerateRequest::Kind::kCompletion, &param);
  if (!c.ok()) (void)ErrorJson(HttpStatusFor(c.status()), c.status().message(), param);
  (void)ParseGenerateRequest(body, GenerateRequest::Kind::kChat, &param);
  return 0;
}
