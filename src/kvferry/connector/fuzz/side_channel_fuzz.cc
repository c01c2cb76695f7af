// libFuzzer: side-channel message decoding (bytes from any peer on the ZMQ port).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kvferry/connector/side_channel.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvferry::connector;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto m = DecodeXferMetadata(bytes);
  if (m.ok()) {
    auto again = DecodeXferMetadata(EncodeXferMetadata(*m));
    if (!again.ok() || again->req_blocks.size() != m->req_blocks.size()) abort();
  }
  auto r = DecodeXferResponse(bytes);
  if (r.ok() && !DecodeXferResponse(EncodeXferResponse(*r)).ok()) abort();
  return 0;
}
