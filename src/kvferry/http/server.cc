// The HTTP server: Boost.Beast with C++20 coroutines. One coroutine per
// connection reads a request, hands it to the handler, then drives the handler's
// Responder (plain or chunked), watching the socket for a client that goes away.
#include <fmt/format.h>
#include <sys/socket.h>
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast.hpp>

#include <atomic>
#include <deque>
#include <set>
#include <thread>

#include "kvferry/http/http.h"

namespace kvferry::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using namespace asio::experimental::awaitable_operators;
constexpr auto kTuple = asio::as_tuple(use_awaitable);

using Strand = asio::strand<asio::io_context::executor_type>;

struct Event {
  enum Kind { kFull, kHead, kChunk, kEnd } kind = kFull;
  int status = 200;
  std::string content_type;
  std::vector<Header> headers;
  std::string data;
};

class Session;

// A Session's address for other threads: valid while `session` is non-null. Channels
// hold this rather than an executor, so a Responder that outlives the server (and its
// io_context) never touches freed io objects.
struct SessionLink {
  Mutex mu;
  Session* session KVF_GUARDED_BY(mu) = nullptr;
};

// Shared by a Responder (any thread) and its connection's coroutine (strand).
class Channel : public std::enable_shared_from_this<Channel> {
 public:
  explicit Channel(std::shared_ptr<SessionLink> link) : link_(std::move(link)) {}

  // False if the response is already complete or the client gone.
  bool Push(Event e, bool final) {
    {
      MutexLock l(mu_);
      if (finished_ || gone_) return false;
      if (final) finished_ = true;
      pending_ += e.data.size();
      events_.push_back(std::move(e));
    }
    Wake();
    return true;
  }
  bool Pop(Event* out) {
    MutexLock l(mu_);
    if (events_.empty()) return false;
    *out = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  void Written(size_t n) {
    MutexLock l(mu_);
    pending_ -= std::min(pending_, n);
  }
  void MarkGone() {
    std::function<void()> cb;
    {
      MutexLock l(mu_);
      if (gone_) return;
      gone_ = true;
      events_.clear();
      pending_ = 0;
      cb = std::move(on_gone_);
    }
    if (cb) cb();
  }
  bool gone() const {
    MutexLock l(mu_);
    return gone_;
  }
  bool finished() const {
    MutexLock l(mu_);
    return finished_;
  }
  size_t pending() const {
    MutexLock l(mu_);
    return pending_;
  }
  void OnGone(std::function<void()> cb) {
    {
      MutexLock l(mu_);
      if (!gone_) {
        on_gone_ = std::move(cb);
        return;
      }
    }
    cb();
  }
  // Wakes the session's Drive loop (defined after Session). A wake that lands after
  // the response is done only costs the next wait one spurious loop. At most one wake
  // is in flight: Drive pops everything queued once it runs.
  void Wake();
  // Set by Wake() before posting, cleared by the posted handler before it cancels the
  // timer, so a Push after the clear posts again (acq_rel exchange; no data rides on it).
  std::atomic<bool> wake_pending_{false};

 private:
  const std::shared_ptr<SessionLink> link_;
  mutable Mutex mu_;
  std::deque<Event> events_ KVF_GUARDED_BY(mu_);
  bool finished_ KVF_GUARDED_BY(mu_) = false;
  bool gone_ KVF_GUARDED_BY(mu_) = false;
  size_t pending_ KVF_GUARDED_BY(mu_) = 0;
  std::function<void()> on_gone_ KVF_GUARDED_BY(mu_);
};

class ResponderImpl final : public Responder {
 public:
  explicit ResponderImpl(std::shared_ptr<Channel> ch) : ch_(std::move(ch)) {}
  ~ResponderImpl() override {
    if (!ch_->finished() && !ch_->gone()) {
      if (streaming_) {
        ch_->Push(Event{Event::kEnd}, true);
      } else {
        Event e;
        e.status = 500;
        e.content_type = "application/json";
        e.data =
            R"({"error":{"message":"the server dropped the request without an answer","type":"InternalServerError","param":null,"code":500}})";
        ch_->Push(std::move(e), true);
      }
    }
  }
  void Respond(int status, std::string content_type, std::string body, std::vector<Header> extra) override {
    Event e;
    e.kind = Event::kFull;
    e.status = status;
    e.content_type = std::move(content_type);
    e.data = std::move(body);
    e.headers = std::move(extra);
    ch_->Push(std::move(e), true);
  }
  void BeginStream(int status, std::string content_type, std::vector<Header> extra) override {
    streaming_ = true;
    Event e;
    e.kind = Event::kHead;
    e.status = status;
    e.content_type = std::move(content_type);
    e.headers = std::move(extra);
    ch_->Push(std::move(e), false);
  }
  bool Write(std::string chunk) override {
    if (chunk.empty()) return !ch_->gone();
    Event e;
    e.kind = Event::kChunk;
    e.data = std::move(chunk);
    return ch_->Push(std::move(e), false);
  }
  void End() override { ch_->Push(Event{Event::kEnd}, true); }
  bool ClientGone() const override { return ch_->gone(); }
  void OnClientGone(std::function<void()> cb) override { ch_->OnGone(std::move(cb)); }
  size_t PendingBytes() const override { return ch_->pending(); }

