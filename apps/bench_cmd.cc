// `kvferry bench ...`: benchmarks that print figures (and one JSON object with --json).
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include "apps/bench_transfer.h"
#include "apps/commands.h"

namespace kvferry::apps {
namespace {

int Fail(const Status& s) {
  fmt::print(stderr, "error: {}\n", s.ToString());
  return 1;
}

StatusOr<uint64_t> SizeFlag(const std::string& text, const char* flag) {
  StatusOr<uint64_t> v = ParseByteSize(text);
  if (!v.ok()) return v.status().WithContext(flag);
  if (*v == 0) return InvalidArgumentError(fmt::format("{} must be positive", flag));
  return v;
}

void AddTransferBench(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "transfer",
      "Transfer-engine throughput and batch latency. By default starts a target process on loopback and runs an\n"
      "initiator against it. --mode target runs only a target (prints its segment IP:PORT, serves until\n"
      "SIGINT/SIGTERM); --target IP:PORT runs only an initiator against an existing target, ours or any\n"
      "Mooncake-compatible engine (TCP, P2P handshake).");
  struct Flags {
    std::string mode = "both", protocol = "tcp", op = "write", block = "4MiB", target, listen = "127.0.0.1";
    std::string buffer_size = "256MiB", slice = "1MiB", remote_offset = "0";
    int batch = 16, threads = 1, lanes = 4;
    double duration = 5;
    bool json = false, verify = false;
    uint16_t handshake_port = 0, data_port = 0;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("--mode", f->mode, "both (default), target, or initiator (implied by --target)")
      ->check(CLI::IsMember({"both", "target", "initiator"}));
  cmd->add_option("--protocol", f->protocol, "tcp (default) or shm (same host, one copy)");
  cmd->add_option("--op", f->op, "write (default) or read")->check(CLI::IsMember({"write", "read"}));
  cmd->add_option("--block-size", f->block, "bytes per request, e.g. 64KiB, 4MiB (default 4MiB)");
  cmd->add_option("--batch", f->batch, "requests per batch (default 16)")->check(CLI::Range(1, 65536));
  cmd->add_option("--threads", f->threads, "submitting threads (default 1)")->check(CLI::Range(1, 64));
  cmd->add_option("--duration", f->duration, "seconds to run (default 5)")->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--target", f->target, "IP:PORT of an existing target segment (initiator only)");
  cmd->add_option("--listen", f->listen, "target mode: address to listen on and advertise (default 127.0.0.1)");
  cmd->add_option("--buffer-size", f->buffer_size, "target mode: registered buffer size (default 256MiB)");
  cmd->add_option("--handshake-port", f->handshake_port, "target mode: handshake port (default: any free)");
  cmd->add_option("--data-port", f->data_port, "target mode: TCP data port (default: any free)");
  cmd->add_option("--lanes", f->lanes, "connections per peer (default 4)")->check(CLI::Range(1, 16));
  cmd->add_option("--slice-size", f->slice, "split requests larger than this across lanes (default 1MiB)");
  cmd->add_option("--remote-offset", f->remote_offset,
                  "initiator: start this far into the target's buffer (lets initiators share a target)");
  cmd->add_flag("--verify", f->verify, "write a pattern, read it back and check it before timing");
  cmd->add_flag("--json", f->json, "print one JSON object (gbps, p50_us, p99_us, ...)");
  cmd->callback([f] {
    StatusOr<transfer::Protocol> proto = transfer::ParseProtocol(f->protocol);
    if (!proto.ok()) {
      ExitCode() = Fail(proto.status());
      return;
    }
    if (f->mode == "target") {
      StatusOr<uint64_t> size = SizeFlag(f->buffer_size, "--buffer-size");
      if (!size.ok()) {
        ExitCode() = Fail(size.status());
        return;
      }
      Status s = RunTransferTarget(*proto, f->listen, *size, f->handshake_port, f->data_port);
      ExitCode() = s.ok() ? 0 : Fail(s);
      return;
    }
    if (f->mode == "initiator" && f->target.empty()) {
      ExitCode() = Fail(InvalidArgumentError("--mode initiator needs --target IP:PORT"));
      return;
    }
    TransferBenchConfig c;
    c.protocol = *proto;
    c.op = f->op == "read" ? transfer::Op::kRead : transfer::Op::kWrite;
    StatusOr<uint64_t> block = SizeFlag(f->block, "--block-size");
    StatusOr<uint64_t> slice = SizeFlag(f->slice, "--slice-size");
    if (!block.ok() || !slice.ok()) {
      ExitCode() = Fail(!block.ok() ? block.status() : slice.status());
      return;
    }
    StatusOr<uint64_t> remote_offset = ParseByteSize(f->remote_offset);
    if (!remote_offset.ok()) {
      ExitCode() = Fail(remote_offset.status().WithContext("--remote-offset"));
      return;
    }
    c.block_size = *block;
    c.slice_size = *slice;
    c.remote_offset = *remote_offset;
    c.batch = f->batch;
    c.threads = f->threads;
    c.duration_s = f->duration;
    c.target = f->target;
    c.verify = f->verify;
    c.lanes = f->lanes;
    StatusOr<TransferBenchResult> r = RunTransferBench(c, !f->json && isatty(2));
    if (!r.ok()) {
      ExitCode() = Fail(r.status());
      return;
    }
    if (f->json) {
      nlohmann::json j = {{"bench", "transfer"},        {"protocol", f->protocol}, {"op", f->op},
                          {"block_size", c.block_size}, {"batch", c.batch},        {"threads", c.threads},
                          {"lanes", c.lanes},           {"gbps", r->gbps},         {"p50_us", r->p50_us},
                          {"p99_us", r->p99_us},        {"bytes", r->bytes},       {"batches", r->batches},
                          {"seconds", r->seconds},      {"verified", r->verified}, {"target", r->target},
                          {"bytes_mapped", r->bytes_mapped}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("transfer {} {} to {}: block {} x batch {} x {} thread(s), {} lanes\n", f->protocol, f->op, r->target,
                 FormatBytes(c.block_size), c.batch, c.threads, c.lanes);
      if (r->verified) fmt::print("  verify: pattern written and read back intact\n");
      fmt::print("  {:.2f} GB/s   batch latency p50 {:.0f} us  p99 {:.0f} us   ({} batches, {} in {:.1f} s)\n", r->gbps,
                 r->p50_us, r->p99_us, r->batches, FormatBytes(r->bytes), r->seconds);
      if (r->bytes_mapped > 0) {
        fmt::print("  shm: {} copied straight through a mapping of the target's memory\n", FormatBytes(r->bytes_mapped));
      }
    }
  });
}

void AddMemcpyBench(CLI::App& bench) {
  auto* cmd = bench.add_subcommand("memcpy", "Single-thread memcpy bandwidth: the physical limit for shm transfers.");
  auto block = std::make_shared<std::string>("4MiB");
  auto duration = std::make_shared<double>(2.0);
  auto json = std::make_shared<bool>(false);
  auto batch = std::make_shared<int>(1);
  cmd->add_option("--block-size", *block, "bytes per copy (default 4MiB)");
  cmd->add_option("--batch", *batch,
                  "copy this many distinct blocks in turn (default 1: one block, cache-resident when it fits); "
                  "`bench transfer`'s --batch 16 moves 16 distinct blocks, so --batch 16 is its same-footprint limit")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--duration", *duration, "seconds (default 2)")->check(CLI::Range(0.1, 600.0));
  cmd->add_flag("--json", *json, "print one JSON object ({\"gbps\": ...})");
  cmd->callback([block, duration, json, batch] {
    StatusOr<uint64_t> size = SizeFlag(*block, "--block-size");
    if (!size.ok()) {
      ExitCode() = Fail(size.status());
      return;
    }
    MemcpyResult r = RunMemcpyBench(*size, *duration, *batch);
    if (*json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "memcpy"},
                                        {"block_size", *size},
                                        {"batch", *batch},
                                        {"gbps", r.gbps},
                                        {"bytes", r.bytes},
                                        {"seconds", r.seconds}}
                             .dump());
    } else {
      fmt::print("memcpy {} x {} distinct block(s): {:.2f} GB/s ({} in {:.1f} s, 1 thread)\n", FormatBytes(*size),
                 *batch, r.gbps, FormatBytes(r.bytes), r.seconds);
    }
  });
}

}  // namespace

CLI::App& AddBenchCommand(CLI::App& root) {
  auto* bench = root.add_subcommand("bench", "Benchmarks: print figures; --json for one JSON object.");
  bench->require_subcommand(1);
  AddTransferBench(*bench);
  AddMemcpyBench(*bench);
  return *bench;
}

}  // namespace kvferry::apps
