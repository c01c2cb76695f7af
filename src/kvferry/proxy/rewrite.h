#pragma once
// Private to kvferry/proxy: request rewriting for the two legs, transfer ids and
// OpenAI error bodies. Pure functions, thread-safe.

#include <cstdint>
#include <string>
#include <string_view>

#include "kvferry/base/base.h"

namespace kvferry::proxy {

// "xfer-" + a random RFC 4122 version-4 UUID.
std::string NewTransferId();

struct LegParams {
  std::string transfer_id;
  std::string bootstrap_addr;  // "http://HOST:BOOTSTRAP_PORT"
  std::string engine_id;       // of the chosen dp rank
  int64_t dp_rank = 0;
  bool responses = false;  // POST /v1/responses: the prefill leg also caps max_output_tokens
};

struct Legs {
  std::string prefill_body;
  std::string decode_body;
  bool stream = false;  // the client asked for SSE
};

// Builds both legs from the client's JSON body (PROTOCOL.md §2 and §5). InvalidArgument
// when the body is not a JSON object.
StatusOr<Legs> RewriteRequest(std::string_view body, const LegParams& p);

// {"error": {"message", "type", "param": null, "code"}}; the type follows the status.
std::string ErrorJson(int http_status, std::string_view message);
// Maps an upstream failure to the status the client gets: 504 for a timeout, 502 otherwise.
int GatewayStatus(const Status& s);
// The "message" of an OpenAI error body, or the body itself (shortened) when it is not one.
std::string UpstreamMessage(std::string_view body);

}  // namespace kvferry::proxy
