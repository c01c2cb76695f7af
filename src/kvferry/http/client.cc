// The HTTP clients. Fetch/FetchStream: one request per connection on a private
// io_context that the calling thread runs until the response is complete or the
// deadline passes. Client: calls as coroutines on a few io threads, each io thread
// with its own io_context and its own pool of idle keep-alive connections (so pool
// and call state need no locks: only that thread touches them).
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <fmt/format.h>
#include <sys/socket.h>

#include <atomic>
#include <charconv>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "kvferry/http/http.h"

namespace kvferry::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

Status FromError(const beast::error_code& ec, std::string_view what) {
  if (ec == asio::error::connection_refused || ec == asio::error::connection_reset ||
      ec == asio::error::host_unreachable || ec == asio::error::network_unreachable || ec == asio::error::eof ||
      ec == bhttp::error::end_of_stream || ec == asio::error::broken_pipe) {
    return UnavailableError(fmt::format("{}: {}", what, ec.message()));
  }
  if (ec == beast::error::timeout) return DeadlineExceededError(fmt::format("{}: timed out", what));
  if (ec == bhttp::error::body_limit) return ResourceExhaustedError(fmt::format("{}: response body too large", what));
  return UnavailableError(fmt::format("{}: {}", what, ec.message()));
}

struct BlockingCall {
  const Url* url;
  const FetchOptions* options;
  const std::function<void(const Response&)>* on_headers;
  const std::function<bool(std::string_view)>* on_body;  // null: collect into Response.body
  Response response;
  Status status;
  bool done = false;
};

awaitable<void> Run(BlockingCall* call, std::chrono::steady_clock::time_point deadline) {
  auto ex = co_await asio::this_coro::executor;
  beast::tcp_stream stream(ex);
  stream.expires_at(deadline);
  tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(call->url->host, std::to_string(call->url->port), kTuple);
  std::string where = fmt::format("{} http://{}:{}{}", call->options->method, call->url->host, call->url->port,
                                  call->url->target);
  if (rec) {
    call->status = UnavailableError(fmt::format("{}: cannot resolve host: {}", where, rec.message()));
    co_return;
  }
  auto [cec, ep] = co_await stream.async_connect(results, kTuple);
  if (cec) {
    call->status = FromError(cec, where);
    co_return;
  }
  stream.socket().set_option(tcp::no_delay(true));
  bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(call->options->method), call->url->target, 11};
  if (req.method() == bhttp::verb::unknown) req.method_string(call->options->method);
  req.set(bhttp::field::host, fmt::format("{}:{}", call->url->host, call->url->port));
  req.set(bhttp::field::user_agent, "kvferry");
  if (!call->options->body.empty() || call->options->method == "POST") {
    req.set(bhttp::field::content_type, call->options->content_type);
  }
  for (const Header& h : call->options->headers) req.set(h.name, h.value);
  req.body() = call->options->body;
  req.keep_alive(false);
  req.prepare_payload();
  auto [wec, wn] = co_await bhttp::async_write(stream, req, kTuple);
  if (wec) {
    call->status = FromError(wec, where);
    co_return;
  }
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(call->on_body ? std::numeric_limits<uint64_t>::max() : call->options->max_body_bytes);
  auto [hec, hn] = co_await bhttp::async_read_header(stream, buffer, parser, kTuple);
  if (hec) {
    call->status = FromError(hec, where);
    co_return;
  }
  call->response.status = static_cast<int>(parser.get().result_int());
  for (const auto& f : parser.get()) {
    call->response.headers.push_back(Header{std::string(f.name_string()), std::string(f.value())});
  }
  if (call->on_headers && *call->on_headers) (*call->on_headers)(call->response);
  char chunk[64 * 1024];
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    auto [ec, n] = co_await bhttp::async_read_some(stream, buffer, parser, kTuple);
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) {
      call->status = FromError(ec, where);
      co_return;
    }
    size_t got = sizeof(chunk) - parser.get().body().size;
    if (got == 0) continue;
    if (call->on_body) {
      if (!(*call->on_body)(std::string_view(chunk, got))) {
        call->status = CancelledError(fmt::format("{}: stopped by the reader", where));
        co_return;
      }
    } else {
      if (call->response.body.size() + got > call->options->max_body_bytes) {
        call->status = ResourceExhaustedError(fmt::format("{}: response body too large", where));
        co_return;
      }
      call->response.body.append(chunk, got);
    }
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  call->done = true;
}

