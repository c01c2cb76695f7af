#pragma once
// Private helpers for the side channel: a wake-up fd that a ZMQ poll loop can watch next to
// its sockets, and small cppzmq wrappers that turn exceptions into Status.
// Threading: a Waker is thread-safe; a ZMQ socket belongs to the one thread that polls it.

#include <zmq.hpp>

#include <string>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::connector {

// An eventfd: any thread calls Notify(); the poll loop watches fd() and calls Drain().
class Waker {
 public:
  Waker();
  ~Waker();
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Notify();
  void Drain();

 private:
  int fd_ = -1;
};

// Reads every frame of one message without blocking. False when nothing is there (or on
// error); `frames` holds the parts in order.
bool RecvMultipart(zmq::socket_t& s, std::vector<std::string>* frames);
// Sends the frames as one message without blocking. Unavailable when the peer's queue is
// full or the socket failed.
Status SendMultipart(zmq::socket_t& s, const std::vector<std::string>& frames);
// poll(2)-style wait on the items; returns false on a ZMQ error (logged).
bool PollItems(std::vector<zmq::pollitem_t>& items, Duration timeout);

// The host's first non-loopback IPv4 address, else "127.0.0.1".
std::string PrimaryIpv4();

// "tcp://HOST:PORT" (HOST without brackets, IPv4 or a name) → "HOST:PORT" parts.
bool SplitHostPort(const std::string& host_port, std::string* host, int64_t* port);

}  // namespace kvferry::connector
