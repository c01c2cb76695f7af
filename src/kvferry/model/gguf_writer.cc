#include "kvferry/model/gguf_writer.h"

#include <cstdio>
#include <memory>

namespace kvferry::model {

void GgufAppendString(std::string* out, std::string_view s) {
  GgufAppendPod<uint64_t>(out, s.size());
  out->append(s);
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment_ != 32) AddUint32("general.alignment", alignment_);
}

void GgufWriter::AddRaw(std::string_view key, GgufType type, std::string_view encoded_value) {
  GgufAppendString(&kv_bytes_, key);
  GgufAppendPod<uint32_t>(&kv_bytes_, static_cast<uint32_t>(type));
  kv_bytes_.append(encoded_value);
  ++kv_count_;
}

void GgufWriter::AddString(std::string_view key, std::string_view value) {
  std::string v;
  GgufAppendString(&v, value);
  AddRaw(key, GgufType::kString, v);
}

void GgufWriter::AddUint32(std::string_view key, uint32_t value) {
  std::string v;
  GgufAppendPod(&v, value);
  AddRaw(key, GgufType::kUint32, v);
}

void GgufWriter::AddInt32(std::string_view key, int32_t value) {
  std::string v;
  GgufAppendPod(&v, value);
  AddRaw(key, GgufType::kInt32, v);
}

void GgufWriter::AddUint64(std::string_view key, uint64_t value) {
  std::string v;
  GgufAppendPod(&v, value);
  AddRaw(key, GgufType::kUint64, v);
}

void GgufWriter::AddFloat32(std::string_view key, float value) {
  std::string v;
  GgufAppendPod(&v, value);
  AddRaw(key, GgufType::kFloat32, v);
}

void GgufWriter::AddBool(std::string_view key, bool value) {
  std::string v;
  GgufAppendPod<uint8_t>(&v, value ? 1 : 0);
  AddRaw(key, GgufType::kBool, v);
}

void GgufWriter::AddStringArray(std::string_view key, const std::vector<std::string>& values) {
  std::string v;
  GgufAppendPod<uint32_t>(&v, static_cast<uint32_t>(GgufType::kString));
  GgufAppendPod<uint64_t>(&v, values.size());
  for (const auto& s : values) GgufAppendString(&v, s);
  AddRaw(key, GgufType::kArray, v);
}

void GgufWriter::AddInt32Array(std::string_view key, const std::vector<int32_t>& values) {
  std::string v;
  GgufAppendPod<uint32_t>(&v, static_cast<uint32_t>(GgufType::kInt32));
  GgufAppendPod<uint64_t>(&v, values.size());
  for (int32_t x : values) GgufAppendPod(&v, x);
  AddRaw(key, GgufType::kArray, v);
}

void GgufWriter::AddFloat32Array(std::string_view key, const std::vector<float>& values) {
  std::string v;
  GgufAppendPod<uint32_t>(&v, static_cast<uint32_t>(GgufType::kFloat32));
  GgufAppendPod<uint64_t>(&v, values.size());
  for (float x : values) GgufAppendPod(&v, x);
  AddRaw(key, GgufType::kArray, v);
}

void GgufWriter::AddTensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, DataFn data) {
  const GgmlTypeInfo info = GgmlTypeInfoOf(type);
  uint64_t numel = 1;
  for (int64_t d : ne) numel *= static_cast<uint64_t>(d);
  const uint64_t bytes = info.block_elems == 0 ? 0 : numel / info.block_elems * info.block_bytes;
  tensors_.push_back({std::string(name), std::move(ne), type, bytes, std::move(data)});
}

Status GgufWriter::Emit(const std::function<Status(std::string_view)>& sink) const {
  auto pad = [&](uint64_t n) { return (alignment_ - n % alignment_) % alignment_; };
  std::string head;
  GgufAppendPod<uint32_t>(&head, 0x46554747);
  GgufAppendPod<uint32_t>(&head, 3);
  GgufAppendPod<uint64_t>(&head, tensors_.size());
  GgufAppendPod<uint64_t>(&head, kv_count_);
  head += kv_bytes_;
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    if (GgmlTypeInfoOf(t.type).block_elems == 0)
      return InvalidArgumentError("tensor '" + t.name + "': unknown ggml type " + std::to_string(t.type));
    GgufAppendString(&head, t.name);
    GgufAppendPod<uint32_t>(&head, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) GgufAppendPod<uint64_t>(&head, static_cast<uint64_t>(d));
    GgufAppendPod<uint32_t>(&head, t.type);
    GgufAppendPod<uint64_t>(&head, offset);
    offset += t.bytes + pad(t.bytes);
  }
  head.append(pad(head.size()), '\0');
  KVF_RETURN_IF_ERROR(sink(head));
  std::string buf;
  for (const auto& t : tensors_) {
    buf.clear();
    KVF_RETURN_IF_ERROR(t.data(&buf));
    if (buf.size() != t.bytes)
      return InternalError("tensor '" + t.name + "': produced " + std::to_string(buf.size()) +
                           " bytes, want " + std::to_string(t.bytes));
    buf.append(pad(buf.size()), '\0');
    KVF_RETURN_IF_ERROR(sink(buf));
  }
  return Status();
}

StatusOr<std::string> GgufWriter::Serialize() const {
  std::string out;
  KVF_RETURN_IF_ERROR(Emit([&](std::string_view s) {
    out.append(s);
    return Status();
  }));
  return out;
}

Status GgufWriter::Write(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  if (!f) return InternalError("cannot create " + tmp);
  Status st = Emit([&](std::string_view s) {
    if (std::fwrite(s.data(), 1, s.size(), f.get()) != s.size()) return InternalError("write to " + tmp + " failed");
    return Status();
  });
  if (st.ok() && std::fflush(f.get()) != 0) st = InternalError("write to " + tmp + " failed");
  f.reset();
  if (st.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) st = InternalError("cannot rename " + tmp + " to " + path);
  if (!st.ok()) std::remove(tmp.c_str());
  return st;
}

}  // namespace kvferry::model