StatusOr<Response> Execute(std::string_view url_text, const FetchOptions& options,
                           const std::function<void(const Response&)>* on_headers,
                           const std::function<bool(std::string_view)>* on_body, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(Url url, ParseUrl(url_text));
  BlockingCall call{&url, &options, on_headers, on_body, {}, Status::Ok(), false};
  asio::io_context ioc;
  auto at = deadline.infinite() ? std::chrono::steady_clock::now() + std::chrono::hours(24 * 365)
                                : std::chrono::steady_clock::now() + deadline.Remaining();
  asio::co_spawn(ioc, Run(&call, at), asio::detached);
  ioc.run();
  if (!call.status.ok()) return call.status;
  if (!call.done) return DeadlineExceededError(fmt::format("{} {}: timed out", options.method, url_text));
  return std::move(call.response);
}


// ---------------------------------------------------------------------------
// Asynchronous client.

using SteadyTime = std::chrono::steady_clock::time_point;

SteadyTime AddSaturated(SteadyTime t, Duration d) {
  if (d >= SteadyTime::max() - t) return SteadyTime::max();
  return t + std::chrono::duration_cast<SteadyTime::duration>(d);
}

// A worker's io_context as seen from other threads: null once the worker is gone, so
// a Cancel() that outlives the Client does nothing.
struct WorkerLink {
  Mutex mu;
  asio::io_context* ioc KVF_GUARDED_BY(mu) = nullptr;
};

class CallImpl;

struct IdleConnection {
  tcp::socket socket;
  SteadyTime since;
};

// One io thread with its own io_context, idle-connection pool and set of live calls.
// Everything but `link` and `idle_count` is touched only on the io thread.
struct Worker {
  asio::io_context ioc{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{ioc.get_executor()};
  std::shared_ptr<WorkerLink> link = std::make_shared<WorkerLink>();
  std::thread thread;
  std::unordered_map<std::string, std::vector<IdleConnection>> idle;
  std::unordered_set<CallImpl*> active;
  bool stopping = false;
  // Written on the io thread, read by idle_connections() from any thread; a gauge,
  // so relaxed order is enough.
  std::atomic<int64_t> idle_count{0};
  // Calls started on this worker and not finished: Start() puts a call on the least
  // loaded worker (a plain rotation would put every streaming leg of the proxy on one
  // thread, as each request starts a short and a long call). Relaxed: a hint only.
  std::atomic<int64_t> load{0};
  const ClientOptions* options = nullptr;

  static bool PeerClosed(tcp::socket& s) {
    char c;
    ssize_t n = ::recv(s.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n >= 0) return true;  // closed (0) or unsolicited bytes: not reusable
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }
  std::optional<tcp::socket> TakeIdle(const std::string& key) {
    auto it = idle.find(key);
    if (it == idle.end()) return std::nullopt;
    auto now = std::chrono::steady_clock::now();
    while (!it->second.empty()) {
      IdleConnection c = std::move(it->second.back());
      it->second.pop_back();
      idle_count.fetch_sub(1, std::memory_order_relaxed);
      if (now - c.since < options->idle_timeout && !PeerClosed(c.socket)) return std::move(c.socket);
      beast::error_code ec;
      c.socket.close(ec);
    }
    return std::nullopt;
  }
  void PutIdle(const std::string& key, tcp::socket s) {
    if (stopping) return;
    auto& v = idle[key];
    auto now = std::chrono::steady_clock::now();
    // Drop the stale ones at the front (oldest first) while we are here.
    size_t stale = 0;
    while (stale < v.size() && now - v[stale].since >= options->idle_timeout) ++stale;
    if (stale > 0) {
      v.erase(v.begin(), v.begin() + static_cast<ptrdiff_t>(stale));
      idle_count.fetch_sub(static_cast<int64_t>(stale), std::memory_order_relaxed);
    }
    if (v.size() >= options->max_idle_per_host) return;
    v.push_back(IdleConnection{std::move(s), now});
    idle_count.fetch_add(1, std::memory_order_relaxed);
  }
  void ClearIdle() {
    idle.clear();
    idle_count.store(0, std::memory_order_relaxed);
  }
};

class CallImpl final : public Call, public std::enable_shared_from_this<CallImpl> {
 public:
  CallImpl(Worker* worker, std::string url, CallOptions options, CallHandlers handlers)
      : worker_(worker), link_(worker->link), url_text_(std::move(url)), options_(std::move(options)),
        handlers_(std::move(handlers)) {}

