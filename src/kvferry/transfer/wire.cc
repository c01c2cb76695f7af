#include "kvferry/transfer/wire.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/time.h>

#include <charconv>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

namespace kvferry::transfer::wire {
namespace {

void PutU64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetU64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}

std::string NowTimestamp() {
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm local{};
  localtime_r(&tv.tv_sec, &local);
  char buf[64];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &local);
  return fmt::format("{}.{:06d}", std::string_view(buf, n), static_cast<int>(tv.tv_usec));
}

// Reads an unsigned integer field; InvalidArgument naming it otherwise.
StatusOr<uint64_t> GetUnsigned(const nlohmann::json& obj, const char* key, const char* where) {
  auto it = obj.find(key);
  if (it == obj.end()) return InvalidArgumentError(fmt::format("descriptor: {} has no '{}'", where, key));
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return static_cast<uint64_t>(it->get<int64_t>());
  return InvalidArgumentError(fmt::format("descriptor: {} field '{}' is not a non-negative integer", where, key));
}

}  // namespace

std::string EncodeHandshakeFrame(uint8_t type, std::string_view body) {
  std::string out(kHandshakeLengthSize + 1 + body.size(), '\0');
  PutU64(reinterpret_cast<uint8_t*>(out.data()), 1 + body.size());
  out[kHandshakeLengthSize] = static_cast<char>(type);
  std::memcpy(out.data() + kHandshakeLengthSize + 1, body.data(), body.size());
  return out;
}

std::string EncodeUntypedHandshakeFrame(std::string_view body) {
  std::string out(kHandshakeLengthSize + body.size(), '\0');
  PutU64(reinterpret_cast<uint8_t*>(out.data()), body.size());
  std::memcpy(out.data() + kHandshakeLengthSize, body.data(), body.size());
  return out;
}

StatusOr<uint64_t> DecodeHandshakeLength(const uint8_t* bytes8, uint64_t max_length) {
  uint64_t len = GetU64(bytes8);
  if (len == 0) return InvalidArgumentError("handshake frame length is 0");
  if (len > max_length) {
    return InvalidArgumentError(fmt::format("handshake frame length {} exceeds the limit {}", len, max_length));
  }
  return len;
}

StatusOr<HandshakePayload> DecodeHandshakePayload(std::string_view payload) {
  if (payload.empty()) return InvalidArgumentError("empty handshake payload");
  HandshakePayload out;
  auto first = static_cast<signed char>(payload[0]);
  if (first <= 3) {
    if (first < 0) return InvalidArgumentError(fmt::format("unknown handshake type 0x{:02x}", static_cast<uint8_t>(first)));
    out.typed = true;
    out.type = static_cast<uint8_t>(first);
    out.body = payload.substr(1);
  } else {
    out.typed = false;
    out.type = kTypeConnection;
    out.body = payload;
  }
  return out;
}

std::string ProbeReplyBody() { return R"({"status":"success"})"; }
std::string NotifyReplyBody() { return R"({"name":"","notify_msg":"success"})"; }
std::string ConnectionReplyBody() {
  return R"({"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""})";
}

std::string EncodeDescriptor(const Descriptor& d) {
  nlohmann::json j;
  j["name"] = d.name;
  j["protocol"] = d.protocol;
  j["tcp_data_port"] = static_cast<uint64_t>(d.tcp_data_port);
  j["tcp_proto_version"] = d.tcp_proto_version;
  j["timestamp"] = d.timestamp.empty() ? NowTimestamp() : d.timestamp;
  nlohmann::json bufs = nlohmann::json::array();
  for (const RemoteBuffer& b : d.buffers) {
    bufs.push_back({{"addr", b.addr}, {"length", b.length}, {"name", d.name}});
  }
  j["buffers"] = std::move(bufs);
  if (d.kvferry_version > 0) j["kvferry_version"] = d.kvferry_version;
  if (!d.kvferry_shm_path.empty()) j["kvferry_shm_path"] = d.kvferry_shm_path;
  if (d.kvferry_auth) j["kvferry_auth"] = true;
  return j.dump() + "\n";
}

