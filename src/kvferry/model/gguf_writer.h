#pragma once
// Private to model/: writes GGUF files (version 3, little-endian; the layout of gguf.h).
// Metadata and tensor infos are collected first; tensor data is produced by a callback per
// tensor at write time, so a large model is never held in memory twice.
//
// Threading: a GgufWriter is used by one thread.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/model/gguf.h"

namespace kvferry::model {

class GgufWriter {
 public:
  // Appends the data of one tensor (exactly its byte size) to `out`.
  using DataFn = std::function<Status(std::string* out)>;

  // Alignment of the tensor data (general.alignment, written when not 32). A power of two.
  explicit GgufWriter(uint32_t alignment = 32);

  void AddString(std::string_view key, std::string_view value);
  void AddUint32(std::string_view key, uint32_t value);
  void AddInt32(std::string_view key, int32_t value);
  void AddUint64(std::string_view key, uint64_t value);
  void AddFloat32(std::string_view key, float value);
  void AddBool(std::string_view key, bool value);
  void AddStringArray(std::string_view key, const std::vector<std::string>& values);
  void AddInt32Array(std::string_view key, const std::vector<int32_t>& values);
  void AddFloat32Array(std::string_view key, const std::vector<float>& values);
  // Any value, given as its type and its encoded bytes (tests build odd files with this).
  void AddRaw(std::string_view key, GgufType type, std::string_view encoded_value);

  // A tensor of ggml type `type` with dimensions `ne` (ne[0] the row length: the reverse of
  // the row-major shape). `data` is called once by Write/Serialize.
  void AddTensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, DataFn data);

  // Writes the file to `path` (via a temporary name, renamed at the end).
  Status Write(const std::string& path) const;
  // The whole file in memory (for small files and tests).
  StatusOr<std::string> Serialize() const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    uint32_t type;
    uint64_t bytes;
    DataFn data;
  };
  Status Emit(const std::function<Status(std::string_view)>& sink) const;

  uint32_t alignment_;
  uint64_t kv_count_ = 0;
  std::string kv_bytes_;  // encoded metadata entries
  std::vector<Tensor> tensors_;
};

// Encoding helpers, shared with tests that hand-build malformed files.
void GgufAppendString(std::string* out, std::string_view s);
template <typename T>
void GgufAppendPod(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace kvferry::model