  void Cancel() override {
    // Publishes the request to stop; the io thread reads it after every wait.
    cancelled_.store(true, std::memory_order_release);
    MutexLock l(link_->mu);
    if (link_->ioc == nullptr) return;
    asio::post(*link_->ioc, [self = shared_from_this()] { self->Interrupt(); });
  }

  // io thread: wake whatever the call waits on.
  void Interrupt() {
    cancelled_.store(true, std::memory_order_release);
    if (socket_ != nullptr) {
      beast::error_code ec;
      socket_->cancel(ec);
      socket_->close(ec);
    }
    if (timer_ != nullptr) timer_->cancel();
  }

  awaitable<void> Run() {
    auto self = shared_from_this();
    worker_->active.insert(this);
    // (No co_await inside a conditional expression: GCC 12 miscompiles that.)
    Status st = CancelledError("http client shutting down");
    if (!worker_->stopping) st = co_await Execute();
    worker_->active.erase(this);
    worker_->load.fetch_sub(1, std::memory_order_relaxed);
    socket_ = nullptr;
    timer_ = nullptr;
    if (!st.ok() && cancelled()) st = CancelledError(fmt::format("{} {}: cancelled", options_.method, url_text_));
    auto done = std::move(handlers_.on_done);
    handlers_ = {};
    options_.hold = nullptr;
    if (done) done(st);
  }

 private:
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  SteadyTime OpDeadline(SteadyTime deadline) const {
    return std::min(deadline, AddSaturated(std::chrono::steady_clock::now(), options_.idle_timeout));
  }
  static void Expire(beast::tcp_stream& s, SteadyTime t) {
    if (t == SteadyTime::max()) s.expires_never();
    else s.expires_at(t);
  }
  Status Fail(const beast::error_code& ec, SteadyTime deadline, std::string_view what) const {
    if (cancelled()) return CancelledError(fmt::format("{}: cancelled", where_));
    if (ec == beast::error::timeout) {
      return DeadlineExceededError(fmt::format("{}: {} timed out", where_, what));
    }
    return FromError(ec, fmt::format("{}: {}", where_, what));
  }

  awaitable<Status> Execute() {
    auto url = ParseUrl(url_text_);
    if (!url.ok()) co_return url.status();
    where_ = fmt::format("{} {}", options_.method, url_text_);
    const SteadyTime deadline = AddSaturated(std::chrono::steady_clock::now(), options_.timeout);
    const std::string key = fmt::format("{}:{}", url->host, url->port);
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(options_.method), url->target, 11};
    if (req.method() == bhttp::verb::unknown) req.method_string(options_.method);
    req.set(bhttp::field::host, key);
    req.set(bhttp::field::user_agent, "kvferry");
    if (!options_.body.empty() || options_.method == "POST") req.set(bhttp::field::content_type, options_.content_type);
    for (const Header& h : options_.headers) req.set(h.name, h.value);
    req.body() = std::move(options_.body);
    req.keep_alive(true);
    req.prepare_payload();
    // The io objects live in this frame, not in the CallImpl: a Call handle may outlive
    // the Client and its io_context.
    asio::steady_timer timer(worker_->ioc);
    timer_ = &timer;

