// The shm transport's mapped path: a target's SharedMemory mapped by a same-host initiator
// (two engines in this process), its bounds, revocation by UnregisterMemory, and a target that
// goes away.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "kvferry/transfer/transfer.h"

namespace kvferry::transfer {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<TransferEngine> MakeEngine(Protocol protocol) {
  TransferEngineOptions o;
  o.local_host = "127.0.0.1";
  o.protocol = protocol;
  o.slice_size = 256 << 10;
  auto e = TransferEngine::Create(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

void Fill(char* p, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(rng() >> 11);
}

// Lines of /proc/self/maps that map a memfd called `name`.
int MappingsOf(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    if (line.find("/memfd:" + name + " ") != std::string::npos ||
        line.size() >= name.size() && line.ends_with("/memfd:" + name + " (deleted)")) {
      ++n;
    }
  }
  return n;
}

// Polls (bounded) until MappingsOf(name) == want.
bool WaitForMappings(const std::string& name, int want) {
  for (int i = 0; i < 500; ++i) {
    if (MappingsOf(name) == want) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

struct Pair {
  std::unique_ptr<TransferEngine> target, init;
  std::unique_ptr<SharedMemory> remote;
  std::vector<char> local;
  SegmentHandle seg;
  char* registered = nullptr;  // inside remote, not page aligned, with unregistered bytes around it
  size_t length = 0;
};

// A target whose registered range sits inside a larger SharedMemory called `name`.
Pair MakePair(const std::string& name, size_t length) {
  Pair p;
  p.target = MakeEngine(Protocol::kTcp);
  p.init = MakeEngine(Protocol::kShm);
  p.remote = std::move(*SharedMemory::Create(length + 3 * 4096, name));
  std::memset(p.remote->data(), 0xEE, p.remote->size());
  p.registered = p.remote->data() + 4096 + 5;
  p.length = length;
  EXPECT_TRUE(p.target->RegisterMemory(p.registered, length).ok());
  p.local.assign(2 * length, 0);
  EXPECT_TRUE(p.init->RegisterMemory(p.local.data(), p.local.size()).ok());
  auto seg = p.init->OpenSegment(p.target->segment_name());
  EXPECT_TRUE(seg.ok()) << seg.status().ToString();
  if (seg.ok()) p.seg = *seg;
  return p;
}

bool OutsideUntouched(const Pair& p) {
  const char* base = p.remote->data();
  for (const char* c = base; c < p.registered; ++c) {
    if (static_cast<uint8_t>(*c) != 0xEE) return false;
  }
  for (const char* c = p.registered + p.length; c < base + p.remote->size(); ++c) {
    if (static_cast<uint8_t>(*c) != 0xEE) return false;
  }
  return true;
}

TEST(ShmMapTest, CopiesThroughTheMappingWithTheSameBounds) {
  const size_t kLen = 8 << 20;
  Pair p = MakePair("shm-map-test-bounds", kLen);
  EXPECT_EQ(MappingsOf("shm-map-test-bounds"), 2);  // ours as the target, and the initiator's
  auto remote = reinterpret_cast<uint64_t>(p.registered);
  char* src = p.local.data();
  char* dst = p.local.data() + kLen;
  uint32_t seed = 3;
  for (size_t len : {size_t{1}, size_t{4095}, size_t{65536}, size_t{(1 << 20) + 3}, kLen}) {
    for (size_t off : {size_t{0}, size_t{3}}) {
      if (off + len > kLen) continue;
      Fill(src, len, ++seed);
      TransferRequest w{Op::kWrite, src, p.seg, remote + off, len};
      ASSERT_TRUE(p.init->Transfer({&w, 1}).ok()) << len;
      ASSERT_EQ(std::memcmp(p.registered + off, src, len), 0) << "write of " << len;
      std::memset(dst, 0, len);
      TransferRequest r{Op::kRead, dst, p.seg, remote + off, len};
      ASSERT_TRUE(p.init->Transfer({&r, 1}).ok()) << len;
      ASSERT_EQ(std::memcmp(dst, src, len), 0) << "read of " << len;
    }
  }
  TransferStats st = p.init->GetStats();
  EXPECT_EQ(st.bytes_mapped, st.bytes_written + st.bytes_read);  // all of it through the mapping
  EXPECT_EQ(p.target->GetStats().served_bytes_in, 0u);           // none through the target's socket
  // Out of range by one byte at either end, and the unregistered bytes of the same memfd page:
  // the target refuses them as it always did, and they stay untouched.
  for (auto [addr, len] : {std::pair<uint64_t, uint64_t>{remote + kLen - 100, 101},
                           {remote - 1, 10},
                           {remote - 5, 1},
                           {remote + kLen, 1}}) {
    TransferRequest w{Op::kWrite, src, p.seg, addr, len};
    EXPECT_EQ(p.init->Transfer({&w, 1}).code(), StatusCode::kPermissionDenied) << addr - remote;
    TransferRequest r{Op::kRead, dst, p.seg, addr, len};
    EXPECT_EQ(p.init->Transfer({&r, 1}).code(), StatusCode::kPermissionDenied) << addr - remote;
  }
  EXPECT_TRUE(OutsideUntouched(p));
  EXPECT_GE(p.target->GetStats().served_rejected, 8u);
}

// A batch larger than the inline limit (8 MiB) is copied by the lanes, through the same
// mapping. Its pieces do not overlap: lanes copy them concurrently.
TEST(ShmMapTest, LargeBatchesGoThroughTheMappingOnTheLanes) {
  const size_t kLen = 16 << 20;
  Pair p = MakePair("shm-map-test-lanes", kLen);
  auto remote = reinterpret_cast<uint64_t>(p.registered);
  char* src = p.local.data();
  char* dst = p.local.data() + kLen;
  Fill(src, kLen, 77);
  std::vector<TransferRequest> big;
  for (size_t off = 0; off < kLen; off += kLen / 8) {
    big.push_back({Op::kWrite, src + off, p.seg, remote + off, kLen / 8});
    big.push_back({Op::kRead, dst + off, p.seg, remote + off, 0});  // zero length: nothing to do
  }
  ASSERT_TRUE(p.init->Transfer(big).ok());
  ASSERT_EQ(std::memcmp(p.registered, src, kLen), 0);
  std::vector<TransferRequest> back;
  for (size_t off = 0; off < kLen; off += kLen / 8)
    back.push_back({Op::kRead, dst + off, p.seg, remote + off, kLen / 8});
  ASSERT_TRUE(p.init->Transfer(back).ok());
  ASSERT_EQ(std::memcmp(dst, src, kLen), 0);
  TransferStats st = p.init->GetStats();
  EXPECT_EQ(st.bytes_mapped, st.bytes_written + st.bytes_read);  // all of it through the mapping
  EXPECT_EQ(p.target->GetStats().served_bytes_in, 0u);           // none through the target's socket
  EXPECT_TRUE(OutsideUntouched(p));
}

TEST(ShmMapTest, UnregisterRevokesThePeersMappingEvenUnderLoad) {
  const size_t kLen = 4 << 20;
  Pair p = MakePair("shm-map-test-revoke", kLen);
  auto remote = reinterpret_cast<uint64_t>(p.registered);
  ASSERT_EQ(MappingsOf("shm-map-test-revoke"), 2);
  // Writers keep going while the target unregisters: every transfer either lands (before the
  // revocation) or is refused by the target (after it); none crashes or lands afterwards.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, denied{0}, other{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&, t] {
      std::vector<char> pattern(64 << 10, static_cast<char>(0x40 + t));
      char* src = p.local.data() + static_cast<size_t>(t) * (64 << 10);
      std::memcpy(src, pattern.data(), pattern.size());
      for (int i = 0; i < 200000 && !stop.load(); ++i) {
        TransferRequest w{Op::kWrite, src, p.seg, remote + static_cast<uint64_t>(t) * (1 << 20), 64 << 10};
        Status s = p.init->Transfer({&w, 1});
        (s.ok() ? ok : s.code() == StatusCode::kPermissionDenied ? denied : other)++;
        if (denied.load() > 20) return;
      }
    });
  }
  while (ok.load() < 50) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(p.target->UnregisterMemory(p.registered).ok());
  // UnregisterMemory returned: the initiator's mapping is gone, so nothing can land any more.
  EXPECT_EQ(MappingsOf("shm-map-test-revoke"), 1);
  std::memset(p.remote->data(), 0xEE, p.remote->size());
  for (auto& w : writers) w.join();
  stop = true;
  EXPECT_GT(denied.load(), 0);
  EXPECT_EQ(other.load(), 0);
  for (size_t i = 0; i < p.remote->size(); ++i) ASSERT_EQ(static_cast<uint8_t>(p.remote->data()[i]), 0xEE) << i;
  // Registered again: a new handshake hands it out again.
  ASSERT_TRUE(p.target->RegisterMemory(p.registered, kLen).ok());
  auto init2 = MakeEngine(Protocol::kShm);
  ASSERT_TRUE(init2->RegisterMemory(p.local.data(), p.local.size()).ok());
  auto seg2 = init2->OpenSegment(p.target->segment_name());
  ASSERT_TRUE(seg2.ok());
  TransferRequest w{Op::kWrite, p.local.data(), *seg2, remote, 4096};
  ASSERT_TRUE(init2->Transfer({&w, 1}).ok());
  EXPECT_EQ(init2->GetStats().bytes_mapped, 4096u);
  EXPECT_EQ(MappingsOf("shm-map-test-revoke"), 2);
}

TEST(ShmMapTest, AGoneTargetIsUnmappedAndUnavailable) {
  const size_t kLen = 1 << 20;
  Pair p = MakePair("shm-map-test-gone", kLen);
  auto remote = reinterpret_cast<uint64_t>(p.registered);
  TransferRequest w{Op::kWrite, p.local.data(), p.seg, remote, kLen};
  ASSERT_TRUE(p.init->Transfer({&w, 1}).ok());
  ASSERT_EQ(MappingsOf("shm-map-test-gone"), 2);
  p.target.reset();  // its sockets close; the SharedMemory itself lives on in `p.remote`
  EXPECT_TRUE(WaitForMappings("shm-map-test-gone", 1)) << MappingsOf("shm-map-test-gone");
  Status s = p.init->Transfer({&w, 1});
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
}

TEST(ShmMapTest, PlainMemoryAndTcpInitiatorsDoNotMap) {
  auto target = MakeEngine(Protocol::kTcp);
  auto remote = SharedMemory::Create(1 << 20, "shm-map-test-tcp");
  ASSERT_TRUE(remote.ok());
  ASSERT_TRUE(target->RegisterMemory((*remote)->data(), (*remote)->size()).ok());
  auto tcp = MakeEngine(Protocol::kTcp);
  std::vector<char> local(1 << 20, 7);
  ASSERT_TRUE(tcp->RegisterMemory(local.data(), local.size()).ok());
  auto seg = tcp->OpenSegment(target->segment_name());
  ASSERT_TRUE(seg.ok());
  TransferRequest w{Op::kWrite, local.data(), *seg, reinterpret_cast<uint64_t>((*remote)->data()), local.size()};
  ASSERT_TRUE(tcp->Transfer({&w, 1}).ok());
  EXPECT_EQ(tcp->GetStats().bytes_mapped, 0u);
  EXPECT_EQ(MappingsOf("shm-map-test-tcp"), 1);
  EXPECT_EQ(std::memcmp((*remote)->data(), local.data(), local.size()), 0);
  EXPECT_EQ(SharedMemory::Create(0).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(target->UnregisterMemory((*remote)->data()).ok());
}

}  // namespace
}  // namespace kvferry::transfer
