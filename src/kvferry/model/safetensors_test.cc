#include <gtest/gtest.h>

#include <string>

#include "kvferry/model/safetensors.h"

namespace kvferry::model {
namespace {

std::string File(const std::string& header, size_t data_bytes) {
  std::string f(8, '\0');
  for (int i = 0; i < 8; ++i) f[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return f + header + std::string(data_bytes, '\x01');
}

TEST(Safetensors, ParsesValidHeader) {
  auto f = File(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                R"("b":{"dtype":"F32","shape":[],"data_offsets":[12,16]},"c":{"dtype":"I64","shape":[1],"data_offsets":[16,24]}})",
                24);
  auto h = ParseSafetensorsHeader(f);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 3u);
  const TensorInfo& a = h->tensors[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_TRUE(a.float_dtype);
  EXPECT_EQ(a.dtype, kernels::DType::kBF16);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.begin, h->data_start);
  EXPECT_EQ(a.end, h->data_start + 12);
  EXPECT_FALSE(h->tensors[2].float_dtype);
}

TEST(Safetensors, RejectsBadFiles) {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  EXPECT_TRUE(ParseSafetensorsHeader(File(ok_header, 16)).ok());
  // Truncated data, named.
  auto t = ParseSafetensorsHeader(File(ok_header, 15));
  EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(t.status().message().find("truncated"), std::string::npos);
  EXPECT_NE(t.status().message().find("'a'"), std::string::npos);
  // Truncated header.
  EXPECT_FALSE(ParseSafetensorsHeader(File(ok_header, 16).substr(0, 20)).ok());
  EXPECT_FALSE(ParseSafetensorsHeader("abc").ok());
  EXPECT_FALSE(ParseSafetensorsHeader(std::string(8, '\xff')).ok());
  for (const char* bad : {
           R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})",   // size mismatch
           R"({"a":{"dtype":"F99","shape":[4],"data_offsets":[0,16]}})",   // dtype
           R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",  // negative dim
           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})",   // reversed
           R"({"a":{"dtype":"F32","shape":[4.5],"data_offsets":[0,16]}})",
           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}})",
           R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})",
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           R"({"a":[1,2]})", R"([1])", R"({"a":)"}) {
    EXPECT_FALSE(ParseSafetensorsHeader(File(bad, 16)).ok()) << bad;
  }
}

}  // namespace
}  // namespace kvferry::model
