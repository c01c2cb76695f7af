#pragma once
// Private to model/: the safetensors files of a model directory, mapped read-only, and tensor
// lookup with shape/dtype checks whose errors name the file and the tensor.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"
#include "kvferry/model/model.h"
#include "kvferry/model/safetensors.h"

namespace kvferry::model {

// A read-only private mapping of a whole file.
class MappedFile {
 public:
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

struct TensorView {
  const void* data = nullptr;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};

class WeightFiles {
 public:
  // Opens model.safetensors, or the shards named by model.safetensors.index.json, in `dir`.
  static StatusOr<std::unique_ptr<WeightFiles>> Open(const std::string& dir);
  // Opens a GGUF file for `config` (from ModelConfigFromGguf) and names its tensors like HF
  // does (gguf_model.cc); llama's permuted Q/K rows are restored into owned copies.
  static StatusOr<std::unique_ptr<WeightFiles>> OpenGguf(const std::string& path, const ModelConfig& config);

  bool Has(const std::string& name) const { return index_.count(name) != 0; }
  // The tensor `name`, which must be a float tensor of exactly `shape`.
  StatusOr<TensorView> Get(const std::string& name, const std::vector<int64_t>& shape) const;
  // Faults in the pages of [p, p + bytes) (already mapped), calling progress(done) on the way.
  static void Prefault(const void* p, uint64_t bytes);

 private:
  struct Entry {
    size_t file;
    TensorInfo info;
    const char* owned = nullptr;  // data in owned_ rather than in the file (GGUF Q/K of llama)
  };
  std::vector<std::unique_ptr<char[]>> owned_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<std::string> file_names_;
  std::map<std::string, Entry> index_;
};

}  // namespace kvferry::model
