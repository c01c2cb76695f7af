#include "kvferry/transfer/auth.h"

#include <cstring>

#include "kvferry/transfer/net.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {

Status AuthenticateAsServer(int fd, std::string_view secret, const Deadline& deadline) {
  wire::Nonce server_nonce = wire::RandomNonce();
  uint8_t challenge[wire::kChallengeSize];
  std::memcpy(challenge, wire::kAuthMagic.data(), 8);
  std::memcpy(challenge + 8, server_nonce.data(), wire::kNonceSize);
  KVF_RETURN_IF_ERROR(net::SendAll(fd, challenge, sizeof(challenge), deadline));
  uint8_t answer[wire::kMacSize + wire::kNonceSize];
  KVF_RETURN_IF_ERROR(net::RecvAll(fd, answer, sizeof(answer), deadline));
  wire::Mac got;
  std::memcpy(got.data(), answer, wire::kMacSize);
  if (!wire::MacEqual(got, wire::AuthMac(secret, "kvferry-client", server_nonce))) {
    return PermissionDeniedError("peer failed the secret challenge");
  }
  wire::Nonce client_nonce;
  std::memcpy(client_nonce.data(), answer + wire::kMacSize, wire::kNonceSize);
  wire::Mac proof = wire::AuthMac(secret, "kvferry-server", client_nonce);
  return net::SendAll(fd, proof.data(), proof.size(), deadline);
}

Status AuthenticateAsClient(int fd, std::string_view secret, const Deadline& deadline) {
  uint8_t challenge[wire::kChallengeSize];
  Status s = net::RecvAll(fd, challenge, sizeof(challenge), deadline);
  if (!s.ok()) {
    return Status(s.code(), "no secret challenge from the peer (does it run without a secret?): " + s.message());
  }
  if (std::memcmp(challenge, wire::kAuthMagic.data(), 8) != 0) {
    return PermissionDeniedError("peer answered without a secret challenge");
  }
  wire::Nonce server_nonce;
  std::memcpy(server_nonce.data(), challenge + 8, wire::kNonceSize);
  wire::Nonce client_nonce = wire::RandomNonce();
  wire::Mac mac = wire::AuthMac(secret, "kvferry-client", server_nonce);
  uint8_t answer[wire::kMacSize + wire::kNonceSize];
  std::memcpy(answer, mac.data(), wire::kMacSize);
  std::memcpy(answer + wire::kMacSize, client_nonce.data(), wire::kNonceSize);
  KVF_RETURN_IF_ERROR(net::SendAll(fd, answer, sizeof(answer), deadline));
  wire::Mac proof;
  s = net::RecvAll(fd, proof.data(), proof.size(), deadline);
  if (!s.ok()) return PermissionDeniedError("peer rejected our secret (connection closed during the challenge)");
  if (!wire::MacEqual(proof, wire::AuthMac(secret, "kvferry-server", client_nonce))) {
    return PermissionDeniedError("peer does not know the secret");
  }
  return Status::Ok();
}

}  // namespace kvferry::transfer
