#include "kvferry/connector/side_channel.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace kvferry::connector {
namespace {

using json = nlohmann::json;

std::string Pack(const json& j) {
  auto v = json::to_msgpack(j);
  return std::string(v.begin(), v.end());
}

TEST(SideChannelTest, MetadataRoundTripAsMsgpackMap) {
  XferMetadata m;
  m.remote_hostname = "10.0.0.3";
  m.remote_port = 15123;
  m.req_blocks["d-req-1"] = ReqBlocks{"xfer-abc", {{4, 5, 6, 9}}};
  m.req_blocks["d-req-2"] = ReqBlocks{"xfer-def", {{}}};  // abort: empty list
  m.kv_caches_base_addr = {0x7f0000000000ull};
  m.block_lens = {65536};
  m.kv_block_lens = {65536};
  std::string bytes = EncodeXferMetadata(m);
  // The wire form is a map keyed by field names, req_blocks values are [transfer_id, groups].
  json j = json::from_msgpack(bytes);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["remote_hostname"], "10.0.0.3");
  EXPECT_EQ(j["req_blocks"]["d-req-1"][0], "xfer-abc");
  EXPECT_EQ(j["req_blocks"]["d-req-1"][1][0][3], 9);
  auto back = DecodeXferMetadata(bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->remote_port, 15123);
  EXPECT_EQ(back->req_blocks.at("d-req-1").groups[0], (std::vector<int64_t>{4, 5, 6, 9}));
  EXPECT_TRUE(back->req_blocks.at("d-req-2").groups[0].empty());
  EXPECT_EQ(back->kv_caches_base_addr[0], 0x7f0000000000ull);
  // kvferry's model fingerprint: sent only when known, and read back.
  EXPECT_FALSE(j.contains("kvferry_model"));
  EXPECT_TRUE(back->kvferry_model.empty());
  m.kvferry_model = "Qwen2ForCausalLM q8_0 24x896 #0123456789abcdef";
  auto with = DecodeXferMetadata(EncodeXferMetadata(m));
  ASSERT_TRUE(with.ok()) << with.status().ToString();
  EXPECT_EQ(with->kvferry_model, m.kvferry_model);
  json bad = json::from_msgpack(EncodeXferMetadata(m));
  bad["kvferry_model"] = 7;
  std::vector<uint8_t> raw = json::to_msgpack(bad);
  EXPECT_FALSE(DecodeXferMetadata(std::string(raw.begin(), raw.end())).ok());
  bad["kvferry_model"] = std::string(600, 'x');
  raw = json::to_msgpack(bad);
  EXPECT_FALSE(DecodeXferMetadata(std::string(raw.begin(), raw.end())).ok());
}

TEST(SideChannelTest, DefaultsMayBeOmittedLikeMsgspecDoes) {
  json j = {{"remote_hostname", "h"},
            {"remote_port", 7},
            {"req_blocks", {{"r", json::array({"t", json::array({json::array({1, 2})})})}}},
            {"kv_caches_base_addr", {4096}},
            {"block_lens", {128}}};
  auto m = DecodeXferMetadata(Pack(j));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->remote_tp_size, 1);
  EXPECT_EQ(m->remote_pp_size, 1);
  EXPECT_TRUE(m->kv_block_lens.empty());
}

TEST(SideChannelTest, HostileMetadataIsRejected) {
  json good = {{"remote_hostname", "h"}, {"remote_port", 7}, {"kv_caches_base_addr", {4096}}, {"block_lens", {128}}};
  EXPECT_TRUE(DecodeXferMetadata(Pack(good)).ok());
  auto bad = [&](auto mutate) {
    json j = good;
    mutate(j);
    return DecodeXferMetadata(Pack(j)).ok();
  };
  EXPECT_FALSE(bad([](json& j) { j.erase("remote_hostname"); }));
  EXPECT_FALSE(bad([](json& j) { j["remote_port"] = "7"; }));
  EXPECT_FALSE(bad([](json& j) { j["remote_port"] = 70000; }));
  EXPECT_FALSE(bad([](json& j) { j["remote_tp_rank"] = 3; }));
  EXPECT_FALSE(bad([](json& j) { j["req_blocks"] = {{"r", "not a tuple"}}; }));
  EXPECT_FALSE(bad([](json& j) { j["req_blocks"] = {{"r", json::array({"t", json::array({json::array({-1})})})}}; }));
  EXPECT_FALSE(bad([](json& j) { j["block_lens"] = {128, 256}; }));
  EXPECT_FALSE(bad([](json& j) { j["block_lens"] = {0}; }));
  EXPECT_FALSE(DecodeXferMetadata("\xc1").ok());
  EXPECT_FALSE(DecodeXferMetadata(Pack(json::array({1, 2}))).ok());
  EXPECT_FALSE(DecodeXferMetadata("").ok());
}

TEST(SideChannelTest, Responses) {
  XferResponse r;
  r.status = XferStatus::kContinue;
  r.ok_reqs = {"a", "b"};
  auto back = DecodeXferResponse(EncodeXferResponse(r));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->status, XferStatus::kContinue);
  EXPECT_EQ(back->ok_reqs.size(), 2u);
  EXPECT_TRUE(back->err_msg.empty());
  json fin = {{"status", 0}};
  auto f = DecodeXferResponse(Pack(fin));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->status, XferStatus::kFinish);
  json err = {{"status", 2}, {"err_reqs", {"x"}}, {"err_msg", "P num blocks less than D"}};
  auto e = DecodeXferResponse(Pack(err));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->err_msg, "P num blocks less than D");
  EXPECT_FALSE(DecodeXferResponse(Pack(json{{"status", 3}})).ok());
  EXPECT_FALSE(DecodeXferResponse(Pack(json{{"ok_reqs", {"a"}}})).ok());
}

}  // namespace
}  // namespace kvferry::connector
