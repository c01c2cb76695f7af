#pragma once
// The OpenAI-compatible request surface (PROTOCOL.md §2): parsing and validating
// /v1/completions and /v1/chat/completions bodies into one neutral struct, and the
// one mapping from Status to an HTTP status and an OpenAI error object. Pure
// functions, no engine types: the server maps GenerateRequest onto the engine.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::server {

// vLLM's request extension for disaggregated prefill/decode.
struct KvTransferParams {
  bool present = false;
  bool do_remote_decode = false;   // proxy → prefiller
  bool do_remote_prefill = false;  // proxy → decoder
  std::string transfer_id;
  std::string remote_bootstrap_addr;  // "http://HOST:PORT"
  std::string remote_engine_id;
  std::optional<int64_t> remote_dp_rank;  // sent by older proxies; informational
};

struct GenerateRequest {
  // kResponses: POST /v1/responses (OpenAI Responses API), turned into a chat request: `input`
  // (text, or message items) after `instructions` (a system message); max_output_tokens.
  enum class Kind { kCompletion, kChat, kResponses };
  Kind kind = Kind::kCompletion;
  std::string model;  // empty: the served model
  // kCompletion: exactly one of these.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
  // kChat: the `messages` array as JSON text (rendered by the model's chat template).
  std::string messages_json;
  bool add_generation_prompt = true;
  bool continue_final_message = false;
  std::string chat_template_kwargs_json;  // JSON object or empty
  std::string tools_json;                 // JSON array or empty
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int n = 1;
  std::optional<int64_t> max_tokens;  // max_tokens, or max_completion_tokens
  double temperature = 1.0;
  double top_p = 1.0;
  int top_k = 0;  // 0 = off (-1 accepted as off, like vLLM)
  double min_p = 0.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  double repetition_penalty = 1.0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int min_tokens = 0;
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;
  // vLLM extension: also return the prompt's and each choice's token ids.
  bool return_token_ids = false;
  // Completions: `logprobs` (top-n, 0..20). Chat: `logprobs: true` + `top_logprobs` (0..20).
  // -1 = no logprobs.
  int logprobs = -1;
  KvTransferParams kv;
  // kResponses: echoed in the response object.
  std::string instructions;
  // Top-level fields of the body this server does not use (ignored, as vLLM does).
  std::vector<std::string> ignored_fields;
};

inline constexpr int kMaxLogprobs = 20;

// Parses and validates a request body. On error the Status is InvalidArgument and
// `*param` (if given) names the offending field ("temperature", "messages[2].role").
StatusOr<GenerateRequest> ParseGenerateRequest(std::string_view body, GenerateRequest::Kind kind,
                                               std::string* param = nullptr);

// The kv_transfer_params of a body that may not parse as a request (best effort: `present`
// only when the leg and transfer_id could be read), so a refusal can still be told to the
// connector.
KvTransferParams PeekKvTransferParams(std::string_view body);

// The one Status → HTTP mapping: InvalidArgument/OutOfRange/FailedPrecondition 400,
// Unauthenticated 401, PermissionDenied 403, NotFound 404, AlreadyExists 409,
// ResourceExhausted 503 (overloaded, retry), Unavailable 503, DeadlineExceeded 504,
// Cancelled 499, Unimplemented 501, everything else 500.
int HttpStatusFor(const Status& status);
// "BadRequestError", "AuthenticationError", "NotFoundError", ... for an HTTP status.
std::string_view ErrorTypeFor(int http_status);
// {"error": {"message", "type", "param", "code"}} (param null when empty).
std::string ErrorJson(int http_status, std::string_view message, std::string_view param = {});

}  // namespace kvferry::server