 private:
  std::shared_ptr<Channel> ch_;
  // Set by the thread that begins the stream; read in the destructor (same owner).
  bool streaming_ = false;
};

class ServerImpl;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerImpl* server, tcp::socket socket, Strand strand)
      : server_(server),
        stream_(std::move(socket)),
        strand_(std::move(strand)),
        timer_(strand_),
        link_(std::make_shared<SessionLink>()) {
    MutexLock l(link_->mu);
    link_->session = this;
  }
  // A session torn down with a response in flight (server stopped) tells its stream.
  ~Session() {
    {
      MutexLock l(link_->mu);
      link_->session = nullptr;
    }
    if (current_) current_->MarkGone();
  }
  const Strand& strand() const { return strand_; }
  asio::steady_timer& timer() { return timer_; }
  awaitable<void> Run();
  void Close() {
    asio::post(strand_, [self = shared_from_this()] { self->CloseNow(); });
  }
  // Closes the connection if it waits for a request (not reading one, not answering).
  void CloseIfIdle() {
    asio::post(strand_, [self = shared_from_this()] {
      if (self->idle_) self->CloseNow();
    });
  }
  // Only when no io thread runs (after the server's threads were joined): closes the socket and
  // tells a response still in flight that its client is gone (the coroutine that would have
  // noticed never runs again).
  void CloseNow() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    timer_.cancel();
    if (current_) current_->MarkGone();
  }

 private:
  awaitable<bool> Drive(std::shared_ptr<Channel> ch, bool keep_alive);
  awaitable<void> WatchPeer(std::shared_ptr<Channel> ch);
  awaitable<void> PollPeer(std::shared_ptr<Channel> ch, std::shared_ptr<bool> drive_done);
  bool PeerClosed();

  ServerImpl* server_;
  beast::tcp_stream stream_;
  Strand strand_;
  asio::steady_timer timer_;
  std::shared_ptr<SessionLink> link_;
  std::shared_ptr<Channel> current_;  // the response being driven, if any
  bool idle_ = true;                  // on the strand: waiting for a request's first byte
};

void Channel::Wake() {
  if (wake_pending_.exchange(true, std::memory_order_acq_rel)) return;
  MutexLock l(link_->mu);
  if (link_->session == nullptr) return;
  asio::post(link_->session->strand(), [self = shared_from_this()] {
    self->wake_pending_.store(false, std::memory_order_release);
    MutexLock l(self->link_->mu);
    if (self->link_->session != nullptr) self->link_->session->timer().cancel();
  });
}

class ServerImpl final : public Server {
 public:
  ServerImpl(const ServerOptions& o, Handler h) : options_(o), handler_(std::move(h)), acceptor_(ioc_) {}
  ~ServerImpl() override { Stop(); }

