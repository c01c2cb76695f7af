#include "kvferry/model/gguf.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvferry/kernels/quant.h"
#include "kvferry/model/gguf_writer.h"

namespace kvferry::model {
namespace {

using kernels::QuantType;

GgufWriter::DataFn Bytes(std::string data) {
  return [data](std::string* out) {
    out->append(data);
    return Status();
  };
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// A small file with one of every metadata type and a few tensors of different types.
GgufWriter Sample(uint32_t alignment = 32) {
  GgufWriter w(alignment);
  w.AddString("general.architecture", "qwen2");
  w.AddUint32("qwen2.block_count", 2);
  w.AddInt32("qwen2.some_int", -5);
  w.AddUint64("qwen2.context_length", 4096);
  w.AddFloat32("qwen2.rope.freq_base", 1e6f);
  w.AddBool("tokenizer.ggml.add_bos_token", false);
  w.AddStringArray("tokenizer.ggml.tokens", {"a", "b", "", "\xc4\xa0the"});
  w.AddInt32Array("tokenizer.ggml.token_type", {1, 1, 3, 1});
  w.AddFloat32Array("tokenizer.ggml.scores", {0.5f, -1.0f});
  std::string u8;
  GgufAppendPod<uint8_t>(&u8, 200);
  w.AddRaw("x.u8", GgufType::kUint8, u8);
  std::string i16;
  GgufAppendPod<int16_t>(&i16, -300);
  w.AddRaw("x.i16", GgufType::kInt16, i16);
  std::string f64;
  GgufAppendPod<double>(&f64, 2.5);
  w.AddRaw("x.f64", GgufType::kFloat64, f64);
  w.AddTensor("a.weight", {3, 2}, /*F32=*/0, Bytes(Floats({1, 2, 3, 4, 5, 6})));
  std::vector<float> row(64);
  for (int i = 0; i < 64; ++i) row[i] = 0.1f * (i - 30);
  std::string q(kernels::QuantRowBytes(QuantType::kQ8_0, 64), '\0');
  kernels::QuantizeRow(QuantType::kQ8_0, row.data(), 64, q.data());
  w.AddTensor("b.weight", {64, 1}, /*Q8_0=*/8, Bytes(q));
  w.AddTensor("c.bias", {5}, /*F16=*/1, Bytes(std::string(10, '\x3c')));
  return w;
}

std::string SampleBytes(uint32_t alignment = 32) {
  auto s = Sample(alignment).Serialize();
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : std::string();
}

TEST(GgufTest, RoundTrip) {
  for (uint32_t alignment : {32u, 64u, 8u}) {
    SCOPED_TRACE(alignment);
    const std::string bytes = SampleBytes(alignment);
    auto f = ParseGguf(bytes);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->version, 3u);
    EXPECT_EQ(f->alignment, alignment);
    EXPECT_EQ(f->data_start % alignment, 0u);
    EXPECT_EQ(*f->GetString("general.architecture"), "qwen2");
    EXPECT_EQ(*f->GetInt("qwen2.block_count"), 2);
    EXPECT_EQ(*f->GetInt("qwen2.some_int"), -5);
    EXPECT_EQ(*f->GetInt("qwen2.context_length"), 4096);
    EXPECT_EQ(*f->GetInt("x.u8"), 200);
    EXPECT_EQ(*f->GetInt("x.i16"), -300);
    EXPECT_EQ(*f->GetFloat("x.f64"), 2.5);
    EXPECT_EQ(*f->GetFloat("qwen2.rope.freq_base"), 1e6);
    EXPECT_EQ(*f->GetBool("tokenizer.ggml.add_bos_token"), false);
    auto tokens = f->GetStringArray("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens.ok());
    EXPECT_EQ(*tokens, (std::vector<std::string_view>{"a", "b", "", "\xc4\xa0the"}));
    EXPECT_EQ(*f->GetIntArray("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 1, 3, 1}));
    EXPECT_EQ(*f->GetFloatArray("tokenizer.ggml.scores"), (std::vector<float>{0.5f, -1.0f}));

    ASSERT_EQ(f->tensors.size(), 3u);
    const GgufTensor* a = f->FindTensor("a.weight");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->shape(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a->bytes, 24u);
    EXPECT_EQ(a->offset % alignment, 0u);
    float back[6];
    std::memcpy(back, bytes.data() + a->offset, sizeof(back));
    EXPECT_EQ(back[5], 6.0f);
    const GgufTensor* b = f->FindTensor("b.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(GgmlTypeName(b->type), "Q8_0");
    EXPECT_EQ(b->bytes, 68u);
    float deq[64];
    kernels::DequantizeRow(QuantType::kQ8_0, bytes.data() + b->offset, 64, deq);
    EXPECT_NEAR(deq[0], -3.0f, 0.02f);
    EXPECT_NEAR(deq[63], 3.3f, 0.02f);
    EXPECT_EQ(f->FindTensor("c.bias")->numel(), 5);
  }
}

TEST(GgufTest, WrongMetadataTypesAreClearErrors) {
  const std::string bytes = SampleBytes();  // the parsed file views these bytes
  auto f = ParseGguf(bytes);
  ASSERT_TRUE(f.ok());
  auto s = f->GetInt("general.architecture");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'general.architecture' is string, want an integer"), std::string::npos)
      << s.status().ToString();
  EXPECT_EQ(f->GetString("qwen2.block_count").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f->GetString("missing.key").status().code(), StatusCode::kNotFound);
  auto arr = f->GetIntArray("tokenizer.ggml.tokens");
  ASSERT_FALSE(arr.ok());
  EXPECT_NE(arr.status().message().find("array of string, want array of integers"), std::string::npos);
  EXPECT_FALSE(f->GetStringArray("qwen2.block_count").ok());
  EXPECT_FALSE(f->GetBool("qwen2.block_count").ok());
  auto range = f->GetInt("qwen2.some_int", 0, 100);
  ASSERT_FALSE(range.ok());
  EXPECT_NE(range.status().message().find("outside [0, 100]"), std::string::npos);
}

// Builds a file by hand: header, then `body` (metadata and tensor infos), then padding + data.
std::string Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  std::string s = "GGUF";
  GgufAppendPod(&s, version);
  GgufAppendPod(&s, n_tensors);
  GgufAppendPod(&s, n_kv);
  return s;
}

std::string TensorInfo(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
  std::string s;
  GgufAppendString(&s, name);
  GgufAppendPod<uint32_t>(&s, static_cast<uint32_t>(ne.size()));
  for (uint64_t d : ne) GgufAppendPod(&s, d);
  GgufAppendPod(&s, type);
  GgufAppendPod(&s, offset);
  return s;
}

std::string Pad(std::string s, size_t data_bytes) {
  s.append((32 - s.size() % 32) % 32, '\0');
  s.append(data_bytes, '\x01');
  return s;
}

struct Malformed {
  const char* what;
  std::string bytes;
  const char* error;  // a substring the message must contain
};

std::vector<Malformed> MalformedFiles() {
  std::vector<Malformed> m;
  const std::string good = SampleBytes();
  m.push_back({"empty", "", "truncated: magic"});
  m.push_back({"bad magic", "GGML" + good.substr(4), "not a GGUF file"});
  {
    std::string s = good;
    s[4] = 7;
    m.push_back({"unknown version", s, "unknown GGUF version 7"});
  }
  m.push_back({"version 1", Header(1, 0, 0), "version 1"});
  m.push_back({"big-endian", "GGUF" + std::string("\0\0\0\3", 4) + std::string(16, '\0'), "big-endian"});
  m.push_back({"truncated header", good.substr(0, 20), "truncated"});
  m.push_back({"truncated data", good.substr(0, good.size() - 40), "ends past the end of the file"});
  m.push_back({"huge metadata count", Header(3, 0, uint64_t{1} << 60), "metadata entries cannot fit"});
  m.push_back({"huge tensor count", Header(3, uint64_t{1} << 62, 0), "tensors cannot fit"});
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "k");
    GgufAppendPod<uint32_t>(&s, 99);
    m.push_back({"unknown value type", s + std::string(8, '\0'), "unknown value type 99"});
  }
  {
    std::string s = Header(3, 0, 1);
    GgufAppendPod<uint64_t>(&s, uint64_t{1} << 40);  // key length past the end
    m.push_back({"string past the end", s + "abc" + std::string(16, '\0'), "truncated: metadata entry 0 key"});
  }
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "arr");
    GgufAppendPod<uint32_t>(&s, 9);
    GgufAppendPod<uint32_t>(&s, 5);  // int32 elements
    GgufAppendPod<uint64_t>(&s, uint64_t{1} << 61);
    m.push_back({"array count past the end", s, "int32 elements but only"});
  }
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "arr");
    GgufAppendPod<uint32_t>(&s, 9);
    GgufAppendPod<uint32_t>(&s, 9);
    GgufAppendPod<uint64_t>(&s, 1);
    m.push_back({"nested array", s + std::string(16, '\0'), "arrays of arrays"});
  }
  {
    std::string s = Header(3, 0, 2);
    for (int i = 0; i < 2; ++i) {
      GgufAppendString(&s, "dup");
      GgufAppendPod<uint32_t>(&s, 4);
      GgufAppendPod<uint32_t>(&s, 1);
    }
    m.push_back({"duplicate key", s, "'dup' appears twice"});
  }
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "general.alignment");
    GgufAppendPod<uint32_t>(&s, 4);
    GgufAppendPod<uint32_t>(&s, 48);
    m.push_back({"alignment not a power of two", s, "not a power of two"});
  }
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "general.alignment");
    GgufAppendPod<uint32_t>(&s, 8);
    GgufAppendString(&s, "32");
    m.push_back({"alignment of the wrong type", s, "'general.alignment' is string, want uint32"});
  }
  m.push_back({"tensor shape overflow",
               Pad(Header(3, 1, 0) + TensorInfo("t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0), 0),
               "shape too large"});
  m.push_back({"five dimensions", Pad(Header(3, 1, 0) + TensorInfo("t", {1, 1, 1, 1, 1}, 0, 0), 4), "5 dimensions"});
  m.push_back({"unknown tensor type", Pad(Header(3, 1, 0) + TensorInfo("t", {4}, 77, 0), 16), "unknown ggml type 77"});
  m.push_back({"row not a multiple of the block", Pad(Header(3, 1, 0) + TensorInfo("t", {40, 2}, 8, 0), 200),
               "not a multiple of Q8_0's block of 32"});
  m.push_back({"offset out of range", Pad(Header(3, 1, 0) + TensorInfo("t", {4}, 0, 1u << 20), 16),
               "ends past the end of the file"});
  m.push_back(
      {"misaligned offset", Pad(Header(3, 1, 0) + TensorInfo("t", {4}, 0, 4), 32), "not a multiple of the alignment"});
  m.push_back({"overlapping tensors",
               Pad(Header(3, 2, 0) + TensorInfo("t", {16}, 0, 0) + TensorInfo("u", {16}, 0, 32), 128), "overlap"});
  m.push_back({"duplicate tensor", Pad(Header(3, 2, 0) + TensorInfo("t", {4}, 0, 0) + TensorInfo("t", {4}, 0, 32), 64),
               "appears twice"});
  {
    std::string s = Header(3, 0, 1);
    GgufAppendString(&s, "b");
    GgufAppendPod<uint32_t>(&s, 7);
    GgufAppendPod<uint8_t>(&s, 2);
    m.push_back({"bool not 0 or 1", s, "not 0 or 1"});
  }
  return m;
}

TEST(GgufTest, MalformedFilesAreClearErrors) {
  const auto files = MalformedFiles();
  ASSERT_GE(files.size(), 10u);
  for (const auto& m : files) {
    SCOPED_TRACE(m.what);
    auto f = ParseGguf(m.bytes);
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find(m.error), std::string::npos) << f.status().ToString();
  }
}

