// libFuzzer: segment descriptor JSON decoding, and re-encoding what decodes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kvferry/transfer/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvferry::transfer::wire;
  auto d = DecodeDescriptor(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!d.ok()) return 0;
  // Whatever decodes must survive a round trip unchanged.
  auto again = DecodeDescriptor(EncodeDescriptor(*d));
  if (!again.ok() || again->buffers.size() != d->buffers.size() || again->tcp_data_port != d->tcp_data_port) abort();
  for (size_t i = 0; i < d->buffers.size(); ++i) {
    if (again->buffers[i].addr != d->buffers[i].addr || again->buffers[i].length != d->buffers[i].length) abort();
  }
  (void)SplitHostPort(d->name);
  return 0;
}
