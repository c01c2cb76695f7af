// In-process tests of the transfer engine: two or three engines on 127.0.0.1.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "kvferry/transfer/net.h"
#include "kvferry/transfer/testing/raw_client.h"
#include "kvferry/transfer/transfer.h"
#include "kvferry/transfer/wire.h"

namespace kvferry::transfer {
inline void PrintTo(Protocol p, std::ostream* os) {
  *os << ProtocolName(p);
}
namespace {

using namespace std::chrono_literals;
using testing::Header;
using testing::RawConn;

// Page-aligned memory with guard bytes before and after the registered middle.
class Arena {
 public:
  explicit Arena(size_t size, size_t guard = 4096) : size_(size), guard_(guard) {
    total_ = size + 2 * guard;
    base_ = static_cast<char*>(mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    std::memset(base_, 0xEE, total_);
  }
  ~Arena() { munmap(base_, total_); }
  char* data() const { return base_ + guard_; }
  size_t size() const { return size_; }
  uint64_t addr() const { return reinterpret_cast<uint64_t>(data()); }
  bool GuardsIntact() const {
    for (size_t i = 0; i < guard_; ++i) {
      if (static_cast<uint8_t>(base_[i]) != 0xEE || static_cast<uint8_t>(base_[guard_ + size_ + i]) != 0xEE)
        return false;
    }
    return true;
  }

 private:
  size_t size_, guard_, total_;
  char* base_;
};

void Fill(char* p, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    uint32_t v = rng();
    std::memcpy(p + i, &v, 4);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(rng());
}

std::unique_ptr<TransferEngine> MakeEngine(Protocol protocol = Protocol::kTcp, std::string secret = "",
                                           uint16_t hs_port = 0, uint16_t data_port = 0, int lanes = 4) {
  TransferEngineOptions o;
  o.lanes_per_peer = lanes;
  o.local_host = "127.0.0.1";
  o.protocol = protocol;
  o.secret = secret.empty() ? std::string() : secret;
  o.handshake_port = hs_port;
  o.data_port = data_port;
  o.slice_size = 256 << 10;  // several slices per MiB: exercises splitting and lanes
  auto e = TransferEngine::Create(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

uint16_t PortOf(const std::string& segment) {
  return wire::SplitHostPort(segment)->second;
}

class EngineTest : public ::testing::TestWithParam<Protocol> {};

TEST_P(EngineTest, WriteAndReadRoundTripsFromOneByteTo64MiB) {
  auto target = MakeEngine();
  auto init = MakeEngine(GetParam());
  const size_t kMax = 64 << 20;
  Arena remote(kMax + 64), local(2 * (kMax + 64));
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(target->segment_name());
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  char* src = local.data();
  char* dst = local.data() + kMax + 64;
  uint32_t seed = 1;
  for (size_t len :
       {size_t{1}, size_t{7}, size_t{4095}, size_t{4096}, size_t{65537}, size_t{(1 << 20) + 3}, size_t{kMax}}) {
    for (size_t misalign : {size_t{0}, size_t{3}}) {  // unaligned local and remote addresses
      if (len + misalign > kMax + 64) continue;
      Fill(src + misalign, len, ++seed);
      std::memset(dst + misalign, 0, len);
      TransferRequest w{Op::kWrite, src + misalign, *seg, remote.addr() + 5 + misalign, len};
      ASSERT_TRUE(init->Transfer({&w, 1}).ok()) << len;
      ASSERT_EQ(std::memcmp(remote.data() + 5 + misalign, src + misalign, len), 0) << "write of " << len;
      TransferRequest r{Op::kRead, dst + misalign, *seg, remote.addr() + 5 + misalign, len};
      ASSERT_TRUE(init->Transfer({&r, 1}).ok()) << len;
      ASSERT_EQ(std::memcmp(dst + misalign, src + misalign, len), 0) << "read of " << len;
    }
  }
  EXPECT_TRUE(remote.GuardsIntact());
  TransferStats st = init->GetStats();
  EXPECT_GT(st.bytes_written, kMax);
  EXPECT_GT(st.bytes_read, kMax);
  EXPECT_EQ(st.batches_failed, 0u);
  EXPECT_EQ(target->GetStats().served_bytes_in, st.bytes_written);
}

TEST_P(EngineTest, ManyConcurrentBatchesFromTwoInitiators) {
  auto target = MakeEngine();
  const size_t kPerThread = 1 << 20;
  const int kThreads = 4;
  Arena remote(2 * kThreads * kPerThread);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  std::vector<std::unique_ptr<TransferEngine>> inits;
  std::vector<std::unique_ptr<Arena>> locals;
  for (int i = 0; i < 2; ++i) {
    inits.push_back(MakeEngine(GetParam()));
    locals.push_back(std::make_unique<Arena>(2 * kThreads * kPerThread));
    ASSERT_TRUE(inits[i]->RegisterMemory(locals[i]->data(), locals[i]->size()).ok());
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int e = 0; e < 2; ++e) {
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, e, t] {
        auto seg = inits[e]->OpenSegment(target->segment_name());
        if (!seg.ok()) {
          ++failures;
          return;
        }
        size_t slot = static_cast<size_t>(e * kThreads + t);
        char* src = locals[e]->data() + static_cast<size_t>(t) * 2 * kPerThread;
        char* back = src + kPerThread;
        for (int round = 0; round < 10; ++round) {
          Fill(src, kPerThread, static_cast<uint32_t>(slot * 100 + round));
          // A batch of 16 blocks, submitted and waited on while the other threads do the same.
          std::vector<TransferRequest> reqs;
          for (size_t b = 0; b < 16; ++b) {
            size_t off = b * (kPerThread / 16);
            reqs.push_back({Op::kWrite, src + off, *seg, remote.addr() + slot * kPerThread + off, kPerThread / 16});
          }
          auto id = inits[e]->Submit(reqs);
          if (!id.ok() || !inits[e]->Wait(*id, Deadline::After(30s)).ok()) {
            ++failures;
            return;
          }
          TransferRequest r{Op::kRead, back, *seg, remote.addr() + slot * kPerThread, kPerThread};
          if (!inits[e]->Transfer({&r, 1}).ok() || std::memcmp(src, back, kPerThread) != 0) {
            ++failures;
            return;
          }
        }
      });
    }
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(remote.GuardsIntact());
}

TEST_P(EngineTest, OutOfRangeAndUnregisteredAreRejectedAndMemoryUntouched) {
  auto target = MakeEngine();
  auto init = MakeEngine(GetParam());
  Arena remote(1 << 20), other(4096), local(1 << 20);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  ASSERT_TRUE(target->RegisterMemory(other.data(), other.size()).ok());
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(target->segment_name());
  ASSERT_TRUE(seg.ok());
  std::memset(local.data(), 0x11, local.size());
  std::memset(remote.data(), 0, remote.size());
  // Straddles the end of the buffer by one byte.
  TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr() + remote.size() - 100, 101};
  Status s = init->Transfer({&w, 1});
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_TRUE(remote.GuardsIntact());
  for (size_t i = 0; i < remote.size(); ++i) ASSERT_EQ(remote.data()[i], 0) << i;
  // Entirely outside any buffer, and a READ of a guard page.
  TransferRequest w2{Op::kWrite, local.data(), *seg, remote.addr() - 4096, 64};
  EXPECT_EQ(init->Transfer({&w2, 1}).code(), StatusCode::kPermissionDenied);
  TransferRequest r{Op::kRead, local.data(), *seg, remote.addr() + remote.size(), 64};
  EXPECT_EQ(init->Transfer({&r, 1}).code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(remote.GuardsIntact());
  // After UnregisterMemory the region is off limits.
  ASSERT_TRUE(target->UnregisterMemory(other.data()).ok());
  TransferRequest w3{Op::kWrite, local.data(), *seg, other.addr(), 64};
  EXPECT_EQ(init->Transfer({&w3, 1}).code(), StatusCode::kPermissionDenied);
  for (size_t i = 0; i < other.size(); ++i) ASSERT_EQ(static_cast<uint8_t>(other.data()[i]), 0xEE);
  // A batch mixing good and bad requests fails as a whole, the good part lands.
  TransferRequest mixed[2] = {{Op::kWrite, local.data(), *seg, remote.addr(), 64},
                              {Op::kWrite, local.data(), *seg, remote.addr() + remote.size(), 64}};
  EXPECT_FALSE(init->Transfer(mixed).ok());
  EXPECT_EQ(static_cast<uint8_t>(remote.data()[0]), 0x11);
  // The engine keeps working afterwards.
  TransferRequest ok{Op::kWrite, local.data(), *seg, remote.addr(), 4096};
  EXPECT_TRUE(init->Transfer({&ok, 1}).ok());
  EXPECT_GE(target->GetStats().served_rejected, 4u);
  EXPECT_GE(init->GetStats().batches_failed, 4u);
}

INSTANTIATE_TEST_SUITE_P(Protocols, EngineTest, ::testing::Values(Protocol::kTcp, Protocol::kShm),
                         [](const auto& info) { return std::string(ProtocolName(info.param)); });

TEST(EngineApiTest, SubmitValidatesLocalMemoryAndHandles) {
  auto target = MakeEngine();
  auto init = MakeEngine();
  Arena remote(4096), local(4096);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  auto seg = init->OpenSegment(target->segment_name());
  ASSERT_TRUE(seg.ok());
  TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr(), 64};
  EXPECT_EQ(init->Submit({&w, 1}).status().code(), StatusCode::kInvalidArgument);  // local not registered
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  TransferRequest bad_seg = w;
  bad_seg.segment.generation = 99;
  EXPECT_EQ(init->Submit({&bad_seg, 1}).status().code(), StatusCode::kNotFound);
  // Zero-length requests complete locally.
  TransferRequest zero{Op::kWrite, nullptr, *seg, 0, 0};
  auto id = init->Submit({&zero, 1});
  ASSERT_TRUE(id.ok());
  auto st = init->Poll(*id);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->state, BatchState::kDone);
  EXPECT_EQ(init->Poll(*id).status().code(), StatusCode::kNotFound);  // released
  // Poll until done, then the id is stale.
  auto id2 = init->Submit({&w, 1});
  ASSERT_TRUE(id2.ok());
  BatchStatus bs;
  for (int i = 0; i < 5000; ++i) {
    auto p = init->Poll(*id2);
    ASSERT_TRUE(p.ok());
    bs = *p;
    if (bs.state != BatchState::kPending) break;
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(bs.state, BatchState::kDone);
  EXPECT_EQ(bs.bytes_done, 64u);
  EXPECT_EQ(init->Wait(*id2, Deadline::After(1s)).code(), StatusCode::kNotFound);
  // Same name → same handle.
  auto again = init->OpenSegment(target->segment_name());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *seg);
  EXPECT_FALSE(init->OpenSegment("127.0.0.1").ok());
  EXPECT_EQ(init->OpenSegment("127.0.0.1:1").status().code(), StatusCode::kUnavailable);  // nobody listens
  // Registration errors.
  EXPECT_EQ(init->RegisterMemory(local.data() + 8, 8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(init->UnregisterMemory(remote.data()).code(), StatusCode::kNotFound);
}

TEST(EngineApiTest, OptionsAndProtocolNames) {
  EXPECT_EQ(*ParseProtocol("tcp"), Protocol::kTcp);
  EXPECT_EQ(*ParseProtocol("shm"), Protocol::kShm);
  EXPECT_EQ(ParseProtocol("rdma").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(ParseProtocol("tpc").status().code(), StatusCode::kInvalidArgument);
  TransferEngineOptions o;
  o.local_host = "127.0.0.1";
  o.lanes_per_peer = 0;
  EXPECT_EQ(TransferEngine::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.lanes_per_peer = 4;
  o.listen_host = "203.0.113.7";  // not an address of this host
  EXPECT_FALSE(TransferEngine::Create(o).ok());
  auto a = MakeEngine();
  TransferEngineOptions clash;
  clash.local_host = "127.0.0.1";
  clash.handshake_port = PortOf(a->segment_name());
  EXPECT_EQ(TransferEngine::Create(clash).status().code(), StatusCode::kAlreadyExists);
}

// A peer that completes the handshake but never answers on its data port.
class HungPeer {
 public:
  explicit HungPeer(bool v2) {
    uint16_t hs = 0;
    hs_ = std::move(*net::ListenTcp("127.0.0.1", 0, &hs));
    data_ = std::move(*net::ListenTcp("127.0.0.1", 0, &data_port_));
    name_ = "127.0.0.1:" + std::to_string(hs);
    wire::Descriptor d;
    d.name = name_;
    d.tcp_data_port = data_port_;
    d.tcp_proto_version = v2 ? 2 : 1;
    d.buffers = {{0x10000, 1 << 30}};
    std::string reply = wire::EncodeHandshakeFrame(wire::kTypeMetadata, wire::EncodeDescriptor(d));
    thread_ = std::thread([this, reply] {
      for (;;) {  // answer every handshake
        auto c = net::Accept(hs_.get());
        if (!c.ok()) return;
        net::TuneSocket(c->get(), true);
        uint8_t len[8];
        if (!net::RecvAll(c->get(), len, 8, Deadline::After(5s)).ok()) continue;
        auto n = wire::DecodeHandshakeLength(len, 1 << 20);
        if (!n.ok()) continue;
        std::string body(*n, '\0');
        if (!net::RecvAll(c->get(), body.data(), body.size(), Deadline::After(5s)).ok()) continue;
        (void)net::SendAll(c->get(), reply.data(), reply.size(), Deadline::After(5s));
      }
    });
    data_thread_ = std::thread([this] {
      for (;;) {  // accept data connections and never read from them
        auto d = net::Accept(data_.get());
        if (!d.ok()) return;
        held_.push_back(std::move(*d));
      }
    });
  }
  ~HungPeer() {
    ::shutdown(hs_.get(), SHUT_RDWR);
    ::shutdown(data_.get(), SHUT_RDWR);
    thread_.join();
    data_thread_.join();
  }
  const std::string& name() const { return name_; }

 private:
  net::Fd hs_, data_;
  uint16_t data_port_ = 0;
  std::string name_;
  std::vector<net::Fd> held_;
  std::thread thread_, data_thread_;
};

// A unix socket file at path: listening (the returned fd), or left behind by a closed one.
net::Fd UnixSocketFile(const std::string& path, bool listening) {
  StatusOr<net::Fd> fd = net::ListenUnix(path);
  EXPECT_TRUE(fd.ok()) << fd.status().ToString();
  return listening && fd.ok() ? std::move(*fd) : net::Fd();
}

// Engines of killed processes leave their shm sockets behind: the next engine removes those whose
// pid is gone and that nobody accepts on, and nothing else.
TEST(EngineFaultTest, StaleShmSocketsOfKilledProcessesAreRemoved) {
  const std::string dir = ::testing::TempDir() + "/kvf_stale_shm_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // a pid that is gone (not reused this soon)
  const std::string dead = fmt::format("{}/kvferry-shm-{}-0123456789abcdef.sock", dir, child);
  const std::string dead_but_served = fmt::format("{}/kvferry-shm-{}-fedcba9876543210.sock", dir, child);
  const std::string ours = fmt::format("{}/kvferry-shm-{}-00000000aaaaaaaa.sock", dir, ::getpid());
  const std::string not_a_socket = fmt::format("{}/kvferry-shm-{}-00000000bbbbbbbb.sock", dir, child);
  const std::string other = dir + "/other.sock";
  UnixSocketFile(dead, false);
  net::Fd served = UnixSocketFile(dead_but_served, true);  // e.g. a process in another PID namespace
  UnixSocketFile(ours, false);
  UnixSocketFile(other, false);
  std::ofstream(not_a_socket) << "x";
  const char* old_tmp = std::getenv("TMPDIR");
  const std::string saved = old_tmp ? old_tmp : "";
  ::setenv("TMPDIR", dir.c_str(), 1);
  auto e = MakeEngine(Protocol::kShm);
  if (old_tmp) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  ASSERT_NE(e, nullptr);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(dead_but_served));
  EXPECT_TRUE(std::filesystem::exists(ours));
  EXPECT_TRUE(std::filesystem::exists(not_a_socket));
  EXPECT_TRUE(std::filesystem::exists(other));
  // The engine's own socket is there while it runs, and gone when it stops.
  int own = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    own += name.starts_with(fmt::format("kvferry-shm-{}-", ::getpid())) && f.path() != ours;
  }
  EXPECT_EQ(own, 1);
  e.reset();
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    EXPECT_FALSE(name.starts_with(fmt::format("kvferry-shm-{}-", ::getpid())) && f.path() != ours) << name;
  }
  std::filesystem::remove_all(dir);
}

TEST(EngineFaultTest, HungPeerFailsWithinTheDeadline) {
  HungPeer peer(/*v2=*/true);
  auto init = MakeEngine();
  Arena local(8 << 20);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(peer.name());
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  // 8 MiB into a peer that never reads: the socket buffers fill, then the deadline hits.
  std::vector<TransferRequest> reqs;
  for (int i = 0; i < 8; ++i)
    reqs.push_back({Op::kWrite, local.data() + i * (1 << 20), *seg, 0x10000u + i * (1u << 20), 1u << 20});
  reqs.push_back({Op::kRead, local.data(), *seg, 0x10000, 64});
  double t0 = NowSeconds();
  auto id = init->Submit(reqs, Deadline::After(500ms));
  ASSERT_TRUE(id.ok());
  Status s = init->Wait(*id, Deadline::After(10s));
  double took = NowSeconds() - t0;
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_LT(took, 3.0);
  // A Wait shorter than the batch deadline times out but the batch lives on.
  auto id2 = init->Submit({&reqs.back(), 1}, Deadline::After(400ms));
  ASSERT_TRUE(id2.ok());
  EXPECT_EQ(init->Wait(*id2, Deadline::After(50ms)).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(init->Wait(*id2, Deadline::After(10s)).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(init->Poll(*id2).status().code(), StatusCode::kNotFound);
}

TEST(EngineFaultTest, DeadPeerIsUnavailableAndARestartedPeerWorksAfterReHandshake) {
  auto target = MakeEngine();
  uint16_t hs = PortOf(target->segment_name());
  uint16_t dp = target->data_port();
  std::string name = target->segment_name();
  auto init = MakeEngine();
  Arena remote(1 << 20), local(1 << 20);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(name);
  ASSERT_TRUE(seg.ok());
  TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr(), 4096};
  ASSERT_TRUE(init->Transfer({&w, 1}).ok());
  target.reset();  // the peer dies
  double t0 = NowSeconds();
  Status s = init->Transfer({&w, 1});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.code() == StatusCode::kUnavailable) << s.ToString();
  EXPECT_LT(NowSeconds() - t0, 6.0);
  // It comes back on the same ports with new memory.
  auto restarted = MakeEngine(Protocol::kTcp, "", hs, dp);
  ASSERT_NE(restarted, nullptr);
  Arena remote2(1 << 20);
  ASSERT_TRUE(restarted->RegisterMemory(remote2.data(), remote2.size()).ok());
  auto seg2 = init->OpenSegment(name);  // re-handshakes: the old connection failed
  ASSERT_TRUE(seg2.ok()) << seg2.status().ToString();
  auto info = init->GetSegmentInfo(*seg2);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->buffers.size(), 1u);
  EXPECT_EQ(info->buffers[0].addr, remote2.addr());
  std::memset(local.data(), 0x5A, 4096);
  TransferRequest w2{Op::kWrite, local.data(), *seg2, remote2.addr(), 4096};
  ASSERT_TRUE(init->Transfer({&w2, 1}).ok());
  EXPECT_EQ(static_cast<uint8_t>(remote2.data()[4095]), 0x5A);
  EXPECT_GE(init->GetStats().handshakes, 2u);
}

TEST(EngineSecretTest, OnlyPeersWithTheSecretGetIn) {
  auto target = MakeEngine(Protocol::kTcp, "correct horse");
  Arena remote(4096), local(4096);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  std::memset(remote.data(), 0, 4096);
  {
    auto good = MakeEngine(Protocol::kTcp, "correct horse");
    ASSERT_TRUE(good->RegisterMemory(local.data(), local.size()).ok());
    auto seg = good->OpenSegment(target->segment_name());
    ASSERT_TRUE(seg.ok()) << seg.status().ToString();
    std::memset(local.data(), 7, 4096);
    TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr(), 4096};
    EXPECT_TRUE(good->Transfer({&w, 1}).ok());
    EXPECT_EQ(remote.data()[100], 7);
    // shm too.
    auto good_shm = MakeEngine(Protocol::kShm, "correct horse");
    ASSERT_TRUE(good_shm->RegisterMemory(local.data(), local.size()).ok());
    auto seg2 = good_shm->OpenSegment(target->segment_name());
    ASSERT_TRUE(seg2.ok());
    TransferRequest r{Op::kRead, local.data(), *seg2, remote.addr(), 4096};
    EXPECT_TRUE(good_shm->Transfer({&r, 1}).ok());
  }
  std::memset(remote.data(), 0, 4096);
  auto wrong = MakeEngine(Protocol::kTcp, "battery staple");
  EXPECT_EQ(wrong->OpenSegment(target->segment_name()).status().code(), StatusCode::kPermissionDenied);
  setenv("KVFERRY_TRANSFER_SECRET", "", 1);
  auto none = MakeEngine(Protocol::kTcp, "");
  auto s = none->OpenSegment(target->segment_name());
  EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied) << s.status().ToString();
  EXPECT_NE(s.status().message().find("secret"), std::string::npos);
  // A raw client that skips the challenge cannot write: its bytes fail the check and it is cut off.
  RawConn raw("127.0.0.1", target->data_port());
  ASSERT_TRUE(raw.ok());
  std::string req = Header(64, remote.addr(), 0x81) + std::string(64, 'X');
  raw.Send(req);
  EXPECT_TRUE(raw.ClosedWithin(5000));
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(remote.data()[i], 0);
  EXPECT_GE(target->GetStats().served_rejected, 2u);
}

