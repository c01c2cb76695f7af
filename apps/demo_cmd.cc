// `kvferry demo`: the README's main job. Until the serving path lands it is the
// transfer demo: a target engine in a second process on loopback, an initiator
// here, KV-sized blocks written and read back over tcp and shm, and the figures.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdlib>

#include "apps/bench_transfer.h"
#include "apps/commands.h"

namespace kvferry::apps {

void AddDemoCommand(CLI::App& root) {
  auto* cmd = root.add_subcommand(
      "demo",
      "Run the end-to-end demo on loopback: two transfer engines in two processes move KV-cache-sized blocks\n"
      "(write, read back, verify) over tcp and shm and print the figures.");
  auto seconds = std::make_shared<double>(2.0);
  cmd->add_option("--duration", *seconds, "seconds per measurement (default 2)")->check(CLI::Range(0.2, 60.0));
  cmd->callback([seconds] {
    // A loopback demo: keep the engines' startup lines and the no-secret warning out of the table.
    if (GetLogLevel() == LogLevel::kInfo && std::getenv("KVFERRY_LOG_LEVEL") == nullptr) SetLogLevel(LogLevel::kError);
    fmt::print("kvferry {} demo: KV-cache transfer between two engines on 127.0.0.1\n\n", Version());
    MemcpyResult mc = RunMemcpyBench(4 << 20, 0.5);
    fmt::print("physical limit: memcpy 4 MiB, 1 thread: {:.2f} GB/s\n\n", mc.gbps);
    struct Case {
      transfer::Protocol protocol;
      transfer::Op op;
      uint64_t block;
      int batch;
    };
    // 64 KiB ≈ one 16-token KV block of a 0.5B model across all layers; 4 MiB = a long prompt's run.
    const Case cases[] = {{transfer::Protocol::kTcp, transfer::Op::kWrite, 64 << 10, 64},
                          {transfer::Protocol::kTcp, transfer::Op::kWrite, 4 << 20, 16},
                          {transfer::Protocol::kTcp, transfer::Op::kRead, 4 << 20, 16},
                          {transfer::Protocol::kShm, transfer::Op::kWrite, 4 << 20, 16}};
    fmt::print("{:<6}{:<7}{:>10}{:>7}{:>10}{:>12}{:>12}  {}\n", "proto", "op", "block", "batch", "GB/s",
               "p50 us", "p99 us", "check");
    for (const Case& k : cases) {
      TransferBenchConfig c;
      c.protocol = k.protocol;
      c.op = k.op;
      c.block_size = k.block;
      c.batch = k.batch;
      c.duration_s = *seconds;
      c.verify = true;
      StatusOr<TransferBenchResult> r = RunTransferBench(c, false);
      if (!r.ok()) {
        fmt::print(stderr, "demo failed: {}\n", r.status().ToString());
        ExitCode() = 1;
        return;
      }
      fmt::print("{:<6}{:<7}{:>10}{:>7}{:>10.2f}{:>12.0f}{:>12.0f}  {}\n", transfer::ProtocolName(k.protocol),
                 k.op == transfer::Op::kWrite ? "write" : "read", FormatBytes(k.block), k.batch, r->gbps, r->p50_us,
                 r->p99_us, r->verified ? "data verified" : "-");
    }
    fmt::print("\nEach row: a fresh target process, a segment handshake, a pattern written and read back\n"
               "and compared, then {:.1f} s of batches. See `kvferry bench transfer --help` for more.\n",
               *seconds);
  });
}

}  // namespace kvferry::apps
