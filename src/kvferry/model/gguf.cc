#include "kvferry/model/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

namespace kvferry::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr int kMaxDims = 4;
constexpr uint64_t kMaxNameBytes = 1024;
constexpr int64_t kQK = 256;

// Block sizes of every ggml type number (see ggml.h / gguf-py's GGML_QUANT_SIZES).
GgmlTypeInfo TypeTable(uint32_t t) {
  switch (t) {
    case 0: return {"F32", 1, 4};
    case 1: return {"F16", 1, 2};
    case 2: return {"Q4_0", 32, 18};
    case 3: return {"Q4_1", 32, 20};
    case 6: return {"Q5_0", 32, 22};
    case 7: return {"Q5_1", 32, 24};
    case 8: return {"Q8_0", 32, 34};
    case 9: return {"Q8_1", 32, 40};
    case 10: return {"Q2_K", kQK, 2 + 2 + kQK / 16 + kQK / 4};
    case 11: return {"Q3_K", kQK, 2 + kQK / 4 + kQK / 8 + 12};
    case 12: return {"Q4_K", kQK, 2 + 2 + kQK / 2 + 12};
    case 13: return {"Q5_K", kQK, 2 + 2 + kQK / 2 + kQK / 8 + 12};
    case 14: return {"Q6_K", kQK, 2 + kQK / 2 + kQK / 4 + kQK / 16};
    case 15: return {"Q8_K", kQK, 4 + kQK + kQK / 8};
    case 16: return {"IQ2_XXS", kQK, 2 + kQK / 4};
    case 17: return {"IQ2_XS", kQK, 2 + kQK / 4 + kQK / 32};
    case 18: return {"IQ3_XXS", kQK, 2 + kQK / 4 + kQK / 8};
    case 19: return {"IQ1_S", kQK, 2 + kQK / 8 + kQK / 16};
    case 20: return {"IQ4_NL", 32, 18};
    case 21: return {"IQ3_S", kQK, 2 + kQK / 4 + kQK / 8 + kQK / 32 + 4};
    case 22: return {"IQ2_S", kQK, 2 + kQK / 4 + kQK / 16};
    case 23: return {"IQ4_XS", kQK, 2 + 2 + kQK / 2 + kQK / 64};
    case 24: return {"I8", 1, 1};
    case 25: return {"I16", 1, 2};
    case 26: return {"I32", 1, 4};
    case 27: return {"I64", 1, 8};
    case 28: return {"F64", 1, 8};
    case 29: return {"IQ1_M", kQK, kQK / 8 + kQK / 16 + kQK / 32};
    case 30: return {"BF16", 1, 2};
    case 34: return {"TQ1_0", kQK, 2 + 4 * 13};
    case 35: return {"TQ2_0", kQK, 2 + 64};
    case 39: return {"MXFP4", 32, 17};
    default: return {};
  }
}

// Bytes of one scalar of a metadata type; 0 for string/array/unknown.
uint64_t ScalarSize(uint32_t t) {
  switch (static_cast<GgufType>(t)) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool: return 1;
    case GgufType::kUint16:
    case GgufType::kInt16: return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32: return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64: return 8;
    default: return 0;
  }
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

template <typename T>
T LoadLe(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86-64 is little-endian, like the format
  return v;
}

// A bounds-checked cursor over the file. Every read checks the remaining size first.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return data_.size() - pos_; }

  Status Need(uint64_t n, const std::string& what) const {
    if (n > left())
      return DataLossError("truncated: " + what + " at byte " + std::to_string(pos_) + " needs " +
                           std::to_string(n) + " bytes but the file has " +
                           std::to_string(data_.size()));
    return Status();
  }
  template <typename T>
  StatusOr<T> Read(const std::string& what) {
    KVF_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v = LoadLe<T>(data_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }
  StatusOr<std::string_view> ReadString(const std::string& what) {
    KVF_ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(what + " length"));
    KVF_RETURN_IF_ERROR(Need(n, what + " of " + std::to_string(n) + " bytes"));
    std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string_view Slice(uint64_t begin, uint64_t end) const {
    return data_.substr(begin, end - begin);
  }
  void Skip(uint64_t n) { pos_ += n; }

 private:
  std::string_view data_;
  uint64_t pos_ = 0;
};

