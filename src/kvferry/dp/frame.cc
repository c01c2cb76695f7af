// The channel's codec: messages ↔ JSON, and the length-prefixed framing.
#include "kvferry/dp/frame.h"

#include <fmt/format.h>

#include <limits>
#include <nlohmann/json.hpp>

namespace kvferry::dp {
namespace {

using json = nlohmann::json;

// Reads typed fields of one JSON object; the first problem is kept and reported once.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  const Status& status() const { return st_; }

  const json* Find(const char* key, bool required) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (required) Fail(fmt::format("'{}' is missing", key));
      return nullptr;
    }
    return &*it;
  }
  int64_t Int(const char* key, int64_t def = 0, bool required = false, int64_t lo = std::numeric_limits<int64_t>::min(),
              int64_t hi = std::numeric_limits<int64_t>::max()) {
    const json* v = Find(key, required);
    if (v == nullptr) return def;
    if (!v->is_number_integer()) return Fail(fmt::format("'{}' must be an integer", key)), def;
    int64_t x =
        v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
            ? std::numeric_limits<int64_t>::max()
            : v->get<int64_t>();
    if (x < lo || x > hi) return Fail(fmt::format("'{}' = {} is out of range [{}, {}]", key, x, lo, hi)), def;
    return x;
  }
  uint64_t Uint(const char* key) {
    const json* v = Find(key, false);
    if (v == nullptr) return 0;
    if (!v->is_number_unsigned() && !(v->is_number_integer() && v->get<int64_t>() >= 0))
      return Fail(fmt::format("'{}' must be a non-negative integer", key)), 0;
    return v->get<uint64_t>();
  }
  double Double(const char* key, double def) {
    const json* v = Find(key, false);
    if (v == nullptr) return def;
    if (!v->is_number()) return Fail(fmt::format("'{}' must be a number", key)), def;
    return v->get<double>();
  }
  bool Bool(const char* key, bool def = false) {
    const json* v = Find(key, false);
    if (v == nullptr) return def;
    if (!v->is_boolean()) return Fail(fmt::format("'{}' must be a boolean", key)), def;
    return v->get<bool>();
  }
  std::string Str(const char* key, bool required = false) {
    const json* v = Find(key, required);
    if (v == nullptr) return "";
    if (!v->is_string()) return Fail(fmt::format("'{}' must be a string", key)), "";
    return v->get<std::string>();
  }
  std::vector<int32_t> Ints(const char* key) {
    std::vector<int32_t> out;
    const json* v = Find(key, false);
    if (v == nullptr) return out;
    if (!v->is_array()) return Fail(fmt::format("'{}' must be a list of integers", key)), out;
    out.reserve(v->size());
    for (const json& e : *v) {
      if (!e.is_number_integer() || e.get<int64_t>() < std::numeric_limits<int32_t>::min() ||
          e.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        Fail(fmt::format("'{}' must be a list of 32-bit integers", key));
        return {};
      }
      out.push_back(static_cast<int32_t>(e.get<int64_t>()));
    }
    return out;
  }
  const json* Object(const char* key, bool required) {
    const json* v = Find(key, required);
    if (v != nullptr && !v->is_object()) return Fail(fmt::format("'{}' must be an object", key)), nullptr;
    return v;
  }
  const json* Array(const char* key, bool required) {
    const json* v = Find(key, required);
    if (v != nullptr && !v->is_array()) return Fail(fmt::format("'{}' must be a list", key)), nullptr;
    return v;
  }
  void Fail(std::string what) {
    if (st_.ok()) st_ = InvalidArgumentError(fmt::format("{}: {}", where_, what));
  }
  void Merge(const Status& st) {
    if (st_.ok() && !st.ok()) st_ = st;
  }

 private:
  const json& j_;
  std::string where_;
  Status st_;
};

constexpr int64_t kMaxRank = 1 << 20;

json StatusJson(const Status& st) {
  return {{"code", static_cast<int>(st.code())}, {"msg", st.message()}};
}

