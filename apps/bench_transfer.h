#pragma once
// Transfer benchmarks shared by `kvferry bench transfer|memcpy` and `kvferry demo`.

#include <cstdint>
#include <string>

#include "kvferry/base/base.h"
#include "kvferry/transfer/transfer.h"

namespace kvferry::apps {

struct TransferBenchConfig {
  transfer::Protocol protocol = transfer::Protocol::kTcp;
  transfer::Op op = transfer::Op::kWrite;
  uint64_t block_size = 4 << 20;
  int batch = 16;
  int threads = 1;
  double duration_s = 5;
  std::string target;  // "IP:PORT"; empty = start a target process on loopback
  bool verify = false;
  int lanes = 4;
  uint64_t slice_size = 1 << 20;
  uint64_t remote_offset = 0;  // where in the target's first buffer the bench region starts
  std::string local_host = "127.0.0.1";
};

struct TransferBenchResult {
  double gbps = 0;
  double p50_us = 0;
  double p99_us = 0;
  uint64_t bytes = 0;
  uint64_t bytes_mapped = 0;  // shm: bytes copied through a mapping of the target's memory (verify included)
  uint64_t batches = 0;
  double seconds = 0;
  bool verified = false;
  std::string target;
};

// Runs the initiator (starting a local target process first when config.target is empty).
StatusOr<TransferBenchResult> RunTransferBench(const TransferBenchConfig& config, bool progress);

// Serves a target: prints its segment name (IP:PORT) alone on a line on stdout,
// then serves until SIGINT/SIGTERM.
Status RunTransferTarget(transfer::Protocol protocol, const std::string& listen, uint64_t buffer_size,
                         uint16_t handshake_port, uint16_t data_port);

struct MemcpyResult {
  double gbps = 0;
  uint64_t bytes = 0;
  double seconds = 0;
};
// Copies `batch` distinct blocks of block_size in turn (batch 1: the same block every time).
MemcpyResult RunMemcpyBench(uint64_t block_size, double duration_s, int batch = 1);

// Starts `kvferry bench transfer --mode target ...` as a child process and returns its
// pid and segment name (read from its stdout).
StatusOr<std::pair<int, std::string>> SpawnTransferTarget(transfer::Protocol protocol, uint64_t buffer_size);
void StopChild(int pid);

}  // namespace kvferry::apps
