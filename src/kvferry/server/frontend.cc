// The Frontend: routing, authentication, and the endpoints that answer at once (/v1/models,
// /health, /metrics, /tokenize, /detokenize). Generation lives in generate.cc.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

#include "kvferry/connector/connector.h"
#include "kvferry/server/frontend_internal.h"

namespace kvferry::server {
namespace {

using json = nlohmann::json;

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Compares without an early exit, so response time does not reveal how much of a key matched.
bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

class FrontendImpl final : public Frontend {
 public:
  explicit FrontendImpl(const FrontendOptions& o)
      : shared_(std::make_shared<Shared>(o)), created_(std::time(nullptr)) {}
  ~FrontendImpl() override { (void)Drain(Deadline::After(Duration::zero())); }

  void Handle(http::Request req, std::shared_ptr<http::Responder> resp) override;
  Status Drain(const Deadline& deadline) override;
  int64_t active_requests() const override {
    MutexLock l(shared_->mu);
    return static_cast<int64_t>(shared_->active.size());
  }

 private:
  void Json(http::Responder& r, int status, const json& body, std::vector<http::Header> headers) {
    r.Respond(status, "application/json", Dump(body), std::move(headers));
  }
  void Models(http::Responder& r, std::vector<http::Header> h);
  void Health(http::Responder& r, std::vector<http::Header> h);
  void Metrics(http::Responder& r, std::vector<http::Header> h);
  void Tokenize(const http::Request& req, http::Responder& r, std::vector<http::Header> h);
  void Detokenize(const http::Request& req, http::Responder& r, std::vector<http::Header> h);
  bool KnownModel(const std::string& model) const {
    if (model.empty()) return true;
    for (const std::string& n : shared_->o.served_model_names)
      if (n == model) return true;
    return false;
  }

  std::shared_ptr<Shared> shared_;
  const int64_t created_;
};

void FrontendImpl::Handle(http::Request req, std::shared_ptr<http::Responder> resp) {
  std::vector<http::Header> headers;
  if (const std::string* id = req.Find("X-Request-Id")) headers.push_back({"X-Request-Id", *id});
  const std::string& path = req.path;
  const bool is_post = req.method == "POST";
  const bool is_get = req.method == "GET" || req.method == "HEAD";
  auto method_not_allowed = [&] {
    RespondError(*resp, 405, fmt::format("method {} is not allowed on {}", req.method, path), "", std::move(headers));
  };
  // As in vLLM, the key guards the /v1 API only; health, metrics and tokenize stay open.
  if (!shared_->o.api_key.empty() && path.rfind("/v1/", 0) == 0) {
    const std::string* auth = req.Find("Authorization");
    const std::string expected = "Bearer " + shared_->o.api_key;
    if (auth == nullptr || !SameSecret(*auth, expected)) {
      RespondError(*resp, 401, "invalid or missing API key (send 'Authorization: Bearer KEY')", "", std::move(headers));
      return;
    }
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/responses") {
    if (!is_post) return method_not_allowed();
    HandleGenerate(shared_, req, std::move(resp),
                   path == "/v1/completions"        ? GenerateRequest::Kind::kCompletion
                   : path == "/v1/chat/completions" ? GenerateRequest::Kind::kChat
                                                    : GenerateRequest::Kind::kResponses,
                   std::move(headers));
  } else if (path == "/v1/models") {
    if (!is_get) return method_not_allowed();
    Models(*resp, std::move(headers));
  } else if (path == "/health") {
    if (!is_get) return method_not_allowed();
    Health(*resp, std::move(headers));
  } else if (path == "/metrics") {
    if (!is_get) return method_not_allowed();
    Metrics(*resp, std::move(headers));
  } else if (path == "/tokenize") {
    if (!is_post) return method_not_allowed();
    Tokenize(req, *resp, std::move(headers));
  } else if (path == "/detokenize") {
    if (!is_post) return method_not_allowed();
    Detokenize(req, *resp, std::move(headers));
  } else if (path == "/version") {
    Json(*resp, 200, {{"version", Version()}}, std::move(headers));
  } else {
    RespondError(*resp, 404, fmt::format("no route for {} {}", req.method, path), "", std::move(headers));
  }
}

void FrontendImpl::Models(http::Responder& r, std::vector<http::Header> h) {
  json data = json::array();
  const std::string& root =
      shared_->o.model_root.empty() ? shared_->o.served_model_names.front() : shared_->o.model_root;
  for (const std::string& name : shared_->o.served_model_names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", created_},
                    {"owned_by", "kvferry"},
                    {"root", root},
                    {"parent", nullptr},
                    {"max_model_len", shared_->o.engine->max_model_len()}});
  }
  Json(r, 200, {{"object", "list"}, {"data", data}}, std::move(h));
}

