// libFuzzer: the handshake frame decoder (length prefix + type byte + JSON body),
// as the handshake daemon applies it to bytes from the network.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvferry/transfer/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvferry::transfer::wire;
  if (size < kHandshakeLengthSize) return 0;
  auto len = DecodeHandshakeLength(data, kDefaultMaxHandshakeLength);
  if (!len.ok()) return 0;
  std::string_view rest(reinterpret_cast<const char*>(data) + kHandshakeLengthSize, size - kHandshakeLengthSize);
  if (rest.size() > *len) rest = rest.substr(0, *len);
  auto p = DecodeHandshakePayload(rest);
  if (!p.ok()) return 0;
  if (p->typed && p->type == kTypeMetadata) (void)DecodeDescriptor(p->body);
  (void)nlohmann::json::accept(p->body.begin(), p->body.end());
  return 0;
}
