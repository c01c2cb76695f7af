#include "kvferry/base/status.h"

#include <cerrno>
#include <cstring>

namespace kvferry {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN_CODE";
}

Status::Status(StatusCode code, std::string message)
    : code_(code), message_(code == StatusCode::kOk ? std::string() : std::move(message)) {}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += message_;
  return Status(code_, std::move(msg));
}

#define KVF_DEFINE_ERROR_(Name, Code) \
  Status Name(std::string message) { return Status(StatusCode::Code, std::move(message)); }
KVF_DEFINE_ERROR_(CancelledError, kCancelled)
KVF_DEFINE_ERROR_(UnknownError, kUnknown)
KVF_DEFINE_ERROR_(InvalidArgumentError, kInvalidArgument)
KVF_DEFINE_ERROR_(DeadlineExceededError, kDeadlineExceeded)
KVF_DEFINE_ERROR_(NotFoundError, kNotFound)
KVF_DEFINE_ERROR_(AlreadyExistsError, kAlreadyExists)
KVF_DEFINE_ERROR_(PermissionDeniedError, kPermissionDenied)
KVF_DEFINE_ERROR_(ResourceExhaustedError, kResourceExhausted)
KVF_DEFINE_ERROR_(FailedPreconditionError, kFailedPrecondition)
KVF_DEFINE_ERROR_(AbortedError, kAborted)
KVF_DEFINE_ERROR_(OutOfRangeError, kOutOfRange)
KVF_DEFINE_ERROR_(UnimplementedError, kUnimplemented)
KVF_DEFINE_ERROR_(InternalError, kInternal)
KVF_DEFINE_ERROR_(UnavailableError, kUnavailable)
KVF_DEFINE_ERROR_(DataLossError, kDataLoss)
KVF_DEFINE_ERROR_(UnauthenticatedError, kUnauthenticated)
#undef KVF_DEFINE_ERROR_

Status ErrnoToStatus(int err, std::string_view what) {
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  StatusCode code;
  switch (err) {
    case ECONNREFUSED: case ECONNRESET: case ECONNABORTED: case EPIPE: case ENETUNREACH:
    case EHOSTUNREACH: case ENETDOWN: case EHOSTDOWN: case ENOTCONN: case ESHUTDOWN:
      code = StatusCode::kUnavailable; break;
    case ETIMEDOUT: code = StatusCode::kDeadlineExceeded; break;
    case EINVAL: case EBADF: case EFAULT: code = StatusCode::kInvalidArgument; break;
    case ENOENT: code = StatusCode::kNotFound; break;
    case EEXIST: case EADDRINUSE: code = StatusCode::kAlreadyExists; break;
    case EACCES: case EPERM: code = StatusCode::kPermissionDenied; break;
    case ENOMEM: case EMFILE: case ENFILE: case ENOSPC: case EAGAIN:
      code = StatusCode::kResourceExhausted; break;
    case EADDRNOTAVAIL: code = StatusCode::kFailedPrecondition; break;
    case EINTR: code = StatusCode::kAborted; break;
    default: code = StatusCode::kUnknown; break;
  }
  return Status(code, std::move(msg));
}

}  // namespace kvferry
