#include "kvferry/connector/bootstrap.h"

#include <fmt/format.h>

#include <charconv>
#include <nlohmann/json.hpp>
#include <thread>

namespace kvferry::connector {
namespace {

using json = nlohmann::json;

void RespondJson(http::Responder& r, int status, const json& body) {
  r.Respond(status, "application/json", body.dump());
}

StatusOr<int64_t> KeyToInt(const std::string& key, const char* what) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(key.data(), key.data() + key.size(), v);
  if (ec != std::errc() || p != key.data() + key.size() || v < 0) {
    return InvalidArgumentError(fmt::format("bootstrap map: {} key '{}' is not a rank", what, key));
  }
  return v;
}

StatusOr<int64_t> Rank(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 1 << 20) {
    return InvalidArgumentError(fmt::format("register: '{}' must be a non-negative integer", key));
  }
  return it->get<int64_t>();
}

}  // namespace

StatusOr<WorkerInfo> DecodeWorkerInfo(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("register: body is not a JSON object");
  WorkerInfo w;
  auto id = j.find("engine_id");
  if (id == j.end() || !id->is_string() || id->get<std::string>().empty()) {
    return InvalidArgumentError("register: 'engine_id' must be a non-empty string");
  }
  w.engine_id = id->get<std::string>();
  KVF_ASSIGN_OR_RETURN(w.dp_rank, Rank(j, "dp_rank"));
  KVF_ASSIGN_OR_RETURN(w.tp_rank, Rank(j, "tp_rank"));
  KVF_ASSIGN_OR_RETURN(w.pp_rank, Rank(j, "pp_rank"));
  auto addr = j.find("addr");
  if (addr == j.end() || !addr->is_string() || !addr->get<std::string>().starts_with("tcp://")) {
    return InvalidArgumentError("register: 'addr' must be a \"tcp://IP:PORT\" string");
  }
  w.addr = addr->get<std::string>();
  return w;
}

std::string EncodeWorkerInfo(const WorkerInfo& w) {
  return json{{"engine_id", w.engine_id},
              {"dp_rank", w.dp_rank},
              {"tp_rank", w.tp_rank},
              {"pp_rank", w.pp_rank},
              {"addr", w.addr}}
      .dump();
}

std::string EncodeBootstrapMap(const BootstrapMap& m) {
  json out = json::object();
  for (const auto& [dp, e] : m) {
    json wa = json::object();
    for (const auto& [tp, pps] : e.worker_addr) {
      json pj = json::object();
      for (const auto& [pp, addr] : pps) pj[std::to_string(pp)] = addr;
      wa[std::to_string(tp)] = std::move(pj);
    }
    out[std::to_string(dp)] = json{{"engine_id", e.engine_id}, {"worker_addr", std::move(wa)}};
  }
  return out.dump();
}

StatusOr<BootstrapMap> DecodeBootstrapMap(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("bootstrap /query answer is not a JSON object");
  BootstrapMap m;
  for (auto it = j.begin(); it != j.end(); ++it) {
    KVF_ASSIGN_OR_RETURN(int64_t dp, KeyToInt(it.key(), "dp_rank"));
    const json& e = it.value();
    if (!e.is_object() || !e.contains("engine_id") || !e["engine_id"].is_string() || !e.contains("worker_addr") ||
        !e["worker_addr"].is_object()) {
      return InvalidArgumentError(fmt::format("bootstrap map: entry '{}' lacks engine_id/worker_addr", it.key()));
    }
    DpEntry d;
    d.engine_id = e["engine_id"].get<std::string>();
    for (auto t = e["worker_addr"].begin(); t != e["worker_addr"].end(); ++t) {
      KVF_ASSIGN_OR_RETURN(int64_t tp, KeyToInt(t.key(), "tp_rank"));
      if (!t.value().is_object()) return InvalidArgumentError("bootstrap map: tp entry is not an object");
      for (auto p = t.value().begin(); p != t.value().end(); ++p) {
        KVF_ASSIGN_OR_RETURN(int64_t pp, KeyToInt(p.key(), "pp_rank"));
        if (!p.value().is_string()) return InvalidArgumentError("bootstrap map: worker address is not a string");
        d.worker_addr[tp][pp] = p.value().get<std::string>();
      }
    }
    m[dp] = std::move(d);
  }
  return m;
}

Status BootstrapRegistry::Adopt(const WorkerInfo& w) {
  {
    MutexLock l(mu_);
    auto it = map_.find(w.dp_rank);
    if (it != map_.end() && it->second.engine_id == w.engine_id) {
      auto tp = it->second.worker_addr.find(w.tp_rank);
      if (tp != it->second.worker_addr.end()) {
        auto pp = tp->second.find(w.pp_rank);
        if (pp != tp->second.end() && pp->second == w.addr) return Status::Ok();
      }
    }
  }
  return Register(w);
}

void BootstrapRegistry::Deregister(int64_t dp_rank) {
  MutexLock l(mu_);
  auto it = map_.find(dp_rank);
  if (it == map_.end()) return;
  retired_[dp_rank] = it->second.engine_id;
  map_.erase(it);
}

