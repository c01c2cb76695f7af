#pragma once
// Status and StatusOr<T>: kvferry's one error vocabulary. No exception crosses a
// component boundary; bad input from a request, a peer or a file is a Status.

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace kvferry {

// Canonical codes (the gRPC/abseil set). Each says what the caller should do.
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,           // The operation was cancelled (shutdown, client gone). Do not retry.
  kUnknown = 2,             // Unexpected error without a better code. Log it.
  kInvalidArgument = 3,     // The input is wrong whatever the state. Fix the input.
  kDeadlineExceeded = 4,    // Ran out of time; it may or may not have happened. Retry is the caller's call.
  kNotFound = 5,            // The named thing does not exist.
  kAlreadyExists = 6,       // The thing to create exists already.
  kPermissionDenied = 7,    // Not allowed (bad secret, range outside a registered buffer).
  kResourceExhausted = 8,   // Out of a bounded resource (queue full, memory). Back off and retry.
  kFailedPrecondition = 9,  // The system is not in a state for this. Fix the state first.
  kAborted = 10,            // Aborted by a conflict. Retry at a higher level.
  kOutOfRange = 11,         // Past a valid range (end of data, limit).
  kUnimplemented = 12,      // Not supported.
  kInternal = 13,           // An invariant broke. A bug.
  kUnavailable = 14,        // The peer or service is down or unreachable. Retry with backoff.
  kDataLoss = 15,           // Unrecoverable data loss or corruption.
  kUnauthenticated = 16,    // Missing or wrong credentials.
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: message" (or "OK").
  std::string ToString() const;

  // Returns a copy whose message is "context: message". OK stays OK.
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status CancelledError(std::string message);
Status UnknownError(std::string message);
Status InvalidArgumentError(std::string message);
Status DeadlineExceededError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status PermissionDeniedError(std::string message);
Status ResourceExhaustedError(std::string message);
Status FailedPreconditionError(std::string message);
Status AbortedError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DataLossError(std::string message);
Status UnauthenticatedError(std::string message);

// Status from errno: maps ECONNREFUSED/ECONNRESET/EPIPE/... to kUnavailable,
// ETIMEDOUT to kDeadlineExceeded, EINVAL to kInvalidArgument, and so on.
Status ErrnoToStatus(int err, std::string_view what);

// StatusOr<T>: either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  // REQUIRES: !status.ok().
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "StatusOr built from OK status");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U&&, T> &&
                                                    !std::is_same_v<std::decay_t<U>, Status> &&
                                                    !std::is_same_v<std::decay_t<U>, StatusOr>>>
  StatusOr(U&& value) : value_(std::forward<U>(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok().
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T&& operator*() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace kvferry

#define KVF_STATUS_CONCAT_INNER_(a, b) a##b
#define KVF_STATUS_CONCAT_(a, b) KVF_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define KVF_RETURN_IF_ERROR(expr)                                  \
  do {                                                             \
    ::kvferry::Status kvf_status_ = (expr);                        \
    if (!kvf_status_.ok()) return kvf_status_;                     \
  } while (0)

// `lhs = value of expr` (a StatusOr), or returns its Status from the enclosing function.
#define KVF_ASSIGN_OR_RETURN(lhs, expr) \
  KVF_ASSIGN_OR_RETURN_IMPL_(KVF_STATUS_CONCAT_(kvf_statusor_, __LINE__), lhs, expr)
#define KVF_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
