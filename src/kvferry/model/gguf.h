#pragma once
// Private to model/: the GGUF file format (llama.cpp's single-file models). A file is
//   "GGUF" magic, uint32 version (2 or 3), uint64 tensor count, uint64 metadata count,
//   metadata: {string key, uint32 value type, value}..., where a string is a uint64 length and
//     that many bytes, and an array is a uint32 element type, a uint64 count and the elements,
//   tensor infos: {string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml type, uint64
//     offset}..., ne[0] being the contiguous (row) dimension,
//   padding to `general.alignment` (default 32), then the tensor data; each tensor's offset is
//   relative to the start of the data and a multiple of the alignment.
// All integers are little-endian. Parsing is a pure function of the bytes: the returned
// GgufFile holds string_views into them, so the bytes must outlive it.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::model {

// Metadata value types, with the numbers the format gives them.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* GgufTypeName(GgufType type);  // "uint32", "string", ...

// ggml tensor element types (the subset with numbers; others are unknown to kvferry).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

// Size facts of a ggml type: `block_elems` elements are stored in `block_bytes` bytes. Every
// type that llama.cpp writes into GGUF files is known here (so any file's layout can be
// checked), whether or not kvferry computes with it. name is "?" and sizes 0 when unknown.
struct GgmlTypeInfo {
  const char* name = "?";  // "F32", "Q4_K", "IQ2_XXS", ...
  int64_t block_elems = 0;
  int64_t block_bytes = 0;
};
GgmlTypeInfo GgmlTypeInfoOf(uint32_t type);
// "Q4_K" for 12, "type 123" for unknown numbers.
std::string GgmlTypeName(uint32_t type);

// One metadata value. Scalars live in the field of their kind; strings and arrays are views of
// the parsed bytes (arrays as their raw element bytes, already checked to be well formed).
struct GgufValue {
  GgufType type = GgufType::kUint8;
  uint64_t u = 0;         // unsigned integers and bool
  int64_t i = 0;          // signed integers
  double f = 0;           // float32 / float64
  std::string_view str;   // string
  GgufType elem_type = GgufType::kUint8;  // array
  uint64_t count = 0;                     // array: number of elements
  std::string_view raw;                   // array: the elements' bytes

  bool is_integer() const;
  bool is_float() const { return type == GgufType::kFloat32 || type == GgufType::kFloat64; }
};

struct GgufKv {
  std::string_view key;
  GgufValue value;
};

struct GgufTensor {
  std::string_view name;
  std::vector<int64_t> ne;  // ne[0] is the row length (contiguous); up to 4 dimensions
  uint32_t type = 0;        // a GgmlType number
  uint64_t offset = 0;      // absolute byte offset in the file
  uint64_t bytes = 0;       // size of the data

  int64_t numel() const;
  // The shape in row-major (HF) order: ne reversed, e.g. [rows, row_length].
  std::vector<int64_t> shape() const;
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // absolute offset of the tensor data section
  std::vector<GgufKv> kvs;
  std::vector<GgufTensor> tensors;

  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;
  const GgufTensor* FindTensor(std::string_view name) const;

  // Typed accessors. Absent keys are NotFound; a value of another type, or an integer out of
  // the asked range, is InvalidArgument naming the key, its type and the wanted type.
  StatusOr<std::string_view> GetString(std::string_view key) const;
  // Any integer type, checked to be in [lo, hi].
  StatusOr<int64_t> GetInt(std::string_view key, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  // float32 or float64 (integers are accepted too).
  StatusOr<double> GetFloat(std::string_view key) const;
  StatusOr<bool> GetBool(std::string_view key) const;
  StatusOr<std::vector<std::string_view>> GetStringArray(std::string_view key) const;
  // An array of any integer type.
  StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
};

// Parses and validates a whole GGUF file (`file` is all of its bytes, or what there is of a
// truncated one). Checks: magic, version (2 or 3; big-endian files are named as such), counts
// that fit in the file, every string and array inside the file, known value types, no nested
// arrays, no duplicate keys or tensor names, `general.alignment` a uint32 power of two, tensor
// dimensions (1 to 4, non-negative, product without overflow, row length a multiple of the
// type's block), known tensor types, offsets aligned, every tensor's data inside the file and
// no two overlapping. Errors are DataLoss (or Unimplemented for big-endian / version 1) and say
// what and where. Never reads outside `file`.
StatusOr<GgufFile> ParseGguf(std::string_view file);

}  // namespace kvferry::model
