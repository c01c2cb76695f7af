// libFuzzer target: config.json parsing (and the RoPE frequencies of what it accepts).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "kvferry/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = kvferry::model::ParseModelConfig(std::string_view(reinterpret_cast<const char*>(data), size));
  if (c.ok() && c->head_dim <= 4096) {
    std::vector<float> inv;
    float factor;
    kvferry::model::RopeFrequencies(*c, &inv, &factor);
  }
  return 0;
}
