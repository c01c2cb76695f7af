#include "kvferry/connector/config.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

namespace kvferry::connector {
namespace {

using json = nlohmann::json;

const std::set<std::string, std::less<>> kIgnoredVllmKeys = {
    "kv_buffer_device",         "kv_buffer_size",         "kv_rank", "kv_parallel_size", "kv_ip", "kv_port",
    "kv_connector_module_path", "enable_permute_local_kv"};

std::string TypeName(const json& j) {
  return j.type_name();
}

StatusOr<double> ParseSeconds(const char* name, const std::string& text) {
  double v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || !(v > 0) || v > 1e7) {
    return InvalidArgumentError(fmt::format("environment {}='{}' is not a positive number of seconds", name, text));
  }
  return v;
}

}  // namespace

std::string_view KvRoleName(KvRole role) {
  switch (role) {
    case KvRole::kProducer: return "kv_producer";
    case KvRole::kConsumer: return "kv_consumer";
    case KvRole::kBoth: return "kv_both";
  }
  return "?";
}

std::optional<std::string> GetEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

std::string NewUuid4() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  uint64_t hi = rng(), lo = rng();
  hi = (hi & 0xFFFFFFFFFFFF0FFFull) | 0x0000000000004000ull;
  lo = (lo & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull;
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48,
                     lo & 0xFFFFFFFFFFFFull);
}