void FrontendImpl::Health(http::Responder& r, std::vector<http::Header> h) {
  bool draining;
  {
    MutexLock l(shared_->mu);
    draining = shared_->draining;
  }
  if (draining) return RespondError(r, 503, "the server is shutting down", "", std::move(h));
  // Every rank must be up: a headless rank that has not joined (or left) makes the instance
  // unhealthy; the ranks that are up go on serving requests sent anyway (docs/serve.md).
  for (size_t i = 0; i < shared_->num_ranks(); ++i) {
    const FrontendOptions::Rank& rk = shared_->o.ranks[i];
    if (!rk.up) continue;
    if (Status st = rk.up(); !st.ok()) return RespondError(r, 503, st.message(), "", std::move(h));
  }
  for (size_t i = 0; i < shared_->num_ranks(); ++i) {
    const connector::Connector* c = shared_->o.ranks[i].connector;
    if (c != nullptr && !c->Ready()) {
      return RespondError(r, 503,
                          shared_->num_ranks() == 1 ? std::string("the KV connector is not ready yet")
                                                    : fmt::format("the KV connector of data-parallel rank {} is not "
                                                                  "ready yet",
                                                                  i),
                          "", std::move(h));
    }
  }
  // The embedded bootstrap server must list every rank (a rank's worker is registered).
  for (const FrontendOptions::Rank& rk : shared_->o.ranks) {
    if (rk.connector == nullptr || shared_->num_ranks() == 1) continue;
    if (std::optional<connector::BootstrapMap> m = rk.connector->BootstrapSnapshot()) {
      if (m->size() < shared_->num_ranks())
        return RespondError(r, 503,
                            fmt::format("{} of {} data-parallel ranks registered with the bootstrap server", m->size(),
                                        shared_->num_ranks()),
                            "", std::move(h));
    }
  }
  r.Respond(200, "text/plain", "", std::move(h));
}

void FrontendImpl::Metrics(http::Responder& r, std::vector<http::Header> h) {
  std::string text;
  if (shared_->num_ranks() == 1) {
    text = shared_->metrics.Render(shared_->o.engine->GetStats());
    if (shared_->o.connector != nullptr) text += shared_->o.connector->MetricsText();
  } else {
    // Per rank (label engine="i") and in total (no engine label), one group per family.
    std::vector<std::pair<std::string, std::string>> pages;
    engine::EngineStats total;
    for (size_t i = 0; i < shared_->num_ranks(); ++i) {
      const FrontendOptions::Rank& rk = shared_->o.ranks[i];
      const engine::EngineStats st = rk.engine->GetStats();
      AddEngineStats(st, &total);
      std::string page = shared_->rank_metrics[i]->Render(st);
      if (rk.connector != nullptr) page += rk.connector->MetricsText();
      pages.emplace_back(std::to_string(i), std::move(page));
    }
    pages.emplace_back("", shared_->metrics.Render(total));
    text = MergeExpositions(pages, "engine");
  }
  r.Respond(200, "text/plain; version=0.0.4; charset=utf-8", std::move(text), std::move(h));
}

