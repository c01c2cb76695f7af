#include "kvferry/model/safetensors.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

namespace kvferry::model {
namespace {
// A header larger than this is rejected (the safetensors reference library uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
constexpr int64_t kMaxDims = 8;
constexpr uint64_t kMaxElements = uint64_t{1} << 48;
}  // namespace

int SafetensorsDTypeSize(std::string_view n) {
  if (n == "F64" || n == "I64" || n == "U64") return 8;
  if (n == "F32" || n == "I32" || n == "U32") return 4;
  if (n == "F16" || n == "BF16" || n == "I16" || n == "U16") return 2;
  if (n == "I8" || n == "U8" || n == "BOOL" || n == "F8_E4M3" || n == "F8_E5M2") return 1;
  return 0;
}

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file) {
  if (file.size() < 8)
    return DataLossError("truncated: " + std::to_string(file.size()) +
                         " bytes, not even the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  if (header_len > kMaxHeaderBytes)
    return DataLossError("header length " + std::to_string(header_len) + " is over the " +
                         std::to_string(kMaxHeaderBytes) + "-byte limit (not a safetensors file?)");
  if (header_len > file.size() - 8)
    return DataLossError("truncated: header of " + std::to_string(header_len) +
                         " bytes but the file has " + std::to_string(file.size()) + " bytes");
  const std::string_view text = file.substr(8, header_len);
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLossError("header is not valid JSON");
  if (!j.is_object()) return DataLossError("header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  const uint64_t data_size = file.size() - out.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const nlohmann::json& t = it.value();
    auto bad = [&](const std::string& what) {
      return DataLossError("tensor '" + name + "': " + what);
    };
    if (!t.is_object()) return bad("entry is not an object");
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string()) return bad("missing string 'dtype'");
    if (sh == t.end() || !sh->is_array()) return bad("missing array 'shape'");
    if (off == t.end() || !off->is_array() || off->size() != 2) return bad("missing 'data_offsets' pair");
    TensorInfo info;
    info.name = name;
    info.dtype_name = dt->get<std::string>();
    const int esize = SafetensorsDTypeSize(info.dtype_name);
    if (esize == 0) return bad("unknown dtype '" + info.dtype_name + "'");
    if (info.dtype_name == "F32" || info.dtype_name == "F16" || info.dtype_name == "BF16") {
      info.float_dtype = true;
      info.dtype = info.dtype_name == "F32"   ? kernels::DType::kF32
                   : info.dtype_name == "F16" ? kernels::DType::kF16
                                              : kernels::DType::kBF16;
    }
    if (static_cast<int64_t>(sh->size()) > kMaxDims) return bad("more than 8 dimensions");
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return bad("shape has a non-integer or negative dimension");
      const uint64_t v = d.get<uint64_t>();
      if (v > kMaxElements || (v != 0 && numel > kMaxElements / v)) return bad("shape too large");
      numel *= v;
      info.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& b = (*off)[0];
    const auto& e = (*off)[1];
    if (!b.is_number_unsigned() || !e.is_number_unsigned())
      return bad("data_offsets are not non-negative integers");
    const uint64_t begin = b.get<uint64_t>(), end = e.get<uint64_t>();
    if (begin > end) return bad("data_offsets begin after they end");
    if (end - begin != numel * static_cast<uint64_t>(esize))
      return bad("data_offsets span " + std::to_string(end - begin) + " bytes but the shape needs " +
                 std::to_string(numel * esize));
    if (end > data_size)
      return DataLossError("truncated: tensor '" + name + "' ends at byte " +
                           std::to_string(out.data_start + end) + " but the file has " +
                           std::to_string(file.size()) + " bytes");
    info.begin = out.data_start + begin;
    info.end = out.data_start + end;
    out.tensors.push_back(std::move(info));
  }
  std::vector<const TensorInfo*> sorted;
  for (const auto& t : out.tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->begin < sorted[i - 1]->end)
      return DataLossError("tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name +
                           "' overlap");
  return out;
}

}  // namespace kvferry::model