TEST(EngineWireTest, ServesV1AndV2FramingOnOneConnectionAndOneShotConnections) {
  auto target = MakeEngine();
  Arena remote(1 << 20);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  RawConn c("127.0.0.1", target->data_port());
  ASSERT_TRUE(c.ok());
  std::string body(3000, 'a');
  // v2 WRITE → status OK once the bytes are in memory.
  ASSERT_TRUE(c.Send(Header(body.size(), remote.addr() + 10, 0x81) + body));
  uint8_t st[8];
  ASSERT_TRUE(c.Recv(st, 8));
  EXPECT_EQ(std::memcmp(st, "\x00\x00\x00\x00VTCM", 8), 0);
  EXPECT_EQ(std::string(remote.data() + 10, 3000), body);
  // v1 WRITE: nothing comes back; a v1 READ on the same connection sees the data.
  std::string b2(500, 'b');
  ASSERT_TRUE(c.Send(Header(b2.size(), remote.addr() + 5000, 0x01) + b2));
  ASSERT_TRUE(c.Send(Header(500, remote.addr() + 5000, 0x00)));
  std::string got(500, '\0');
  ASSERT_TRUE(c.Recv(got.data(), 500));
  EXPECT_EQ(got, b2);
  // v2 READ: status first, then the bytes; opcode 0x82 is a READ as well (Mooncake: anything but 1).
  ASSERT_TRUE(c.Send(Header(3000, remote.addr() + 10, 0x80)));
  ASSERT_TRUE(c.Recv(st, 8));
  EXPECT_EQ(std::memcmp(st, "\x00\x00\x00\x00VTCM", 8), 0);
  std::string got2(3000, '\0');
  ASSERT_TRUE(c.Recv(got2.data(), 3000));
  EXPECT_EQ(got2, body);
  ASSERT_TRUE(c.Send(Header(4, remote.addr() + 10, 0x82)));
  ASSERT_TRUE(c.Recv(st, 8));
  char four[4];
  ASSERT_TRUE(c.Recv(four, 4));
  EXPECT_EQ(std::string(four, 4), "aaaa");
  // Rejected v2 request from a Mooncake-style client: status 1, then the connection closes.
  ASSERT_TRUE(c.Send(Header(16, 0x1000, 0x81) + std::string(16, 'A')));
  ASSERT_TRUE(c.Recv(st, 8));
  EXPECT_EQ(std::memcmp(st, "\x01\x00\x00\x00VTCM", 8), 0);
  EXPECT_TRUE(c.ClosedWithin(5000));
  // Zero-size requests are rejected too.
  RawConn z("127.0.0.1", target->data_port());
  ASSERT_TRUE(z.Send(Header(0, remote.addr(), 0x80)));
  ASSERT_TRUE(z.Recv(st, 8));
  EXPECT_EQ(st[0], 1);
  // One request per connection, many connections at once (Mooncake's default client).
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 32; ++i) {
    conns.push_back(std::make_unique<RawConn>("127.0.0.1", target->data_port()));
    std::string b(1000, static_cast<char>('A' + i % 26));
    ASSERT_TRUE(conns.back()->Send(Header(b.size(), remote.addr() + 100000 + i * 1000, 0x81) + b));
  }
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE(conns[i]->Recv(st, 8)) << i;
    EXPECT_EQ(st[0], 0);
    EXPECT_EQ(remote.data()[100000 + i * 1000 + 999], static_cast<char>('A' + i % 26));
  }
}

