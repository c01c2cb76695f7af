#include "kvferry/transfer/wire.h"

#include <gtest/gtest.h>

#include <cstring>

namespace kvferry::transfer::wire {
namespace {

TEST(WireTest, HandshakeFrameMatchesMooncakeBytes) {
  std::string f = EncodeHandshakeFrame(kTypeMetadata, "{}\n");
  ASSERT_EQ(f.size(), 8u + 1 + 3);
  // L = 1 + len(body), little-endian u64.
  EXPECT_EQ(std::string(f.data(), 9), std::string("\x04\0\0\0\0\0\0\0\x01", 9));
  StatusOr<uint64_t> len = DecodeHandshakeLength(reinterpret_cast<const uint8_t*>(f.data()), kDefaultMaxHandshakeLength);
  ASSERT_TRUE(len.ok());
  EXPECT_EQ(*len, 4u);
  StatusOr<HandshakePayload> p = DecodeHandshakePayload(std::string_view(f).substr(8));
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->typed);
  EXPECT_EQ(p->type, kTypeMetadata);
  EXPECT_EQ(p->body, "{}\n");
}

TEST(WireTest, HandshakeLengthLimitsAndLegacyFrames) {
  uint8_t zero[8] = {0};
  EXPECT_FALSE(DecodeHandshakeLength(zero, kDefaultMaxHandshakeLength).ok());
  uint8_t big[8] = {0x01, 0x00, 0x10, 0, 0, 0, 0, 0};  // 1 MiB + 1
  EXPECT_FALSE(DecodeHandshakeLength(big, kDefaultMaxHandshakeLength).ok());
  uint8_t max[8] = {0x00, 0x00, 0x10, 0, 0, 0, 0, 0};  // exactly 1 MiB
  EXPECT_TRUE(DecodeHandshakeLength(max, kDefaultMaxHandshakeLength).ok());
  // Untyped legacy frame: first byte '{' (> 3) → the whole payload is JSON.
  StatusOr<HandshakePayload> p = DecodeHandshakePayload("{}");
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->typed);
  EXPECT_EQ(p->body, "{}");
  // 0x80..0xFF as a signed char is negative: typed but unknown → rejected.
  EXPECT_FALSE(DecodeHandshakePayload(std::string("\x85{}", 3)).ok());
}

TEST(WireTest, DecodesCapturedMooncakeDescriptor) {
  const char* json =
      R"({"buffers":[{"addr":140186786725888,"length":100663296,"name":"127.0.0.1:16462"}],"name":"127.0.0.1:16462","protocol":"tcp","tcp_data_port":16444,"tcp_proto_version":2,"timestamp":"2026-11-26 11:37:56.777182"})"
      "\n";
  StatusOr<Descriptor> d = DecodeDescriptor(json);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->name, "127.0.0.1:16462");
  EXPECT_EQ(d->tcp_data_port, 16444);
  EXPECT_EQ(d->tcp_proto_version, 2);
  ASSERT_EQ(d->buffers.size(), 1u);
  EXPECT_EQ(d->buffers[0].addr, 0x7F7FC7A00000ull);
  EXPECT_EQ(d->buffers[0].length, 100663296u);
  EXPECT_EQ(d->kvferry_version, 0);
}

TEST(WireTest, DescriptorRoundTripWithU64AndExtensions) {
  Descriptor d;
  d.name = "10.0.0.2:15001";
  d.tcp_data_port = 15002;
  d.tcp_proto_version = 2;
  d.buffers = {{0xFFFFFFFFFFFFF000ull, 4096}, {0x1000, 1}};
  d.kvferry_version = 1;
  d.kvferry_shm_path = "/tmp/x.sock";
  d.kvferry_auth = true;
  std::string json = EncodeDescriptor(d);
  EXPECT_NE(json.find("\"addr\":18446744073709547520"), std::string::npos) << json;
  EXPECT_NE(json.find("\"name\":\"10.0.0.2:15001\""), std::string::npos);
  StatusOr<Descriptor> back = DecodeDescriptor(json);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->buffers[0].addr, 0xFFFFFFFFFFFFF000ull);
  EXPECT_EQ(back->kvferry_shm_path, "/tmp/x.sock");
  EXPECT_TRUE(back->kvferry_auth);
}

