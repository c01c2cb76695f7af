#include "kvferry/transfer/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvferry::transfer::net {

void Fd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

void SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

StatusOr<sockaddr_storage> Resolve(const std::string& host, uint16_t port, socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port_s = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_s.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return InvalidArgumentError(fmt::format("cannot resolve host '{}': {}", host, gai_strerror(rc)));
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return ss;
}

Status PollFor(int fd, short events, const Deadline& deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int timeout = deadline.RemainingMillisForPoll();
    if (deadline.clock() != Clock::Real() && (timeout < 0 || timeout > 10)) timeout = 10;
    int rc = ::poll(&p, 1, timeout);
    if (rc > 0) {
      if (p.revents & POLLNVAL) return UnavailableError("socket closed locally");
      return Status::Ok();  // readable/writable or error/hangup: the next syscall reports it
    }
    if (rc < 0 && errno != EINTR) return ErrnoToStatus(errno, "poll");
    if (deadline.Expired()) return DeadlineExceededError("timed out waiting for the peer");
  }
}

}  // namespace

void TuneSocket(int fd, bool tcp) {
  SetNonBlocking(fd);
  if (tcp) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
}

StatusOr<Fd> ListenTcp(const std::string& host, uint16_t port, uint16_t* bound_port) {
  socklen_t len = 0;
  KVF_ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(host, port, &len));
  Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return ErrnoToStatus(errno, fmt::format("bind {}:{}", host, port));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return ErrnoToStatus(errno, "listen");
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
  if (bound.ss_family == AF_INET) {
    *bound_port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  } else {
    *bound_port = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  }
  return fd;
}

namespace {
StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return InvalidArgumentError("unix socket path too long: " + path);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}
}  // namespace

StatusOr<Fd> ListenUnix(const std::string& path) {
  KVF_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  ::unlink(path.c_str());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket(AF_UNIX)");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoToStatus(errno, "bind " + path);
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return ErrnoToStatus(errno, "listen " + path);
  return fd;
}

namespace {
StatusOr<Fd> ConnectAddr(int family, const sockaddr* addr, socklen_t len, const Deadline& deadline,
                         const std::string& what, bool tcp) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket");
  if (tcp) {
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  int rc = ::connect(fd.get(), addr, len);
  if (rc != 0 && errno != EINPROGRESS && errno != EAGAIN) return ErrnoToStatus(errno, "connect " + what);
  if (rc != 0) {
    KVF_RETURN_IF_ERROR(PollFor(fd.get(), POLLOUT, deadline).WithContext("connect " + what));
    int err = 0;
    socklen_t elen = sizeof(err);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) return ErrnoToStatus(err, "connect " + what);
  }
  return fd;
}
}  // namespace

StatusOr<Fd> ConnectTcp(const std::string& host, uint16_t port, const Deadline& deadline) {
  socklen_t len = 0;
  KVF_ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(host, port, &len));
  return ConnectAddr(ss.ss_family, reinterpret_cast<sockaddr*>(&ss), len, deadline,
                     fmt::format("{}:{}", host, port), true);
}

StatusOr<Fd> ConnectUnix(const std::string& path, const Deadline& deadline) {
  KVF_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  return ConnectAddr(AF_UNIX, reinterpret_cast<sockaddr*>(&addr), sizeof(addr), deadline, path, false);
}

bool UnixSocketRefuses(const std::string& path) {
  StatusOr<sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return false;
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return false;
  return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0 && errno == ECONNREFUSED;
}

StatusOr<Fd> Accept(int listen_fd) {
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return Fd(fd);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return ErrnoToStatus(errno, "accept");
  }
}

