// Request rewriting for the prefill and decode legs.
#include "kvferry/proxy/rewrite.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <random>

namespace kvferry::proxy {

using json = nlohmann::json;

std::string NewTransferId() {
  thread_local std::mt19937_64 rng{[] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }()};
  uint64_t hi = rng(), lo = rng();
  hi = (hi & ~0xF000ull) | 0x4000ull;                                   // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull;            // variant 10xx
  return fmt::format("xfer-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48,
                     lo & 0xFFFFFFFFFFFFull);
}

StatusOr<Legs> RewriteRequest(std::string_view body, const LegParams& p) {
  json req = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) return InvalidArgumentError("the request body is not valid JSON");
  if (!req.is_object()) return InvalidArgumentError("the request body must be a JSON object");
  Legs legs;
  auto s = req.find("stream");
  legs.stream = s != req.end() && s->is_boolean() && s->get<bool>();

  json pre = req;
  pre["max_tokens"] = 1;
  if (p.responses) pre["max_output_tokens"] = 1;
  if (pre.contains("max_completion_tokens")) pre["max_completion_tokens"] = 1;
  pre["stream"] = false;
  pre.erase("stream_options");
  pre["kv_transfer_params"] = json{{"do_remote_decode", true}, {"do_remote_prefill", false}, {"transfer_id", p.transfer_id}};
  legs.prefill_body = pre.dump();

  req["kv_transfer_params"] = json{{"do_remote_prefill", true},
                                   {"do_remote_decode", false},
                                   {"remote_bootstrap_addr", p.bootstrap_addr},
                                   {"remote_engine_id", p.engine_id},
                                   {"remote_dp_rank", p.dp_rank},
                                   {"transfer_id", p.transfer_id}};
  legs.decode_body = req.dump();
  return legs;
}

std::string ErrorJson(int http_status, std::string_view message) {
  std::string_view type = "InternalServerError";
  if (http_status == 400) type = "BadRequestError";
  else if (http_status == 401) type = "AuthenticationError";
  else if (http_status == 404) type = "NotFoundError";
  else if (http_status == 405) type = "MethodNotAllowedError";
  else if (http_status == 502) type = "BadGatewayError";
  else if (http_status == 503) type = "ServiceUnavailableError";
  else if (http_status == 504) type = "GatewayTimeoutError";
  else if (http_status >= 400 && http_status < 500) type = "BadRequestError";
  json j{{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", http_status}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

int GatewayStatus(const Status& s) { return s.code() == StatusCode::kDeadlineExceeded ? 504 : 502; }

std::string UpstreamMessage(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object()) {
    auto e = j.find("error");
    if (e != j.end()) {
      if (e->is_object() && e->contains("message") && (*e)["message"].is_string()) return (*e)["message"].get<std::string>();
      if (e->is_string()) return e->get<std::string>();
    }
    auto m = j.find("message");
    if (m != j.end() && m->is_string()) return m->get<std::string>();
  }
  std::string s(body.substr(0, 300));
  if (body.size() > 300) s += "...";
  return s.empty() ? "(empty body)" : s;
}

}  // namespace kvferry::proxy