    for (int attempt = 0;; ++attempt) {
      if (cancelled()) co_return CancelledError(fmt::format("{}: cancelled", where_));
      std::optional<tcp::socket> pooled = worker_->TakeIdle(key);
      const bool reused = pooled.has_value();
      beast::tcp_stream stream(pooled ? std::move(*pooled) : tcp::socket(worker_->ioc));
      socket_ = &stream.socket();
      struct Unlink {
        tcp::socket** p;
        ~Unlink() { *p = nullptr; }
      } unlink{&socket_};
      if (!reused) {
        Expire(stream, std::min(deadline, AddSaturated(std::chrono::steady_clock::now(), worker_->options->connect_timeout)));
        beast::error_code ec;
        auto addr = asio::ip::make_address(url->host, ec);
        if (!ec) {
          std::tie(ec) = co_await stream.async_connect(tcp::endpoint(addr, url->port), kTuple);
        } else {
          tcp::resolver resolver(worker_->ioc);
          auto [rec, results] = co_await resolver.async_resolve(url->host, std::to_string(url->port), kTuple);
          if (rec) co_return UnavailableError(fmt::format("{}: cannot resolve host: {}", where_, rec.message()));
          if (cancelled()) co_return CancelledError(fmt::format("{}: cancelled", where_));
          std::tie(ec, std::ignore) = co_await stream.async_connect(results, kTuple);
        }
        if (ec) co_return Fail(ec, deadline, "connect");
        stream.socket().set_option(tcp::no_delay(true), ec);
      }
      Expire(stream, OpDeadline(deadline));
      auto [wec, wn] = co_await bhttp::async_write(stream, req, kTuple);
      if (wec) {
        if (reused && attempt == 0 && !cancelled()) continue;  // the server closed the idle connection
        co_return Fail(wec, deadline, "sending the request");
      }
      beast::flat_buffer buffer;
      bhttp::response_parser<bhttp::buffer_body> parser;
      parser.body_limit(std::numeric_limits<uint64_t>::max());
      Expire(stream, OpDeadline(deadline));
      auto [hec, hn] = co_await bhttp::async_read_header(stream, buffer, parser, kTuple);
      if (hec) {
        bool nothing = !parser.got_some() && buffer.size() == 0;
        if (reused && attempt == 0 && nothing && !cancelled() &&
            (hec == bhttp::error::end_of_stream || hec == asio::error::eof || hec == asio::error::connection_reset)) {
          continue;
        }
        co_return Fail(hec, deadline, "reading the response");
      }
      Response head;
      head.status = static_cast<int>(parser.get().result_int());
      for (const auto& f : parser.get()) head.headers.push_back(Header{std::string(f.name_string()), std::string(f.value())});
      if (handlers_.on_headers) handlers_.on_headers(head);
      char chunk[8 * 1024];
      int hold_ms = 1;
      while (!parser.is_done()) {
        if (cancelled()) co_return CancelledError(fmt::format("{}: cancelled", where_));
        while (options_.hold && options_.hold()) {
          if (std::chrono::steady_clock::now() >= deadline) co_return DeadlineExceededError(fmt::format("{}: timed out", where_));
          timer.expires_after(std::chrono::milliseconds(hold_ms));
          co_await timer.async_wait(kTuple);
          if (cancelled()) co_return CancelledError(fmt::format("{}: cancelled", where_));
          hold_ms = std::min(hold_ms * 2, 16);
        }
        hold_ms = 1;
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof(chunk);
        Expire(stream, OpDeadline(deadline));
        auto [ec, n] = co_await bhttp::async_read_some(stream, buffer, parser, kTuple);
        if (ec == bhttp::error::need_buffer) ec = {};
        if (ec) co_return Fail(ec, deadline, "reading the body");
        size_t got = sizeof(chunk) - parser.get().body().size;
        if (got > 0 && handlers_.on_body) handlers_.on_body(std::string_view(chunk, got));
      }
      if (cancelled()) co_return CancelledError(fmt::format("{}: cancelled", where_));
      if (parser.keep_alive() && buffer.size() == 0) {
        stream.expires_never();
        worker_->PutIdle(key, stream.release_socket());
      } else {
        beast::error_code ec;
        stream.socket().shutdown(tcp::socket::shutdown_both, ec);
      }
      co_return Status::Ok();
    }
  }

