#include "kvferry/server/api.h"

#include <fmt/format.h>

#include <cmath>
#include <set>
#include <nlohmann/json.hpp>

namespace kvferry::server {
namespace {

using json = nlohmann::json;

// Collects the first error with its parameter name.
class Parser {
 public:
  Parser(const json& body, std::string* param) : j_(body), param_(param) {}

  Status Fail(std::string_view field, std::string msg) {
    if (param_) *param_ = std::string(field);
    return InvalidArgumentError(std::move(msg));
  }
  const json* Get(const char* key) const {
    seen_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  Status Bool(const char* key, bool* out) {
    const json* v = Get(key);
    if (!v) return Status::Ok();
    if (!v->is_boolean()) return Fail(key, fmt::format("'{}' must be a boolean", key));
    *out = v->get<bool>();
    return Status::Ok();
  }
  Status Number(const char* key, double* out, double lo, double hi, bool lo_open = false) {
    const json* v = Get(key);
    if (!v) return Status::Ok();
    if (!v->is_number()) return Fail(key, fmt::format("'{}' must be a number", key));
    double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
      return Fail(key, fmt::format("'{}' must be in {}{}, {}], got {}", key, lo_open ? "(" : "[", lo, hi, x));
    }
    *out = x;
    return Status::Ok();
  }
  Status Int(const char* key, int64_t* out, int64_t lo, int64_t hi, bool* present = nullptr) {
    const json* v = Get(key);
    if (!v) return Status::Ok();
    if (!v->is_number_integer() && !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
                                      std::fabs(v->get<double>()) < 9e15)) {
      return Fail(key, fmt::format("'{}' must be an integer", key));
    }
    int64_t x = v->is_number_unsigned() ? (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX
                                                                                                 : static_cast<int64_t>(v->get<uint64_t>()))
                                        : v->is_number_integer() ? v->get<int64_t>() : static_cast<int64_t>(v->get<double>());
    if (x < lo || x > hi) return Fail(key, fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, x));
    *out = x;
    if (present) *present = true;
    return Status::Ok();
  }
  Status String(const char* key, std::string* out) {
    const json* v = Get(key);
    if (!v) return Status::Ok();
    if (!v->is_string()) return Fail(key, fmt::format("'{}' must be a string", key));
    *out = v->get<std::string>();
    return Status::Ok();
  }

  // Top-level keys of the body nothing looked at (ignored, as vLLM does), sorted.
  std::vector<std::string> Unread() const {
    std::vector<std::string> out;
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (seen_.count(it.key()) == 0) out.push_back(it.key());
    return out;
  }

 private:
  const json& j_;
  std::string* param_;
  mutable std::set<std::string, std::less<>> seen_;
};

Status TokenIds(Parser& p, const json& v, const std::string& field, std::vector<int32_t>* out) {
  for (size_t i = 0; i < v.size(); ++i) {
    const json& t = v[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX) {
      return p.Fail(field, fmt::format("'{}[{}]' is not a token id", field, i));
    }
    out->push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return Status::Ok();
}

Status ParsePrompt(Parser& p, const json* v, GenerateRequest* r) {
  if (!v) return p.Fail("prompt", "'prompt' is required");
  if (v->is_string()) {
    if (v->get<std::string>().empty()) return p.Fail("prompt", "'prompt' must not be empty");
    r->prompt_text = v->get<std::string>();
    return Status::Ok();
  }
  if (!v->is_array() || v->empty()) {
    return p.Fail("prompt", "'prompt' must be a non-empty string, a list of token ids, or a list with one of those");
  }
  if ((*v)[0].is_number()) return TokenIds(p, *v, "prompt", &r->prompt_ids);
  if (v->size() > 1) {
    return p.Fail("prompt", "batched prompts are not supported: send one prompt per request");
  }
  return ParsePrompt(p, &(*v)[0], r);
}

Status ParseMessages(Parser& p, const json* v, GenerateRequest* r) {
  if (!v) return p.Fail("messages", "'messages' is required");
  if (!v->is_array() || v->empty()) return p.Fail("messages", "'messages' must be a non-empty list");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    std::string field = fmt::format("messages[{}]", i);
    if (!m.is_object()) return p.Fail(field, fmt::format("'{}' must be an object", field));
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || role->get<std::string>().empty()) {
      return p.Fail(field + ".role", fmt::format("'{}.role' must be a non-empty string", field));
    }
    auto content = m.find("content");
    if (content != m.end() && !content->is_null() && !content->is_string()) {
      if (!content->is_array()) {
        return p.Fail(field + ".content", fmt::format("'{}.content' must be a string or a list of parts", field));
      }
      for (const json& part : *content) {
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
          return p.Fail(field + ".content", fmt::format("'{}.content' has a part without a type", field));
        }
        if (part["type"] != "text") {
          return p.Fail(field + ".content", fmt::format("'{}.content' has a '{}' part; only text is supported", field,
                                                        part["type"].get<std::string>()));
        }
        if (!part.contains("text") || !part["text"].is_string()) {
          return p.Fail(field + ".content", fmt::format("'{}.content' has a text part without text", field));
        }
      }
    }
  }
  r->messages_json = v->dump();
  return Status::Ok();
}

