#pragma once
// kvferry/http: a small HTTP/1.1 server and client for the serving API, the
// bootstrap server and the proxy. The server runs handlers on its io threads and
// lets them answer later, from any thread, through a Responder (plain or
// streamed chunk by chunk, e.g. Server-Sent Events). Boost.Beast stays inside
// this component's .cc files.
//
// Threading: Server and Responder methods are thread-safe. A Handler runs on an
// io thread and must not block: hand slow work to another thread and answer
// through the Responder. Fetch/FetchStream block the calling thread until done
// or the deadline.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::http {

struct Header {
  std::string name;
  std::string value;
};

// Case-insensitive lookup; nullptr when absent.
const std::string* FindHeader(const std::vector<Header>& headers, std::string_view name);

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query as sent: "/v1/models?x=1"
  std::string path;    // target without the query
  std::vector<Header> headers;
  std::string body;
  std::string remote;  // "ip:port" of the client
  const std::string* Find(std::string_view name) const { return FindHeader(headers, name); }
};

// The answer to one request. Call Respond() once, or BeginStream(), Write()* and End().
// Dropping the last reference without answering sends 500.
class Responder {
 public:
  virtual ~Responder() = default;
  virtual void Respond(int status, std::string content_type, std::string body,
                       std::vector<Header> extra_headers = {}) = 0;
  virtual void BeginStream(int status, std::string content_type, std::vector<Header> extra_headers = {}) = 0;
  // Queues one chunk of the streamed body. Returns false once the client is gone.
  virtual bool Write(std::string chunk) = 0;
  virtual void End() = 0;
  virtual bool ClientGone() const = 0;
  // `callback` runs once (on an io thread) if the client disconnects before the
  // response is complete; at once if it already did.
  virtual void OnClientGone(std::function<void()> callback) = 0;
  // Bytes queued but not yet written to the socket (for backpressure).
  virtual size_t PendingBytes() const = 0;
};

using Handler = std::function<void(Request request, std::shared_ptr<Responder> responder)>;

struct ServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 0;  // 0 picks a free port
  int io_threads = 2;
  // Larger request bodies get 413 and the connection is closed.
  size_t max_body_bytes = 32u << 20;
  // Bound on receiving one request (headers + body) once its first byte arrived.
  Duration read_timeout = std::chrono::seconds(30);
  // Idle keep-alive connections are closed after this long.
  Duration idle_timeout = std::chrono::seconds(120);
  size_t max_connections = 10000;
};

class Server {
 public:
  // Binds and starts serving. AlreadyExists if the port is taken.
  static StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options, Handler handler);
  virtual ~Server() = default;
  virtual uint16_t port() const = 0;
  // Stops accepting, closes every connection (streams see ClientGone) and joins the io threads.
  virtual void Stop() = 0;
  // Begins a graceful stop: keep-alive connections waiting for a request close now, and every
  // response still being sent ends its connection (`Connection: close`). Stop() follows.
  virtual void CloseIdle() = 0;
  virtual int64_t open_connections() const = 0;
};

struct Url {
  std::string host;
  uint16_t port = 80;
  std::string target = "/";  // path + query
};
// "http://host:port/path" (scheme optional; https is Unimplemented).
StatusOr<Url> ParseUrl(std::string_view url);

struct Response {
  int status = 0;
  std::vector<Header> headers;
  std::string body;
  const std::string* Find(std::string_view name) const { return FindHeader(headers, name); }
};

struct FetchOptions {
  std::string method = "GET";
  std::string body;
  std::string content_type = "application/json";
  std::vector<Header> headers;
  size_t max_body_bytes = 256u << 20;
};

// One request on a fresh connection. Unavailable if the server cannot be reached,
// DeadlineExceeded past the deadline. Any HTTP status is a successful Response.
StatusOr<Response> Fetch(std::string_view url, const FetchOptions& options, const Deadline& deadline);
// Like Fetch, but hands body bytes to on_body as they arrive (Response.body stays
// empty). on_body returning false stops reading and closes the connection
// (Cancelled). on_headers, if set, runs once before the first body byte.
StatusOr<Response> FetchStream(std::string_view url, const FetchOptions& options,
                               const std::function<void(const Response&)>& on_headers,
                               const std::function<bool(std::string_view)>& on_body, const Deadline& deadline);

// Reason phrase for a status code ("OK", "Not Found", ...).
std::string_view StatusText(int status);

// ---------------------------------------------------------------------------
// Asynchronous client: many calls in flight on a few io threads, keep-alive
// connections pooled per host:port. Used by the proxy, where one io thread
// carries hundreds of streams.
//
// Threading: Client::Start and Call::Cancel may be called from any thread. The
// handlers of a call run on one of the client's io threads, one at a time, and
// must not block; on_done runs exactly once and last. A Call handle stays valid
// while referenced, but Cancel() after the Client is destroyed does nothing.

struct ClientOptions {
  int io_threads = 1;                                     // default 1
  size_t max_idle_per_host = 256;                         // pooled idle connections per host:port and io thread
  Duration idle_timeout = std::chrono::seconds(20);       // a pooled connection unused this long is closed
  Duration connect_timeout = std::chrono::seconds(5);     // bound on resolve + connect
};

struct CallOptions {
  std::string method = "GET";
  std::string body;
  std::string content_type = "application/json";  // sent with a body or a POST
  std::vector<Header> headers;
  Duration timeout = Duration::max();       // whole call: connect to last body byte (default: none)
  Duration idle_timeout = Duration::max();  // longest wait for the next byte from the server (default: none)
  size_t max_body_bytes = 64u << 20;        // only for Client::Fetch, which collects the body
  // Backpressure: polled before each body read; while it returns true the call stops
  // reading from the socket (the server then feels TCP backpressure). Runs on the io thread.
  std::function<bool()> hold;
};

struct CallHandlers {
  std::function<void(const Response& head)> on_headers;  // status + headers (body empty), once
  std::function<void(std::string_view chunk)> on_body;   // body bytes as they arrive (de-chunked)
  // Exactly once, last: Ok after the whole body; Unavailable (cannot connect, connection
  // lost), DeadlineExceeded, Cancelled (Cancel() or the client shutting down), or
  // ResourceExhausted. The handlers are released after it returns.
  std::function<void(const Status& status)> on_done;
};

class Call {
 public:
  virtual ~Call() = default;
  // Stops the call: its connection is closed (never pooled) and on_done gets
  // Cancelled unless it already ran. Idempotent; any thread.
  virtual void Cancel() = 0;
};

class Client {
 public:
  static StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options = {});
  // Cancels the calls in flight (each gets on_done(Cancelled)) and joins the io threads.
  virtual ~Client() = default;
  // Starts one call; a bad URL reports through on_done (on an io thread) like any error.
  virtual std::shared_ptr<Call> Start(std::string_view url, CallOptions options, CallHandlers handlers) = 0;
  // Start() that collects the body (up to options.max_body_bytes) into the Response.
  virtual std::shared_ptr<Call> Fetch(std::string_view url, CallOptions options,
                                      std::function<void(StatusOr<Response>)> on_done) = 0;
  // Idle pooled connections right now (for tests and metrics).
  virtual int64_t idle_connections() const = 0;
};

}  // namespace kvferry::http