void FrontendImpl::Tokenize(const http::Request& req, http::Responder& r, std::vector<http::Header> h) {
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return RespondError(r, 400, "the request body must be a JSON object", "", std::move(h));
  auto model = j.find("model");
  if (model != j.end() && !model->is_null()) {
    if (!model->is_string()) return RespondError(r, 400, "'model' must be a string", "model", std::move(h));
    if (!KnownModel(model->get<std::string>()))
      return RespondError(r, 404, fmt::format("The model `{}` does not exist.", model->get<std::string>()), "model",
                          std::move(h));
  }
  auto flag = [&](const char* key, bool def, bool* out) -> bool {
    auto it = j.find(key);
    *out = def;
    if (it == j.end() || it->is_null()) return true;
    if (!it->is_boolean()) {
      RespondError(r, 400, fmt::format("'{}' must be a boolean", key), key, h);
      return false;
    }
    *out = it->get<bool>();
    return true;
  };
  bool token_strs = false;
  if (!flag("return_token_strs", false, &token_strs)) return;
  const tokenizer::Tokenizer& tok = *shared_->o.tokenizer;
  std::vector<int32_t> ids;
  if (j.contains("messages")) {
    bool add_special = false;
    if (!flag("add_special_tokens", false, &add_special)) return;
    json chat = j;
    chat.erase("add_special_tokens");
    chat.erase("return_token_strs");
    std::string param;
    auto parsed = ParseGenerateRequest(chat.dump(), GenerateRequest::Kind::kChat, &param);
    if (!parsed.ok()) return RespondError(r, 400, parsed.status().message(), param, std::move(h));
    auto text = RenderChat(*shared_, *parsed);
    if (!text.ok())
      return RespondError(r, HttpStatusFor(text.status()), text.status().message(), "messages", std::move(h));
    ids = tok.Encode(*text, add_special);
  } else {
    auto prompt = j.find("prompt");
    if (prompt == j.end() || !prompt->is_string())
      return RespondError(r, 400, "'prompt' must be a string (or send 'messages')", "prompt", std::move(h));
    bool add_special = true;
    if (!flag("add_special_tokens", true, &add_special)) return;
    ids = tok.Encode(prompt->get<std::string>(), add_special);
  }
  json out = {{"count", ids.size()}, {"max_model_len", shared_->o.engine->max_model_len()}, {"tokens", ids}};
  if (token_strs) {
    json strs = json::array();
    for (int32_t id : ids) strs.push_back(std::string(tok.IdToToken(id).value_or("")));
    out["token_strs"] = strs;
  } else {
    out["token_strs"] = nullptr;
  }
  Json(r, 200, out, std::move(h));
}

void FrontendImpl::Detokenize(const http::Request& req, http::Responder& r, std::vector<http::Header> h) {
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return RespondError(r, 400, "the request body must be a JSON object", "", std::move(h));
  auto model = j.find("model");
  if (model != j.end() && !model->is_null() && (!model->is_string() || !KnownModel(model->get<std::string>())))
    return RespondError(r, 404, "unknown model", "model", std::move(h));
  auto tokens = j.find("tokens");
  if (tokens == j.end() || !tokens->is_array())
    return RespondError(r, 400, "'tokens' must be a list of token ids", "tokens", std::move(h));
  const int64_t vocab =
      std::max<int64_t>(shared_->o.tokenizer->vocab_size(), shared_->o.engine->model_config().vocab_size);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const json& t = (*tokens)[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab)
      return RespondError(r, 400, fmt::format("'tokens[{}]' is not a token id of this model", i), "tokens",
                          std::move(h));
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  Json(r, 200, {{"prompt", shared_->o.tokenizer->Decode(ids)}}, std::move(h));
}

Status FrontendImpl::Drain(const Deadline& deadline) {
  {
    MutexLock l(shared_->mu);
    shared_->draining = true;
    while (!shared_->active.empty() && !deadline.Expired()) shared_->cv.WaitUntil(shared_->mu, deadline);
    if (shared_->active.empty()) return Status::Ok();
  }
  std::vector<std::shared_ptr<Call>> left;
  {
    MutexLock l(shared_->mu);
    for (auto& [id, weak] : shared_->active)
      if (auto c = weak.lock()) left.push_back(std::move(c));
  }
  KVF_LOG_INFO("serve: aborting {} request(s) still running at the drain deadline", left.size());
  for (auto& c : left) AbortCall(*c);
  left.clear();
  // Aborts finish within a scheduler step; bound the wait anyway.
  const Deadline grace = Deadline::After(std::chrono::seconds(5));
  MutexLock l(shared_->mu);
  while (!shared_->active.empty() && !grace.Expired()) shared_->cv.WaitUntil(shared_->mu, grace);
  if (!shared_->active.empty())
    return DeadlineExceededError(fmt::format("{} request(s) did not finish after abort", shared_->active.size()));
  return Status::Ok();
}

}  // namespace