  Worker* const worker_;
  const std::shared_ptr<WorkerLink> link_;
  const std::string url_text_;
  CallOptions options_;    // io thread
  CallHandlers handlers_;  // io thread
  std::string where_;      // io thread
  asio::steady_timer* timer_ = nullptr;  // io thread: the backpressure timer, for Interrupt()
  tcp::socket* socket_ = nullptr;         // io thread: the live connection, for Interrupt()
  // Set by Cancel() on any thread; read on the io thread (release/acquire).
  std::atomic<bool> cancelled_{false};
};

class ClientImpl final : public Client {
 public:
  explicit ClientImpl(const ClientOptions& o) : options_(o) {
    int n = std::max(1, options_.io_threads);
    for (int i = 0; i < n; ++i) {
      auto w = std::make_unique<Worker>();
      w->options = &options_;
      {
        MutexLock l(w->link->mu);
        w->link->ioc = &w->ioc;
      }
      Worker* raw = w.get();
      w->thread = std::thread([raw, i] {
        SetCurrentThreadName(fmt::format("kvf-httpc{}", i));
        raw->ioc.run();
      });
      workers_.push_back(std::move(w));
    }
  }
  ~ClientImpl() override {
    for (auto& w : workers_) {
      Worker* raw = w.get();
      asio::post(raw->ioc, [raw] {
        raw->stopping = true;
        std::vector<CallImpl*> calls(raw->active.begin(), raw->active.end());
        for (CallImpl* c : calls) c->Interrupt();
        raw->ClearIdle();
      });
      raw->guard.reset();
    }
    for (auto& w : workers_) {
      w->thread.join();
      MutexLock l(w->link->mu);
      w->link->ioc = nullptr;
    }
  }

  std::shared_ptr<Call> Start(std::string_view url, CallOptions options, CallHandlers handlers) override {
    // The least loaded worker, ties broken by rotation; relaxed: only spreads the load.
    size_t start = next_.fetch_add(1, std::memory_order_relaxed);
    Worker* w = nullptr;
    int64_t best = 0;
    for (size_t k = 0; k < workers_.size(); ++k) {
      Worker* c = workers_[(start + k) % workers_.size()].get();
      int64_t l = c->load.load(std::memory_order_relaxed);
      if (w == nullptr || l < best) {
        w = c;
        best = l;
      }
    }
    w->load.fetch_add(1, std::memory_order_relaxed);
    auto call = std::make_shared<CallImpl>(w, std::string(url), std::move(options), std::move(handlers));
    asio::co_spawn(w->ioc, [call]() -> awaitable<void> { co_await call->Run(); }, asio::detached);
    return call;
  }