// Every prefix of a valid file that cuts into its tensor data or before is rejected (only the
// padding after the last tensor may go), and none reads out of bounds (ASan in CI).
TEST(GgufTest, EveryTruncationIsAnError) {
  const std::string good = SampleBytes();
  auto full = ParseGguf(good);
  ASSERT_TRUE(full.ok());
  uint64_t end = 0;
  for (const auto& t : full->tensors) end = std::max(end, t.offset + t.bytes);
  ASSERT_GT(end, good.size() - 32);
  ASSERT_TRUE(ParseGguf(std::string_view(good).substr(0, end)).ok());
  for (size_t n = 0; n < end; ++n) {
    auto f = ParseGguf(std::string_view(good).substr(0, n));
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes";
    ASSERT_EQ(f.status().code(), StatusCode::kDataLoss) << f.status().ToString();
  }
}

TEST(GgufTest, WriterWritesFiles) {
  const std::string path = ::testing::TempDir() + "/gguf_writer_test.gguf";
  ASSERT_TRUE(Sample().Write(path).ok());
  FILE* fp = std::fopen(path.c_str(), "rb");
  ASSERT_NE(fp, nullptr);
  std::string bytes;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), fp)) > 0;) bytes.append(buf, n);
  std::fclose(fp);
  EXPECT_EQ(bytes, SampleBytes());
  std::remove(path.c_str());

  GgufWriter bad;
  bad.AddTensor("t", {4}, 0, Bytes("short"));
  EXPECT_EQ(bad.Serialize().status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace kvferry::model