TEST(EngineWireTest, HandshakeDaemonAnswersEveryTypeAndSurvivesGarbage) {
  auto target = MakeEngine();
  Arena remote(4096);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  uint16_t hs = PortOf(target->segment_name());
  auto ask = [&](const std::string& frame) -> std::string {
    RawConn c("127.0.0.1", hs);
    if (!c.ok() || !c.Send(frame)) return "<send failed>";
    uint8_t len[8];
    if (!c.Recv(len, 8)) return "<closed>";
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    std::string payload(n, '\0');
    if (!c.Recv(payload.data(), n)) return "<short>";
    return payload;
  };
  std::string meta = ask(wire::EncodeHandshakeFrame(wire::kTypeMetadata, "{}"));
  ASSERT_EQ(meta[0], 0x01);
  auto d = wire::DecodeDescriptor(meta.substr(1));
  ASSERT_TRUE(d.ok()) << meta;
  EXPECT_EQ(d->name, target->segment_name());
  EXPECT_EQ(d->tcp_proto_version, 2);
  EXPECT_EQ(d->buffers.size(), 1u);
  EXPECT_EQ(ask(wire::EncodeHandshakeFrame(wire::kTypeProbe, "{}")), "\x03" + wire::ProbeReplyBody());
  EXPECT_EQ(ask(wire::EncodeHandshakeFrame(wire::kTypeNotify, R"({"name":"x","notify_msg":"m"})")),
            "\x02" + wire::NotifyReplyBody());
  EXPECT_EQ(ask(wire::EncodeHandshakeFrame(wire::kTypeConnection, "{}")),
            std::string(1, '\0') + wire::ConnectionReplyBody());
  EXPECT_EQ(ask(wire::EncodeUntypedHandshakeFrame("{}")), wire::ConnectionReplyBody());  // legacy: untyped reply
  // Garbage: each gets the connection closed without a reply.
  EXPECT_EQ(ask(std::string(8, '\0')), "<closed>");                                       // L = 0
  EXPECT_EQ(ask(std::string("\x01\x00\x00\x10\x00\x00\x00\x00", 8) + "xx"), "<closed>");  // L > 1 MiB
  EXPECT_EQ(ask(wire::EncodeHandshakeFrame(wire::kTypeMetadata, "{not json")), "<closed>");
  EXPECT_EQ(ask(std::string("\x05\x00\x00\x00\x00\x00\x00\x00\x85{}{}", 13)), "<closed>");  // unknown type
  {
    RawConn slow("127.0.0.1", hs);  // truncated frame, then silence: must not block others
    ASSERT_TRUE(slow.Send(std::string("\x40\x00\x00\x00", 4)));
    auto init = MakeEngine();
    EXPECT_TRUE(init->OpenSegment(target->segment_name()).ok());
  }
  // Garbage on the data port: closed, and the port keeps serving.
  {
    RawConn g("127.0.0.1", target->data_port());
    std::string junk(100, '\xFF');
    g.Send(junk);
    EXPECT_TRUE(g.ClosedWithin(5000));
    RawConn t("127.0.0.1", target->data_port());
    t.Send(std::string(10, 'x'));  // truncated header
    t.ShutdownWrite();
    EXPECT_TRUE(t.ClosedWithin(5000));
  }
  auto init = MakeEngine();
  Arena local(4096);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(target->segment_name());
  ASSERT_TRUE(seg.ok());
  TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr(), 4096};
  EXPECT_TRUE(init->Transfer({&w, 1}).ok());
}

