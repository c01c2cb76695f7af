#pragma once
// --kv-transfer-config and the VLLM_MOONCAKE_* environment (PROTOCOL.md §1).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::connector {

enum class KvRole { kProducer, kConsumer, kBoth };
std::string_view KvRoleName(KvRole role);  // "kv_producer", ...

enum class LoadFailurePolicy { kFail, kRecompute };

struct KvTransferConfig {
  KvRole role = KvRole::kBoth;
  // Empty when absent: Connector::Create derives a stable one (StableEngineId).
  std::string engine_id;
  LoadFailurePolicy load_failure_policy = LoadFailurePolicy::kFail;
  int num_workers = 10;
  transfer::Protocol protocol = transfer::Protocol::kTcp;
  bool protocol_from_config = false;     // false: chosen by default (logged)
  std::string bootstrap_server_address;  // "host:port"; empty: the embedded server
  // Environment.
  uint16_t bootstrap_port = 8998;
  Duration abort_request_timeout = std::chrono::seconds(480);
  Duration connector_timeout = std::chrono::seconds(30);
  // KVFERRY_UNCLAIMED_PULL_TIMEOUT: how long a prefiller keeps a decoder's pull for a transfer_id
  // that no prefill request has claimed before answering ERROR (routers send the decode leg even
  // when the prefill leg never arrived).
  Duration unclaimed_pull_timeout = std::chrono::seconds(30);
  // Keys vLLM knows that mean nothing here (warned about, not rejected).
  std::vector<std::string> ignored_keys;
};

using EnvLookup = std::function<std::optional<std::string>(const char* name)>;
// The process environment.
std::optional<std::string> GetEnv(const char* name);

// Parses and validates. Errors name the offending key and say what is allowed:
// unknown keys, wrong JSON types, a kv_connector other than MooncakeConnector, a bad
// role/policy, num_workers outside 1..256, an unavailable mooncake_protocol (naming the
// alternatives), malformed environment values.
StatusOr<KvTransferConfig> ParseKvTransferConfig(std::string_view json, const EnvLookup& env = GetEnv);

// A random RFC 4122 version-4 UUID, lowercase with dashes.
std::string NewUuid4();
// The default engine_id of an instance: a UUID-shaped digest of (host, port, dp_rank), the same
// every time the same instance starts, so routers that cached it keep working after a restart.
std::string StableEngineId(const std::string& host, int port, int64_t dp_rank);

}  // namespace kvferry::connector