StatusOr<KvTransferConfig> ParseKvTransferConfig(std::string_view text, const EnvLookup& env) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("--kv-transfer-config is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("--kv-transfer-config must be a JSON object");
  KvTransferConfig c;
  bool have_connector = false, have_role = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    auto need_string = [&]() -> Status {
      if (!v.is_string()) {
        return InvalidArgumentError(
            fmt::format("--kv-transfer-config: '{}' must be a string, not {}", key, TypeName(v)));
      }
      return Status::Ok();
    };
    if (key == "kv_connector") {
      KVF_RETURN_IF_ERROR(need_string());
      if (v.get<std::string>() != "MooncakeConnector") {
        return InvalidArgumentError(fmt::format(
            "--kv-transfer-config: kv_connector '{}' is not supported (the only connector is MooncakeConnector)",
            v.get<std::string>()));
      }
      have_connector = true;
    } else if (key == "kv_role") {
      KVF_RETURN_IF_ERROR(need_string());
      std::string r = v.get<std::string>();
      if (r == "kv_producer")
        c.role = KvRole::kProducer;
      else if (r == "kv_consumer")
        c.role = KvRole::kConsumer;
      else if (r == "kv_both")
        c.role = KvRole::kBoth;
      else
        return InvalidArgumentError(
            fmt::format("--kv-transfer-config: kv_role '{}' is not one of kv_producer, kv_consumer, kv_both", r));
      have_role = true;
    } else if (key == "engine_id") {
      if (v.is_null()) continue;
      KVF_RETURN_IF_ERROR(need_string());
      c.engine_id = v.get<std::string>();
      if (c.engine_id.empty()) return InvalidArgumentError("--kv-transfer-config: engine_id must not be empty");
    } else if (key == "kv_load_failure_policy") {
      KVF_RETURN_IF_ERROR(need_string());
      std::string p = v.get<std::string>();
      if (p == "fail")
        c.load_failure_policy = LoadFailurePolicy::kFail;
      else if (p == "recompute")
        c.load_failure_policy = LoadFailurePolicy::kRecompute;
      else
        return InvalidArgumentError(
            fmt::format("--kv-transfer-config: kv_load_failure_policy '{}' is not one of fail, recompute", p));
    } else if (key == "kv_connector_extra_config") {
      if (v.is_null()) continue;
      if (!v.is_object()) {
        return InvalidArgumentError(
            fmt::format("--kv-transfer-config: kv_connector_extra_config must be an object, not {}", TypeName(v)));
      }
      for (auto e = v.begin(); e != v.end(); ++e) {
        const std::string& k = e.key();
        const json& x = e.value();
        if (k == "num_workers") {
          if (!x.is_number_integer()) {
            return InvalidArgumentError(fmt::format(
                "--kv-transfer-config: kv_connector_extra_config.num_workers must be an integer, not {}", TypeName(x)));
          }
          int64_t n = x.get<int64_t>();
          if (n < 1 || n > 256) {
            return InvalidArgumentError(
                fmt::format("--kv-transfer-config: kv_connector_extra_config.num_workers {} is outside 1..256", n));
          }
          c.num_workers = static_cast<int>(n);
        } else if (k == "mooncake_protocol") {
          if (!x.is_string()) {
            return InvalidArgumentError(fmt::format(
                "--kv-transfer-config: kv_connector_extra_config.mooncake_protocol must be a string, not {}",
                TypeName(x)));
          }
          StatusOr<transfer::Protocol> p = transfer::ParseProtocol(x.get<std::string>());
          if (!p.ok()) {
            return Status(p.status().code(), fmt::format("--kv-transfer-config: kv_connector_extra_config."
                                                         "mooncake_protocol: {}",
                                                         p.status().message()));
          }
          c.protocol = *p;
          c.protocol_from_config = true;
        } else if (k == "bootstrap_server_address") {
          if (!x.is_string() || x.get<std::string>().empty()) {
            return InvalidArgumentError(
                "--kv-transfer-config: kv_connector_extra_config.bootstrap_server_address must be a non-empty "
                "\"host:port\" string");
          }
          std::string a = x.get<std::string>();
          size_t colon = a.rfind(':');
          unsigned port = 0;
          if (colon == std::string::npos || colon == 0 ||
              std::from_chars(a.data() + colon + 1, a.data() + a.size(), port).ec != std::errc() || port == 0 ||
              port > 65535) {
            return InvalidArgumentError(fmt::format(
                "--kv-transfer-config: kv_connector_extra_config.bootstrap_server_address '{}' is not host:port", a));
          }
          c.bootstrap_server_address = a;
        } else {
          return InvalidArgumentError(
              fmt::format("--kv-transfer-config: unknown key kv_connector_extra_config.{} (known: num_workers, "
                          "mooncake_protocol, bootstrap_server_address)",
                          k));
        }
      }
    } else if (kIgnoredVllmKeys.count(key)) {
      c.ignored_keys.push_back(key);
    } else {
      return InvalidArgumentError(fmt::format(
          "--kv-transfer-config: unknown key '{}' (known: kv_connector, kv_role, engine_id, kv_load_failure_policy, "
          "kv_connector_extra_config)",
          key));
    }
  }
  if (!have_connector)
    return InvalidArgumentError("--kv-transfer-config: 'kv_connector' is required (\"MooncakeConnector\")");
  if (!have_role)
    return InvalidArgumentError("--kv-transfer-config: 'kv_role' is required (kv_producer, kv_consumer or kv_both)");
  if (auto p = env("VLLM_MOONCAKE_BOOTSTRAP_PORT")) {
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(p->data(), p->data() + p->size(), port);
    if (ec != std::errc() || ptr != p->data() + p->size() || port == 0 || port > 65535) {
      return InvalidArgumentError(fmt::format("environment VLLM_MOONCAKE_BOOTSTRAP_PORT='{}' is not a port", *p));
    }
    c.bootstrap_port = static_cast<uint16_t>(port);
  }
  if (auto t = env("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT")) {
    KVF_ASSIGN_OR_RETURN(double s, ParseSeconds("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", *t));
    c.abort_request_timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
  }
  if (auto t = env("VLLM_MOONCAKE_CONNECTOR_TIMEOUT")) {
    KVF_ASSIGN_OR_RETURN(double s, ParseSeconds("VLLM_MOONCAKE_CONNECTOR_TIMEOUT", *t));
    c.connector_timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
  }
  if (auto t = env("KVFERRY_UNCLAIMED_PULL_TIMEOUT")) {
    KVF_ASSIGN_OR_RETURN(double s, ParseSeconds("KVFERRY_UNCLAIMED_PULL_TIMEOUT", *t));
    c.unclaimed_pull_timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
  }
  return c;
}

std::string StableEngineId(const std::string& host, int port, int64_t dp_rank) {
  // Two FNV-1a 64-bit digests with different offsets over the identity; shaped as a UUID
  // (version nibble 8 = "custom", RFC 9562) so it looks like what vLLM users expect.
  const std::string key = fmt::format("kvferry-engine|{}|{}|{}", host, port, dp_rank);
  auto fnv = [&](uint64_t h) {
    for (unsigned char ch : key) {
      h ^= ch;
      h *= 0x100000001b3ull;
    }
    return h;
  };
  uint64_t hi = fnv(0xcbf29ce484222325ull), lo = fnv(0x84222325cbf29ce4ull ^ hi);
  hi = (hi & 0xFFFFFFFFFFFF0FFFull) | 0x0000000000008000ull;
  lo = (lo & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull;
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48,
                     lo & 0xFFFFFFFFFFFFull);
}

}  // namespace kvferry::connector