TEST(WireTest, DescriptorRejectsWhatMooncakeRejects) {
  // Missing tcp_proto_version reads as v1.
  auto v1 = DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":5,"buffers":[]})");
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->tcp_proto_version, 1);
  EXPECT_FALSE(DecodeDescriptor("null").ok());
  EXPECT_FALSE(DecodeDescriptor("{").ok());
  EXPECT_FALSE(DecodeDescriptor(R"({"name":"h:1","protocol":"rdma","tcp_data_port":5})").ok());
  EXPECT_FALSE(DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":"5"})").ok());
  EXPECT_FALSE(DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":5,
      "buffers":[{"addr":0,"length":5,"name":"h:1"}]})").ok());
  EXPECT_FALSE(DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":5,
      "buffers":[{"addr":4096,"length":5,"name":""}]})").ok());
  EXPECT_FALSE(DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":5,
      "buffers":[{"addr":4096.5,"length":5,"name":"x"}]})").ok());
  // Unknown keys are ignored.
  EXPECT_TRUE(DecodeDescriptor(R"({"name":"h:1","protocol":"tcp","tcp_data_port":5,"devices":[1],"x":{}})").ok());
}

TEST(WireTest, DataHeaderAndOpcodes) {
  // The captured v2 WRITE header of 4096 bytes to 0x7f7fc7a00000.
  const uint8_t captured[24] = {0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0xa0, 0xc7, 0x7f, 0x7f,
                                0,    0,    0x81, 0, 0, 0, 0x12, 0, 0, 0};
  DataHeader h = DecodeDataHeader(captured);
  EXPECT_EQ(h.size, 4096u);
  EXPECT_EQ(h.addr, 0x7f7fc7a00000ull);
  EXPECT_TRUE(IsV2(h.opcode));
  EXPECT_TRUE(IsWriteOp(h.opcode));
  uint8_t out[24];
  EncodeDataHeader(h, out);
  EXPECT_EQ(std::memcmp(out, captured, 17), 0);
  for (int i = 17; i < 24; ++i) EXPECT_EQ(out[i], 0) << "padding must be zero";
  EXPECT_EQ(MakeOpcode(Op::kRead, true, false, false), 0x80);
  EXPECT_EQ(MakeOpcode(Op::kWrite, false, false, false), 0x01);
  EXPECT_FALSE(IsWriteOp(0x02));  // anything but 1 is a READ
  EXPECT_FALSE(IsWriteOp(0x00));
  uint8_t ext = MakeOpcode(Op::kWrite, true, true, true);
  EXPECT_TRUE(IsWriteOp(ext));
  EXPECT_TRUE(IsShmRef(ext));
  EXPECT_FALSE(IsWriteOp(MakeOpcode(Op::kRead, true, true, true)));
}

TEST(WireTest, StatusFrames) {
  uint8_t st[8];
  EncodeStatus(kCodeOk, st);
  EXPECT_EQ(std::memcmp(st, "\x00\x00\x00\x00VTCM", 8), 0);
  EncodeStatus(kCodeRejected, st);
  EXPECT_EQ(std::memcmp(st, "\x01\x00\x00\x00VTCM", 8), 0);
  EXPECT_EQ(*DecodeStatus(st), 1u);
  const uint8_t bad[8] = {0, 0, 0, 0, 'V', 'T', 'C', 'X'};
  EXPECT_EQ(DecodeStatus(bad).status().code(), StatusCode::kDataLoss);
}

TEST(WireTest, RangeValidation) {
  EXPECT_TRUE(RangeInside(100, 1, 100, 1));
  EXPECT_TRUE(RangeInside(199, 1, 100, 100));  // last byte
  EXPECT_FALSE(RangeInside(190, 64, 100, 100));  // straddles the end
  EXPECT_FALSE(RangeInside(100, 0, 100, 100));   // zero size
  EXPECT_FALSE(RangeInside(~0ull - 2, 8, 100, 100));  // wraps
  EXPECT_FALSE(RangeInside(99, 2, 100, 100));
}