std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 200) out += "...";
  return out + "'";
}

Status ReadScalar(Reader& r, uint32_t type, const std::string& what, GgufValue* v) {
  v->type = static_cast<GgufType>(type);
  switch (v->type) {
    case GgufType::kUint8: { KVF_ASSIGN_OR_RETURN(v->u, r.Read<uint8_t>(what)); break; }
    case GgufType::kUint16: { KVF_ASSIGN_OR_RETURN(v->u, r.Read<uint16_t>(what)); break; }
    case GgufType::kUint32: { KVF_ASSIGN_OR_RETURN(v->u, r.Read<uint32_t>(what)); break; }
    case GgufType::kUint64: { KVF_ASSIGN_OR_RETURN(v->u, r.Read<uint64_t>(what)); break; }
    case GgufType::kInt8: { KVF_ASSIGN_OR_RETURN(v->i, r.Read<int8_t>(what)); break; }
    case GgufType::kInt16: { KVF_ASSIGN_OR_RETURN(v->i, r.Read<int16_t>(what)); break; }
    case GgufType::kInt32: { KVF_ASSIGN_OR_RETURN(v->i, r.Read<int32_t>(what)); break; }
    case GgufType::kInt64: { KVF_ASSIGN_OR_RETURN(v->i, r.Read<int64_t>(what)); break; }
    case GgufType::kFloat32: { KVF_ASSIGN_OR_RETURN(v->f, r.Read<float>(what)); break; }
    case GgufType::kFloat64: { KVF_ASSIGN_OR_RETURN(v->f, r.Read<double>(what)); break; }
    case GgufType::kBool: {
      KVF_ASSIGN_OR_RETURN(uint8_t b, r.Read<uint8_t>(what));
      if (b > 1) return DataLossError(what + ": bool value " + std::to_string(b) + " is not 0 or 1");
      v->u = b;
      break;
    }
    case GgufType::kString: { KVF_ASSIGN_OR_RETURN(v->str, r.ReadString(what)); break; }
    default:
      return DataLossError(what + ": unknown value type " + std::to_string(type));
  }
  return Status();
}

Status ReadValue(Reader& r, uint32_t type, const std::string& what, GgufValue* v) {
  if (!KnownValueType(type)) return DataLossError(what + ": unknown value type " + std::to_string(type));
  if (static_cast<GgufType>(type) != GgufType::kArray) return ReadScalar(r, type, what, v);
  v->type = GgufType::kArray;
  KVF_ASSIGN_OR_RETURN(uint32_t et, r.Read<uint32_t>(what + " element type"));
  if (!KnownValueType(et)) return DataLossError(what + ": unknown array element type " + std::to_string(et));
  if (static_cast<GgufType>(et) == GgufType::kArray)
    return DataLossError(what + ": arrays of arrays are not supported");
  v->elem_type = static_cast<GgufType>(et);
  KVF_ASSIGN_OR_RETURN(v->count, r.Read<uint64_t>(what + " element count"));
  const uint64_t begin = r.pos();
  if (const uint64_t es = ScalarSize(et); es != 0) {
    if (v->count > r.left() / es)
      return DataLossError("truncated: " + what + " has " + std::to_string(v->count) + " " +
                           GgufTypeName(v->elem_type) + " elements but only " +
                           std::to_string(r.left()) + " bytes are left in the file");
    r.Skip(v->count * es);
    if (v->elem_type == GgufType::kBool) {
      for (uint64_t k = 0; k < v->count; ++k)
        if (static_cast<uint8_t>(r.Slice(begin, r.pos())[k]) > 1)
          return DataLossError(what + ": bool element " + std::to_string(k) + " is not 0 or 1");
    }
  } else {  // strings: each at least its 8-byte length
    if (v->count > r.left() / 8)
      return DataLossError("truncated: " + what + " has " + std::to_string(v->count) +
                           " strings but only " + std::to_string(r.left()) + " bytes are left");
    for (uint64_t k = 0; k < v->count; ++k)
      KVF_RETURN_IF_ERROR(r.ReadString(what + " element " + std::to_string(k)).status());
  }
  v->raw = r.Slice(begin, r.pos());
  return Status();
}