Status StatusOf(Fields& f, const char* key) {
  const json* s = f.Object(key, false);
  if (s == nullptr) return Status::Ok();
  Fields g(*s, key);
  const int64_t code = g.Int("code", 0, true);
  std::string msg = g.Str("msg");
  f.Merge(g.status());
  if (!g.status().ok()) return Status::Ok();
  return StatusFromWire(code, std::move(msg));
}

json KvJson(const connector::RequestKvParams& kv) {
  json j = {{"do_remote_decode", kv.do_remote_decode},
            {"do_remote_prefill", kv.do_remote_prefill},
            {"transfer_id", kv.transfer_id},
            {"remote_bootstrap_addr", kv.remote_bootstrap_addr},
            {"remote_engine_id", kv.remote_engine_id}};
  if (kv.remote_dp_rank) j["remote_dp_rank"] = *kv.remote_dp_rank;
  return j;
}

connector::RequestKvParams KvOf(Fields& outer, const json& j) {
  Fields f(j, "kv");
  connector::RequestKvParams kv;
  kv.do_remote_decode = f.Bool("do_remote_decode");
  kv.do_remote_prefill = f.Bool("do_remote_prefill");
  kv.transfer_id = f.Str("transfer_id");
  kv.remote_bootstrap_addr = f.Str("remote_bootstrap_addr");
  kv.remote_engine_id = f.Str("remote_engine_id");
  if (f.Find("remote_dp_rank", false) != nullptr) kv.remote_dp_rank = f.Int("remote_dp_rank");
  outer.Merge(f.status());
  return kv;
}

json SamplingJson(const engine::SamplingParams& p) {
  json j = {{"temperature", p.temperature},
            {"top_p", p.top_p},
            {"top_k", p.top_k},
            {"min_p", p.min_p},
            {"repetition_penalty", p.repetition_penalty},
            {"presence_penalty", p.presence_penalty},
            {"frequency_penalty", p.frequency_penalty},
            {"max_tokens", p.max_tokens},
            {"min_tokens", p.min_tokens},
            {"stop_token_ids", p.stop_token_ids},
            {"ignore_eos", p.ignore_eos},
            {"logprobs", p.logprobs}};
  if (p.seed) j["seed"] = *p.seed;
  return j;
}

engine::SamplingParams SamplingOf(Fields& outer, const json& j) {
  Fields f(j, "sampling");
  engine::SamplingParams p;
  p.temperature = f.Double("temperature", p.temperature);
  p.top_p = f.Double("top_p", p.top_p);
  p.top_k = static_cast<int>(f.Int("top_k", 0, false, -1, std::numeric_limits<int32_t>::max()));
  p.min_p = f.Double("min_p", p.min_p);
  p.repetition_penalty = f.Double("repetition_penalty", p.repetition_penalty);
  p.presence_penalty = f.Double("presence_penalty", p.presence_penalty);
  p.frequency_penalty = f.Double("frequency_penalty", p.frequency_penalty);
  p.max_tokens = static_cast<int>(f.Int("max_tokens", 16, false, 1, std::numeric_limits<int32_t>::max()));
  p.min_tokens = static_cast<int>(f.Int("min_tokens", 0, false, 0, std::numeric_limits<int32_t>::max()));
  p.stop_token_ids = f.Ints("stop_token_ids");
  p.ignore_eos = f.Bool("ignore_eos");
  p.logprobs = static_cast<int>(f.Int("logprobs", -1, false, -1, 1 << 20));
  if (f.Find("seed", false) != nullptr) p.seed = f.Uint("seed");
  outer.Merge(f.status());
  return p;
}

const char* const kStatsNames[] = {"num_running",          "num_waiting",
                                   "num_waiting_remote",   "blocks_total",
                                   "blocks_used",          "blocks_held",
                                   "prefix_cache_queries", "prefix_cache_hits",
                                   "prompt_tokens_total",  "generation_tokens_total",
                                   "preemptions_total",    "requests_finished_total",
                                   "steps_total"};