StatusOr<Descriptor> DecodeDescriptor(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("descriptor is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("descriptor is not a JSON object");
  Descriptor d;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty()) {
    return InvalidArgumentError("descriptor: 'name' is missing or not a non-empty string");
  }
  d.name = name->get<std::string>();
  auto proto = j.find("protocol");
  if (proto == j.end() || !proto->is_string()) return InvalidArgumentError("descriptor: 'protocol' is missing or not a string");
  d.protocol = proto->get<std::string>();
  if (d.protocol != "tcp") {
    return UnimplementedError(fmt::format("descriptor: segment protocol '{}' is not supported (only tcp)", d.protocol));
  }
  KVF_ASSIGN_OR_RETURN(uint64_t port, GetUnsigned(j, "tcp_data_port", "segment"));
  if (port == 0 || port > 65535) return InvalidArgumentError(fmt::format("descriptor: tcp_data_port {} is not a port", port));
  d.tcp_data_port = static_cast<uint16_t>(port);
  if (j.contains("tcp_proto_version")) {
    KVF_ASSIGN_OR_RETURN(uint64_t v, GetUnsigned(j, "tcp_proto_version", "segment"));
    d.tcp_proto_version = v > 1000 ? 1000 : static_cast<int>(v);
  }
  if (auto ts = j.find("timestamp"); ts != j.end() && ts->is_string()) d.timestamp = ts->get<std::string>();
  auto bufs = j.find("buffers");
  if (bufs != j.end()) {
    if (!bufs->is_array()) return InvalidArgumentError("descriptor: 'buffers' is not an array");
    for (size_t i = 0; i < bufs->size(); ++i) {
      const nlohmann::json& b = (*bufs)[i];
      std::string where = fmt::format("buffers[{}]", i);
      if (!b.is_object()) return InvalidArgumentError(fmt::format("descriptor: {} is not an object", where));
      auto bn = b.find("name");
      if (bn == b.end() || !bn->is_string() || bn->get<std::string>().empty()) {
        return InvalidArgumentError(fmt::format("descriptor: {} has an empty or missing name", where));
      }
      KVF_ASSIGN_OR_RETURN(uint64_t addr, GetUnsigned(b, "addr", where.c_str()));
      KVF_ASSIGN_OR_RETURN(uint64_t len, GetUnsigned(b, "length", where.c_str()));
      if (addr == 0 || len == 0) return InvalidArgumentError(fmt::format("descriptor: {} has a zero addr or length", where));
      d.buffers.push_back(RemoteBuffer{addr, len});
    }
  }
  if (auto v = j.find("kvferry_version"); v != j.end() && v->is_number_integer()) {
    int64_t x = v->get<int64_t>();
    d.kvferry_version = x < 0 ? 0 : (x > 1000 ? 1000 : static_cast<int>(x));
  }
  if (auto p = j.find("kvferry_shm_path"); p != j.end() && p->is_string()) d.kvferry_shm_path = p->get<std::string>();
  if (auto a = j.find("kvferry_auth"); a != j.end() && a->is_boolean()) d.kvferry_auth = a->get<bool>();
  return d;
}

StatusOr<std::pair<std::string, uint16_t>> SplitHostPort(std::string_view name) {
  size_t colon = name.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == name.size()) {
    return InvalidArgumentError(fmt::format("segment name '{}' is not HOST:PORT", name));
  }
  std::string_view host = name.substr(0, colon);
  std::string_view port_text = name.substr(colon + 1);
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port == 0 || port > 65535) {
    return InvalidArgumentError(fmt::format("segment name '{}' has an invalid port", name));
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::make_pair(std::string(host), static_cast<uint16_t>(port));
}

