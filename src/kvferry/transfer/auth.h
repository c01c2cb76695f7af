#pragma once
// kvferry's secret challenge on a freshly connected socket (private to transfer/).
// Only used when a secret is configured; see wire.h for the bytes.

#include <string_view>

#include "kvferry/base/base.h"

namespace kvferry::transfer {

// Target side: sends the challenge, checks the client's proof, proves itself.
// PermissionDenied when the client does not know the secret.
Status AuthenticateAsServer(int fd, std::string_view secret, const Deadline& deadline);
// Initiator side. PermissionDenied when the server's proof is wrong; Unavailable /
// DeadlineExceeded when the server sent no challenge (it runs without a secret).
Status AuthenticateAsClient(int fd, std::string_view secret, const Deadline& deadline);

}  // namespace kvferry::transfer
