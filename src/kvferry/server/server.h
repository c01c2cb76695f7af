#pragma once
// kvferry/server: the OpenAI-compatible HTTP API (PROTOCOL.md §2).
//  - api.h: request parsing/validation and the one Status → HTTP error mapping.
//  - Frontend (below): the serving front end. It turns HTTP requests (completions, chat, models,
//    health, metrics, tokenize, detokenize) into engine requests and engine outputs into JSON or
//    Server-Sent Events. docs/serve.md describes the endpoints and metrics.
//
// Threading: Handle() runs on the HTTP server's io threads and never waits; engine output
// callbacks (scheduler thread) only format and queue bytes on the Responder. Every method is
// thread-safe.
// Ownership: the Frontend borrows the engine, tokenizer, chat template and connector; they must
// outlive it. It owns the per-request state; engine callbacks keep that state alive on their own,
// so a request still finishing after the Frontend is gone touches nothing freed.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/engine/engine.h"
#include "kvferry/http/http.h"
#include "kvferry/server/api.h"
#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::connector {
class Connector;
}

namespace kvferry::server {

struct FrontendOptions {
  // One data-parallel rank: its engine and (null: colocated) its connector worker.
  struct Rank {
    engine::Engine* engine = nullptr;
    connector::Connector* connector = nullptr;
    // Null (default): always up (a local rank). A rank in another process (a headless
    // instance) says here whether it is connected and ready; Unavailable with why when not.
    // Must not block (it is called on io threads, under the frontend's lock).
    std::function<Status()> up;
  };
  // The data-parallel ranks this API server spreads requests over; ranks[i] is dp rank i.
  // Empty (default): one rank, {engine, connector} below. Every rank runs the same model.
  std::vector<Rank> ranks;
  engine::Engine* engine = nullptr;                        // required unless `ranks` is given
  const tokenizer::Tokenizer* tokenizer = nullptr;         // required
  const tokenizer::ChatTemplate* chat_template = nullptr;  // null: chat completions answer 400
  // Names clients may put in "model"; the first is reported (and labels the metrics). Required.
  std::vector<std::string> served_model_names;
  std::string model_root;  // reported as "root" in /v1/models (the model directory)
  std::string api_key;     // empty (default): no authentication
  // Null (default): colocated serving; kv_transfer_params that ask for a remote leg are a 400.
  connector::Connector* connector = nullptr;
  // A streaming client that falls this far behind (bytes queued, unread) has its request
  // aborted, so a stalled reader cannot pin memory. Default 16 MiB.
  size_t max_pending_stream_bytes = 16u << 20;
};

class Frontend {
 public:
  // InvalidArgument when a required option is missing.
  static StatusOr<std::unique_ptr<Frontend>> Create(const FrontendOptions& options);
  // Aborts what is still running (as Drain with an expired deadline) before returning.
  virtual ~Frontend() = default;

  // The http::Handler: answers now (errors, models, metrics, ...) or later from the engine's
  // callbacks. Never blocks.
  virtual void Handle(http::Request request, std::shared_ptr<http::Responder> responder) = 0;

  // Graceful shutdown: from now on generation requests get 503 and /health 503; waits for the
  // requests in flight to finish, aborts the ones left at `deadline`, then waits (bounded, a few
  // seconds) for their final outputs. DeadlineExceeded if some never finished.
  virtual Status Drain(const Deadline& deadline) = 0;

  // Generation requests (HTTP calls) in flight.
  virtual int64_t active_requests() const = 0;
};

}  // namespace kvferry::server