Status SendWithFds(int fd, const void* data, size_t len, const std::vector<int>& fds, const Deadline& deadline) {
  if (len == 0) return InvalidArgumentError("SendWithFds: no bytes to carry the descriptors");
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  const char* p = static_cast<const char*>(data);
  bool fds_sent = fds.empty();
  while (len > 0) {
    iovec iov{const_cast<char*>(p), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds_sent) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        KVF_RETURN_IF_ERROR(PollFor(fd, POLLOUT, deadline));
        continue;
      }
      return ErrnoToStatus(errno, "sendmsg");
    }
    fds_sent = true;  // they went with the first byte
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status RecvWithFds(int fd, void* data, size_t len, size_t max_fds, std::vector<Fd>* fds, const Deadline& deadline) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(max_fds, 1)));
  char* p = static_cast<char*>(data);
  while (len > 0) {
    iovec iov{p, len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        KVF_RETURN_IF_ERROR(PollFor(fd, POLLIN, deadline));
        continue;
      }
      return ErrnoToStatus(errno, "recvmsg");
    }
    // Take ownership of whatever arrived first, so that nothing leaks on an error below.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds->emplace_back(received);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) return DataLossError("recvmsg: descriptors truncated");
    if (fds->size() > max_fds) return DataLossError(fmt::format("recvmsg: {} descriptors, at most {} expected",
                                                                fds->size(), max_fds));
    if (n == 0) return UnavailableError("connection closed by peer");
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status WaitReadable(int fd, const Deadline& deadline) { return PollFor(fd, POLLIN, deadline); }
Status WaitWritable(int fd, const Deadline& deadline) { return PollFor(fd, POLLOUT, deadline); }

Status SendAll(int fd, iovec* iov, int iovcnt, const Deadline& deadline) {
  while (iovcnt > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --iovcnt;
      continue;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        KVF_RETURN_IF_ERROR(PollFor(fd, POLLOUT, deadline));
        continue;
      }
      return ErrnoToStatus(errno, "send");
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0 && iovcnt > 0) {
      if (left >= iov->iov_len) {
        left -= iov->iov_len;
        ++iov;
        --iovcnt;
      } else {
        iov->iov_base = static_cast<char*>(iov->iov_base) + left;
        iov->iov_len -= left;
        left = 0;
      }
    }
  }
  return Status::Ok();
}

Status SendAll(int fd, const void* data, size_t len, const Deadline& deadline) {
  iovec iov{const_cast<void*>(data), len};
  return SendAll(fd, &iov, 1, deadline);
}

Status RecvAll(int fd, void* data, size_t len, const Deadline& deadline) {
  char* p = static_cast<char*>(data);
  while (len > 0) {
    ssize_t n = ::recv(fd, p, len, 0);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return UnavailableError("connection closed by peer");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      KVF_RETURN_IF_ERROR(PollFor(fd, POLLIN, deadline));
      continue;
    }
    return ErrnoToStatus(errno, "recv");
  }
  return Status::Ok();
}

Status RecvAllWithIdle(int fd, void* data, size_t len, Duration idle, const Deadline& hard) {
  char* p = static_cast<char*>(data);
  Deadline stall = Deadline::After(idle, hard.clock()).Min(hard);
  while (len > 0) {
    ssize_t n = ::recv(fd, p, len, 0);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
      stall = Deadline::After(idle, hard.clock()).Min(hard);
      continue;
    }
    if (n == 0) return UnavailableError("connection closed by peer");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      KVF_RETURN_IF_ERROR(PollFor(fd, POLLIN, stall));
      continue;
    }
    return ErrnoToStatus(errno, "recv");
  }
  return Status::Ok();
}

size_t Readable(int fd) {
  int n = 0;
  if (ioctl(fd, FIONREAD, &n) != 0 || n < 0) return 0;
  return static_cast<size_t>(n);
}

StatusOr<int> PeerPid(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return ErrnoToStatus(errno, "SO_PEERCRED");
  if (cred.pid <= 0) return FailedPreconditionError("peer pid unknown");
  return static_cast<int>(cred.pid);
}

StatusOr<uint32_t> PeerUid(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return ErrnoToStatus(errno, "SO_PEERCRED");
  return static_cast<uint32_t>(cred.uid);
}

std::string DefaultHostAddress() {
  ifaddrs* list = nullptr;
  std::string out = "127.0.0.1";
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    auto* sin = reinterpret_cast<sockaddr_in*>(a->ifa_addr);
    if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127) continue;
    char buf[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)) != nullptr) {
      out = buf;
      break;
    }
  }
  freeifaddrs(list);
  return out;
}

}  // namespace kvferry::transfer::net
