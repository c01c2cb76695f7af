#pragma once
// Private to model/: the safetensors files of a model directory, mapped read-only, and tensor
// lookup with shape/dtype checks whose errors name the file and the tensor.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"
#include "kvferry/model/model.h"
#include "kvferry/model/safetensors.h"

namespace kvferry::model {

// How a model file's bytes are held in memory.
struct FileLoadOptions {
  // true: read the whole file into anonymous memory that asks for 2 MiB pages (MADV_HUGEPAGE),
  // then make it read-only. Decode streams every weight once per token, and a file's page-cache
  // pages are 4 KiB pieces where the kernel wrote them (a just-written or just-downloaded file
  // decodes at half speed straight from its mapping). false: map the file (read-only, private).
  bool in_memory = true;
  // Called with the bytes of this file read so far (in_memory only).
  std::function<void(uint64_t done)> on_progress;
};

// A whole file, read-only: in anonymous huge-page memory or mapped (FileLoadOptions).
class MappedFile {
 public:
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path, const FileLoadOptions& options = {});
  ~MappedFile();
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool in_memory() const { return in_memory_; }
  // Bytes of the data backed by 2 MiB pages now (from /proc/self/smaps; 0 when mapped or
  // when the kernel gave none).
  uint64_t HugePageBytes() const;
  // In-memory files only: lets the data be rewritten in place (weights packed at load), or
  // makes it read-only again.
  Status SetWritable(bool writable);

 private:
  MappedFile() = default;
  std::string path_;
  const char* data_ = nullptr;
  size_t size_ = 0;
  void* region_ = nullptr;  // the whole mapping (aligned data_ lies inside it)
  size_t region_size_ = 0;
  bool in_memory_ = false;
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
  // With in_memory, the files are read into huge-page memory (a progress line on a terminal).
  static StatusOr<std::unique_ptr<WeightFiles>> Open(const std::string& dir, bool in_memory = true,
                                                     bool show_progress = false);
  // Opens a GGUF file for `config` (from ModelConfigFromGguf) and names its tensors like HF
  // does (gguf_model.cc); llama's permuted Q/K rows are restored into owned copies.
  static StatusOr<std::unique_ptr<WeightFiles>> OpenGguf(const std::string& path, const ModelConfig& config,
                                                         bool in_memory = true, bool show_progress = false);
  // Total bytes of the files, and how many of them sit in 2 MiB pages.
  uint64_t total_bytes() const;
  uint64_t huge_page_bytes() const;
  bool in_memory() const { return !files_.empty() && files_[0]->in_memory(); }
  // MappedFile::SetWritable for every file (in memory only; an error for mapped files).
  Status SetWritable(bool writable);

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
