#pragma once
// Private to model/: the safetensors header parser. A file is an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {...}}, then the data; offsets are relative to the end of the header.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"

namespace kvferry::model {

struct TensorInfo {
  std::string name;
  std::string dtype_name;       // as in the file: "BF16", "F32", "I64", ...
  bool float_dtype = false;     // one of F32, F16, BF16 (then `dtype` is set)
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;           // absolute byte offsets in the file
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header length
  std::vector<TensorInfo> tensors;
};

// Parses and validates the header of a safetensors file whose whole contents (or at least all
// of it that exists: a truncated file is detected) are `file`. Checks: the length prefix, valid
// JSON object, known dtypes, non-negative shapes, offsets in order, inside the file, not
// overlapping and matching the shape's byte size. Never reads outside `file`.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file);

// Bytes per element of a safetensors dtype name; 0 if unknown.
int SafetensorsDTypeSize(std::string_view name);

}  // namespace kvferry::model