// Our initiator against a peer that advertises no tcp_proto_version (a v1 Mooncake
// engine): it must speak v1 and skip kvferry's extensions.
TEST(EngineWireTest, InitiatorSpeaksV1ToAnOldPeer) {
  auto target = MakeEngine();
  Arena remote(1 << 20), local(1 << 20);
  ASSERT_TRUE(target->RegisterMemory(remote.data(), remote.size()).ok());
  // A handshake proxy that rewrites the real target's descriptor into a v1 one.
  uint16_t port = 0;
  net::Fd lis = std::move(*net::ListenTcp("127.0.0.1", 0, &port));
  std::string name = "127.0.0.1:" + std::to_string(port);
  wire::Descriptor d;
  d.name = "127.0.0.1:" + std::to_string(port);
  d.tcp_data_port = target->data_port();
  d.tcp_proto_version = 1;
  d.buffers = {{remote.addr(), remote.size()}};
  std::string json = wire::EncodeDescriptor(d);
  json.erase(json.find(",\"tcp_proto_version\":1"), std::strlen(",\"tcp_proto_version\":1"));
  std::thread server([&] {
    auto c = net::Accept(lis.get());
    ASSERT_TRUE(c.ok());
    uint8_t len[8];
    ASSERT_TRUE(net::RecvAll(c->get(), len, 8, Deadline::After(5s)).ok());
    std::string body(*wire::DecodeHandshakeLength(len, 1 << 20), '\0');
    ASSERT_TRUE(net::RecvAll(c->get(), body.data(), body.size(), Deadline::After(5s)).ok());
    std::string reply = wire::EncodeHandshakeFrame(wire::kTypeMetadata, json);
    ASSERT_TRUE(net::SendAll(c->get(), reply.data(), reply.size(), Deadline::After(5s)).ok());
  });
  // One lane: v1 has no acknowledgement, so only requests on one connection are ordered.
  auto init = MakeEngine(Protocol::kTcp, "", 0, 0, /*lanes=*/1);
  ASSERT_TRUE(init->RegisterMemory(local.data(), local.size()).ok());
  auto seg = init->OpenSegment(name);
  server.join();
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(init->GetSegmentInfo(*seg)->tcp_proto_version, 1);
  EXPECT_FALSE(init->GetSegmentInfo(*seg)->kvferry_peer);
  Fill(local.data(), 1 << 19, 3);
  TransferRequest w{Op::kWrite, local.data(), *seg, remote.addr(), 1 << 19};
  ASSERT_TRUE(init->Transfer({&w, 1}).ok());
  TransferRequest r{Op::kRead, local.data() + (1 << 19), *seg, remote.addr(), 1 << 19};
  ASSERT_TRUE(init->Transfer({&r, 1}).ok());  // v1 READ after v1 WRITE on the same connection sees the data
  EXPECT_EQ(std::memcmp(local.data(), local.data() + (1 << 19), 1 << 19), 0);
}

}  // namespace
}  // namespace kvferry::transfer
