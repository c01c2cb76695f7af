#include "kvferry/connector/zmq_util.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace kvferry::connector {

Waker::Waker() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (fd_ < 0) KVF_LOG_ERROR("connector: eventfd failed: {}", std::strerror(errno));
}

Waker::~Waker() {
  if (fd_ >= 0) ::close(fd_);
}

void Waker::Notify() {
  const uint64_t one = 1;
  // EAGAIN means the counter is saturated: a wake-up is pending anyway.
  [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
}

void Waker::Drain() {
  uint64_t v;
  while (::read(fd_, &v, sizeof(v)) == static_cast<ssize_t>(sizeof(v))) {
  }
}

bool RecvMultipart(zmq::socket_t& s, std::vector<std::string>* frames) {
  frames->clear();
  try {
    while (true) {
      zmq::message_t msg;
      auto got = s.recv(msg, frames->empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
      if (!got) return false;
      frames->emplace_back(static_cast<const char*>(msg.data()), msg.size());
      if (!msg.more()) return true;
    }
  } catch (const zmq::error_t& e) {
    KVF_LOG_WARN("connector: zmq receive failed: {}", e.what());
    return false;
  }
}

Status SendMultipart(zmq::socket_t& s, const std::vector<std::string>& frames) {
  try {
    for (size_t i = 0; i < frames.size(); ++i) {
      zmq::send_flags f = zmq::send_flags::dontwait;
      if (i + 1 < frames.size()) f = f | zmq::send_flags::sndmore;
      if (!s.send(zmq::buffer(frames[i]), f)) return UnavailableError("side channel: peer queue full");
    }
    return Status::Ok();
  } catch (const zmq::error_t& e) {
    return UnavailableError(std::string("side channel: send failed: ") + e.what());
  }
}

bool PollItems(std::vector<zmq::pollitem_t>& items, Duration timeout) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout + std::chrono::microseconds(999));
  try {
    zmq::poll(items.data(), items.size(), std::chrono::milliseconds(std::max<int64_t>(0, ms.count())));
    return true;
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return true;
    KVF_LOG_WARN("connector: zmq poll failed: {}", e.what());
    return false;
  }
}

std::string PrimaryIpv4() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return "127.0.0.1";
  std::string found;
  for (ifaddrs* a = list; a != nullptr && found.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    if ((a->ifa_flags & IFF_UP) == 0 || (a->ifa_flags & IFF_LOOPBACK) != 0) continue;
    char buf[INET_ADDRSTRLEN];
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf)) != nullptr) found = buf;
  }
  ::freeifaddrs(list);
  return found.empty() ? "127.0.0.1" : found;
}

bool SplitHostPort(const std::string& host_port, std::string* host, int64_t* port) {
  std::string_view s = host_port;
  if (s.starts_with("tcp://")) s.remove_prefix(6);
  const size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view p = s.substr(colon + 1);
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
  if (ec != std::errc() || ptr != p.data() + p.size() || v <= 0 || v > 65535) return false;
  *host = std::string(s.substr(0, colon));
  *port = v;
  return true;
}

}  // namespace kvferry::connector

// TSan: libzmq is not instrumented. Its lock-free pipes hand each message between the thread
// that owns a socket and libzmq's own I/O threads, a happens-before TSan cannot see, so every
// message would be reported as a race (an allocation on one side, a free or recv into the same
// bytes on the other). Ignore accesses made from inside libzmq; our own code stays checked.
// Weak: a test binary may define its own list (it must keep this line).
#if defined(__SANITIZE_THREAD__)
#define KVF_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVF_TSAN_BUILD 1
#endif
#endif
#if defined(KVF_TSAN_BUILD)
extern "C" __attribute__((weak)) const char* __tsan_default_suppressions() {
  return "called_from_lib:libzmq.so\n";
}
#endif
