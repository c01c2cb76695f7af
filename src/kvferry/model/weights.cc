#include "kvferry/model/weights.h"

#include "kvferry/model/progress.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
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

namespace {

constexpr size_t kHugePage = 2u << 20;

// Reads [0, size) of fd into dst, calling on_progress every kChunk bytes.
Status ReadAll(int fd, const std::string& path, char* dst, size_t size,
               const std::function<void(uint64_t)>& on_progress) {
  constexpr size_t kChunk = 16u << 20;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, dst + done, std::min(kChunk, size - done), static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read " + path);
    }
    if (n == 0)
      return DataLossError(path + ": file shrank while being read (" + std::to_string(done) + " of " +
                           std::to_string(size) + " bytes)");
    done += static_cast<size_t>(n);
    if (on_progress) on_progress(done);
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path, const FileLoadOptions& options) {
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
  f->in_memory_ = options.in_memory;
  if (f->size_ > 0 && options.in_memory) {
    // Over-allocate by one huge page and start the data on a 2 MiB boundary, so the kernel can
    // back all of it with huge pages as the read first touches it.
    const size_t span = (f->size_ + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "allocate " + std::to_string(f->size_ >> 20) + " MB for " + path);
    }
    f->region_ = p;
    f->region_size_ = span;
    const uintptr_t aligned = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
    char* data = reinterpret_cast<char*>(aligned);
    // Without transparent huge pages (THP "never") this fails and the memory stays in 4 KiB
    // pages; it still holds the weights contiguously, away from the page cache's layout.
    (void)::madvise(data, span - (aligned - reinterpret_cast<uintptr_t>(p)), MADV_HUGEPAGE);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    f->data_ = data;
    Status st_read = ReadAll(fd, path, data, f->size_, options.on_progress);
    ::close(fd);
    if (!st_read.ok()) return st_read;  // the destructor unmaps
    ::mprotect(f->region_, f->region_size_, PROT_READ);
    return f;
  }
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "mmap " + path);
    }
    f->data_ = static_cast<const char*>(p);
    f->region_ = p;
    f->region_size_ = f->size_;
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (region_ != nullptr) ::munmap(region_, region_size_);
}

Status MappedFile::SetWritable(bool writable) {
  if (!in_memory_) return FailedPreconditionError(path_ + ": mapped from the file, cannot be rewritten");
  if (region_ == nullptr) return Status::Ok();
  if (::mprotect(region_, region_size_, writable ? PROT_READ | PROT_WRITE : PROT_READ) != 0)
    return ErrnoToStatus(errno, "mprotect " + path_);
  return Status::Ok();
}

uint64_t MappedFile::HugePageBytes() const {
  if (!in_memory_ || data_ == nullptr) return 0;
  std::ifstream in("/proc/self/smaps");
  std::string line;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(region_), hi = lo + region_size_;
  bool inside = false;
  uint64_t kb = 0;
  for (int lines = 0; lines < 1000000 && std::getline(in, line); ++lines) {
    unsigned long long a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &a, &b) == 2 && line.find(':') > line.find(' ')) {
      // A mapping's first line: "start-end perms offset dev inode path". (Field lines are
      // "Name:   value", with the colon before the first space.)
      inside = a < hi && b > lo;
      continue;
    }
    unsigned long long v = 0;
    if (inside && std::sscanf(line.c_str(), "AnonHugePages: %llu kB", &v) == 1) kb += v;
  }
  return std::min<uint64_t>(kb << 10, size_);
}

StatusOr<std::unique_ptr<WeightFiles>> WeightFiles::Open(const std::string& dir, bool in_memory, bool show_progress) {
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
    if (j.is_discarded() || !j.is_object()) return InvalidArgumentError(index_path + ": not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) return InvalidArgumentError(index_path + ": missing 'weight_map' object");
    std::set<std::string> seen;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string())
        return InvalidArgumentError(index_path + ": weight_map value for '" + it.key() + "' is not a file name");
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
  uint64_t total = 0;
  for (const auto& shard : shards) {
    const std::string path = dir + "/" + shard;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0)
      return NotFoundError(path + ": shard listed in model.safetensors.index.json is missing");
    total += static_cast<uint64_t>(st.st_size);
  }
  Progress progress("loading " + dir, total, show_progress && in_memory);
  uint64_t before = 0;
  for (const auto& shard : shards) {
    const std::string path = dir + "/" + shard;
    FileLoadOptions fo;
    fo.in_memory = in_memory;
    fo.on_progress = [&](uint64_t done) { progress.Update(before + done); };
    KVF_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path, fo));
    before += file->size();
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

StatusOr<TensorView> WeightFiles::Get(const std::string& name, const std::vector<int64_t>& shape) const {
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
    return InvalidArgumentError(file + ": tensor '" + name + "' has shape " + ShapeString(e.info.shape) + ", want " +
                                ShapeString(shape));
  TensorView v;
  v.data = e.owned != nullptr ? e.owned : files_[e.file]->data() + e.info.begin;
  v.dtype = e.info.dtype;
  v.shape = shape;
  v.bytes = e.info.end - e.info.begin;
  return v;
}

uint64_t WeightFiles::total_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

Status WeightFiles::SetWritable(bool writable) {
  for (const auto& f : files_) KVF_RETURN_IF_ERROR(f->SetWritable(writable));
  return Status::Ok();
}

uint64_t WeightFiles::huge_page_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->HugePageBytes();
  return n;
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
