#pragma once
// Private to dp/: one connected channel between a master and a headless instance — messages
// in and out over a TCP socket, with a bounded send queue and an idle deadline.
//
// Threading: a reader thread decodes frames and calls on_message for each message in order,
// then on_close exactly once; a writer thread drains the send queue and sends a Ping when the
// link has been quiet for ping_interval. Send and Close are thread-safe and never block. The
// callbacks must not destroy the Link (its destructor joins both threads).

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "kvferry/base/base.h"
#include "kvferry/dp/frame.h"

namespace kvferry::dp {

struct LinkOptions {
  std::string peer;  // "IP:PORT" of the other side, for messages
  Duration ping_interval = std::chrono::seconds(1);
  // No frame from the peer for this long (it sends a Ping at least every ping_interval), or a
  // write that cannot make progress for this long: the link closes with DeadlineExceeded.
  Duration idle_timeout = std::chrono::seconds(5);
  size_t max_queued_bytes = 64u << 20;  // Send beyond this: ResourceExhausted, and the link closes
  size_t max_frame_bytes = kMaxFrameBytes;
};

class Link {
 public:
  using OnMessage = std::function<void(const Message&)>;
  using OnClose = std::function<void(const Status& why)>;
  // Takes ownership of the connected socket `fd`.
  static std::unique_ptr<Link> Start(int fd, LinkOptions options, OnMessage on_message, OnClose on_close);
  ~Link();  // Close(Cancelled) and join the threads

  // Queues one message. Unavailable once closed; ResourceExhausted when the queue is full (the
  // link is closed: a peer that does not read is as good as gone).
  Status Send(const Message& m);
  // Closes the socket; on_close gets `why` (unless the link closed for another reason before).
  void Close(const Status& why);
  bool closed() const;
  const std::string& peer() const { return options_.peer; }

 private:
  Link(int fd, LinkOptions options, OnMessage on_message, OnClose on_close);
  void ReadLoop();
  void WriteLoop();
  bool WriteAll(const std::string& bytes);

  const int fd_;
  const LinkOptions options_;
  const OnMessage on_message_;
  const OnClose on_close_;
  mutable Mutex mu_;
  CondVar cv_;
  bool closed_ KVF_GUARDED_BY(mu_) = false;
  Status why_ KVF_GUARDED_BY(mu_);
  std::deque<std::string> queue_ KVF_GUARDED_BY(mu_);
  size_t queued_bytes_ KVF_GUARDED_BY(mu_) = 0;
  std::thread reader_;
  std::thread writer_;
};

// A TCP connection to host:port within `deadline` (TCP_NODELAY set). Unavailable naming the
// address when refused or unreachable, DeadlineExceeded when it took too long.
StatusOr<int> Dial(const std::string& host, int port, const Deadline& deadline);
// A listening TCP socket on host:port (port 0: any); *bound_port gets the port.
StatusOr<int> Listen(const std::string& host, int port, int* bound_port);

}  // namespace kvferry::dp