Status ParseKvTransferParams(Parser& p, const json* v, KvTransferParams* kv) {
  if (!v) return Status::Ok();
  if (!v->is_object()) return p.Fail("kv_transfer_params", "'kv_transfer_params' must be an object");
  kv->present = true;
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string& k = it.key();
    const json& x = it.value();
    std::string field = "kv_transfer_params." + k;
    if (k == "do_remote_decode" || k == "do_remote_prefill") {
      if (x.is_null()) continue;
      if (!x.is_boolean()) return p.Fail(field, fmt::format("'{}' must be a boolean", field));
      (k == "do_remote_decode" ? kv->do_remote_decode : kv->do_remote_prefill) = x.get<bool>();
    } else if (k == "transfer_id" || k == "remote_bootstrap_addr" || k == "remote_engine_id") {
      if (x.is_null()) continue;
      if (!x.is_string()) return p.Fail(field, fmt::format("'{}' must be a string", field));
      std::string s = x.get<std::string>();
      if (s.size() > 512) return p.Fail(field, fmt::format("'{}' is too long", field));
      (k == "transfer_id" ? kv->transfer_id : k == "remote_bootstrap_addr" ? kv->remote_bootstrap_addr
                                                                           : kv->remote_engine_id) = std::move(s);
    } else if (k == "remote_dp_rank") {
      if (x.is_null()) continue;
      if (!x.is_number_integer() || x.get<int64_t>() < 0) {
        return p.Fail(field, fmt::format("'{}' must be a non-negative integer", field));
      }
      kv->remote_dp_rank = x.get<int64_t>();
    }
    // Other keys (remote_host, remote_port, remote_block_ids of other connectors) are ignored.
  }
  if (kv->do_remote_decode && kv->do_remote_prefill) {
    return p.Fail("kv_transfer_params", "'kv_transfer_params' cannot set both do_remote_decode and do_remote_prefill");
  }
  if ((kv->do_remote_decode || kv->do_remote_prefill) && kv->transfer_id.empty()) {
    return p.Fail("kv_transfer_params.transfer_id", "'kv_transfer_params.transfer_id' is required for remote prefill/decode");
  }
  if (kv->do_remote_prefill && (kv->remote_bootstrap_addr.empty() || kv->remote_engine_id.empty())) {
    return p.Fail("kv_transfer_params",
                  "do_remote_prefill needs 'remote_bootstrap_addr' and 'remote_engine_id' in kv_transfer_params");
  }
  return Status::Ok();
}

}  // namespace

namespace {

// The text of a Responses API content: a string, or a list of input_text / output_text parts.
Status ResponsesText(Parser& p, const json& content, const std::string& field, std::string* out) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return Status::Ok();
  }
  if (!content.is_array()) return p.Fail(field, fmt::format("'{}' must be a string or a list of parts", field));
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string f = fmt::format("{}[{}]", field, i);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      return p.Fail(f, fmt::format("'{}' must be an object with a type", f));
    const std::string type = part["type"].get<std::string>();
    if (type != "input_text" && type != "output_text" && type != "text")
      return p.Fail(f, fmt::format("'{}' is a '{}' part; only text parts are supported", f, type));
    if (!part.contains("text") || !part["text"].is_string())
      return p.Fail(f, fmt::format("'{}' has no text", f));
    *out += part["text"].get<std::string>();
  }
  return Status::Ok();
}