namespace {
FrontendOptions WithRanks(FrontendOptions o) {
  if (o.ranks.empty()) o.ranks.push_back({o.engine, o.connector});
  o.engine = o.ranks[0].engine;
  o.connector = o.ranks[0].connector;
  return o;
}
}  // namespace

Shared::Shared(const FrontendOptions& options)
    : o(WithRanks(options)), metrics(options.served_model_names.front()), rng(std::random_device{}()) {
  if (o.ranks.size() > 1) {
    for (size_t i = 0; i < o.ranks.size(); ++i)
      rank_metrics.push_back(std::make_unique<ServerMetrics>(o.served_model_names.front()));
  }
  MutexLock l(mu);
  rank_load.assign(o.ranks.size(), 0);
}

StatusOr<int> Shared::PickRank(const http::Request& request, bool prefill_leg) {
  const int n = static_cast<int>(o.ranks.size());
  if (const std::string* h = request.Find("X-data-parallel-rank")) {
    if (n == 1) {
      // One data-parallel rank: any value is accepted (routers send "0" or their own rank).
      KVF_LOG_DEBUG("serve: X-data-parallel-rank {} on {}", *h, request.path);
      return 0;
    }
    int64_t r = -1;
    const char* b = h->data();
    const char* e = b + h->size();
    auto [end, ec] = std::from_chars(b, e, r);
    if (ec != std::errc() || end != e || r < 0 || r >= n) {
      return InvalidArgumentError(
          fmt::format("X-data-parallel-rank '{}' is not a data-parallel rank of this server "
                      "(ranks 0..{})",
                      h->substr(0, 32), n - 1));
    }
    return static_cast<int>(r);
  }
  if (n == 1 || prefill_leg) return 0;
  MutexLock l(mu);
  int best = -1;
  bool best_up = false;
  for (int k = 0; k < n; ++k) {
    const int i = static_cast<int>((rank_turn + static_cast<uint64_t>(k)) % static_cast<uint64_t>(n));
    // A rank that is down (a headless instance that left) takes nothing unless all are down.
    const bool up = !o.ranks[static_cast<size_t>(i)].up || o.ranks[static_cast<size_t>(i)].up().ok();
    if (best < 0 || (up && !best_up) || (up == best_up && rank_load[i] < rank_load[best])) {
      best = i;
      best_up = up;
    }
  }
  ++rank_turn;
  return best;
}

std::string Shared::NewId(const char* prefix) {
  uint64_t a, b;
  {
    MutexLock l(mu);
    a = rng();
    b = rng();
  }
  return fmt::format("{}{:016x}{:016x}", prefix, a, b);
}

void Shared::WarnIgnoredFields(const std::vector<std::string>& names) {
  if (names.empty()) return;
  constexpr size_t kMaxWarned = 1024;  // a client inventing names cannot grow this without bound
  std::vector<std::string> fresh;
  {
    MutexLock l(warned_mu);
    for (const std::string& n : names) {
      if (warned.size() >= kMaxWarned || warned.count(n) != 0) continue;
      warned.insert(n);
      fresh.push_back(n);
    }
  }
  for (const std::string& n : fresh)
    KVF_LOG_WARN("serve: the request field '{}' is not supported and is ignored (warned once per field)",
                 n.substr(0, 64));
}

void RespondError(http::Responder& r, int status, std::string_view message, std::string_view param,
                  std::vector<http::Header> headers) {
  r.Respond(status, "application/json", ErrorJson(status, message, param), std::move(headers));
}

StatusOr<std::unique_ptr<Frontend>> Frontend::Create(const FrontendOptions& o) {
  if (o.ranks.empty() && o.engine == nullptr) return InvalidArgumentError("FrontendOptions.engine is required");
  for (const FrontendOptions::Rank& r : o.ranks)
    if (r.engine == nullptr) return InvalidArgumentError("FrontendOptions.ranks: every rank needs an engine");
  if (o.tokenizer == nullptr) return InvalidArgumentError("FrontendOptions.tokenizer is required");
  if (o.served_model_names.empty() || o.served_model_names.front().empty())
    return InvalidArgumentError("FrontendOptions.served_model_names needs at least one name");
  return std::unique_ptr<Frontend>(std::make_unique<FrontendImpl>(o));
}

}  // namespace kvferry::server
