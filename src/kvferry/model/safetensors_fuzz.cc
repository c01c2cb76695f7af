// libFuzzer target: the safetensors header parser on arbitrary file contents.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto h = kvferry::model::ParseSafetensorsHeader(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (h.ok()) {
    for (const auto& t : h->tensors) {
      // Every accepted tensor lies inside the input.
      if (t.begin > t.end || t.end > size) __builtin_trap();
    }
  }
  return 0;
}
