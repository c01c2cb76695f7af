#pragma once
// kvferry/proxy: the disaggregation proxy (PROTOCOL.md §5). It makes a set of
// prefill instances and decode instances look like one OpenAI-compatible server:
// it discovers each prefiller's dp_rank → engine_id through its bootstrap /query,
// and for every completion request sends the prefill leg and the decode leg at
// once (sharing one transfer_id), relaying the decoder's bytes to the client as
// they arrive. Instances that fail are taken out of rotation and put back when
// their /health answers 200 again.
//
// Threading: all I/O is asynchronous (a few server io threads, a few upstream io
// threads, one health-check thread); no thread is held per request. Proxy methods
// are thread-safe. The Proxy owns its server, upstream client and health checker.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::proxy {

struct PrefillInstance {
  std::string url;                // "http://HOST:PORT" of the prefiller's API server
  uint16_t bootstrap_port = 8998;  // its bootstrap server, on the same HOST
};

struct ProxyOptions {
  std::vector<PrefillInstance> prefill;  // at least one
  std::vector<std::string> decode;       // at least one "http://HOST:PORT"
  std::string host = "127.0.0.1";        // listen address (as vLLM's example proxy)
  uint16_t port = 8000;                  // 0 picks a free port
  int io_threads = 2;                    // client-facing server io threads
  int upstream_threads = 2;              // io threads of the upstream client
  Duration health_interval = std::chrono::seconds(2);  // between health rounds
  // Bound on one /health or /query call. An instance leaves the rotation after 3 checks in
  // a row time out (a busy instance is not a dead one), or at once when a check is refused
  // or answered with a status other than 200.
  Duration health_timeout = std::chrono::seconds(5);
  Duration connect_timeout = std::chrono::seconds(5);  // bound on connecting to an upstream
  // Longest silence on an upstream leg (no byte from the prefiller or decoder) before the
  // request fails with 504. Default 10 minutes: a long prefill on a CPU sends nothing.
  Duration upstream_idle_timeout = std::chrono::minutes(10);
  // Per stream: bytes queued for a slow client before the proxy stops reading from the
  // decoder (memory stays bounded; the decoder feels TCP backpressure). Default 256 KiB.
  size_t max_pending_bytes = 256u << 10;
};

// The values of repeated `--prefill URL [BOOTSTRAP_PORT]` options, flattened in order
// (e.g. {"http://a:8010", "http://b:8011", "9000"}): a number (or "none" or "", meaning
// the default) after a URL is that URL's bootstrap port. InvalidArgument names a bad token.
StatusOr<std::vector<PrefillInstance>> ParsePrefillArgs(const std::vector<std::string>& args);

class Proxy {
 public:
  // Validates the options, binds host:port and starts discovery in the background.
  // InvalidArgument for bad URLs or no instances; AlreadyExists if the port is taken.
  static StatusOr<std::unique_ptr<Proxy>> Create(const ProxyOptions& options);
  virtual ~Proxy() = default;
  virtual uint16_t port() const = 0;
  // True when every prefiller is known and at least one prefiller and one decoder are
  // healthy (what GET /health answers 200 for).
  virtual bool ready() const = 0;
  // Blocks until ready() or the deadline; false on timeout.
  virtual bool WaitReady(const Deadline& deadline) const = 0;
  // Stops serving: closes client connections (their upstream legs are cancelled) and
  // joins every thread. Idempotent; the destructor calls it.
  virtual void Stop() = 0;
  // The Prometheus text of GET /metrics.
  virtual std::string MetricsText() const = 0;
};

}  // namespace kvferry::proxy