  Status Start() {
    beast::error_code ec;
    auto addr = asio::ip::make_address(options_.host, ec);
    if (ec) return InvalidArgumentError(fmt::format("bad listen address '{}': {}", options_.host, ec.message()));
    tcp::endpoint ep(addr, options_.port);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (ec) {
      if (ec == asio::error::address_in_use) {
        return AlreadyExistsError(fmt::format("port {} on {} is already in use", options_.port, options_.host));
      }
      return UnavailableError(fmt::format("cannot bind {}:{}: {}", options_.host, options_.port, ec.message()));
    }
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return UnavailableError(fmt::format("listen: {}", ec.message()));
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(ioc_, Accept(), asio::detached);
    int n = std::max(1, options_.io_threads);
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, i] {
        SetCurrentThreadName(fmt::format("kvf-http{}", i));
        ioc_.run();
      });
    }
    return Status::Ok();
  }

  uint16_t port() const override { return port_; }

  void Stop() override {
    {
      MutexLock l(mu_);
      if (stopped_) return;
      stopped_ = true;
      for (auto& w : sessions_) {
        if (auto s = w.lock()) s->Close();
      }
    }
    asio::post(ioc_, [this] {
      beast::error_code ec;
      acceptor_.close(ec);
    });
    // Let the sessions see their sockets close (streams get ClientGone), bounded, then stop.
    for (int i = 0; i < 200 && open_connections() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ioc_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    // ioc_.stop() may have dropped the posted closes: with every io thread joined, close the
    // listener and what is left here, so that no client can still connect or wait on a socket
    // nobody serves (the kernel would otherwise keep accepting into the backlog).
    beast::error_code ec;
    acceptor_.close(ec);
    std::vector<std::shared_ptr<Session>> left;
    {
      MutexLock l(mu_);
      for (auto& w : sessions_) {
        if (auto s = w.lock()) left.push_back(std::move(s));
      }
    }
    for (auto& s : left) s->CloseNow();  // outside mu_: it may run a client-gone callback
  }

  void CloseIdle() override {
    MutexLock l(mu_);
    closing_.store(true, std::memory_order_release);
    for (auto& w : sessions_) {
      if (auto s = w.lock()) s->CloseIfIdle();
    }
  }
  // Published by CloseIdle (release); sessions read it (acquire) to stop keeping connections alive.
  bool closing() const { return closing_.load(std::memory_order_acquire); }

  int64_t open_connections() const override {
    MutexLock l(mu_);
    return static_cast<int64_t>(sessions_.size());
  }

  const ServerOptions& options() const { return options_; }
  const Handler& handler() const { return handler_; }
  void Forget(Session* s) {
    MutexLock l(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      auto sp = it->lock();
      if (!sp || sp.get() == s) {
        sessions_.erase(it);
        return;
      }
    }
  }

 private:
  awaitable<void> Accept() {
    for (;;) {
      Strand strand = asio::make_strand(ioc_);
      auto [ec, socket] = co_await acceptor_.async_accept(strand, kTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      auto session = std::make_shared<Session>(this, std::move(socket), strand);
      {
        MutexLock l(mu_);
        if (stopped_) co_return;
        if (sessions_.size() >= options_.max_connections) continue;  // socket closes
        // Drop expired entries now and then.
        if (sessions_.size() % 64 == 0) {
          for (auto it = sessions_.begin(); it != sessions_.end();)
            it = it->expired() ? sessions_.erase(it) : std::next(it);
        }
        sessions_.push_back(session);
      }
      asio::co_spawn(
          strand, [session]() -> awaitable<void> { co_await session->Run(); }, asio::detached);
    }
  }

  const ServerOptions options_;
  const Handler handler_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::vector<std::thread> threads_;
  mutable Mutex mu_;
  bool stopped_ KVF_GUARDED_BY(mu_) = false;
  std::atomic<bool> closing_{false};
  std::vector<std::weak_ptr<Session>> sessions_ KVF_GUARDED_BY(mu_);
};

Header MakeHeader(std::string_view n, std::string_view v) {
  return Header{std::string(n), std::string(v)};
}

bool Session::PeerClosed() {
  char c;
  ssize_t n = ::recv(stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return true;
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
  return false;
}

// Runs beside Drive for one response: waits until the socket is readable, and if the
// peer closed, reports the client gone and wakes Drive. Pipelined bytes (the next
// request) end the watch without consuming them. Drive cancels the wait when done.
awaitable<void> Session::WatchPeer(std::shared_ptr<Channel> ch) {
  auto self = shared_from_this();
  auto [ec] = co_await stream_.socket().async_wait(tcp::socket::wait_read, kTuple);
  if (ec == asio::error::operation_aborted || ch->finished()) co_return;
  if (ec || PeerClosed()) {
    ch->MarkGone();
    timer_.cancel();
  }
}

// The same check every 200 ms. Asio's epoll reactor is edge-triggered and never tries a wait
// speculatively: a close that arrived before WatchPeer's wait was queued (a client that gives up
// while a starved server is still reading its request) raises no new edge, and the wait would
// never complete; the client's request would then run (or wait for remote KV) for nobody.
awaitable<void> Session::PollPeer(std::shared_ptr<Channel> ch, std::shared_ptr<bool> drive_done) {
  auto self = shared_from_this();
  asio::steady_timer tick(strand_);
  for (;;) {
    if (*drive_done || ch->finished() || ch->gone() || !stream_.socket().is_open()) co_return;
    if (PeerClosed()) {
      ch->MarkGone();
      timer_.cancel();
      co_return;
    }
    tick.expires_after(std::chrono::milliseconds(200));
    co_await tick.async_wait(kTuple);
  }
}

awaitable<bool> Session::Drive(std::shared_ptr<Channel> ch, bool keep_alive) {
  // One read watch per response (not one per wait: a stream wakes once per chunk), and its
  // periodic backstop. Both run on this strand; `drive_done` is only touched there.
  auto drive_done = std::make_shared<bool>(false);
  asio::co_spawn(strand_, WatchPeer(ch), asio::detached);
  asio::co_spawn(strand_, PollPeer(ch, drive_done), asio::detached);
  struct StopWatch {
    Session* s;
    std::shared_ptr<bool> done;
    ~StopWatch() {
      *done = true;
      beast::error_code ec;
      s->stream_.socket().cancel(ec);
    }
  } stop_watch{this, drive_done};
  std::optional<bhttp::response<bhttp::empty_body>> head;
  for (;;) {
    Event e;
    if (!ch->Pop(&e)) {
      if (ch->gone()) co_return false;
      timer_.expires_at(asio::steady_timer::time_point::max());
      co_await timer_.async_wait(kTuple);
      if (!stream_.socket().is_open() || ch->gone()) {
        ch->MarkGone();
        co_return false;
      }
      continue;
    }
    stream_.expires_after(std::chrono::seconds(60));  // a client that stops reading is cut off
    beast::error_code ec;
    switch (e.kind) {
      case Event::kFull: {
        bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(e.status), 11};
        res.set(bhttp::field::server, "kvferry");
        res.set(bhttp::field::content_type, e.content_type);
        for (const Header& h : e.headers) res.set(h.name, h.value);
        res.keep_alive(keep_alive);
        size_t n = e.data.size();
        res.body() = std::move(e.data);
        res.prepare_payload();
        std::tie(ec, std::ignore) = co_await bhttp::async_write(stream_, res, kTuple);
        ch->Written(n);
        if (ec) ch->MarkGone();
        co_return !ec;
      }
      case Event::kHead: {
        head.emplace(static_cast<bhttp::status>(e.status), 11);
        head->set(bhttp::field::server, "kvferry");
        head->set(bhttp::field::content_type, e.content_type);
        head->set(bhttp::field::cache_control, "no-cache");
        for (const Header& h : e.headers) head->set(h.name, h.value);
        head->keep_alive(keep_alive);
        head->chunked(true);
        bhttp::response_serializer<bhttp::empty_body> sr{*head};
        std::tie(ec, std::ignore) = co_await bhttp::async_write_header(stream_, sr, kTuple);
        break;
      }
      case Event::kChunk: {
        // Coalesce whatever else is queued into one chunk.
        std::string data = std::move(e.data);
        Event more;
        bool end_after = false;
        while (ch->Pop(&more)) {
          if (more.kind == Event::kChunk) {
            data += more.data;
          } else {
            end_after = more.kind == Event::kEnd;
            break;
          }
        }
        size_t n = data.size();
        std::tie(ec, std::ignore) = co_await asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data)), kTuple);
        ch->Written(n);
        if (!ec && end_after) {
          std::tie(ec, std::ignore) = co_await asio::async_write(stream_, bhttp::make_chunk_last(), kTuple);
          if (ec) ch->MarkGone();
          co_return !ec;
        }
        break;
      }
      case Event::kEnd: {
        std::tie(ec, std::ignore) = co_await asio::async_write(stream_, bhttp::make_chunk_last(), kTuple);
        if (ec) ch->MarkGone();
        co_return !ec;
      }
    }
    if (ec) {
      ch->MarkGone();
      co_return false;
    }
  }
}

