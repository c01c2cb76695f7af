// libFuzzer: OpenAI request bodies (completions, chat, responses) from any client, and the
// best-effort kv_transfer_params of a body that does not parse.
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
  (void)ParseGenerateRequest(body, GenerateRequest::Kind::kResponses, &param);
  (void)PeekKvTransferParams(body);
  return 0;
}
