// POST /v1/completions and /v1/chat/completions: a GenerateRequest becomes n engine requests;
// their outputs become one JSON answer or a stream of Server-Sent Events.
//
// Threading: HandleGenerate runs on an io thread; OnOutput on the engine's scheduler thread;
// the client-gone callback on an io thread. A Call's mutex orders them: output produced before
// the io thread has started the response is buffered and flushed when it does.
#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>

#include "kvferry/connector/connector.h"
#include "kvferry/server/frontend_internal.h"
#include "kvferry/server/stop_text.h"

namespace kvferry::server {

using json = nlohmann::json;

namespace {

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

struct Choice {
  Choice(const tokenizer::Tokenizer& tok, const GenerateRequest& g)
      : detok(tok, g.skip_special_tokens), stop(g.stop, g.include_stop_str_in_output) {}
  std::string engine_id;
  tokenizer::IncrementalDetokenizer detok;
  StopMatcher stop;
  std::string text;                       // released text (non-streaming answer)
  std::vector<int32_t> tokens;            // counted completion tokens
  std::vector<engine::TokenLogprob> lps;  // non-streaming answer
  int64_t text_offset = 0;                // completions logprobs.text_offset
  bool done = false;                      // nothing more goes to the client
  bool final = false;                     // the engine's last output arrived
  engine::FinishReason reason = engine::FinishReason::kNone;
  Status error;
  double last_time = -1;
};

}  // namespace

class Call {
 public:
  Call(std::shared_ptr<Shared> s, std::shared_ptr<http::Responder> r, GenerateRequest g)
      : shared(std::move(s)), resp(std::move(r)), req(std::move(g)) {}

  const std::shared_ptr<Shared> shared;
  const std::shared_ptr<http::Responder> resp;
  const GenerateRequest req;
  bool chat() const { return req.kind == GenerateRequest::Kind::kChat; }
  bool responses() const { return req.kind == GenerateRequest::Kind::kResponses; }
  std::string id;
  std::string model;
  int64_t created = 0;
  double arrival = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids;  // sorted: the model's and the request's
  std::vector<http::Header> headers;
  bool use_connector = false;
  int rank = 0;                               // the data-parallel rank that runs it
  engine::Engine* engine = nullptr;           // that rank's engine
  connector::Connector* connector = nullptr;  // that rank's connector worker (null: colocated)
  ServerMetrics* rank_metrics = nullptr;      // that rank's metrics (null with one rank)
  std::string item_id;                        // responses: the output message's id

