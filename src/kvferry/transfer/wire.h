#pragma once
// The transfer engine's bytes, in one place (private to transfer/). Everything a
// socket sends or receives is encoded and decoded here; see
// shared/PROTOCOL-TRANSFER.md for the Mooncake contract and docs/transfer.md for
// kvferry's extensions (opcode bits 0x40/0x20, descriptor keys "kvferry_*", auth).

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::transfer::wire {

// ---- Handshake socket: [u64 LE L][type byte][JSON body], L counts type + body ----
inline constexpr uint8_t kTypeConnection = 0x00;
inline constexpr uint8_t kTypeMetadata = 0x01;
inline constexpr uint8_t kTypeNotify = 0x02;
inline constexpr uint8_t kTypeProbe = 0x03;
inline constexpr uint64_t kDefaultMaxHandshakeLength = 1 << 20;
inline constexpr size_t kHandshakeLengthSize = 8;

std::string EncodeHandshakeFrame(uint8_t type, std::string_view body);
std::string EncodeUntypedHandshakeFrame(std::string_view body);
// Validates the 8-byte length prefix: InvalidArgument for 0 or > max_length.
StatusOr<uint64_t> DecodeHandshakeLength(const uint8_t* bytes8, uint64_t max_length);

struct HandshakePayload {
  bool typed = true;  // false: a legacy untyped frame (treated as Connection)
  uint8_t type = kTypeMetadata;
  std::string_view body;  // points into the decoded payload
};
// Splits the L payload bytes into type and body following Mooncake's rule (first
// byte as signed char <= 3 → typed). Typed types above 3 are InvalidArgument.
StatusOr<HandshakePayload> DecodeHandshakePayload(std::string_view payload);

// Fixed reply bodies for the non-metadata types.
std::string ProbeReplyBody();
std::string NotifyReplyBody();
std::string ConnectionReplyBody();

// ---- Segment descriptor JSON ----
struct Descriptor {
  std::string name;  // "host:handshake_port"
  std::string protocol = "tcp";
  uint16_t tcp_data_port = 0;
  int tcp_proto_version = 1;  // missing → 1
  std::string timestamp;
  std::vector<RemoteBuffer> buffers;
  // kvferry extensions (ignored by Mooncake).
  int kvferry_version = 0;     // > 0: pipelining and opcode extensions understood
  std::string kvferry_shm_path;  // unix socket of the shm control channel, if served
  bool kvferry_auth = false;     // connections must pass the secret challenge
};
// Compact JSON with exact integer types. `buffers[].name` = name.
std::string EncodeDescriptor(const Descriptor& d);
// Accepts any valid JSON object with the required fields; ignores unknown keys;
// u64 fields are parsed without going through double. InvalidArgument otherwise
// (the message names the field). Empty or zero buffer fields reject the whole
// descriptor, as Mooncake does.
StatusOr<Descriptor> DecodeDescriptor(std::string_view json);
// Splits "host:port" at the last ':' ("[v6]:port" brackets removed).
StatusOr<std::pair<std::string, uint16_t>> SplitHostPort(std::string_view name);
std::string JoinHostPort(std::string_view host, uint16_t port);

// ---- Data port: 24-byte header, then payload; v2 adds an 8-byte status ----
inline constexpr size_t kDataHeaderSize = 24;
inline constexpr uint8_t kOpV2 = 0x80;       // acknowledged framing (status frames)
inline constexpr uint8_t kOpKvferry = 0x40;  // kvferry peer: a rejected request does not close the connection
inline constexpr uint8_t kOpShmRef = 0x20;   // shm: 8-byte initiator address follows; no payload bytes
inline constexpr uint8_t kOpWrite = 0x01;    // low bits 1 = WRITE, anything else = READ
inline constexpr size_t kShmRefSize = 8;

struct DataHeader {
  uint64_t size = 0;
  uint64_t addr = 0;
  uint8_t opcode = 0;
};
void EncodeDataHeader(const DataHeader& h, uint8_t out[kDataHeaderSize]);
// Padding bytes 17..23 are ignored.
DataHeader DecodeDataHeader(const uint8_t in[kDataHeaderSize]);
inline bool IsV2(uint8_t op) { return (op & kOpV2) != 0; }
inline bool IsKvferryOp(uint8_t op) { return (op & kOpKvferry) != 0; }
inline bool IsShmRef(uint8_t op) { return (op & kOpShmRef) != 0; }
// Mooncake: the low 7 bits equal to 1 mean WRITE; kvferry's flag bits are masked first.
inline bool IsWriteOp(uint8_t op) {
  uint8_t low = op & 0x7F;
  if (op & kOpKvferry) low &= static_cast<uint8_t>(~(kOpKvferry | kOpShmRef));
  return low == kOpWrite;
}
uint8_t MakeOpcode(Op op, bool v2, bool kvferry, bool shm_ref);

inline constexpr size_t kStatusSize = 8;
inline constexpr uint32_t kStatusMagic = 0x4D435456;  // "MCTV"
inline constexpr uint32_t kCodeOk = 0;
inline constexpr uint32_t kCodeRejected = 1;   // address range rejected
inline constexpr uint32_t kCodeCopyFailed = 2;  // kvferry: shm copy failed
void EncodeStatus(uint32_t code, uint8_t out[kStatusSize]);
// The code, or DataLoss for a frame without the magic.
StatusOr<uint32_t> DecodeStatus(const uint8_t in[kStatusSize]);

// ---- shm mapping channel (kvferry only, on the shm unix socket; docs/transfer.md) ----
// initiator → target: a data header with opcode kOpShmMap (size 0, addr 0).
// target → initiator: "KVFMAP01", u32 count, u32 0, then `count` entries of 4 x u64
//   (region id, address, length, offset in its memfd); the count memfds ride along
//   with SCM_RIGHTS, in entry order.
// then either way, 16-byte control frames: u32 kind, u32 0, u64 region id.
//   kShmRevoke (target → initiator): stop using region id, unmap it, then answer
//   kShmRevoked (initiator → target).
inline constexpr uint8_t kOpShmMap = kOpKvferry | 0x10;
inline constexpr std::string_view kShmMapMagic = "KVFMAP01";
inline constexpr size_t kShmMapHeaderSize = 16;
inline constexpr size_t kShmMapEntrySize = 32;
inline constexpr size_t kMaxShmMapRegions = 64;  // at most this many memfds in one reply
inline constexpr size_t kShmControlSize = 16;
inline constexpr uint32_t kShmRevoke = 1;
inline constexpr uint32_t kShmRevoked = 2;

struct ShmMapEntry {
  uint64_t id = 0;
  uint64_t addr = 0;
  uint64_t length = 0;
  uint64_t fd_offset = 0;
};
std::string EncodeShmMapReply(const std::vector<ShmMapEntry>& entries);
// Parses the 16-byte header: the entry count (at most kMaxShmMapRegions), DataLoss otherwise.
StatusOr<size_t> DecodeShmMapHeader(const uint8_t in[kShmMapHeaderSize]);
ShmMapEntry DecodeShmMapEntry(const uint8_t in[kShmMapEntrySize]);
void EncodeShmControl(uint32_t kind, uint64_t id, uint8_t out[kShmControlSize]);
// The kind (kShmRevoke or kShmRevoked) and id; DataLoss for any other kind.
StatusOr<std::pair<uint32_t, uint64_t>> DecodeShmControl(const uint8_t in[kShmControlSize]);

// Target-side validation: size > 0, no wrap-around, inside one buffer.
bool RangeInside(uint64_t addr, uint64_t size, uint64_t buf_addr, uint64_t buf_len);

// ---- kvferry secret challenge (only when a secret is configured) ----
// server → client: "KVFAUTH1" + 32-byte nonce
// client → server: 32-byte HMAC-SHA256(secret, "kvferry-client" || server nonce) + 32-byte nonce
// server → client: 32-byte HMAC-SHA256(secret, "kvferry-server" || client nonce)
inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kMacSize = 32;
inline constexpr std::string_view kAuthMagic = "KVFAUTH1";
inline constexpr size_t kChallengeSize = 8 + kNonceSize;
using Nonce = std::array<uint8_t, kNonceSize>;
using Mac = std::array<uint8_t, kMacSize>;
Nonce RandomNonce();
Mac AuthMac(std::string_view secret, std::string_view role, const Nonce& nonce);
bool MacEqual(const Mac& a, const Mac& b);  // constant time

}  // namespace kvferry::transfer::wire
