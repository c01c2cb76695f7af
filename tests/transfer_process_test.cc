// Transfer engine against real target processes (`kvferry bench transfer --mode
// target`) on 127.0.0.1: round trips, two initiator processes, a target killed,
// hung and restarted, garbage on both ports, and the shared secret.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "kvferry/transfer/testing/raw_client.h"
#include "kvferry/transfer/transfer.h"
#include "tests/process.h"

namespace kvferry::transfer {
inline void PrintTo(Protocol p, std::ostream* os) { *os << ProtocolName(p); }
namespace {


using namespace std::chrono_literals;
using kvferry::testing::Process;

const std::string kBinary = KVFERRY_BINARY;

struct Target {
  std::unique_ptr<Process> proc;
  std::string segment;
};

Target StartTarget(const std::string& size, uint16_t hs_port = 0, uint16_t data_port = 0,
                   const std::vector<std::string>& env = {}) {
  Target t;
  t.proc = std::make_unique<Process>(
      std::vector<std::string>{kBinary, "bench", "transfer", "--mode", "target", "--listen", "127.0.0.1",
                               "--buffer-size", size, "--handshake-port", std::to_string(hs_port), "--data-port",
                               std::to_string(data_port)},
      env);
  t.segment = t.proc->ReadLine(30000);
  return t;
}

class Mem {
 public:
  explicit Mem(size_t n) : n_(n) {
    p_ = static_cast<char*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~Mem() { munmap(p_, n_); }
  char* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_;
  char* p_;
};

std::unique_ptr<TransferEngine> Initiator(Protocol p = Protocol::kTcp, const std::string& secret = "") {
  TransferEngineOptions o;
  o.local_host = "127.0.0.1";
  o.protocol = p;
  o.secret = secret;
  auto e = TransferEngine::Create(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return std::move(*e);
}

void Fill(char* p, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(rng() >> 13);
}

class TransferProcessTest : public ::testing::TestWithParam<Protocol> {};

TEST_P(TransferProcessTest, RoundTripsFromOneByteTo64MiB) {
  Target t = StartTarget("80MiB");
  ASSERT_FALSE(t.segment.empty());
  auto init = Initiator(GetParam());
  Mem local(130 << 20);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(t.segment);
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  auto info = init->GetSegmentInfo(*seg);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->buffers.size(), 1u);
  uint64_t remote = info->buffers[0].addr;
  char* src = local.data();
  char* dst = local.data() + (65 << 20);
  uint32_t seed = 7;
  for (size_t len : {size_t{1}, size_t{1000}, size_t{65536}, size_t{(4 << 20) + 1}, size_t{64 << 20}}) {
    for (size_t off : {size_t{0}, size_t{13}}) {
      Fill(src + off, len, ++seed);
      std::memset(dst + off, 0, len);
      TransferRequest w{Op::kWrite, src + off, *seg, remote + 3 * off, len};
      ASSERT_TRUE(init->Transfer({&w, 1}).ok()) << len;
      TransferRequest r{Op::kRead, dst + off, *seg, remote + 3 * off, len};
      ASSERT_TRUE(init->Transfer({&r, 1}).ok()) << len;
      ASSERT_EQ(std::memcmp(src + off, dst + off, len), 0) << "len " << len << " off " << off;
    }
  }
  // Out of range: rejected, and the target keeps serving.
  TransferRequest bad{Op::kWrite, src, *seg, remote + (80 << 20) - 10, 11};
  EXPECT_EQ(init->Transfer({&bad, 1}).code(), StatusCode::kPermissionDenied);
  TransferRequest again{Op::kRead, dst, *seg, remote + (80 << 20) - 10, 10};
  EXPECT_TRUE(init->Transfer({&again, 1}).ok());
  t.proc->Kill(SIGTERM);
  EXPECT_EQ(t.proc->Wait(10000), 0);
}

INSTANTIATE_TEST_SUITE_P(Protocols, TransferProcessTest, ::testing::Values(Protocol::kTcp, Protocol::kShm),
                         [](const auto& info) { return std::string(ProtocolName(info.param)); });

TEST(TransferProcessFaultTest, TwoInitiatorProcessesIntoOneTarget) {
  Target t = StartTarget("64MiB");
  ASSERT_FALSE(t.segment.empty());
  std::vector<std::unique_ptr<Process>> inits;
  // Disjoint halves of the target's buffer: two writers into the same bytes would be a data race.
  for (const char* proto : {"tcp", "shm"}) {
    inits.push_back(std::make_unique<Process>(std::vector<std::string>{
        kBinary, "bench", "transfer", "--target", t.segment, "--protocol", proto, "--verify", "--json",
        "--remote-offset", std::string(proto) == "tcp" ? "0" : "32MiB",
        "--block-size", "64KiB", "--batch", "32", "--threads", "2", "--duration", "1.5"}));
  }
  for (auto& p : inits) {
    std::string out = p->ReadAll(60000);
    EXPECT_EQ(p->Wait(30000), 0) << out;
    auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_TRUE(j.is_object()) << out;
    EXPECT_TRUE(j["verified"].get<bool>());
    EXPECT_GT(j["gbps"].get<double>(), 0.0);
    EXPECT_GE(j["batches"].get<uint64_t>(), 1u);  // how many depends on machine load, not correctness
  }
}

TEST(TransferProcessFaultTest, KilledTargetFailsInFlightBatchesAndARestartWorks) {
  Target t = StartTarget("256MiB");
  ASSERT_FALSE(t.segment.empty());
  auto init = Initiator();
  Mem local(256 << 20);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(t.segment);
  ASSERT_TRUE(seg.ok());
  auto info = *init->GetSegmentInfo(*seg);
  uint16_t hs = static_cast<uint16_t>(std::stoi(t.segment.substr(t.segment.rfind(':') + 1)));
  uint16_t dp = info.data_port;
  std::vector<TransferRequest> reqs;
  for (int i = 0; i < 256; ++i) {
    reqs.push_back({Op::kWrite, local.data() + (size_t(i) << 20), *seg, info.buffers[0].addr + (uint64_t(i) << 20), 1 << 20});
  }
  // Keep batches flowing, kill -9 the target in the middle of one.
  std::atomic<bool> failed{false};
  Status failure;
  double failed_after = 0;
  std::thread submitter([&] {
    for (int i = 0; i < 1000 && !failed; ++i) {
      auto id = init->Submit(reqs, Deadline::After(20s));
      if (!id.ok()) {
        failure = id.status();
        failed = true;
        return;
      }
      double t0 = NowSeconds();
      Status s = init->Wait(*id, Deadline::After(30s));
      if (!s.ok()) {
        failure = s;
        failed_after = NowSeconds() - t0;
        failed = true;
      }
    }
  });
  std::this_thread::sleep_for(300ms);
  t.proc->Kill(SIGKILL);
  submitter.join();
  ASSERT_TRUE(failed.load());
  EXPECT_TRUE(failure.code() == StatusCode::kUnavailable) << failure.ToString();
  EXPECT_LT(failed_after, 20.0);  // no hang: well within the batch deadline
  EXPECT_EQ(t.proc->Wait(5000), 128 + SIGKILL);
  // Restart on the same ports: the next open re-handshakes and transfers work.
  Target t2 = StartTarget("256MiB", hs, dp);
  ASSERT_EQ(t2.segment, t.segment);
  auto seg2 = init->OpenSegment(t2.segment);
  ASSERT_TRUE(seg2.ok()) << seg2.status().ToString();
  auto info2 = *init->GetSegmentInfo(*seg2);
  Fill(local.data(), 1 << 20, 99);
  TransferRequest w{Op::kWrite, local.data(), *seg2, info2.buffers[0].addr, 1 << 20};
  ASSERT_TRUE(init->Transfer({&w, 1}).ok());
  TransferRequest r{Op::kRead, local.data() + (1 << 20), *seg2, info2.buffers[0].addr, 1 << 20};
  ASSERT_TRUE(init->Transfer({&r, 1}).ok());
  EXPECT_EQ(std::memcmp(local.data(), local.data() + (1 << 20), 1 << 20), 0);
}

TEST(TransferProcessFaultTest, HungTargetTurnsIntoDeadlineExceeded) {
  Target t = StartTarget("64MiB");
  ASSERT_FALSE(t.segment.empty());
  auto init = Initiator();
  Mem local(64 << 20);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(t.segment);
  ASSERT_TRUE(seg.ok());
  auto info = *init->GetSegmentInfo(*seg);
  t.proc->Kill(SIGSTOP);
  TransferRequest w{Op::kWrite, local.data(), *seg, info.buffers[0].addr, 64 << 20};
  double t0 = NowSeconds();
  auto id = init->Submit({&w, 1}, Deadline::After(1s));
  ASSERT_TRUE(id.ok());
  Status s = init->Wait(*id, Deadline::After(20s));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_LT(NowSeconds() - t0, 5.0);
  t.proc->Kill(SIGCONT);
  // Once it runs again, transfers succeed (after a re-handshake).
  auto seg2 = init->OpenSegment(t.segment);
  ASSERT_TRUE(seg2.ok()) << seg2.status().ToString();
  TransferRequest small{Op::kWrite, local.data(), *seg2, info.buffers[0].addr, 4096};
  EXPECT_TRUE(init->Transfer({&small, 1}).ok());
}

TEST(TransferProcessFaultTest, GarbageAndTruncatedFramesOnBothPorts) {
  Target t = StartTarget("16MiB");
  ASSERT_FALSE(t.segment.empty());
  auto init = Initiator();
  Mem local(1 << 20);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(t.segment);
  ASSERT_TRUE(seg.ok());
  auto info = *init->GetSegmentInfo(*seg);
  uint16_t hs = static_cast<uint16_t>(std::stoi(t.segment.substr(t.segment.rfind(':') + 1)));
  std::mt19937 rng(5);
  for (int i = 0; i < 40; ++i) {
    uint16_t port = (i % 2) ? hs : info.data_port;
    transfer::testing::RawConn c("127.0.0.1", port);
    ASSERT_TRUE(c.ok());
    std::string junk(1 + rng() % 300, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    if (i % 4 == 0) junk = std::string("\x10\x00\x00\x00\x00\x00\x00\x00", 8);  // promises 16 bytes, sends none
    if (i % 4 == 2) junk = transfer::testing::Header(1 << 20, info.buffers[0].addr, 0x81) + "short";  // truncated body
    c.Send(junk);
    c.ShutdownWrite();
    EXPECT_TRUE(c.ClosedWithin(10000)) << "connection " << i << " was not closed";
  }
  // The target still serves a real initiator, and it never crashed.
  Fill(local.data(), 1 << 20, 1);
  TransferRequest w{Op::kWrite, local.data(), *seg, info.buffers[0].addr, 1 << 20};
  EXPECT_TRUE(init->Transfer({&w, 1}).ok());
  EXPECT_EQ(t.proc->Wait(0), -1) << "target exited";
}

TEST(TransferProcessFaultTest, SecretIsEnforcedAcrossProcesses) {
  Target t = StartTarget("16MiB", 0, 0, {"KVFERRY_TRANSFER_SECRET=s3cret-for-test"});
  ASSERT_FALSE(t.segment.empty());
  Mem local(1 << 20);
  {
    auto wrong = Initiator(Protocol::kTcp, "not-it");
    EXPECT_EQ(wrong->OpenSegment(t.segment).status().code(), StatusCode::kPermissionDenied);
  }
  auto good = Initiator(Protocol::kTcp, "s3cret-for-test");
  ASSERT_TRUE(good->RegisterMemory(local.data(), local.size()).ok());
  auto seg = good->OpenSegment(t.segment);
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  auto info = *good->GetSegmentInfo(*seg);
  std::memset(local.data(), 0x42, 4096);
  TransferRequest w{Op::kWrite, local.data(), *seg, info.buffers[0].addr, 4096};
  ASSERT_TRUE(good->Transfer({&w, 1}).ok());
  // Without the secret a raw writer is cut off and memory is unchanged.
  {
    transfer::testing::RawConn c("127.0.0.1", info.data_port);
    c.Send(transfer::testing::Header(4096, info.buffers[0].addr, 0x81) + std::string(4096, 'Z'));
    EXPECT_TRUE(c.ClosedWithin(10000));
  }
  TransferRequest r{Op::kRead, local.data() + 8192, *seg, info.buffers[0].addr, 4096};
  ASSERT_TRUE(good->Transfer({&r, 1}).ok());
  EXPECT_EQ(std::memcmp(local.data(), local.data() + 8192, 4096), 0);
}

}  // namespace
}  // namespace kvferry::transfer
