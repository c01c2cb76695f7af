// libFuzzer: the 24-byte data header, status frames and the target's range check.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kvferry/transfer/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvferry::transfer::wire;
  if (size < kDataHeaderSize + kStatusSize + 16) return 0;
  DataHeader h = DecodeDataHeader(data);
  uint8_t out[kDataHeaderSize];
  EncodeDataHeader(h, out);
  if (std::memcmp(out, data, 17) != 0) abort();  // fields round-trip; padding is dropped
  (void)IsWriteOp(h.opcode);
  (void)IsShmRef(h.opcode);
  auto st = DecodeStatus(data + kDataHeaderSize);
  if (st.ok()) {
    uint8_t enc[kStatusSize];
    EncodeStatus(*st, enc);
    if (std::memcmp(enc, data + kDataHeaderSize, kStatusSize) != 0) abort();
  }
  uint64_t buf_addr, buf_len;
  std::memcpy(&buf_addr, data + kDataHeaderSize + kStatusSize, 8);
  std::memcpy(&buf_len, data + kDataHeaderSize + kStatusSize + 8, 8);
  if (RangeInside(h.addr, h.size, buf_addr, buf_len)) {
    // Accepted ranges never escape the buffer.
    if (h.size == 0 || h.addr < buf_addr || h.addr - buf_addr > buf_len || h.size > buf_len - (h.addr - buf_addr)) abort();
  }
  return 0;
}