// A /v1/responses body as the equivalent chat completions body (same sampling fields).
StatusOr<json> ResponsesAsChat(const json& j, std::string* param, std::string* instructions) {
  Parser p(j, param);
  json chat = json::object();
  json messages = json::array();
  if (const json* ins = p.Get("instructions")) {
    if (!ins->is_string()) return p.Fail("instructions", "'instructions' must be a string");
    *instructions = ins->get<std::string>();
    if (!instructions->empty()) messages.push_back({{"role", "system"}, {"content", *instructions}});
  }
  const json* input = p.Get("input");
  if (input == nullptr) return p.Fail("input", "'input' is required");
  if (input->is_string()) {
    messages.push_back({{"role", "user"}, {"content", input->get<std::string>()}});
  } else if (input->is_array() && !input->empty()) {
    for (size_t i = 0; i < input->size(); ++i) {
      const json& item = (*input)[i];
      const std::string f = fmt::format("input[{}]", i);
      if (!item.is_object()) return p.Fail(f, fmt::format("'{}' must be an object", f));
      if (item.contains("type") && !(item["type"].is_string() && item["type"] == "message"))
        return p.Fail(f + ".type", fmt::format("'{}.type' must be \"message\"; other input items are not supported", f));
      if (!item.contains("role") || !item["role"].is_string())
        return p.Fail(f + ".role", fmt::format("'{}.role' must be a string", f));
      const std::string role = item["role"].get<std::string>();
      if (role != "user" && role != "assistant" && role != "system" && role != "developer")
        return p.Fail(f + ".role", fmt::format("'{}.role' '{}' is not user, assistant, system or developer", f, role));
      std::string text;
      if (!item.contains("content")) return p.Fail(f + ".content", fmt::format("'{}.content' is required", f));
      KVF_RETURN_IF_ERROR(ResponsesText(p, item["content"], f + ".content", &text));
      messages.push_back({{"role", role == "developer" ? "system" : role}, {"content", text}});
    }
  } else {
    return p.Fail("input", "'input' must be a string or a non-empty list of messages");
  }
  chat["messages"] = std::move(messages);
  // max_output_tokens is the Responses name; a router's prefill leg may cap max_tokens instead.
  int64_t cap = 0;
  bool have_cap = false, have_max = false;
  int64_t max = 0;
  KVF_RETURN_IF_ERROR(p.Int("max_output_tokens", &cap, 1, INT32_MAX, &have_cap));
  KVF_RETURN_IF_ERROR(p.Int("max_tokens", &max, 1, INT32_MAX, &have_max));
  if (have_cap || have_max) chat["max_tokens"] = have_cap && have_max ? std::min(cap, max) : have_cap ? cap : max;
  for (const char* k : {"model", "stream", "temperature", "top_p", "seed", "kv_transfer_params", "min_tokens",
                        "top_k", "ignore_eos", "stop", "presence_penalty", "frequency_penalty"})
    if (const json* v = p.Get(k)) chat[k] = *v;
  // Accepted and without effect here (no stored responses, no tools).
  for (const char* k : {"store", "metadata", "user", "parallel_tool_calls", "tool_choice", "truncation", "text",
                        "reasoning", "service_tier", "background", "include"})
    (void)p.Get(k);
  if (const json* t = p.Get("tools"); t && !(t->is_array() && t->empty()))
    return p.Fail("tools", "'tools' are not supported on /v1/responses");
  if (p.Get("previous_response_id"))
    return p.Fail("previous_response_id", "'previous_response_id' is not supported (responses are not stored)");
  std::vector<std::string> unread = p.Unread();
  chat["__ignored"] = unread;
  return chat;
}

}  // namespace