awaitable<void> Session::Run() {
  auto self = shared_from_this();
  beast::flat_buffer buffer;
  const ServerOptions& o = server_->options();
  std::string remote;
  {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote = fmt::format("{}:{}", ep.address().to_string(), ep.port());
  }
  for (;;) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.body_limit(o.max_body_bytes);
    parser.header_limit(64 * 1024);
    // Idle wait for the first byte, then a bound on the whole request.
    stream_.expires_after(o.idle_timeout);
    if (buffer.size() == 0) {
      if (server_->closing()) break;
      // Bytes (or a close) that came while the last answer was being written raise no new
      // edge for the wait below (see PollPeer): look first.
      beast::error_code aec;
      const bool ready = stream_.socket().available(aec) > 0 || aec || PeerClosed();
      if (!ready) {
        idle_ = true;
        auto [ec] = co_await stream_.socket().async_wait(tcp::socket::wait_read, kTuple);
        idle_ = false;
        if (ec) break;
      }
      if (PeerClosed()) break;
    }
    idle_ = false;
    stream_.expires_after(o.read_timeout);
    auto [ec, n] = co_await bhttp::async_read(stream_, buffer, parser, kTuple);
    if (ec) {
      if (ec == bhttp::error::body_limit || ec == bhttp::error::header_limit) {
        bhttp::response<bhttp::string_body> res{ec == bhttp::error::body_limit
                                                    ? bhttp::status::payload_too_large
                                                    : bhttp::status::request_header_fields_too_large,
                                                11};
        res.set(bhttp::field::content_type, "application/json");
        res.body() = fmt::format(
            R"({{"error":{{"message":"request {} exceeds the limit of {} bytes","type":"BadRequestError","param":null,"code":{}}}}})",
            ec == bhttp::error::body_limit ? "body" : "header",
            ec == bhttp::error::body_limit ? o.max_body_bytes : 65536, ec == bhttp::error::body_limit ? 413 : 431);
        res.keep_alive(false);
        res.prepare_payload();
        stream_.expires_after(std::chrono::seconds(5));
        co_await bhttp::async_write(stream_, res, kTuple);
      } else if (ec != bhttp::error::end_of_stream && ec != asio::error::operation_aborted &&
                 ec != beast::error::timeout && ec != asio::error::eof && ec != asio::error::connection_reset) {
        bhttp::response<bhttp::string_body> res{bhttp::status::bad_request, 11};
        res.set(bhttp::field::content_type, "application/json");
        res.body() = fmt::format(
            R"({{"error":{{"message":"malformed HTTP request: {}","type":"BadRequestError","param":null,"code":400}}}})",
            ec.message());
        res.keep_alive(false);
        res.prepare_payload();
        stream_.expires_after(std::chrono::seconds(5));
        co_await bhttp::async_write(stream_, res, kTuple);
      }
      break;
    }
    stream_.expires_never();
    auto& msg = parser.get();
    Request req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.path = req.target.substr(0, req.target.find('?'));
    for (const auto& f : msg) req.headers.push_back(MakeHeader(f.name_string(), f.value()));
    req.body = std::move(msg.body());
    req.remote = remote;
    bool keep_alive = msg.keep_alive() && !server_->closing();
    auto ch = std::make_shared<Channel>(link_);
    {
      auto responder = std::make_shared<ResponderImpl>(ch);
      try {
        server_->handler()(std::move(req), std::move(responder));
      } catch (const std::exception& ex) {
        KVF_LOG_ERROR("http: handler threw: {}", ex.what());
      }
    }
    current_ = ch;
    bool ok = co_await Drive(ch, keep_alive);
    current_.reset();
    if (!ok || !keep_alive || server_->closing()) break;
  }
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream_.socket().close(ec);
  server_->Forget(this);
}

}  // namespace

StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options, Handler handler) {
  auto s = std::make_unique<ServerImpl>(options, std::move(handler));
  KVF_RETURN_IF_ERROR(s->Start());
  return std::unique_ptr<Server>(std::move(s));
}

}  // namespace kvferry::http