  Mutex mu;
  int64_t sequence KVF_GUARDED_BY(mu) = 0;  // responses: sequence_number of the next event
  std::vector<std::unique_ptr<Choice>> choices KVF_GUARDED_BY(mu);
  int finals_left KVF_GUARDED_BY(mu) = 0;
  bool started KVF_GUARDED_BY(mu) = false;   // the io thread has begun the response
  bool answered KVF_GUARDED_BY(mu) = false;  // the response is complete (or an error was sent)
  bool gone KVF_GUARDED_BY(mu) = false;      // client gone or too slow: write nothing more
  bool first_token KVF_GUARDED_BY(mu) = false;
  int cached_tokens KVF_GUARDED_BY(mu) = 0;
  std::vector<std::string> early KVF_GUARDED_BY(mu);  // stream bytes produced before `started`
  std::string early_text KVF_GUARDED_BY(mu);          // responses: text produced before `started`
};

namespace {

void AbortLocked(Call& c) KVF_REQUIRES(c.mu) {
  for (auto& ch : c.choices)
    if (!ch->final && !ch->engine_id.empty()) c.engine->Abort(ch->engine_id);
}

void Untrack(Call& c) {
  MutexLock l(c.shared->mu);
  if (c.shared->active.erase(c.id) != 0) --c.shared->rank_load[static_cast<size_t>(c.rank)];
  c.shared->cv.NotifyAll();
}

void Emit(Call& c, std::string bytes) KVF_REQUIRES(c.mu) {
  if (c.gone || c.answered) return;
  if (!c.started) {
    c.early.push_back(std::move(bytes));
    return;
  }
  if (!c.resp->Write(std::move(bytes))) {
    c.gone = true;
    AbortLocked(c);
  } else if (c.resp->PendingBytes() > c.shared->o.max_pending_stream_bytes) {
    KVF_LOG_WARN("serve: {}: the client reads too slowly ({} bytes queued); aborting", c.id, c.resp->PendingBytes());
    c.gone = true;
    AbortLocked(c);
  }
}

std::string Sse(const json& j) {
  return "data: " + Dump(j) + "\n\n";
}

const char* FinishName(engine::FinishReason r) {
  return r == engine::FinishReason::kNone ? nullptr : engine::FinishReasonName(r);
}

json Usage(const Call& c) KVF_REQUIRES(c.mu) {
  int64_t completion = 0;
  for (const auto& ch : c.choices) completion += static_cast<int64_t>(ch->tokens.size());
  const int64_t prompt = static_cast<int64_t>(c.prompt.size());
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", c.cached_tokens}}}};
}

// Logprobs of `lps` in the shape the endpoint uses; advances ch.text_offset.
json LogprobsJson(const Call& c, Choice& ch, std::span<const engine::TokenLogprob> lps) {
  const tokenizer::Tokenizer& tok = *c.shared->o.tokenizer;
  auto text_of = [&](int32_t id) { return tok.Decode(std::span<const int32_t>(&id, 1)); };
  if (c.chat()) {
    auto entry = [&](int32_t id, float lp) {
      std::string_view raw = tok.TokenBytes(id);
      json bytes = json::array();
      for (unsigned char b : raw) bytes.push_back(static_cast<int>(b));
      return json{{"token", text_of(id)}, {"logprob", lp}, {"bytes", bytes}};
    };
    json content = json::array();
    for (const auto& t : lps) {
      json e = entry(t.token, t.logprob);
      json top = json::array();
      for (const auto& [id, lp] : t.top) top.push_back(entry(id, lp));
      e["top_logprobs"] = top;
      content.push_back(std::move(e));
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& t : lps) {
    std::string s = text_of(t.token);
    offsets.push_back(ch.text_offset);
    ch.text_offset += static_cast<int64_t>(s.size());
    tokens.push_back(std::move(s));
    token_lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) top[text_of(id)] = lp;
    tops.push_back(std::move(top));
  }
  return {{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json ChunkHead(const Call& c) {
  return {{"id", c.id},
          {"object", c.chat() ? "chat.completion.chunk" : "text_completion"},
          {"created", c.created},
          {"model", c.model}};
}

// One streamed chunk for choice `index`.
std::string StreamChunk(const Call& c, Choice& ch, int index, const std::string& text,
                        std::span<const engine::TokenLogprob> lps, std::span<const int32_t> ids, const char* finish) {
  json choice = {{"index", index}};
  if (c.chat()) {
    choice["delta"] = text.empty() && finish ? json::object() : json{{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = c.req.logprobs >= 0 && !lps.empty() ? LogprobsJson(c, ch, lps) : json(nullptr);
  choice["finish_reason"] = finish ? json(finish) : json(nullptr);
  if (c.req.return_token_ids) choice["token_ids"] = std::vector<int32_t>(ids.begin(), ids.end());
  json j = ChunkHead(c);
  j["choices"] = json::array({choice});
  return Sse(j);
}

// --- /v1/responses ------------------------------------------------------------------------------

// One Responses API stream event: `event: TYPE` + `data: {..., "type", "sequence_number"}`.
std::string ResponsesEvent(Call& c, const char* type, json data) KVF_REQUIRES(c.mu) {
  data["type"] = type;
  data["sequence_number"] = c.sequence++;
  return fmt::format("event: {}\ndata: {}\n\n", type, Dump(data));
}

json OutputText(const std::string& text) {
  return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", json::array()}};
}

json OutputMessage(const Call& c, const std::string& text, const char* status, bool with_content) {
  json content = json::array();
  if (with_content) content.push_back(OutputText(text));
  return {{"id", c.item_id}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", content}};
}

// The response object; `status` in_progress (no output yet), completed, incomplete or failed.
json ResponseObject(const Call& c, const char* status) KVF_REQUIRES(c.mu) {
  const Choice& ch = *c.choices[0];
  json r = {{"id", c.id},
            {"object", "response"},
            {"created_at", c.created},
            {"status", status},
            {"error", nullptr},
            {"incomplete_details", nullptr},
            {"instructions", c.req.instructions.empty() ? json(nullptr) : json(c.req.instructions)},
            {"max_output_tokens", c.req.max_tokens ? json(*c.req.max_tokens) : json(nullptr)},
            {"model", c.model},
            {"output", json::array()},
            {"parallel_tool_calls", true},
            {"previous_response_id", nullptr},
            {"temperature", c.req.temperature},
            {"top_p", c.req.top_p},
            {"tool_choice", "auto"},
            {"tools", json::array()},
            {"text", {{"format", {{"type", "text"}}}}},
            {"truncation", "disabled"},
            {"store", false},
            {"metadata", json::object()},
            {"usage", nullptr}};
  const std::string st = status;
  if (st == "in_progress") return r;
  if (st == "failed") {
    r["error"] = {{"code", "server_error"}, {"message", ch.error.message()}};
    return r;
  }
  if (st == "incomplete") r["incomplete_details"] = {{"reason", "max_output_tokens"}};
  r["output"] = json::array({OutputMessage(c, ch.text, st == "completed" ? "completed" : "incomplete", true)});
  const int64_t out = static_cast<int64_t>(ch.tokens.size()), in = static_cast<int64_t>(c.prompt.size());
  r["usage"] = {{"input_tokens", in},
                {"input_tokens_details", {{"cached_tokens", c.cached_tokens}}},
                {"output_tokens", out},
                {"output_tokens_details", {{"reasoning_tokens", 0}}},
                {"total_tokens", in + out}};
  return r;
}

const char* ResponsesStatus(const Choice& ch) {
  if (ch.reason == engine::FinishReason::kError) return "failed";
  return ch.reason == engine::FinishReason::kLength ? "incomplete" : "completed";
}

// The events that open a Responses stream, up to the (empty) output text part.
std::string ResponsesOpening(Call& c) KVF_REQUIRES(c.mu) {
  std::string out = ResponsesEvent(c, "response.created", {{"response", ResponseObject(c, "in_progress")}});
  out += ResponsesEvent(c, "response.in_progress", {{"response", ResponseObject(c, "in_progress")}});
  out += ResponsesEvent(c, "response.output_item.added",
                        {{"output_index", 0}, {"item", OutputMessage(c, "", "in_progress", false)}});
  out += ResponsesEvent(c, "response.content_part.added",
                        {{"item_id", c.item_id}, {"output_index", 0}, {"content_index", 0}, {"part", OutputText("")}});
  return out;
}

std::string ResponsesDelta(Call& c, const std::string& text) KVF_REQUIRES(c.mu) {
  return ResponsesEvent(c, "response.output_text.delta",
                        {{"item_id", c.item_id},
                         {"output_index", 0},
                         {"content_index", 0},
                         {"delta", text},
                         {"logprobs", json::array()}});
}

// The events that close a Responses stream.
std::string ResponsesClosing(Call& c) KVF_REQUIRES(c.mu) {
  const Choice& ch = *c.choices[0];
  const char* status = ResponsesStatus(ch);
  if (std::string(status) == "failed") {
    return ResponsesEvent(c, "response.failed", {{"response", ResponseObject(c, "failed")}});
  }
  const char* item_status = std::string(status) == "completed" ? "completed" : "incomplete";
  std::string out = ResponsesEvent(c, "response.output_text.done",
                                   {{"item_id", c.item_id},
                                    {"output_index", 0},
                                    {"content_index", 0},
                                    {"text", ch.text},
                                    {"logprobs", json::array()}});
  out += ResponsesEvent(
      c, "response.content_part.done",
      {{"item_id", c.item_id}, {"output_index", 0}, {"content_index", 0}, {"part", OutputText(ch.text)}});
  out += ResponsesEvent(c, "response.output_item.done",
                        {{"output_index", 0}, {"item", OutputMessage(c, ch.text, item_status, true)}});
  out += ResponsesEvent(c, std::string(status) == "completed" ? "response.completed" : "response.incomplete",
                        {{"response", ResponseObject(c, status)}});
  return out;
}

// Every choice's engine request has finished: complete the response (the caller then untracks
// the call, outside the lock).
void Finish(Call& c) KVF_REQUIRES(c.mu) {
  if (c.answered) return;
  c.answered = true;
  const Choice* failed = nullptr;
  for (const auto& ch : c.choices)
    if (ch->reason == engine::FinishReason::kError) failed = ch.get();
  if (c.req.stream && c.responses()) {
    if (!c.gone) c.resp->Write(ResponsesClosing(c));
    c.resp->End();
    return;
  }
  if (c.responses()) {
    if (failed) {
      RespondError(*c.resp, HttpStatusFor(failed->error), failed->error.message(), "", c.headers);
      return;
    }
    c.resp->Respond(200, "application/json", Dump(ResponseObject(c, ResponsesStatus(*c.choices[0]))), c.headers);
    return;
  }
  if (c.req.stream) {
    if (!c.gone) {
      std::string tail;
      if (failed) tail += "data: " + ErrorJson(HttpStatusFor(failed->error), failed->error.message()) + "\n\n";
      if (c.req.include_usage) {
        json j = ChunkHead(c);
        j["choices"] = json::array();
        j["usage"] = Usage(c);
        tail += Sse(j);
      }
      tail += "data: [DONE]\n\n";
      c.resp->Write(std::move(tail));
    }
    c.resp->End();
    return;
  }
  if (failed) {
    RespondError(*c.resp, HttpStatusFor(failed->error), failed->error.message(), "", c.headers);
    return;
  }
  json choices = json::array();
  for (size_t i = 0; i < c.choices.size(); ++i) {
    Choice& ch = *c.choices[i];
    json choice = {{"index", i}};
    if (c.chat()) {
      choice["message"] = {{"role", "assistant"}, {"content", ch.text}};
    } else {
      choice["text"] = ch.text;
    }
    choice["logprobs"] = c.req.logprobs >= 0 ? LogprobsJson(c, ch, ch.lps) : json(nullptr);
    choice["finish_reason"] = FinishName(ch.reason) ? json(FinishName(ch.reason)) : json(nullptr);
    if (c.req.return_token_ids) {
      choice["token_ids"] = ch.tokens;
      choice["prompt_token_ids"] = c.prompt;
    }
    choices.push_back(std::move(choice));
  }
  json j = {{"id", c.id},           {"object", c.chat() ? "chat.completion" : "text_completion"},
            {"created", c.created}, {"model", c.model},
            {"choices", choices},   {"usage", Usage(c)}};
  if (c.use_connector && c.req.kv.do_remote_decode) {
    // The prefill leg names the rank (engine, bootstrap server, dp rank) that holds the KV, so a
    // router that reads it sends the decode leg to the right worker.
    j["kv_transfer_params"] = {{"do_remote_prefill", true},
                               {"do_remote_decode", false},
                               {"transfer_id", c.req.kv.transfer_id},
                               {"remote_engine_id", c.connector->config().engine_id},
                               {"remote_bootstrap_addr", c.connector->bootstrap_url()},
                               {"remote_dp_rank", c.connector->dp_rank()}};
  }
  c.resp->Respond(200, "application/json", Dump(j), c.headers);
}

// Engine output of choice `index` (scheduler thread).
void OnOutput(const std::shared_ptr<Call>& call, int index, const engine::Output& out) {
  Call& c = *call;
  if (c.use_connector) c.connector->OnOutput(out);
  bool untrack = false;
  {
    MutexLock l(c.mu);
    Choice& ch = *c.choices[index];
    const double now = NowSeconds();
    c.cached_tokens = std::max(c.cached_tokens, out.num_cached_tokens);
    if (!out.new_tokens.empty() && !ch.done) {
      if (!c.first_token) {
        c.first_token = true;
        c.shared->metrics.ObserveTtft(now - c.arrival);
        if (c.rank_metrics) c.rank_metrics->ObserveTtft(now - c.arrival);
      } else if (ch.last_time >= 0) {
        c.shared->metrics.ObserveInterToken(now - ch.last_time);
        if (c.rank_metrics) c.rank_metrics->ObserveInterToken(now - ch.last_time);
      }
      ch.last_time = now;
    }
    if (!ch.done) {
      const std::vector<int32_t>& ids = out.new_tokens;
      size_t text_ids = ids.size();
      // The token that stopped the request (EOS or a stop_token_id) is counted but not shown.
      if (out.finished && out.finish_reason == engine::FinishReason::kStop && !ids.empty() &&
          !c.req.include_stop_str_in_output && std::binary_search(c.stop_ids.begin(), c.stop_ids.end(), ids.back())) {
        --text_ids;
      }
      std::string piece = ch.detok.Add(std::span<const int32_t>(ids.data(), text_ids));
      if (out.finished) piece += ch.detok.Finish();
      std::string released = ch.stop.Push(piece);
      ch.tokens.insert(ch.tokens.end(), ids.begin(), ids.end());
      if (ch.stop.stopped()) {
        ch.done = true;
        ch.reason = engine::FinishReason::kStop;
        if (!out.finished) c.engine->Abort(ch.engine_id);
      } else if (out.finished) {
        released += ch.stop.Flush();
        ch.done = true;
        ch.reason = out.finish_reason;
        ch.error = out.error;
      }
      if (c.responses()) {
        ch.text += released;
        if (c.req.stream && !released.empty()) {
          // Before the stream has started, keep the text: its delta must be numbered after the
          // opening events, which are made at the start.
          if (c.started) {
            Emit(c, ResponsesDelta(c, released));
          } else {
            c.early_text += released;
          }
        }
      } else if (c.req.stream) {
        // With return_token_ids every token shows, even one whose text is held back or empty.
        if (!released.empty() || (c.req.logprobs >= 0 && !out.logprobs.empty()) ||
            (c.req.return_token_ids && !ids.empty()) || (ch.done && ch.reason != engine::FinishReason::kError)) {
          Emit(c, StreamChunk(c, ch, index, released, out.logprobs, ids,
                              ch.done && ch.reason != engine::FinishReason::kError ? FinishName(ch.reason) : nullptr));
        }
      } else {
        ch.text += released;
        if (c.req.logprobs >= 0) ch.lps.insert(ch.lps.end(), out.logprobs.begin(), out.logprobs.end());
      }
    }
    if (out.finished && !ch.final) {
      ch.final = true;
      c.shared->metrics.ObserveRequest(now - c.arrival, ch.reason);
      if (c.rank_metrics) c.rank_metrics->ObserveRequest(now - c.arrival, ch.reason);
      if (--c.finals_left == 0 && c.started) {
        Finish(c);
        untrack = true;
      }
    }
  }
  if (untrack) Untrack(c);
}

connector::RequestKvParams ToConnectorParams(const KvTransferParams& kv) {
  connector::RequestKvParams kp;
  kp.do_remote_decode = kv.do_remote_decode;
  kp.do_remote_prefill = kv.do_remote_prefill;
  kp.transfer_id = kv.transfer_id;
  kp.remote_bootstrap_addr = kv.remote_bootstrap_addr;
  kp.remote_engine_id = kv.remote_engine_id;
  kp.remote_dp_rank = kv.remote_dp_rank;
  return kp;
}

Status LengthError(int64_t max_len, int64_t prompt, std::optional<int64_t> max_tokens, std::string* param) {
  if (max_tokens) {
    *param = "max_tokens";
    return InvalidArgumentError(fmt::format(
        "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the prompt, {} "
        "for the completion). Please reduce the length of the prompt or max_tokens.",
        max_len, prompt + *max_tokens, prompt, *max_tokens));
  }
  return InvalidArgumentError(fmt::format(
      "This model's maximum context length is {} tokens. However, your prompt has {} tokens (the prompt must leave "
      "room for at least one generated token, --max-model-len {}). Please reduce the length of the prompt.",
      max_len, prompt, max_len));
}

}  // namespace

void AbortCall(Call& c) {
  MutexLock l(c.mu);
  AbortLocked(c);
}

StatusOr<std::string> RenderChat(const Shared& s, const GenerateRequest& r) {
  if (s.o.chat_template == nullptr)
    return InvalidArgumentError(
        "this model has no chat template (tokenizer_config.json has no chat_template); use "
        "/v1/completions");
  tokenizer::ChatRenderOptions ro;
  ro.add_generation_prompt = r.add_generation_prompt;
  ro.tools_json = r.tools_json;
  ro.extra_vars_json = r.chat_template_kwargs_json;
  KVF_ASSIGN_OR_RETURN(std::string text, s.o.chat_template->Render(r.messages_json, ro));
  if (r.continue_final_message) {
    // Cut what the template appended after the last message's content (its end-of-turn).
    json msgs = json::parse(r.messages_json, nullptr, false);
    if (msgs.is_array() && !msgs.empty() && msgs.back().contains("content") && msgs.back()["content"].is_string()) {
      const std::string last = msgs.back()["content"].get<std::string>();
      size_t at = last.empty() ? std::string::npos : text.rfind(last);
      if (at != std::string::npos) text.resize(at + last.size());
    }
  }
  return text;
}

void HandleGenerate(const std::shared_ptr<Shared>& shared, const http::Request& request,
                    std::shared_ptr<http::Responder> responder, GenerateRequest::Kind kind,
                    std::vector<http::Header> headers) {
  const double arrival = NowSeconds();
  const TimePoint arrival_tp = std::chrono::steady_clock::now();
  const FrontendOptions& o = shared->o;
  int rank = 0;  // decided once the body is parsed
  engine::Engine* eng = o.ranks[0].engine;
  connector::Connector* conn = o.ranks[0].connector;
  // What the body asked of the connector: a refusal is told to it (routers send the other leg
  // anyway, and its peer should not wait for a transfer that will never happen).
  KvTransferParams refused_kv;
  auto fail = [&](const Status& st, std::string_view param) {
    if (conn != nullptr && refused_kv.present) conn->OnRejected(ToConnectorParams(refused_kv), st);
    RespondError(*responder, HttpStatusFor(st), st.message(), param, headers);
  };
  std::string param;
  StatusOr<GenerateRequest> parsed = ParseGenerateRequest(request.body, kind, &param);
  if (!parsed.ok()) {
    refused_kv = PeekKvTransferParams(request.body);
    return fail(parsed.status(), param);
  }
  GenerateRequest& g = *parsed;
  refused_kv = g.kv;
  shared->WarnIgnoredFields(g.ignored_fields);
  {
    StatusOr<int> r = shared->PickRank(request, g.kv.do_remote_decode);
    if (!r.ok()) return fail(r.status(), "");
    rank = *r;
    eng = o.ranks[static_cast<size_t>(rank)].engine;
    conn = o.ranks[static_cast<size_t>(rank)].connector;
  }
  {
    MutexLock l(shared->mu);
    if (shared->draining) return fail(UnavailableError("the server is shutting down"), "");
  }
  if (!g.model.empty() &&
      std::find(o.served_model_names.begin(), o.served_model_names.end(), g.model) == o.served_model_names.end()) {
    return fail(NotFoundError(fmt::format("The model `{}` does not exist.", g.model)), "model");
  }
  const bool remote_leg = g.kv.do_remote_decode || g.kv.do_remote_prefill;
  if (remote_leg && conn == nullptr) {
    return fail(InvalidArgumentError("kv_transfer_params asks for a remote prefill/decode, but this server runs "
                                     "without a KV connector (start it with --kv-transfer-config)"),
                "kv_transfer_params");
  }
  const bool use_connector = conn != nullptr && g.kv.present;
  if (use_connector && g.n != 1) return fail(InvalidArgumentError("'n' must be 1 with kv_transfer_params"), "n");

  // The prompt.
  std::vector<int32_t> prompt;
  const tokenizer::Tokenizer& tok = *o.tokenizer;
  const bool chat_like = kind != GenerateRequest::Kind::kCompletion;
  if (chat_like) {
    StatusOr<std::string> text = RenderChat(*shared, g);
    if (!text.ok()) return fail(text.status(), "messages");
    prompt = tok.Encode(*text, /*add_special_tokens=*/false);
  } else if (g.prompt_text) {
    prompt = tok.Encode(*g.prompt_text, /*add_special_tokens=*/true);
  } else {
    prompt = std::move(g.prompt_ids);
  }
  const int64_t vocab = eng->model_config().vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] >= vocab)
      return fail(InvalidArgumentError(fmt::format("'prompt[{}]' = {} is not a token id of this model (vocab size {})",
                                                   i, prompt[i], vocab)),
                  "prompt");
  }
  if (prompt.empty()) return fail(InvalidArgumentError("the prompt is empty after tokenization"), "prompt");
  const int64_t max_len = eng->max_model_len();
  const int64_t plen = static_cast<int64_t>(prompt.size());
  const char* prompt_param = kind == GenerateRequest::Kind::kChat        ? "messages"
                             : kind == GenerateRequest::Kind::kResponses ? "input"
                                                                         : "prompt";
  if (plen >= max_len) return fail(LengthError(max_len, plen, std::nullopt, &param), prompt_param);
  if (g.max_tokens && plen + *g.max_tokens > max_len)
    return fail(LengthError(max_len, plen, g.max_tokens, &param), "max_tokens");
  const int64_t room = max_len - plen;
  const int64_t max_tokens = g.max_tokens ? *g.max_tokens : chat_like ? room : std::min<int64_t>(16, room);

  engine::SamplingParams sp;
  sp.temperature = g.temperature;
  sp.top_p = g.top_p;
  sp.top_k = g.top_k;
  sp.min_p = g.min_p;
  sp.seed = g.seed;
  sp.repetition_penalty = g.repetition_penalty;
  sp.presence_penalty = g.presence_penalty;
  sp.frequency_penalty = g.frequency_penalty;
  sp.max_tokens = static_cast<int>(max_tokens);
  sp.min_tokens = std::min<int>(g.min_tokens, sp.max_tokens);
  sp.stop_token_ids = g.stop_token_ids;
  sp.ignore_eos = g.ignore_eos;
  sp.logprobs = g.logprobs;
  if (Status st = engine::ValidateSamplingParams(sp, vocab); !st.ok()) return fail(st, "");

  const int n = g.n;
  auto call = std::make_shared<Call>(shared, responder, std::move(g));
  Call& c = *call;
  c.id = shared->NewId(kind == GenerateRequest::Kind::kChat        ? "chatcmpl-"
                       : kind == GenerateRequest::Kind::kResponses ? "resp_"
                                                                   : "cmpl-");
  if (c.responses()) c.item_id = shared->NewId("msg_");
  c.model = c.req.model.empty() ? o.served_model_names.front() : c.req.model;
  c.created = std::time(nullptr);
  c.arrival = arrival;
  c.prompt = prompt;
  c.headers = headers;
  c.use_connector = use_connector;
  c.rank = rank;
  c.engine = eng;
  c.connector = conn;
  c.rank_metrics = shared->rank_metrics.empty() ? nullptr : shared->rank_metrics[static_cast<size_t>(rank)].get();
  c.stop_ids = tok.stop_token_ids();
  c.stop_ids.insert(c.stop_ids.end(), sp.stop_token_ids.begin(), sp.stop_token_ids.end());
  std::sort(c.stop_ids.begin(), c.stop_ids.end());
  {
    MutexLock l(c.mu);
    for (int i = 0; i < n; ++i) {
      c.choices.push_back(std::make_unique<Choice>(tok, c.req));
      c.choices.back()->engine_id = n == 1 ? c.id : fmt::format("{}-{}", c.id, i);
    }
    c.finals_left = n;
  }
  {
    MutexLock l(shared->mu);
    if (shared->draining) return fail(UnavailableError("the server is shutting down"), "");
    shared->active[c.id] = call;
    ++shared->rank_load[static_cast<size_t>(rank)];
  }

  engine::KvRole role = engine::KvRole::kLocal;
  if (use_connector) {
    StatusOr<engine::KvRole> r = conn->BeginRequest(c.id, ToConnectorParams(c.req.kv));
    if (!r.ok()) {
      Untrack(c);
      return fail(r.status(), "kv_transfer_params");
    }
    role = *r;
    refused_kv.present = false;  // from here CancelRequest tells the connector
  }

  for (int i = 0; i < n; ++i) {
    engine::RequestSpec spec;
    {
      MutexLock l(c.mu);
      spec.id = c.choices[i]->engine_id;
    }
    spec.prompt = prompt;
    spec.sampling = sp;
    if (sp.seed && i > 0) spec.sampling.seed = *sp.seed + static_cast<uint64_t>(i);
    spec.kv_role = role;
    spec.arrival = arrival_tp;
    Status st = eng->Add(std::move(spec), [call, i](const engine::Output& out) { OnOutput(call, i, out); });
    if (!st.ok()) {
      if (use_connector) conn->CancelRequest(c.id);
      bool done;
      {
        MutexLock l(c.mu);
        c.finals_left -= n - i;
        for (int k = i; k < n; ++k) c.choices[k]->final = true;
        c.answered = true;
        AbortLocked(c);
        done = c.finals_left == 0;
      }
      if (done) Untrack(c);
      return fail(st, st.code() == StatusCode::kInvalidArgument ? "prompt" : "");
    }
  }

  bool done = false;
  {
    MutexLock l(c.mu);
    c.started = true;
    if (c.req.stream) {
      std::vector<http::Header> h = c.headers;
      h.push_back({"Cache-Control", "no-cache"});
      c.resp->BeginStream(200, "text/event-stream; charset=utf-8", std::move(h));
      if (c.responses()) {
        Emit(c, ResponsesOpening(c));
        if (!c.early_text.empty()) Emit(c, ResponsesDelta(c, c.early_text));
        c.early_text.clear();
      }
      if (c.chat()) {
        for (int i = 0; i < n; ++i) {
          json j = ChunkHead(c);
          j["choices"] = json::array({{{"index", i},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
          Emit(c, Sse(j));
        }
      }
      std::vector<std::string> early = std::move(c.early);
      c.early.clear();
      for (std::string& b : early) Emit(c, std::move(b));
    }
    if (c.finals_left == 0) {
      Finish(c);
      done = true;
    }
  }
  if (done) {
    Untrack(c);
    return;
  }
  std::weak_ptr<Call> weak = call;
  c.resp->OnClientGone([weak] {
    if (auto cc = weak.lock()) {
      MutexLock l(cc->mu);
      cc->gone = true;
      AbortLocked(*cc);
    }
  });
}

}  // namespace kvferry::server
