// The HTTP client: one request per connection on a private io_context that the
// calling thread runs until the response is complete or the deadline passes.
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <fmt/format.h>

#include <charconv>
#include <optional>

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

struct Call {
  const Url* url;
  const FetchOptions* options;
  const std::function<void(const Response&)>* on_headers;
  const std::function<bool(std::string_view)>* on_body;  // null: collect into Response.body
  Response response;
  Status status;
  bool done = false;
};

awaitable<void> Run(Call* call, std::chrono::steady_clock::time_point deadline) {
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
  Call call{&url, &options, on_headers, on_body, {}, Status::Ok(), false};
  asio::io_context ioc;
  auto at = deadline.infinite() ? std::chrono::steady_clock::now() + std::chrono::hours(24 * 365)
                                : std::chrono::steady_clock::now() + deadline.Remaining();
  asio::co_spawn(ioc, Run(&call, at), asio::detached);
  ioc.run();
  if (!call.status.ok()) return call.status;
  if (!call.done) return DeadlineExceededError(fmt::format("{} {}: timed out", options.method, url_text));
  return std::move(call.response);
}

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

std::string_view StatusText(int status) {
  return bhttp::obsolete_reason(static_cast<bhttp::status>(status));
}

}  // namespace kvferry::http
