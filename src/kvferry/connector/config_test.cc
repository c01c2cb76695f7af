#include <gtest/gtest.h>

#include <map>

#include "kvferry/connector/connector.h"

namespace kvferry::connector {
namespace {

EnvLookup Env(std::map<std::string, std::string> m) {
  return [m](const char* name) -> std::optional<std::string> {
    auto it = m.find(name);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}

TEST(KvTransferConfigTest, SeedCommandLinesParse) {
  auto p = ParseKvTransferConfig(R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer"})", Env({}));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->role, KvRole::kProducer);
  EXPECT_EQ(p->num_workers, 10);
  EXPECT_EQ(p->protocol, transfer::Protocol::kTcp);
  EXPECT_FALSE(p->protocol_from_config);
  EXPECT_EQ(p->load_failure_policy, LoadFailurePolicy::kFail);
  EXPECT_EQ(p->bootstrap_port, 8998);
  EXPECT_EQ(p->abort_request_timeout, std::chrono::seconds(480));
  EXPECT_EQ(p->connector_timeout, std::chrono::seconds(30));
  EXPECT_EQ(p->unclaimed_pull_timeout, std::chrono::seconds(30));
  EXPECT_TRUE(p->engine_id.empty());  // derived by Connector::Create (StableEngineId)
  auto d = ParseKvTransferConfig(R"({"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"})", Env({}));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->role, KvRole::kConsumer);
}

TEST(KvTransferConfigTest, StableEngineIdDependsOnlyOnTheInstance) {
  const std::string a = StableEngineId("10.0.0.2", 8010, 0);
  EXPECT_EQ(a.size(), 36u);
  EXPECT_EQ(a[8], '-');
  EXPECT_EQ(a, StableEngineId("10.0.0.2", 8010, 0));  // same instance, same id (after a restart)
  EXPECT_NE(a, StableEngineId("10.0.0.2", 8011, 0));
  EXPECT_NE(a, StableEngineId("10.0.0.3", 8010, 0));
  EXPECT_NE(a, StableEngineId("10.0.0.2", 8010, 1));
}

TEST(KvTransferConfigTest, EveryKeyAndTheEnvironment) {
  auto c = ParseKvTransferConfig(
      R"({"kv_connector":"MooncakeConnector","kv_role":"kv_both","engine_id":"e1",
          "kv_load_failure_policy":"recompute","kv_buffer_device":"cuda",
          "kv_connector_extra_config":{"num_workers":4,"mooncake_protocol":"shm",
                                       "bootstrap_server_address":"10.0.0.9:8998"}})",
      Env({{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "9100"},
           {"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "2.5"},
           {"VLLM_MOONCAKE_CONNECTOR_TIMEOUT", "7"},
           {"KVFERRY_UNCLAIMED_PULL_TIMEOUT", "4"}}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->role, KvRole::kBoth);
  EXPECT_EQ(c->engine_id, "e1");
  EXPECT_EQ(c->load_failure_policy, LoadFailurePolicy::kRecompute);
  EXPECT_EQ(c->num_workers, 4);
  EXPECT_EQ(c->protocol, transfer::Protocol::kShm);
  EXPECT_TRUE(c->protocol_from_config);
  EXPECT_EQ(c->bootstrap_server_address, "10.0.0.9:8998");
  EXPECT_EQ(c->bootstrap_port, 9100);
  EXPECT_EQ(c->abort_request_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(c->connector_timeout, std::chrono::seconds(7));
  EXPECT_EQ(c->unclaimed_pull_timeout, std::chrono::seconds(4));
  ASSERT_EQ(c->ignored_keys.size(), 1u);
  EXPECT_EQ(c->ignored_keys[0], "kv_buffer_device");
}

TEST(KvTransferConfigTest, ErrorsNameTheProblem) {
  struct Case {
    const char* json;
    const char* needle;
  } cases[] = {
      {"not json", "not valid JSON"},
      {"[1]", "JSON object"},
      {R"({"kv_role":"kv_producer"})", "kv_connector"},
      {R"({"kv_connector":"NixlConnector","kv_role":"kv_producer"})", "NixlConnector"},
      {R"({"kv_connector":"MooncakeConnector"})", "kv_role"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"prefill"})", "prefill"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_rolee":1})", "kv_rolee"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":1})", "kv_role"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_load_failure_policy":"retry"})", "retry"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"num_worker":3}})",
       "num_worker"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"num_workers":"3"}})",
       "num_workers"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"num_workers":0}})",
       "1..256"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"mooncake_protocol":"rdma"}})",
       "tcp or shm"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"mooncake_protocol":"udp"}})",
       "udp"},
      {R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"bootstrap_server_address":"nohost"}})",
       "host:port"},
  };
  for (const Case& c : cases) {
    auto r = ParseKvTransferConfig(c.json, Env({}));
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status().ToString();
  }
  auto bad_env = ParseKvTransferConfig(R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer"})",
                                       Env({{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "99999"}}));
  EXPECT_NE(bad_env.status().message().find("VLLM_MOONCAKE_BOOTSTRAP_PORT"), std::string::npos);
  auto bad_t = ParseKvTransferConfig(R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer"})",
                                     Env({{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "-1"}}));
  EXPECT_FALSE(bad_t.ok());
}

TEST(KvTransferConfigTest, Uuid4Format) {
  std::string u = NewUuid4();
  ASSERT_EQ(u.size(), 36u);
  EXPECT_EQ(u[8], '-');
  EXPECT_EQ(u[14], '4');
  EXPECT_TRUE(u[19] == '8' || u[19] == '9' || u[19] == 'a' || u[19] == 'b');
}

}  // namespace
}  // namespace kvferry::connector