  std::shared_ptr<Call> Fetch(std::string_view url, CallOptions options,
                              std::function<void(StatusOr<Response>)> on_done) override {
    struct Collect {
      Response response;
      size_t limit;
      bool too_large = false;
      std::weak_ptr<Call> call;
    };
    auto c = std::make_shared<Collect>();
    c->limit = options.max_body_bytes;
    CallHandlers h;
    h.on_headers = [c](const Response& head) { c->response = head; };
    h.on_body = [c](std::string_view chunk) {
      if (c->too_large) return;
      if (c->response.body.size() + chunk.size() > c->limit) {
        c->too_large = true;
        if (auto call = c->call.lock()) call->Cancel();
        return;
      }
      c->response.body.append(chunk);
    };
    std::string where = fmt::format("{} {}", options.method, url);
    h.on_done = [c, where, on_done = std::move(on_done)](const Status& st) {
      if (c->too_large) {
        on_done(ResourceExhaustedError(fmt::format("{}: response body over {} bytes", where, c->limit)));
      } else if (!st.ok()) {
        on_done(st);
      } else {
        on_done(std::move(c->response));
      }
    };
    auto call = Start(url, std::move(options), std::move(h));
    c->call = call;
    return call;
  }

  int64_t idle_connections() const override {
    int64_t n = 0;
    for (const auto& w : workers_) n += w->idle_count.load(std::memory_order_relaxed);
    return n;
  }

 private:
  const ClientOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<size_t> next_{0};
};

}  // namespace

const std::string* FindHeader(const std::vector<Header>& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (h.name.size() == name.size() && beast::iequals(h.name, name)) return &h.value;
  }
  return nullptr;
}

StatusOr<Url> ParseUrl(std::string_view text) {
  std::string_view s = text;
  if (s.starts_with("https://")) return UnimplementedError(fmt::format("'{}': https is not supported", text));
  if (s.starts_with("http://")) s.remove_prefix(7);
  if (s.empty()) return InvalidArgumentError(fmt::format("'{}' is not a URL", text));
  size_t slash = s.find('/');
  std::string_view hostport = s.substr(0, slash);
  Url url;
  url.target = slash == std::string_view::npos ? "/" : std::string(s.substr(slash));
  if (!hostport.empty() && hostport.front() == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return InvalidArgumentError(fmt::format("'{}': bad IPv6 host", text));
    url.host = std::string(hostport.substr(1, close - 1));
    hostport.remove_prefix(close + 1);
    if (!hostport.empty() && hostport.front() != ':') return InvalidArgumentError(fmt::format("'{}': bad host", text));
    if (!hostport.empty()) hostport.remove_prefix(1);
    else hostport = {};
  } else {
    size_t colon = hostport.rfind(':');
    url.host = std::string(hostport.substr(0, colon));
    hostport = colon == std::string_view::npos ? std::string_view() : hostport.substr(colon + 1);
  }
  if (url.host.empty()) return InvalidArgumentError(fmt::format("'{}' has no host", text));
  if (!hostport.empty()) {
    unsigned port = 0;
    auto [p, ec] = std::from_chars(hostport.data(), hostport.data() + hostport.size(), port);
    if (ec != std::errc() || p != hostport.data() + hostport.size() || port == 0 || port > 65535) {
      return InvalidArgumentError(fmt::format("'{}' has a bad port", text));
    }
    url.port = static_cast<uint16_t>(port);
  }
  return url;
}

StatusOr<Response> Fetch(std::string_view url, const FetchOptions& options, const Deadline& deadline) {
  return Execute(url, options, nullptr, nullptr, deadline);
}

StatusOr<Response> FetchStream(std::string_view url, const FetchOptions& options,
                               const std::function<void(const Response&)>& on_headers,
                               const std::function<bool(std::string_view)>& on_body, const Deadline& deadline) {
  return Execute(url, options, &on_headers, &on_body, deadline);
}

StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.io_threads < 1) return InvalidArgumentError("http client: io_threads must be at least 1");
  return std::unique_ptr<Client>(std::make_unique<ClientImpl>(options));
}

std::string_view StatusText(int status) {
  return bhttp::obsolete_reason(static_cast<bhttp::status>(status));
}

}  // namespace kvferry::http