std::string JoinHostPort(std::string_view host, uint16_t port) {
  if (host.find(':') != std::string_view::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

void EncodeDataHeader(const DataHeader& h, uint8_t out[kDataHeaderSize]) {
  PutU64(out, h.size);
  PutU64(out + 8, h.addr);
  out[16] = h.opcode;
  std::memset(out + 17, 0, 7);
}

DataHeader DecodeDataHeader(const uint8_t in[kDataHeaderSize]) {
  DataHeader h;
  h.size = GetU64(in);
  h.addr = GetU64(in + 8);
  h.opcode = in[16];
  return h;
}

uint8_t MakeOpcode(Op op, bool v2, bool kvferry, bool shm_ref) {
  uint8_t code = op == Op::kWrite ? kOpWrite : 0;
  if (v2) code |= kOpV2;
  if (kvferry) code |= kOpKvferry;
  if (shm_ref) code |= kOpShmRef;
  return code;
}

void EncodeStatus(uint32_t code, uint8_t out[kStatusSize]) {
  PutU64(out, (static_cast<uint64_t>(kStatusMagic) << 32) | code);
}

StatusOr<uint32_t> DecodeStatus(const uint8_t in[kStatusSize]) {
  uint64_t v = GetU64(in);
  if ((v >> 32) != kStatusMagic) {
    return DataLossError(fmt::format("malformed status frame 0x{:016x} (no MCTV magic)", v));
  }
  return static_cast<uint32_t>(v & 0xFFFFFFFFu);
}

std::string EncodeShmMapReply(const std::vector<ShmMapEntry>& entries) {
  std::string out(kShmMapHeaderSize + entries.size() * kShmMapEntrySize, '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  std::memcpy(p, kShmMapMagic.data(), kShmMapMagic.size());
  PutU64(p + 8, entries.size());
  p += kShmMapHeaderSize;
  for (const ShmMapEntry& e : entries) {
    PutU64(p, e.id);
    PutU64(p + 8, e.addr);
    PutU64(p + 16, e.length);
    PutU64(p + 24, e.fd_offset);
    p += kShmMapEntrySize;
  }
  return out;
}

StatusOr<size_t> DecodeShmMapHeader(const uint8_t in[kShmMapHeaderSize]) {
  if (std::memcmp(in, kShmMapMagic.data(), kShmMapMagic.size()) != 0) {
    return DataLossError("malformed shm map reply (no KVFMAP01 magic)");
  }
  uint64_t n = GetU64(in + 8);
  if (n > kMaxShmMapRegions) return DataLossError(fmt::format("shm map reply lists {} regions (at most {})", n, kMaxShmMapRegions));
  return static_cast<size_t>(n);
}

ShmMapEntry DecodeShmMapEntry(const uint8_t in[kShmMapEntrySize]) {
  return ShmMapEntry{GetU64(in), GetU64(in + 8), GetU64(in + 16), GetU64(in + 24)};
}

void EncodeShmControl(uint32_t kind, uint64_t id, uint8_t out[kShmControlSize]) {
  PutU64(out, kind);
  PutU64(out + 8, id);
}

StatusOr<std::pair<uint32_t, uint64_t>> DecodeShmControl(const uint8_t in[kShmControlSize]) {
  uint64_t kind = GetU64(in);
  if (kind != kShmRevoke && kind != kShmRevoked) {
    return DataLossError(fmt::format("malformed shm control frame (kind {})", kind));
  }
  return std::make_pair(static_cast<uint32_t>(kind), GetU64(in + 8));
}

bool RangeInside(uint64_t addr, uint64_t size, uint64_t buf_addr, uint64_t buf_len) {
  if (size == 0) return false;
  if (addr + size < addr) return false;  // wraps
  if (buf_addr + buf_len < buf_addr) return false;
  return addr >= buf_addr && addr + size <= buf_addr + buf_len;
}

Nonce RandomNonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    // RAND_bytes failing means the OS RNG is unavailable; fall back to /dev/urandom via getrandom in OpenSSL
    // is already what it does, so this is unreachable in practice. Keep the nonce non-constant anyway.
    for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>(std::rand());
  }
  return n;
}

Mac AuthMac(std::string_view secret, std::string_view role, const Nonce& nonce) {
  std::string msg(role);
  msg.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
  Mac mac{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac.data(), &len);
  return mac;
}

bool MacEqual(const Mac& a, const Mac& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

}  // namespace kvferry::transfer::wire