struct Encoder {
  json operator()(const Hello& h) const {
    json ranks = json::array();
    for (const HelloRank& r : h.ranks) {
      ranks.push_back({{"dp_rank", r.dp_rank},
                       {"engine_id", r.engine_id},
                       {"worker_addr", r.worker_addr},
                       {"vocab_size", r.vocab_size},
                       {"max_model_len", r.max_model_len},
                       {"block_size", r.block_size},
                       {"kv_bytes", r.kv_bytes},
                       {"kv_bytes_per_block", r.kv_bytes_per_block},
                       {"blocks_total", r.blocks_total}});
    }
    return {{"t", "hello"}, {"version", h.version}, {"instance", h.instance}, {"ranks", ranks}};
  }
  json operator()(const Welcome&) const { return {{"t", "welcome"}}; }
  json operator()(const Refuse& r) const { return {{"t", "refuse"}, {"message", r.message}, {"final", r.final}}; }
  json operator()(const Add& a) const {
    json j = {{"t", "add"},
              {"dp_rank", a.dp_rank},
              {"id", a.id},
              {"prompt", a.prompt},
              {"sampling", SamplingJson(a.sampling)},
              {"role", static_cast<int>(a.role)}};
    if (a.kv) j["kv"] = KvJson(*a.kv);
    return j;
  }
  json operator()(const Abort& a) const { return {{"t", "abort"}, {"dp_rank", a.dp_rank}, {"id", a.id}}; }
  json operator()(const Rejected& r) const {
    return {{"t", "rejected"}, {"dp_rank", r.dp_rank}, {"kv", KvJson(r.kv)}, {"why", StatusJson(r.why)}};
  }
  json operator()(const OutputMsg& m) const {
    const engine::Output& o = m.out;
    json j = {{"t", "out"},
              {"dp_rank", m.dp_rank},
              {"id", o.request_id},
              {"tokens", o.new_tokens},
              {"finished", o.finished},
              {"reason", static_cast<int>(o.finish_reason)},
              {"prompt_tokens", o.num_prompt_tokens},
              {"cached_tokens", o.num_cached_tokens}};
    if (!o.logprobs.empty()) {
      json lps = json::array();
      for (const engine::TokenLogprob& t : o.logprobs) {
        json top = json::array();
        for (const auto& [id, lp] : t.top) top.push_back(json::array({id, lp}));
        lps.push_back({{"token", t.token}, {"logprob", t.logprob}, {"top", top}});
      }
      j["logprobs"] = std::move(lps);
    }
    if (!o.error.ok()) j["error"] = StatusJson(o.error);
    return j;
  }
  json operator()(const Stats& s) const {
    const engine::EngineStats& e = s.engine;
    const uint64_t v[] = {static_cast<uint64_t>(e.num_running),
                          static_cast<uint64_t>(e.num_waiting),
                          static_cast<uint64_t>(e.num_waiting_remote),
                          static_cast<uint64_t>(e.blocks_total),
                          static_cast<uint64_t>(e.blocks_used),
                          static_cast<uint64_t>(e.blocks_held),
                          e.prefix_cache_queries,
                          e.prefix_cache_hits,
                          e.prompt_tokens_total,
                          e.generation_tokens_total,
                          e.preemptions_total,
                          e.requests_finished_total,
                          e.steps_total};
    json eng = json::object();
    for (size_t i = 0; i < std::size(kStatsNames); ++i) eng[kStatsNames[i]] = v[i];
    return {{"t", "stats"}, {"dp_rank", s.dp_rank}, {"engine", eng}, {"ready", s.ready}, {"metrics", s.metrics}};
  }
  json operator()(const Ping&) const { return {{"t", "ping"}}; }
};

}  // namespace

Status StatusFromWire(int64_t code, std::string message) {
  if (code == 0) return Status::Ok();
  if (code < 1 || code > static_cast<int64_t>(StatusCode::kUnauthenticated))
    code = static_cast<int>(StatusCode::kUnknown);
  return Status(static_cast<StatusCode>(code), std::move(message));
}

std::string EncodeMessage(const Message& m) {
  return std::visit(Encoder{}, m).dump(-1, ' ', false, json::error_handler_t::replace);
}

