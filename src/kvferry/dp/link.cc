// The channel's socket: framing over TCP, the reader and writer threads, dialling, listening.
#include "kvferry/dp/link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvferry::dp {

std::unique_ptr<Link> Link::Start(int fd, LinkOptions options, OnMessage on_message, OnClose on_close) {
  std::unique_ptr<Link> l(new Link(fd, std::move(options), std::move(on_message), std::move(on_close)));
  l->reader_ = std::thread([p = l.get()] { p->ReadLoop(); });
  l->writer_ = std::thread([p = l.get()] { p->WriteLoop(); });
  return l;
}

Link::Link(int fd, LinkOptions options, OnMessage on_message, OnClose on_close)
    : fd_(fd), options_(std::move(options)), on_message_(std::move(on_message)), on_close_(std::move(on_close)) {}

Link::~Link() {
  Close(CancelledError("the link was closed by this side"));
  if (reader_.joinable()) reader_.join();
  if (writer_.joinable()) writer_.join();
  ::close(fd_);
}

bool Link::closed() const {
  MutexLock l(mu_);
  return closed_;
}

void Link::Close(const Status& why) {
  MutexLock l(mu_);
  if (closed_) return;
  closed_ = true;
  why_ = why;
  queue_.clear();
  queued_bytes_ = 0;
  ::shutdown(fd_, SHUT_RDWR);  // wakes the reader's poll and fails the writer's send
  cv_.NotifyAll();
}

Status Link::Send(const Message& m) {
  std::string frame = Frame(EncodeMessage(m));
  Status full;
  {
    MutexLock l(mu_);
    if (closed_) return UnavailableError(fmt::format("the channel to {} is closed: {}", options_.peer, why_.message()));
    if (frame.size() > options_.max_frame_bytes + 4) {
      return ResourceExhaustedError(fmt::format("a message of {} bytes exceeds the channel's {} byte frame limit",
                                                frame.size(), options_.max_frame_bytes));
    }
    if (queued_bytes_ + frame.size() <= options_.max_queued_bytes) {
      queued_bytes_ += frame.size();
      queue_.push_back(std::move(frame));
      cv_.NotifyAll();
      return Status::Ok();
    }
    full =
        ResourceExhaustedError(fmt::format("the channel to {} has {} bytes queued unsent (limit {}): the peer does "
                                           "not read",
                                           options_.peer, queued_bytes_, options_.max_queued_bytes));
  }
  Close(full);
  return full;
}

void Link::ReadLoop() {
  SetCurrentThreadName("kvf-dp-read");
  FrameReader reader(options_.max_frame_bytes);
  Deadline idle = Deadline::After(options_.idle_timeout);
  Status why;
  char buf[64 * 1024];
  while (why.ok()) {
    {
      MutexLock l(mu_);
      if (closed_) break;
    }
    pollfd p{fd_, POLLIN, 0};
    const int wait_ms = std::min(200, idle.RemainingMillisForPoll());
    const int r = ::poll(&p, 1, std::max(0, wait_ms));
    if (r < 0 && errno != EINTR) {
      why = UnavailableError(fmt::format("the channel to {}: poll: {}", options_.peer, std::strerror(errno)));
      break;
    }
    if (r <= 0) {
      if (idle.Expired()) {
        why = DeadlineExceededError(
            fmt::format("nothing from {} for {} ms (peer hung or unreachable)", options_.peer,
                        std::chrono::duration_cast<std::chrono::milliseconds>(options_.idle_timeout).count()));
      }
      continue;
    }
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n == 0) {
      why = UnavailableError(fmt::format("{} closed the channel", options_.peer));
      break;
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      why = UnavailableError(fmt::format("the channel to {}: {}", options_.peer, std::strerror(errno)));
      break;
    }
    idle = Deadline::After(options_.idle_timeout);
    reader.Feed(std::string_view(buf, static_cast<size_t>(n)));
    while (why.ok()) {
      StatusOr<std::optional<std::string>> payload = reader.Next();
      if (!payload.ok()) {
        why = payload.status().WithContext(fmt::format("from {}", options_.peer));
        break;
      }
      if (!payload->has_value()) break;
      StatusOr<Message> m = DecodeMessage(**payload);
      if (!m.ok()) {
        why = m.status().WithContext(fmt::format("from {}", options_.peer));
        break;
      }
      on_message_(*m);
    }
  }
  if (!why.ok()) Close(why);
  Status final_why;
  {
    MutexLock l(mu_);
    final_why = why_;
  }
  on_close_(final_why);
}

bool Link::WriteAll(const std::string& bytes) {
  size_t off = 0;
  Deadline stall = Deadline::After(options_.idle_timeout);
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
      stall = Deadline::After(options_.idle_timeout);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (stall.Expired()) {
        Close(DeadlineExceededError(
            fmt::format("{} has not read from the channel for {} ms", options_.peer,
                        std::chrono::duration_cast<std::chrono::milliseconds>(options_.idle_timeout).count())));
        return false;
      }
      pollfd p{fd_, POLLOUT, 0};
      (void)::poll(&p, 1, std::min(200, stall.RemainingMillisForPoll()));
      if (closed()) return false;
      continue;
    }
    Close(
        UnavailableError(fmt::format("the channel to {}: {}", options_.peer, n < 0 ? std::strerror(errno) : "closed")));
    return false;
  }
  return true;
}

void Link::WriteLoop() {
  SetCurrentThreadName("kvf-dp-write");
  const std::string ping = Frame(EncodeMessage(Ping{}));
  while (true) {
    std::string out;
    {
      MutexLock l(mu_);
      if (queue_.empty() && !closed_) cv_.WaitUntil(mu_, Deadline::After(options_.ping_interval));
      if (closed_) return;
      // Everything queued goes out in one write.
      while (!queue_.empty()) {
        out += queue_.front();
        queued_bytes_ -= queue_.front().size();
        queue_.pop_front();
      }
    }
    if (out.empty()) out = ping;  // quiet for ping_interval
    if (!WriteAll(out)) return;
  }
}

namespace {

StatusOr<addrinfo*> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr)
    return UnavailableError(fmt::format("cannot resolve {}:{}: {}", host, port, ::gai_strerror(rc)));
  return res;
}

}  // namespace

StatusOr<int> Dial(const std::string& host, int port, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(addrinfo * res, Resolve(host, port, false));
  Status last = UnavailableError(fmt::format("cannot connect to {}:{}", host, port));
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, deadline.RemainingMillisForPoll());
      if (rc == 0) {
        ::close(fd);
        last = DeadlineExceededError(fmt::format("connecting to {}:{} timed out", host, port));
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) {
      last = UnavailableError(fmt::format("cannot connect to {}:{}: {}", host, port, std::strerror(errno)));
      ::close(fd);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::freeaddrinfo(res);
    return fd;
  }
  ::freeaddrinfo(res);
  return last;
}

StatusOr<int> Listen(const std::string& host, int port, int* bound_port) {
  KVF_ASSIGN_OR_RETURN(addrinfo * res, Resolve(host, port, true));
  Status last = UnavailableError(fmt::format("cannot listen on {}:{}", host, port));
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      last = UnavailableError(fmt::format("cannot listen on {}:{}: {}", host, port, std::strerror(errno)));
      ::close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    *bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    ::freeaddrinfo(res);
    return fd;
  }
  ::freeaddrinfo(res);
  return last;
}

}  // namespace kvferry::dp
