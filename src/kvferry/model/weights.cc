#include "kvferry/model/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace kvferry::model {
namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, "stat " + path);
  }
  auto f = std::unique_ptr<MappedFile>(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "mmap " + path);
    }
    f->data_ = static_cast<const char*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
}

StatusOr<std::unique_ptr<WeightFiles>> WeightFiles::Open(const std::string& dir) {
  auto w = std::unique_ptr<WeightFiles>(new WeightFiles());
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::vector<std::string> shards;
  std::map<std::string, std::string> weight_map;
  if (FileExists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      return InvalidArgumentError(index_path + ": not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object())
      return InvalidArgumentError(index_path + ": missing 'weight_map' object");
    std::set<std::string> seen;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string()) return InvalidArgumentError(index_path + ": weight_map value for '" +
                                                        it.key() + "' is not a file name");
      const std::string file = it->get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file[0] == '.')
        return InvalidArgumentError(index_path + ": bad shard name '" + file + "'");
      weight_map[it.key()] = file;
      if (seen.insert(file).second) shards.push_back(file);
    }
  } else if (FileExists(dir + "/model.safetensors")) {
    shards.push_back("model.safetensors");
  } else {
    return NotFoundError(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& shard : shards) {
    const std::string path = dir + "/" + shard;
    if (!FileExists(path))
      return NotFoundError(path + ": shard listed in model.safetensors.index.json is missing");
    KVF_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
    auto header = ParseSafetensorsHeader(std::string_view(file->data(), file->size()));
    if (!header.ok()) return header.status().WithContext(path);
    const size_t idx = w->files_.size();
    for (auto& t : header->tensors) {
      auto mapped = weight_map.find(t.name);
      if (!weight_map.empty() && (mapped == weight_map.end() || mapped->second != shard))
        continue;  // the index assigns this tensor to another shard
      std::string name = t.name;
      w->index_[name] = Entry{idx, std::move(t)};
    }
    w->files_.push_back(std::move(file));
    w->file_names_.push_back(shard);
  }
  for (const auto& [name, file] : weight_map)
    if (!w->index_.count(name))
      return DataLossError(dir + "/" + file + ": tensor '" + name +
                           "' is listed in model.safetensors.index.json but not in the file");
  return w;
}

StatusOr<TensorView> WeightFiles::Get(const std::string& name,
                                      const std::vector<int64_t>& shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::string files;
    for (const auto& f : file_names_) files += (files.empty() ? "" : ", ") + f;
    return NotFoundError("missing tensor '" + name + "' (not in " + files + ")");
  }
  const Entry& e = it->second;
  const std::string& file = file_names_[e.file];
  if (!e.info.float_dtype)
    return InvalidArgumentError(file + ": tensor '" + name + "' has dtype " + e.info.dtype_name +
                                "; want BF16, F16 or F32");
  if (e.info.shape != shape)
    return InvalidArgumentError(file + ": tensor '" + name + "' has shape " +
                                ShapeString(e.info.shape) + ", want " + ShapeString(shape));
  TensorView v;
  v.data = e.owned != nullptr ? e.owned : files_[e.file]->data() + e.info.begin;
  v.dtype = e.info.dtype;
  v.shape = shape;
  v.bytes = e.info.end - e.info.begin;
  return v;
}

void WeightFiles::Prefault(const void* p, uint64_t bytes) {
  const uintptr_t page = 4096;
  const uintptr_t b = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t e = reinterpret_cast<uintptr_t>(p) + bytes;
  if (e <= b) return;
#ifdef MADV_POPULATE_READ
  if (::madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_READ) == 0) return;
#endif
  volatile const char* c = reinterpret_cast<const char*>(p);
  uint64_t sink = 0;
  for (uint64_t off = 0; off < bytes; off += page) sink += c[off];
  (void)sink;
}

}  // namespace kvferry::model