std::string TypeOf(const GgufValue& v) {
  if (v.type == GgufType::kArray) return std::string("array of ") + GgufTypeName(v.elem_type);
  return GgufTypeName(v.type);
}

Status WrongType(std::string_view key, const GgufValue& v, const char* want) {
  return InvalidArgumentError("GGUF metadata '" + std::string(key) + "' is " + TypeOf(v) +
                              ", want " + want);
}

// The integer value of a scalar integer (checked by the caller) as int64, or an error when it
// does not fit.
StatusOr<int64_t> IntOf(std::string_view key, const GgufValue& v) {
  if (v.type == GgufType::kUint64 && v.u > static_cast<uint64_t>(INT64_MAX))
    return InvalidArgumentError("GGUF metadata '" + std::string(key) + "' = " + std::to_string(v.u) +
                                " is too large");
  switch (v.type) {
    case GgufType::kUint8:
    case GgufType::kUint16:
    case GgufType::kUint32:
    case GgufType::kUint64: return static_cast<int64_t>(v.u);
    default: return v.i;
  }
}

}  // namespace

const char* GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8: return "uint8";
    case GgufType::kInt8: return "int8";
    case GgufType::kUint16: return "uint16";
    case GgufType::kInt16: return "int16";
    case GgufType::kUint32: return "uint32";
    case GgufType::kInt32: return "int32";
    case GgufType::kFloat32: return "float32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "uint64";
    case GgufType::kInt64: return "int64";
    case GgufType::kFloat64: return "float64";
  }
  return "unknown";
}

GgmlTypeInfo GgmlTypeInfoOf(uint32_t type) { return TypeTable(type); }

std::string GgmlTypeName(uint32_t type) {
  const GgmlTypeInfo info = TypeTable(type);
  if (info.block_elems == 0) return "type " + std::to_string(type);
  return info.name;
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64: return true;
    default: return false;
  }
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // checked against overflow at parse time
  return n;
}

std::vector<int64_t> GgufTensor::shape() const { return {ne.rbegin(), ne.rend()}; }

const GgufValue* GgufFile::Find(std::string_view key) const {
  for (const auto& kv : kvs)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

const GgufTensor* GgufFile::FindTensor(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

#define KVF_GGUF_FIND(v, key)                                                                \
  const GgufValue* v = Find(key);                                                            \
  if (v == nullptr) return NotFoundError("GGUF metadata '" + std::string(key) + "' is missing")

StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  if (v->type != GgufType::kString) return WrongType(key, *v, "string");
  return v->str;
}

StatusOr<int64_t> GgufFile::GetInt(std::string_view key, int64_t lo, int64_t hi) const {
  KVF_GGUF_FIND(v, key);
  if (!v->is_integer()) return WrongType(key, *v, "an integer");
  KVF_ASSIGN_OR_RETURN(int64_t x, IntOf(key, *v));
  if (x < lo || x > hi)
    return InvalidArgumentError("GGUF metadata '" + std::string(key) + "' = " + std::to_string(x) +
                                " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  if (v->is_float()) return v->f;
  if (v->is_integer()) {
    KVF_ASSIGN_OR_RETURN(int64_t x, IntOf(key, *v));
    return static_cast<double>(x);
  }
  return WrongType(key, *v, "a number");
}

StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  if (v->type != GgufType::kBool) return WrongType(key, *v, "bool");
  return v->u != 0;
}

StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString)
    return WrongType(key, *v, "array of string");
  std::vector<std::string_view> out;
  out.reserve(v->count);
  Reader r(v->raw);  // validated at parse time
  for (uint64_t k = 0; k < v->count; ++k) {
    KVF_ASSIGN_OR_RETURN(std::string_view s, r.ReadString(std::string(key)));
    out.push_back(s);
  }
  return out;
}

StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  GgufValue probe;
  probe.type = v->elem_type;
  if (v->type != GgufType::kArray || !probe.is_integer()) return WrongType(key, *v, "array of integers");
  std::vector<int64_t> out;
  out.reserve(v->count);
  Reader r(v->raw);
  for (uint64_t k = 0; k < v->count; ++k) {
    GgufValue e;
    KVF_RETURN_IF_ERROR(ReadScalar(r, static_cast<uint32_t>(v->elem_type), std::string(key), &e));
    KVF_ASSIGN_OR_RETURN(int64_t x, IntOf(key, e));
    out.push_back(x);
  }
  return out;
}

StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  KVF_GGUF_FIND(v, key);
  if (v->type != GgufType::kArray ||
      (v->elem_type != GgufType::kFloat32 && v->elem_type != GgufType::kFloat64))
    return WrongType(key, *v, "array of float32");
  std::vector<float> out;
  out.reserve(v->count);
  Reader r(v->raw);
  for (uint64_t k = 0; k < v->count; ++k) {
    GgufValue e;
    KVF_RETURN_IF_ERROR(ReadScalar(r, static_cast<uint32_t>(v->elem_type), std::string(key), &e));
    out.push_back(static_cast<float>(e.f));
  }
  return out;
}

#undef KVF_GGUF_FIND