Status BootstrapRegistry::Register(const WorkerInfo& w) {
  MutexLock l(mu_);
  if (auto r = retired_.find(w.dp_rank); r != retired_.end() && r->second != w.engine_id) {
    return InvalidArgumentError(
        fmt::format("dp_rank {} was registered with engine_id {}, not {}; it must rejoin "
                    "under the same engine_id",
                    w.dp_rank, r->second, w.engine_id));
  }
  auto it = map_.find(w.dp_rank);
  if (it != map_.end()) {
    if (it->second.engine_id != w.engine_id) {
      return InvalidArgumentError(fmt::format("dp_rank {} is registered with engine_id {}, not {}", w.dp_rank,
                                              it->second.engine_id, w.engine_id));
    }
    auto tp = it->second.worker_addr.find(w.tp_rank);
    if (tp != it->second.worker_addr.end() && tp->second.count(w.pp_rank)) {
      return InvalidArgumentError(
          fmt::format("worker dp={} tp={} pp={} is already registered", w.dp_rank, w.tp_rank, w.pp_rank));
    }
  }
  DpEntry& e = map_[w.dp_rank];
  e.engine_id = w.engine_id;
  e.worker_addr[w.tp_rank][w.pp_rank] = w.addr;
  return Status::Ok();
}

BootstrapMap BootstrapRegistry::Snapshot() const {
  MutexLock l(mu_);
  return map_;
}

void BootstrapRegistry::Expect(int64_t dp_rank) {
  MutexLock l(mu_);
  expected_.insert(dp_rank);
}

bool BootstrapRegistry::Complete() const {
  MutexLock l(mu_);
  if (completed_) return true;
  if (map_.empty()) return false;
  for (int64_t dp : expected_)
    if (map_.count(dp) == 0) return false;
  completed_ = true;
  return true;
}

bool BootstrapRegistry::Handle(const http::Request& req, http::Responder& resp) {
  if (req.path == "/register") {
    if (req.method != "POST") {
      RespondJson(resp, 405, {{"detail", "use POST /register"}});
      return true;
    }
    StatusOr<WorkerInfo> w = DecodeWorkerInfo(req.body);
    Status s = w.ok() ? Register(*w) : w.status();
    if (!s.ok()) {
      RespondJson(resp, 400, {{"detail", s.message()}});
    } else {
      KVF_LOG_INFO("bootstrap: registered engine {} dp={} tp={} pp={} at {}", w->engine_id, w->dp_rank, w->tp_rank,
                   w->pp_rank, w->addr);
      RespondJson(resp, 200, {{"status", "ok"}});
    }
    return true;
  }
  if (req.path == "/query") {
    if (req.method != "GET") {
      RespondJson(resp, 405, {{"detail", "use GET /query"}});
      return true;
    }
    if (!Complete()) {
      resp.Respond(503, "application/json", R"({"detail":"the prefiller's workers have not registered yet; retry"})",
                   {{"Retry-After", "1"}});
      return true;
    }
    resp.Respond(200, "application/json", EncodeBootstrapMap(Snapshot()));
    return true;
  }
  return false;
}

StatusOr<std::unique_ptr<BootstrapServer>> BootstrapServer::Start(const std::string& host, uint16_t port) {
  auto s = std::unique_ptr<BootstrapServer>(new BootstrapServer());
  http::ServerOptions o;
  o.host = host;
  o.port = port;
  o.io_threads = 1;
  o.max_body_bytes = 64 * 1024;
  BootstrapRegistry* reg = &s->registry_;
  StatusOr<std::unique_ptr<http::Server>> srv =
      http::Server::Create(o, [reg](http::Request req, std::shared_ptr<http::Responder> r) {
        if (!reg->Handle(req, *r)) r->Respond(404, "application/json", R"({"detail":"Not Found"})");
      });
  if (!srv.ok()) return srv.status().WithContext(fmt::format("bootstrap server on {}:{}", host, port));
  s->server_ = std::move(*srv);
  return s;
}

Status RegisterWorker(const std::string& base_url, const WorkerInfo& w, Duration per_call, int attempts,
                      Duration first_backoff) {
  http::FetchOptions o;
  o.method = "POST";
  o.body = EncodeWorkerInfo(w);
  Duration backoff = first_backoff;
  Status last;
  for (int i = 0; i < std::max(1, attempts); ++i) {
    if (i > 0) {
      std::this_thread::sleep_for(backoff);
      backoff = std::min<Duration>(backoff * 2, std::chrono::seconds(10));
    }
    StatusOr<http::Response> r = http::Fetch(base_url + "/register", o, Deadline::After(per_call));
    if (!r.ok()) {
      last = r.status();
      KVF_LOG_WARN("bootstrap: register attempt {}/{} at {} failed: {}", i + 1, attempts, base_url, last.ToString());
      continue;
    }
    if (r->status == 200) return Status::Ok();
    last = FailedPreconditionError(
        fmt::format("bootstrap {} refused the registration ({}): {}", base_url, r->status, r->body));
    if (r->status == 400) return last;  // a conflict does not go away by retrying
  }
  return last;
}

StatusOr<BootstrapMap> QueryBootstrap(const std::string& base_url, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(http::Response r, http::Fetch(base_url + "/query", http::FetchOptions{}, deadline));
  if (r.status != 200) {
    return UnavailableError(fmt::format("bootstrap {} answered {} to /query", base_url, r.status));
  }
  return DecodeBootstrapMap(r.body);
}

}  // namespace kvferry::connector
