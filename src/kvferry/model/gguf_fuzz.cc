// libFuzzer target: the GGUF parser (header, metadata, tensor infos) on arbitrary file contents,
// then every typed accessor on every key it accepted.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvferry/model/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto f = kvferry::model::ParseGguf(bytes);
  if (!f.ok()) return 0;
  for (const auto& t : f->tensors) {
    // Every accepted tensor lies inside the input.
    if (t.offset > size || t.bytes > size - t.offset) __builtin_trap();
  }
  for (const auto& kv : f->kvs) {
    (void)f->GetString(kv.key);
    (void)f->GetInt(kv.key);
    (void)f->GetFloat(kv.key);
    (void)f->GetBool(kv.key);
    auto s = f->GetStringArray(kv.key);
    if (s.ok())
      for (std::string_view e : *s)
        if (e.data() < bytes.data() || e.data() + e.size() > bytes.data() + size) __builtin_trap();
    (void)f->GetIntArray(kv.key);
    (void)f->GetFloatArray(kv.key);
  }
  return 0;
}
