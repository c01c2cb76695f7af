#pragma once
// Private to dp/: the channel's messages and their framing (docs/serve.md, "Headless ranks").
// A frame is a 4-byte big-endian length, then that many bytes of one JSON object whose "t" names
// the message. Decoding never trusts the peer: a bad length, bad JSON, a missing or mistyped
// field is a Status naming what was wrong, never an abort.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/connector/connector.h"
#include "kvferry/engine/engine.h"

namespace kvferry::dp {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxFrameBytes = 16u << 20;  // a 128k-token prompt is ~1 MiB of JSON

// headless → master, first frame: who joins.
struct HelloRank {
  int64_t dp_rank = 0;
  std::string engine_id;    // "" without a connector
  std::string worker_addr;  // the connector worker's side channel ("" unless producer)
  int64_t vocab_size = 0;
  int64_t max_model_len = 0;
  int64_t block_size = 0;
  uint64_t kv_bytes = 0;
  uint64_t kv_bytes_per_block = 0;
  int64_t blocks_total = 0;
};
struct Hello {
  int64_t version = kProtocolVersion;
  std::string instance;  // "host" of the headless instance, for logs and errors
  std::vector<HelloRank> ranks;
};
// master → headless: the join is accepted.
struct Welcome {};
// master → headless: the join is refused. `final`: it will never be accepted (wrong rank,
// another model); otherwise retry later (the rank is still held by a connection going away).
struct Refuse {
  std::string message;
  bool final = false;
};
// master → headless: run a request on `dp_rank`. `kv` present: call Connector::BeginRequest
// with it first (the master's Connector stand-in only checked its shape).
struct Add {
  int64_t dp_rank = 0;
  std::string id;
  std::vector<int32_t> prompt;
  engine::SamplingParams sampling;
  engine::KvRole role = engine::KvRole::kLocal;
  std::optional<connector::RequestKvParams> kv;
};
struct Abort {
  int64_t dp_rank = 0;
  std::string id;
};
// master → headless: Connector::OnRejected.
struct Rejected {
  int64_t dp_rank = 0;
  connector::RequestKvParams kv;
  Status why;
};
// headless → master: one engine Output (held_blocks are not sent: they stay with the rank).
struct OutputMsg {
  int64_t dp_rank = 0;
  engine::Output out;
};
// headless → master, periodic: what /health and /metrics show for the rank.
struct Stats {
  int64_t dp_rank = 0;
  engine::EngineStats engine;
  bool ready = false;   // Connector::Ready (true without a connector)
  std::string metrics;  // Connector::MetricsText
};
// Either way, when nothing else was sent for a while: keeps the peer's idle deadline away.
struct Ping {};

using Message = std::variant<Hello, Welcome, Refuse, Add, Abort, Rejected, OutputMsg, Stats, Ping>;

// The JSON payload of `m` (no length prefix).
std::string EncodeMessage(const Message& m);
// InvalidArgument naming the problem for anything that is not a well-formed message.
StatusOr<Message> DecodeMessage(std::string_view payload);

// Length prefix + payload.
std::string Frame(std::string_view payload);

// Splits a byte stream into frame payloads. Not thread-safe.
class FrameReader {
 public:
  explicit FrameReader(size_t max_frame_bytes = kMaxFrameBytes) : max_(max_frame_bytes) {}
  void Feed(std::string_view bytes) { buf_.append(bytes); }
  // The next whole payload, nullopt when more bytes are needed, InvalidArgument for a length of
  // zero or above the maximum (the stream cannot be resynchronised: close it).
  StatusOr<std::optional<std::string>> Next();
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  size_t max_;
  std::string buf_;
  size_t pos_ = 0;
};

// Status ↔ wire, in one place: {"code": int, "msg": str}. Codes out of range become kUnknown.
Status StatusFromWire(int64_t code, std::string message);

}  // namespace kvferry::dp