StatusOr<GenerateRequest> ParseGenerateRequest(std::string_view body, GenerateRequest::Kind kind, std::string* param) {
  if (param) param->clear();
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("the request body is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("the request body must be a JSON object");
  if (kind == GenerateRequest::Kind::kResponses) {
    std::string instructions;
    KVF_ASSIGN_OR_RETURN(json chat, ResponsesAsChat(j, param, &instructions));
    std::vector<std::string> ignored = chat["__ignored"].get<std::vector<std::string>>();
    chat.erase("__ignored");
    KVF_ASSIGN_OR_RETURN(GenerateRequest r, ParseGenerateRequest(chat.dump(), GenerateRequest::Kind::kChat, param));
    r.kind = kind;
    r.instructions = std::move(instructions);
    r.ignored_fields = std::move(ignored);
    return r;
  }
  Parser p(j, param);
  GenerateRequest r;
  r.kind = kind;
  KVF_RETURN_IF_ERROR(p.String("model", &r.model));
  if (kind == GenerateRequest::Kind::kCompletion) {
    KVF_RETURN_IF_ERROR(ParsePrompt(p, p.Get("prompt"), &r));
    bool echo = false;
    KVF_RETURN_IF_ERROR(p.Bool("echo", &echo));
    if (echo) return p.Fail("echo", "'echo' is not supported");
    if (const json* s = p.Get("suffix"); s && !(s->is_string() && s->get<std::string>().empty())) {
      return p.Fail("suffix", "'suffix' is not supported");
    }
    int64_t lp = -1;
    KVF_RETURN_IF_ERROR(p.Int("logprobs", &lp, 0, kMaxLogprobs));
    r.logprobs = static_cast<int>(lp);
  } else {
    KVF_RETURN_IF_ERROR(ParseMessages(p, p.Get("messages"), &r));
    KVF_RETURN_IF_ERROR(p.Bool("add_generation_prompt", &r.add_generation_prompt));
    KVF_RETURN_IF_ERROR(p.Bool("continue_final_message", &r.continue_final_message));
    if (r.continue_final_message && r.add_generation_prompt && p.Get("add_generation_prompt")) {
      return p.Fail("continue_final_message", "'continue_final_message' and 'add_generation_prompt' cannot both be true");
    }
    if (r.continue_final_message) r.add_generation_prompt = false;
    if (const json* k = p.Get("chat_template_kwargs")) {
      if (!k->is_object()) return p.Fail("chat_template_kwargs", "'chat_template_kwargs' must be an object");
      r.chat_template_kwargs_json = k->dump();
    }
    if (const json* t = p.Get("tools")) {
      if (!t->is_array()) return p.Fail("tools", "'tools' must be a list");
      if (!t->empty()) r.tools_json = t->dump();
    }
    bool lp = false;
    KVF_RETURN_IF_ERROR(p.Bool("logprobs", &lp));
    int64_t top = 0;
    bool top_present = false;
    KVF_RETURN_IF_ERROR(p.Int("top_logprobs", &top, 0, kMaxLogprobs, &top_present));
    if (top_present && top > 0 && !lp) return p.Fail("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.logprobs = lp ? static_cast<int>(top) : -1;
  }
  KVF_RETURN_IF_ERROR(p.Bool("stream", &r.stream));
  if (const json* so = p.Get("stream_options")) {
    if (!r.stream) return p.Fail("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (!so->is_object()) return p.Fail("stream_options", "'stream_options' must be an object");
    auto iu = so->find("include_usage");
    if (iu != so->end() && !iu->is_null()) {
      if (!iu->is_boolean()) return p.Fail("stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
      r.include_usage = iu->get<bool>();
    }
  }
  int64_t n = 1;
  KVF_RETURN_IF_ERROR(p.Int("n", &n, 1, 128));
  r.n = static_cast<int>(n);
  int64_t max_tokens = 0;
  bool have_max = false;
  KVF_RETURN_IF_ERROR(p.Int("max_tokens", &max_tokens, 1, INT32_MAX, &have_max));
  if (kind == GenerateRequest::Kind::kChat) {
    KVF_RETURN_IF_ERROR(p.Int("max_completion_tokens", &max_tokens, 1, INT32_MAX, &have_max));
  }
  if (have_max) r.max_tokens = max_tokens;
  KVF_RETURN_IF_ERROR(p.Number("temperature", &r.temperature, 0.0, 100.0));
  KVF_RETURN_IF_ERROR(p.Number("top_p", &r.top_p, 0.0, 1.0, /*lo_open=*/true));
  int64_t top_k = 0;
  KVF_RETURN_IF_ERROR(p.Int("top_k", &top_k, -1, 1 << 24));
  r.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);
  KVF_RETURN_IF_ERROR(p.Number("min_p", &r.min_p, 0.0, 1.0));
  KVF_RETURN_IF_ERROR(p.Number("presence_penalty", &r.presence_penalty, -2.0, 2.0));
  KVF_RETURN_IF_ERROR(p.Number("frequency_penalty", &r.frequency_penalty, -2.0, 2.0));
  KVF_RETURN_IF_ERROR(p.Number("repetition_penalty", &r.repetition_penalty, 0.0, 10.0, /*lo_open=*/true));
  if (const json* s = p.Get("seed")) {
    if (!s->is_number_integer()) return p.Fail("seed", "'seed' must be an integer");
    r.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  }
  if (const json* s = p.Get("stop")) {
    if (s->is_string()) {
      if (!s->get<std::string>().empty()) r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 64) return p.Fail("stop", "'stop' has more than 64 strings");
      for (const json& x : *s) {
        if (!x.is_string()) return p.Fail("stop", "'stop' must be a string or a list of strings");
        if (x.get<std::string>().empty()) return p.Fail("stop", "'stop' strings must not be empty");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      return p.Fail("stop", "'stop' must be a string or a list of strings");
    }
  }
  if (const json* s = p.Get("stop_token_ids")) {
    if (!s->is_array()) return p.Fail("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    KVF_RETURN_IF_ERROR(TokenIds(p, *s, "stop_token_ids", &r.stop_token_ids));
  }
  KVF_RETURN_IF_ERROR(p.Bool("ignore_eos", &r.ignore_eos));
  int64_t min_tokens = 0;
  KVF_RETURN_IF_ERROR(p.Int("min_tokens", &min_tokens, 0, INT32_MAX));
  r.min_tokens = static_cast<int>(min_tokens);
  const json* kvp = p.Get("kv_transfer_params");
  const bool prefill_leg = kvp != nullptr && kvp->is_object() && kvp->contains("do_remote_decode") &&
                           (*kvp)["do_remote_decode"].is_boolean() && (*kvp)["do_remote_decode"].get<bool>();
  if (r.max_tokens && r.min_tokens > *r.max_tokens && !prefill_leg) {
    return p.Fail("min_tokens", "'min_tokens' must not exceed 'max_tokens'");
  }
  KVF_RETURN_IF_ERROR(p.Bool("include_stop_str_in_output", &r.include_stop_str_in_output));
  KVF_RETURN_IF_ERROR(p.Bool("skip_special_tokens", &r.skip_special_tokens));
  KVF_RETURN_IF_ERROR(p.Bool("return_token_ids", &r.return_token_ids));
  KVF_RETURN_IF_ERROR(ParseKvTransferParams(p, p.Get("kv_transfer_params"), &r.kv));
  if (r.kv.do_remote_decode && r.max_tokens && r.min_tokens > *r.max_tokens) {
    // A router's prefill leg caps max_tokens at 1 and may keep the client's min_tokens.
    r.min_tokens = static_cast<int>(*r.max_tokens);
  }
  // Names vLLM or SGLang clients send that have no effect here are ignored like any other.
  for (const char* k : {"user", "logit_bias", "parallel_tool_calls", "tool_choice", "response_format", "metadata",
                        "store", "service_tier", "priority", "request_id"})
    (void)p.Get(k);
  r.ignored_fields = p.Unread();
  return r;
}

KvTransferParams PeekKvTransferParams(std::string_view body) {
  KvTransferParams kv;
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return kv;
  Parser p(j, nullptr);
  if (!ParseKvTransferParams(p, p.Get("kv_transfer_params"), &kv).ok()) {
    // Only the leg and its transfer_id matter to a refusal.
    kv.present = kv.present && !kv.transfer_id.empty() && kv.do_remote_decode != kv.do_remote_prefill;
  }
  return kv;
}

int HttpStatusFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk: return 200;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kFailedPrecondition: return 400;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kCancelled: return 499;
    case StatusCode::kUnimplemented: return 501;
    case StatusCode::kResourceExhausted:
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

std::string_view ErrorTypeFor(int http_status) {
  switch (http_status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 403: return "PermissionDeniedError";
    case 404: return "NotFoundError";
    case 409: return "ConflictError";
    case 413: return "BadRequestError";
    case 422: return "UnprocessableEntityError";
    case 429: return "RateLimitError";
    case 499: return "ClientClosedRequest";
    case 501: return "NotImplementedError";
    case 503: return "ServiceUnavailableError";
    case 504: return "TimeoutError";
    default: return http_status >= 500 ? "InternalServerError" : "BadRequestError";
  }
}

std::string ErrorJson(int http_status, std::string_view message, std::string_view param) {
  json e = {{"message", message}, {"type", ErrorTypeFor(http_status)}, {"code", http_status}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  return json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace kvferry::server
