#pragma once
// Private: the connector's counters and histograms, and their Prometheus text.
// Thread-safe.

#include <array>
#include <cstdint>
#include <string>

#include "kvferry/base/base.h"
#include "kvferry/connector/connector.h"

namespace kvferry::connector {

// Upper bounds of the transfer duration histogram, seconds (+Inf implied).
inline constexpr std::array<double, 12> kDurationBucketsS = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                             0.05,   0.1,   0.25,   0.5,   1.0,  5.0};
// Upper bounds of the descriptors-per-transfer histogram (+Inf implied).
inline constexpr std::array<double, 9> kDescriptorBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};

class Metrics {
 public:
  // A transfer that completed: P wrote it (descriptors > 0) or D received it (descriptors 0).
  void RecordTransfer(uint64_t bytes, uint64_t blocks, uint64_t descriptors, double seconds);
  void AddFailedTransfer(uint64_t n = 1);
  void AddFailedReceive();
  void AddExpired();
  void AddRejected();
  // Counters only; the caller fills the gauges.
  ConnectorStats Counters() const;
  // Prometheus text; gauges from `stats`.
  std::string Text(const ConnectorStats& stats) const;

 private:
  mutable Mutex mu_;
  ConnectorStats c_ KVF_GUARDED_BY(mu_);
  std::array<uint64_t, kDurationBucketsS.size() + 1> duration_ KVF_GUARDED_BY(mu_){};
  double duration_sum_ KVF_GUARDED_BY(mu_) = 0;
  std::array<uint64_t, kDescriptorBuckets.size() + 1> descriptors_ KVF_GUARDED_BY(mu_){};
  uint64_t descriptor_samples_ KVF_GUARDED_BY(mu_) = 0;
};

}  // namespace kvferry::connector
