#pragma once
// Private to server/: the state the Frontend shares with in-flight requests (frontend.cc routes
// and answers the simple endpoints; generate.cc runs completions and chat completions).

#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/server/metrics.h"
#include "kvferry/server/server.h"

namespace kvferry::server {

class Call;  // one generation request in flight (generate.cc)

// Kept alive by the Frontend and by every in-flight Call, so engine callbacks that outlive the
// Frontend still find it.
struct Shared {
  explicit Shared(const FrontendOptions& options);

  const FrontendOptions o;  // o.ranks holds every rank (filled from o.engine/o.connector if empty)
  ServerMetrics metrics;    // every rank together
  // Per rank (label engine="i" on /metrics); empty with one rank.
  std::vector<std::unique_ptr<ServerMetrics>> rank_metrics;
  size_t num_ranks() const { return o.ranks.size(); }

  Mutex mu;
  CondVar cv;  // signalled when `active` shrinks
  bool draining KVF_GUARDED_BY(mu) = false;
  std::map<std::string, std::weak_ptr<Call>> active KVF_GUARDED_BY(mu);
  std::mt19937_64 rng KVF_GUARDED_BY(mu);
  std::vector<int64_t> rank_load KVF_GUARDED_BY(mu);  // generation calls in flight per rank
  uint64_t rank_turn KVF_GUARDED_BY(mu) = 0;          // breaks ties between equally loaded ranks

  // The rank a request goes to: the one `X-data-parallel-rank` names (InvalidArgument when
  // out of range with several ranks; any value with one, as routers send theirs), rank 0 for a
  // header-less prefill leg (routers without dp assume rank 0's engine_id), else the least
  // loaded rank.
  StatusOr<int> PickRank(const http::Request& request, bool prefill_leg);

  // "<prefix><32 hex digits>", unique for the life of the process.
  std::string NewId(const char* prefix);
  // Logs a warning the first time each field name is ignored (bounded set of names).
  void WarnIgnoredFields(const std::vector<std::string>& names);
  Mutex warned_mu;
  std::set<std::string, std::less<>> warned KVF_GUARDED_BY(warned_mu);
};

// Answers with an OpenAI error object (and the echoed X-Request-Id).
void RespondError(http::Responder& r, int status, std::string_view message, std::string_view param,
                  std::vector<http::Header> headers);

// POST /v1/completions and /v1/chat/completions.
void HandleGenerate(const std::shared_ptr<Shared>& shared, const http::Request& request,
                    std::shared_ptr<http::Responder> responder, GenerateRequest::Kind kind,
                    std::vector<http::Header> headers);

// Aborts every engine request of `call` that has not finished (client gone, drain deadline).
void AbortCall(Call& call);

// Turns a chat request's messages into prompt text with the model's template.
StatusOr<std::string> RenderChat(const Shared& shared, const GenerateRequest& r);

}  // namespace kvferry::server