StatusOr<Message> DecodeMessage(std::string_view payload) {
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("dp channel: a frame is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("dp channel: a frame is not a JSON object");
  auto t = j.find("t");
  if (t == j.end() || !t->is_string()) return InvalidArgumentError("dp channel: a frame has no message type ('t')");
  const std::string type = t->get<std::string>();
  Fields f(j, "dp channel: '" + type.substr(0, 32) + "'");
  // Each branch returns its own message (no default-constructed variant assigned later).
  auto done = [&f](auto&& v) -> StatusOr<Message> {
    if (!f.status().ok()) return f.status();
    return Message(std::in_place_type<std::decay_t<decltype(v)>>, std::move(v));
  };
  if (type == "hello") {
    Hello h;
    h.version = f.Int("version", 0, true);
    h.instance = f.Str("instance");
    if (const json* ranks = f.Array("ranks", true)) {
      if (ranks->empty() || ranks->size() > 1024) f.Fail("'ranks' must list 1 to 1024 ranks");
      for (const json& r : *ranks) {
        if (!r.is_object()) {
          f.Fail("'ranks' must be a list of objects");
          break;
        }
        Fields g(r, "hello rank");
        HelloRank hr;
        hr.dp_rank = g.Int("dp_rank", 0, true, 0, kMaxRank);
        hr.engine_id = g.Str("engine_id");
        hr.worker_addr = g.Str("worker_addr");
        hr.vocab_size = g.Int("vocab_size", 0, true, 1);
        hr.max_model_len = g.Int("max_model_len", 0, true, 1);
        hr.block_size = g.Int("block_size", 0, true, 1);
        hr.kv_bytes = g.Uint("kv_bytes");
        hr.kv_bytes_per_block = g.Uint("kv_bytes_per_block");
        hr.blocks_total = g.Int("blocks_total", 0, false, 0);
        f.Merge(g.status());
        h.ranks.push_back(std::move(hr));
      }
    }
    return done(std::move(h));
  } else if (type == "welcome") {
    return done(Welcome{});
  } else if (type == "refuse") {
    Refuse r;
    r.message = f.Str("message", true);
    r.final = f.Bool("final");
    return done(std::move(r));
  } else if (type == "add") {
    Add a;
    a.dp_rank = f.Int("dp_rank", 0, true, 0, kMaxRank);
    a.id = f.Str("id", true);
    if (a.id.empty() && f.status().ok()) f.Fail("'id' is empty");
    a.prompt = f.Ints("prompt");
    if (a.prompt.empty() && f.status().ok()) f.Fail("'prompt' is empty");
    if (const json* s = f.Object("sampling", true)) a.sampling = SamplingOf(f, *s);
    const int64_t role = f.Int("role", 0, false, 0, static_cast<int>(engine::KvRole::kLoadRemote));
    a.role = static_cast<engine::KvRole>(role);
    if (const json* kv = f.Object("kv", false)) a.kv = KvOf(f, *kv);
    return done(std::move(a));
  } else if (type == "abort") {
    Abort a;
    a.dp_rank = f.Int("dp_rank", 0, true, 0, kMaxRank);
    a.id = f.Str("id", true);
    return done(std::move(a));
  } else if (type == "rejected") {
    Rejected r;
    r.dp_rank = f.Int("dp_rank", 0, true, 0, kMaxRank);
    if (const json* kv = f.Object("kv", true)) r.kv = KvOf(f, *kv);
    r.why = StatusOf(f, "why");
    return done(std::move(r));
  } else if (type == "out") {
    OutputMsg m;
    m.dp_rank = f.Int("dp_rank", 0, true, 0, kMaxRank);
    engine::Output& o = m.out;
    o.request_id = f.Str("id", true);
    o.new_tokens = f.Ints("tokens");
    o.finished = f.Bool("finished");
    o.finish_reason =
        static_cast<engine::FinishReason>(f.Int("reason", 0, false, 0, static_cast<int>(engine::FinishReason::kError)));
    o.num_prompt_tokens = static_cast<int>(f.Int("prompt_tokens", 0, false, 0, std::numeric_limits<int32_t>::max()));
    o.num_cached_tokens = static_cast<int>(f.Int("cached_tokens", 0, false, 0, std::numeric_limits<int32_t>::max()));
    o.error = StatusOf(f, "error");
    if (const json* lps = f.Array("logprobs", false)) {
      for (const json& e : *lps) {
        if (!e.is_object()) {
          f.Fail("'logprobs' must be a list of objects");
          break;
        }
        Fields g(e, "logprob");
        engine::TokenLogprob t;
        t.token = static_cast<int32_t>(g.Int("token", 0, true, 0, std::numeric_limits<int32_t>::max()));
        t.logprob = static_cast<float>(g.Double("logprob", 0));
        if (const json* top = g.Array("top", false)) {
          for (const json& p : *top) {
            if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number() ||
                p[0].get<int64_t>() < 0 || p[0].get<int64_t>() > std::numeric_limits<int32_t>::max()) {
              g.Fail("'top' must be a list of [token, logprob] pairs");
              break;
            }
            t.top.emplace_back(static_cast<int32_t>(p[0].get<int64_t>()), p[1].get<float>());
          }
        }
        f.Merge(g.status());
        o.logprobs.push_back(std::move(t));
      }
      if (!o.logprobs.empty() && o.logprobs.size() != o.new_tokens.size())
        f.Fail("'logprobs' must have one entry per token");
    }
    if (o.finish_reason == engine::FinishReason::kError && o.error.ok())
      o.error = UnknownError("the headless rank reported an error without a status");
    return done(std::move(m));
  } else if (type == "stats") {
    Stats s;
    s.dp_rank = f.Int("dp_rank", 0, true, 0, kMaxRank);
    s.ready = f.Bool("ready");
    s.metrics = f.Str("metrics");
    if (const json* e = f.Object("engine", true)) {
      Fields g(*e, "stats.engine");
      engine::EngineStats& es = s.engine;
      es.num_running = static_cast<int>(g.Int("num_running", 0, false, 0, std::numeric_limits<int32_t>::max()));
      es.num_waiting = static_cast<int>(g.Int("num_waiting", 0, false, 0, std::numeric_limits<int32_t>::max()));
      es.num_waiting_remote =
          static_cast<int>(g.Int("num_waiting_remote", 0, false, 0, std::numeric_limits<int32_t>::max()));
      es.blocks_total = g.Int("blocks_total", 0, false, 0);
      es.blocks_used = g.Int("blocks_used", 0, false, 0);
      es.blocks_held = g.Int("blocks_held", 0, false, 0);
      es.prefix_cache_queries = g.Uint("prefix_cache_queries");
      es.prefix_cache_hits = g.Uint("prefix_cache_hits");
      es.prompt_tokens_total = g.Uint("prompt_tokens_total");
      es.generation_tokens_total = g.Uint("generation_tokens_total");
      es.preemptions_total = g.Uint("preemptions_total");
      es.requests_finished_total = g.Uint("requests_finished_total");
      es.steps_total = g.Uint("steps_total");
      f.Merge(g.status());
    }
    return done(std::move(s));
  } else if (type == "ping") {
    return done(Ping{});
  } else {
    return InvalidArgumentError(fmt::format("dp channel: unknown message type '{}'", type.substr(0, 32)));
  }
}

std::string Frame(std::string_view payload) {
  std::string out;
  out.reserve(4 + payload.size());
  const uint32_t n = static_cast<uint32_t>(payload.size());
  out.push_back(static_cast<char>(n >> 24));
  out.push_back(static_cast<char>(n >> 16));
  out.push_back(static_cast<char>(n >> 8));
  out.push_back(static_cast<char>(n));
  out.append(payload);
  return out;
}

StatusOr<std::optional<std::string>> FrameReader::Next() {
  if (buf_.size() - pos_ < 4) return std::optional<std::string>();
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  const uint32_t n = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  if (n == 0) return InvalidArgumentError("dp channel: a frame of length 0");
  if (n > max_)
    return InvalidArgumentError(fmt::format("dp channel: a frame of {} bytes exceeds the {} byte limit", n, max_));
  if (buf_.size() - pos_ < 4 + static_cast<size_t>(n)) return std::optional<std::string>();
  std::string payload = buf_.substr(pos_ + 4, n);
  pos_ += 4 + n;
  // Compact once the consumed prefix dominates, so the buffer does not grow without bound.
  if (pos_ > 1 << 16 && pos_ * 2 > buf_.size()) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return std::optional<std::string>(std::move(payload));
}

}  // namespace kvferry::dp
