#pragma once
// Socket helpers for the transfer engine (private to transfer/): an owning fd,
// listen/connect/accept, and send/recv loops bounded by a Deadline. All sockets
// are non-blocking; waits use poll(2).

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::transfer::net {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(o.Release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Binds and listens on host:port (port 0 picks one). Returns the fd; *bound_port
// gets the actual port.
StatusOr<Fd> ListenTcp(const std::string& host, uint16_t port, uint16_t* bound_port);
// Listens on a filesystem unix socket path (unlinked first).
StatusOr<Fd> ListenUnix(const std::string& path);
// Connects with a deadline; sets TCP_NODELAY and large buffers on TCP sockets.
StatusOr<Fd> ConnectTcp(const std::string& host, uint16_t port, const Deadline& deadline);
StatusOr<Fd> ConnectUnix(const std::string& path, const Deadline& deadline);
// Whether a connection to the unix socket at path is refused at once: a socket file that
// nobody listens on (its owner is gone). False when someone accepts, or path is no socket.
bool UnixSocketRefuses(const std::string& path);
// Accepts one connection (blocking until one arrives or the listener is shut down).
StatusOr<Fd> Accept(int listen_fd);
// Tunes an accepted/connected TCP socket (NODELAY, buffer sizes, non-blocking).
void TuneSocket(int fd, bool tcp);

// Waits until fd is readable (POLLIN) / writable (POLLOUT). DeadlineExceeded on timeout.
Status WaitReadable(int fd, const Deadline& deadline);
Status WaitWritable(int fd, const Deadline& deadline);

// Sends all bytes of the iovecs (mutated as it goes). Unavailable on a peer error.
Status SendAll(int fd, iovec* iov, int iovcnt, const Deadline& deadline);
Status SendAll(int fd, const void* data, size_t len, const Deadline& deadline);
// Receives exactly len bytes. Unavailable("closed") on EOF.
Status RecvAll(int fd, void* data, size_t len, const Deadline& deadline);
// Receives len bytes; the deadline is extended by `idle` every time bytes arrive
// (for large bodies: bounded stall, not bounded total time).
Status RecvAllWithIdle(int fd, void* data, size_t len, Duration idle, const Deadline& hard);
// Bytes immediately readable (FIONREAD), 0 on error.
size_t Readable(int fd);

// Pid of the process on the other end of a unix socket (SO_PEERCRED).
StatusOr<int> PeerPid(int fd);
// Uid of the process on the other end of a unix socket (SO_PEERCRED).
StatusOr<uint32_t> PeerUid(int fd);

// Unix sockets: sends all of `data` with `fds` attached (SCM_RIGHTS) to its first byte.
Status SendWithFds(int fd, const void* data, size_t len, const std::vector<int>& fds, const Deadline& deadline);
// Receives exactly len bytes and the descriptors that came with them (at most max_fds; more,
// or a truncated control message, is DataLoss and closes what arrived). The fds are close-on-exec.
Status RecvWithFds(int fd, void* data, size_t len, size_t max_fds, std::vector<Fd>* fds, const Deadline& deadline);

// First non-loopback IPv4 address of this host, else "127.0.0.1".
std::string DefaultHostAddress();

}  // namespace kvferry::transfer::net
