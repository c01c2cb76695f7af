#include "kvferry/connector/metrics.h"

#include <fmt/format.h>

namespace kvferry::connector {
namespace {

template <size_t N>
size_t Bucket(const std::array<double, N>& bounds, double v) {
  size_t i = 0;
  while (i < N && v > bounds[i]) ++i;
  return i;
}

void Counter(std::string* out, const char* name, const char* help, uint64_t v) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
}

void Gauge(std::string* out, const char* name, const char* help, int64_t v) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
}

template <size_t N, size_t M>
void Histogram(std::string* out, const char* name, const char* help, const std::array<double, N>& bounds,
               const std::array<uint64_t, M>& counts, double sum) {
  static_assert(M == N + 1);
  *out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < N; ++i) {
    cum += counts[i];
    *out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[i], cum);
  }
  cum += counts[N];
  *out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum, name, cum);
}

}  // namespace

void Metrics::RecordTransfer(uint64_t bytes, uint64_t blocks, uint64_t descriptors, double seconds) {
  MutexLock l(mu_);
  ++c_.transfers_total;
  c_.transfer_bytes_total += bytes;
  c_.transfer_blocks_total += blocks;
  ++duration_[Bucket(kDurationBucketsS, seconds)];
  duration_sum_ += seconds;
  if (descriptors > 0) {
    c_.transfer_descriptors_total += descriptors;
    ++descriptors_[Bucket(kDescriptorBuckets, static_cast<double>(descriptors))];
    ++descriptor_samples_;
  }
}

void Metrics::AddFailedTransfer(uint64_t n) {
  MutexLock l(mu_);
  c_.failed_transfers_total += n;
}
void Metrics::AddFailedReceive() {
  MutexLock l(mu_);
  ++c_.failed_receives_total;
}
void Metrics::AddExpired() {
  MutexLock l(mu_);
  ++c_.expired_requests_total;
}
void Metrics::AddRejected() {
  MutexLock l(mu_);
  ++c_.rejected_messages_total;
}

ConnectorStats Metrics::Counters() const {
  MutexLock l(mu_);
  return c_;
}

std::string Metrics::Text(const ConnectorStats& s) const {
  std::string out;
  Counter(&out, "kvferry:kv_transfers_total",
          "KV transfers completed (written by this prefiller or received by this decoder).", s.transfers_total);
  Counter(&out, "kvferry:kv_transfer_bytes_total", "KV bytes transferred.", s.transfer_bytes_total);
  Counter(&out, "kvferry:kv_transfer_blocks_total", "KV cache blocks transferred.", s.transfer_blocks_total);
  Counter(&out, "kvferry:kv_transfer_descriptors_total", "Transfer-engine descriptors submitted (after coalescing).",
          s.transfer_descriptors_total);
  Counter(&out, "kvferry:kv_transfer_failed_total", "Prefiller: KV sends that failed.", s.failed_transfers_total);
  Counter(&out, "kvferry:kv_receive_failed_total", "Decoder: KV loads that failed (error, timeout, unreachable peer).",
          s.failed_receives_total);
  Counter(&out, "kvferry:kv_expired_requests_total",
          "Prefiller: held KV freed by VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT without being pulled.",
          s.expired_requests_total);
  Counter(&out, "kvferry:kv_rejected_messages_total", "Prefiller: side-channel messages that failed to decode.",
          s.rejected_messages_total);
  Gauge(&out, "kvferry:kv_held_requests", "Prefiller: requests whose KV blocks are held for a decoder.",
        s.held_requests);
  Gauge(&out, "kvferry:kv_waiting_pulls", "Prefiller: decoder pulls waiting for their prefill.", s.waiting_pulls);
  Gauge(&out, "kvferry:kv_pending_loads", "Decoder: requests waiting for remote KV.", s.pending_loads);
  MutexLock l(mu_);
  Histogram(&out, "kvferry:kv_transfer_duration_seconds", "Duration of one request's KV transfer.", kDurationBucketsS,
            duration_, duration_sum_);
  Histogram(&out, "kvferry:kv_transfer_descriptors", "Descriptors per KV transfer (contiguous block runs).",
            kDescriptorBuckets, descriptors_, static_cast<double>(c_.transfer_descriptors_total));
  return out;
}

}  // namespace kvferry::connector