TEST(WireTest, SegmentNames) {
  auto hp = SplitHostPort("127.0.0.1:16462");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->first, "127.0.0.1");
  EXPECT_EQ(hp->second, 16462);
  auto v6 = SplitHostPort("[::1]:80");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(JoinHostPort("::1", 80), "[::1]:80");
  EXPECT_FALSE(SplitHostPort("nohost").ok());
  EXPECT_FALSE(SplitHostPort("h:0").ok());
  EXPECT_FALSE(SplitHostPort("h:70000").ok());
  EXPECT_FALSE(SplitHostPort("h:12x").ok());
}

TEST(WireTest, AuthMacDependsOnSecretRoleAndNonce) {
  Nonce a = RandomNonce(), b = RandomNonce();
  EXPECT_NE(a, b);
  EXPECT_TRUE(MacEqual(AuthMac("s", "r", a), AuthMac("s", "r", a)));
  EXPECT_FALSE(MacEqual(AuthMac("s", "r", a), AuthMac("t", "r", a)));
  EXPECT_FALSE(MacEqual(AuthMac("s", "r", a), AuthMac("s", "q", a)));
  EXPECT_FALSE(MacEqual(AuthMac("s", "r", a), AuthMac("s", "r", b)));
}

TEST(WireTest, ShmMapReplyAndControlFramesRoundTripAndRejectGarbage) {
  std::vector<ShmMapEntry> entries = {{1, 0x7f0000001005, 4096, 5}, {9, 0x7f0000100000, 1ull << 40, 1ull << 33}};
  std::string reply = EncodeShmMapReply(entries);
  ASSERT_EQ(reply.size(), kShmMapHeaderSize + 2 * kShmMapEntrySize);
  const auto* p = reinterpret_cast<const uint8_t*>(reply.data());
  auto n = DecodeShmMapHeader(p);
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, 2u);
  for (size_t i = 0; i < 2; ++i) {
    ShmMapEntry e = DecodeShmMapEntry(p + kShmMapHeaderSize + i * kShmMapEntrySize);
    EXPECT_EQ(e.id, entries[i].id);
    EXPECT_EQ(e.addr, entries[i].addr);
    EXPECT_EQ(e.length, entries[i].length);
    EXPECT_EQ(e.fd_offset, entries[i].fd_offset);
  }
  EXPECT_EQ(*DecodeShmMapHeader(reinterpret_cast<const uint8_t*>(EncodeShmMapReply({}).data())), 0u);
  std::string bad = reply;
  bad[0] = 'X';  // no magic
  EXPECT_EQ(DecodeShmMapHeader(reinterpret_cast<const uint8_t*>(bad.data())).status().code(), StatusCode::kDataLoss);
  bad = reply;
  bad[8] = static_cast<char>(kMaxShmMapRegions + 1);  // more regions than descriptors may ride along
  EXPECT_EQ(DecodeShmMapHeader(reinterpret_cast<const uint8_t*>(bad.data())).status().code(), StatusCode::kDataLoss);
  uint8_t frame[kShmControlSize];
  EncodeShmControl(kShmRevoke, 0x1122334455667788ull, frame);
  auto c = DecodeShmControl(frame);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->first, kShmRevoke);
  EXPECT_EQ(c->second, 0x1122334455667788ull);
  EncodeShmControl(7, 1, frame);
  EXPECT_EQ(DecodeShmControl(frame).status().code(), StatusCode::kDataLoss);
  // The map opcode is a kvferry-only value that Mooncake never sends and no other flag test matches.
  EXPECT_TRUE(IsKvferryOp(kOpShmMap));
  EXPECT_FALSE(IsShmRef(kOpShmMap));
  EXPECT_FALSE(IsV2(kOpShmMap));
}

}  // namespace
}  // namespace kvferry::transfer::wire
