#pragma once
// Test helpers (private to transfer tests): a raw socket client that speaks the
// wire bytes by hand, for framing, garbage and error-path tests.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvferry::transfer::testing {

class RawConn {
 public:
  RawConn(const std::string& ip, uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
    timeval tv{5, 0};
    if (fd_ >= 0) setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  bool Send(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t k = ::send(fd_, c, n, MSG_NOSIGNAL);
      if (k <= 0) return false;
      c += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  bool Send(const std::string& s) { return Send(s.data(), s.size()); }
  // Exactly n bytes, or false on EOF/error/5 s timeout.
  bool Recv(void* p, size_t n) {
    char* c = static_cast<char*>(p);
    while (n > 0) {
      ssize_t k = ::recv(fd_, c, n, 0);
      if (k <= 0) return false;
      c += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  // True if the peer closed (EOF or reset) within `ms`.
  bool ClosedWithin(int ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return false;
    char buf[4096];
    for (int i = 0; i < 1000; ++i) {
      ssize_t k = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (k == 0) return true;
      if (k < 0) return errno != EAGAIN;
      if (::poll(&p, 1, ms) <= 0) return false;
    }
    return false;
  }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }

 private:
  int fd_ = -1;
};

inline std::string Header(uint64_t size, uint64_t addr, uint8_t opcode) {
  std::string h(24, '\0');
  for (int i = 0; i < 8; ++i) {
    h[static_cast<size_t>(i)] = static_cast<char>(size >> (8 * i));
    h[static_cast<size_t>(8 + i)] = static_cast<char>(addr >> (8 * i));
  }
  h[16] = static_cast<char>(opcode);
  return h;
}

}  // namespace kvferry::transfer::testing