StatusOr<GgufFile> ParseGguf(std::string_view file) {
  Reader r(file);
  GgufFile out;
  KVF_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kMagic)
    return DataLossError("not a GGUF file: the first 4 bytes are " + Quote(file.substr(0, 4)) +
                         ", want 'GGUF'");
  KVF_ASSIGN_OR_RETURN(out.version, r.Read<uint32_t>("version"));
  if (out.version == 1)
    return UnimplementedError("GGUF version 1 (32-bit counts) is not supported; convert the file "
                              "with a current llama.cpp");
  if (out.version != 2 && out.version != 3) {
    if ((out.version & 0xffff) == 0 && __builtin_bswap32(out.version) <= 3)
      return UnimplementedError("big-endian GGUF files are not supported");
    return DataLossError("unknown GGUF version " + std::to_string(out.version) + " (want 2 or 3)");
  }
  KVF_ASSIGN_OR_RETURN(uint64_t n_tensors, r.Read<uint64_t>("tensor count"));
  KVF_ASSIGN_OR_RETURN(uint64_t n_kv, r.Read<uint64_t>("metadata count"));
  // Each entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least
  // 8 + 4 + 4 + 8: counts above that cannot be in the file.
  if (n_kv > r.left() / 13)
    return DataLossError("truncated: " + std::to_string(n_kv) + " metadata entries cannot fit in " +
                         std::to_string(file.size()) + " bytes");
  if (n_tensors > r.left() / 24)
    return DataLossError("truncated: " + std::to_string(n_tensors) + " tensors cannot fit in " +
                         std::to_string(file.size()) + " bytes");

  std::set<std::string_view> keys;
  out.kvs.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string what = "metadata entry " + std::to_string(k);
    GgufKv kv;
    KVF_ASSIGN_OR_RETURN(kv.key, r.ReadString(what + " key"));
    const std::string key_what = "metadata " + Quote(kv.key);
    if (!keys.insert(kv.key).second) return DataLossError(key_what + " appears twice");
    KVF_ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>(key_what + " type"));
    KVF_RETURN_IF_ERROR(ReadValue(r, type, key_what, &kv.value));
    out.kvs.push_back(kv);
  }
  if (const GgufValue* a = out.Find("general.alignment")) {
    if (a->type != GgufType::kUint32)
      return DataLossError("metadata 'general.alignment' is " + TypeOf(*a) + ", want uint32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      return DataLossError("metadata 'general.alignment' = " + std::to_string(a->u) +
                           " is not a power of two");
    out.alignment = a->u;
  }

  std::set<std::string_view> names;
  out.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    KVF_ASSIGN_OR_RETURN(t.name, r.ReadString("tensor info " + std::to_string(k) + " name"));
    const std::string what = "tensor " + Quote(t.name);
    if (t.name.size() > kMaxNameBytes) return DataLossError(what + ": name longer than 1024 bytes");
    if (!names.insert(t.name).second) return DataLossError(what + " appears twice");
    KVF_ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>(what + " dimension count"));
    if (n_dims < 1 || n_dims > kMaxDims)
      return DataLossError(what + " has " + std::to_string(n_dims) + " dimensions (want 1 to 4)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      KVF_ASSIGN_OR_RETURN(uint64_t ne, r.Read<uint64_t>(what + " dimension"));
      if (ne > static_cast<uint64_t>(INT64_MAX) || (ne != 0 && numel > static_cast<uint64_t>(INT64_MAX) / ne))
        return DataLossError(what + ": shape too large (element count overflows)");
      numel *= ne;
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    KVF_ASSIGN_OR_RETURN(t.type, r.Read<uint32_t>(what + " type"));
    const GgmlTypeInfo info = TypeTable(t.type);
    if (info.block_elems == 0) return DataLossError(what + " has unknown ggml type " + std::to_string(t.type));
    if (t.ne[0] % info.block_elems != 0)
      return DataLossError(what + ": row length " + std::to_string(t.ne[0]) + " is not a multiple of " +
                           info.name + "'s block of " + std::to_string(info.block_elems));
    const uint64_t blocks = numel / info.block_elems;
    if (blocks > static_cast<uint64_t>(INT64_MAX) / info.block_bytes)
      return DataLossError(what + ": shape too large (byte size overflows)");
    t.bytes = blocks * info.block_bytes;
    KVF_ASSIGN_OR_RETURN(t.offset, r.Read<uint64_t>(what + " offset"));
    if (t.offset % out.alignment != 0)
      return DataLossError(what + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                           std::to_string(out.alignment));
    out.tensors.push_back(std::move(t));
  }

  const uint64_t header_end = r.pos();
  const uint64_t padded = header_end + (out.alignment - header_end % out.alignment) % out.alignment;
  if (padded < header_end || padded > file.size()) {
    if (n_tensors == 0 && padded > file.size()) {
      out.data_start = file.size();  // nothing follows; a metadata-only file need not be padded
      return out;
    }
    return DataLossError("truncated: the tensor data would start at byte " + std::to_string(padded) +
                         " but the file has " + std::to_string(file.size()) + " bytes");
  }
  out.data_start = padded;
  const uint64_t data_size = file.size() - padded;
  for (auto& t : out.tensors) {
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      return DataLossError("truncated: tensor " + Quote(t.name) + " (" + GgmlTypeName(t.type) + ", " +
                           std::to_string(t.bytes) + " bytes at data offset " + std::to_string(t.offset) +
                           ") ends past the end of the file (" + std::to_string(file.size()) + " bytes)");
    t.offset += padded;
  }
  std::vector<const GgufTensor*> sorted;
  for (const auto& t : out.tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < sorted.size(); ++k)
    if (sorted[k]->offset < sorted[k - 1]->offset + sorted[k - 1]->bytes)
      return DataLossError("tensors " + Quote(sorted[k - 1]->name) + " and " + Quote(sorted[k]->name) +
                           " overlap");
  return out;
}

}  // namespace kvferry::model
