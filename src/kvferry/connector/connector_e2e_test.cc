// A prefiller and a decoder engine in one process, each with its Connector on 127.0.0.1:
// bootstrap, ZMQ side channel and transfer engine all real. Greedy output through the
// disaggregated path must equal a colocated run token for token, and every fault path
// must leave no KV block in use on either side.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>

#include <zmq.hpp>

#include "kvferry/connector/connector.h"
#include "kvferry/connector/side_channel.h"
#include "kvferry/engine/engine_test_util.h"

// TSan: libzmq is not instrumented (see zmq_util.cc). The decoder's engine reads KV bytes its
// transfer-engine thread received; the consumer's AcquirePeerWrites makes that ordering visible.
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:libzmq.so\n";
}
#endif

namespace kvferry::connector {
namespace {

using engine::Engine;
using engine::EngineStats;
using engine::FinishReason;
using engine::Output;
using engine::RequestSpec;
using engine::testing::Collector;
using engine::testing::Greedy;
using engine::testing::RandomPrompt;
using engine::testing::ReferenceGreedy;
using engine::testing::Result;
using namespace std::chrono_literals;

struct SideOptions {
  KvRole role = KvRole::kBoth;
  transfer::Protocol protocol = transfer::Protocol::kTcp;
  LoadFailurePolicy policy = LoadFailurePolicy::kFail;
  Duration abort_timeout = 30s;
  Duration load_timeout = 20s;
  Duration unclaimed = 30s;
  int64_t block_size = 16;
  std::string model_dir;  // empty: the shared tiny model
};

// One serving instance: an engine and its connector, wired as the server wires them.
class Side {
 public:
  Side(const std::string& name, const SideOptions& so) {
    ConnectorOptions o;
    o.config.role = so.role;
    o.config.engine_id = "engine-" + name;
    o.config.protocol = so.protocol;
    o.config.load_failure_policy = so.policy;
    o.config.num_workers = 2;
    o.config.bootstrap_port = 0;
    o.config.abort_request_timeout = so.abort_timeout;
    o.config.unclaimed_pull_timeout = so.unclaimed;
    o.config.connector_timeout = 2s;
    o.advertise_host = "127.0.0.1";
    o.bootstrap_bind_host = "127.0.0.1";
    o.load_timeout = so.load_timeout;
    auto c = Connector::Create(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (!c.ok()) return;
    conn = std::move(*c);
    engine::EngineOptions eo = engine::testing::TinyOptions();
    eo.block_size = so.block_size;
    if (!so.model_dir.empty()) eo.model_dir = so.model_dir;
    eo.hooks = conn->Hooks();
    auto e = Engine::Create(eo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (!e.ok()) return;
    eng = std::move(*e);
    Status st = conn->Start(eng.get());
    EXPECT_TRUE(st.ok()) << st.ToString();
    started = st.ok();
  }
  ~Side() {
    if (conn) conn->Shutdown(Deadline::After(10s));
    if (eng) eng->Shutdown(Deadline::After(10s));
    eng.reset();
    conn.reset();
  }

  // BeginRequest + Add (+ CancelRequest when Add fails), outputs fed to the connector first.
  StatusOr<engine::KvRole> Add(const std::string& id, RequestSpec spec, const RequestKvParams& params, Collector& col) {
    KVF_ASSIGN_OR_RETURN(engine::KvRole role, conn->BeginRequest(id, params));
    spec.id = id;
    spec.kv_role = role;
    Connector* c = conn.get();
    engine::OutputCallback cb = col.Callback();
    Status st = eng->Add(spec, [c, cb](const Output& o) {
      c->OnOutput(o);
      cb(o);
    });
    if (!st.ok()) {
      c->CancelRequest(id);
      return st;
    }
    return role;
  }

  bool BlocksFree(Duration timeout = 20s) {
    return engine::testing::WaitStats(
        *eng, [](const EngineStats& s) { return s.blocks_used == 0; }, timeout);
  }

  std::unique_ptr<Connector> conn;
  std::unique_ptr<Engine> eng;
  bool started = false;
};

RequestKvParams PrefillLeg(const std::string& tid) {
  RequestKvParams p;
  p.do_remote_decode = true;
  p.transfer_id = tid;
  return p;
}

RequestKvParams DecodeLeg(const Side& prefiller, const std::string& tid) {
  RequestKvParams p;
  p.do_remote_prefill = true;
  p.transfer_id = tid;
  p.remote_bootstrap_addr = prefiller.conn->bootstrap_url();
  p.remote_engine_id = prefiller.conn->config().engine_id;
  return p;
}

template <typename Pred>
bool WaitFor(Pred pred, Duration timeout = 20s) {
  const Deadline d = Deadline::After(timeout);
  while (!pred()) {
    if (d.Expired()) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

uint64_t BlocksFor(size_t tokens) {
  return (tokens + 15) / 16;
}

class ConnectorE2ETest : public ::testing::TestWithParam<transfer::Protocol> {
 protected:
  void Make(SideOptions p_opts = {}, SideOptions d_opts = {}) {
    p_opts.protocol = d_opts.protocol = GetParam();
    p_ = std::make_unique<Side>("p", p_opts);
    d_ = std::make_unique<Side>("d", d_opts);
    ASSERT_TRUE(p_->started && d_->started);
  }
  void TearDown() override {
    // Whatever happened, no KV block stays in use on either side.
    if (p_ && p_->eng) {
      EXPECT_TRUE(p_->BlocksFree()) << "prefiller blocks_used " << p_->eng->GetStats().blocks_used;
      EXPECT_EQ(p_->conn->GetStats().held_requests, 0);
    }
    if (d_ && d_->eng) {
      EXPECT_TRUE(d_->BlocksFree()) << "decoder blocks_used " << d_->eng->GetStats().blocks_used;
      EXPECT_EQ(d_->conn->GetStats().pending_loads, 0);
    }
    d_.reset();
    p_.reset();
  }

  // Both legs at once, as the proxy sends them; returns the decoder's result.
  Result RunPair(const std::string& id, const std::vector<int32_t>& prompt, int max_tokens) {
    const std::string tid = "xfer-" + id;
    Collector pc, dc;
    auto pr = p_->Add("p-" + id, Greedy("", prompt, 1), PrefillLeg(tid), pc);
    EXPECT_TRUE(pr.ok()) << pr.status().ToString();
    if (pr.ok()) {
      EXPECT_EQ(*pr, engine::KvRole::kHoldForRemote);
    }
    auto dr = d_->Add("d-" + id, Greedy("", prompt, max_tokens), DecodeLeg(*p_, tid), dc);
    EXPECT_TRUE(dr.ok()) << dr.status().ToString();
    if (dr.ok()) {
      EXPECT_EQ(*dr, engine::KvRole::kLoadRemote);
    }
    EXPECT_TRUE(dc.WaitFinished("d-" + id, 60s));
    EXPECT_TRUE(pc.WaitFinished("p-" + id, 60s));
    EXPECT_EQ(pc.Get("p-" + id).reason, FinishReason::kLength);
    return dc.Get("d-" + id);
  }

  std::unique_ptr<Side> p_, d_;
};

TEST_P(ConnectorE2ETest, DisaggregatedEqualsColocated) {
  SideOptions po, dopt;
  po.role = KvRole::kProducer;
  dopt.role = KvRole::kConsumer;
  Make(po, dopt);
  uint64_t blocks = 0;
  const std::vector<int> lengths = {1, 15, 16, 17, 100};
  for (int n : lengths) {
    const auto prompt = RandomPrompt(n, 100 + n);
    const Result r = RunPair("len" + std::to_string(n), prompt, 8);
    EXPECT_EQ(r.reason, FinishReason::kLength) << n << ": " << r.error.ToString();
    EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 8)) << "prompt of " << n << " tokens";
    EXPECT_EQ(r.num_cached_tokens, n - 1);
    blocks += BlocksFor(n);
  }
  ASSERT_TRUE(p_->BlocksFree());
  const ConnectorStats ps = p_->conn->GetStats();
  EXPECT_EQ(ps.transfers_total, lengths.size());
  EXPECT_EQ(ps.transfer_bytes_total, blocks * p_->eng->kv_bytes_per_block());
  EXPECT_EQ(ps.transfer_blocks_total, blocks);
  EXPECT_GE(ps.transfer_descriptors_total, lengths.size());
  EXPECT_LE(ps.transfer_descriptors_total, blocks);
  EXPECT_EQ(ps.failed_transfers_total, 0u);
  const ConnectorStats ds = d_->conn->GetStats();
  EXPECT_EQ(ds.transfers_total, lengths.size());
  EXPECT_EQ(ds.transfer_blocks_total, blocks);
  EXPECT_EQ(ds.failed_receives_total, 0u);
  const std::string text = p_->conn->MetricsText();
  for (const char* name :
       {"kvferry:kv_transfers_total 5", "kvferry:kv_transfer_bytes_total", "kvferry:kv_transfer_blocks_total",
        "# TYPE kvferry:kv_transfer_duration_seconds histogram", "kvferry:kv_transfer_duration_seconds_count 5",
        "kvferry:kv_transfer_descriptors_total", "kvferry:kv_transfer_failed_total 0",
        "kvferry:kv_receive_failed_total 0", "kvferry:kv_expired_requests_total 0"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name << "\n" << text;
  }
  // A consumer-only instance refuses the prefill leg, a producer-only one the decode leg.
  EXPECT_EQ(d_->conn->BeginRequest("x", PrefillLeg("t")).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p_->conn->BeginRequest("x", DecodeLeg(*p_, "t")).status().code(), StatusCode::kInvalidArgument);
}

// kv_both on both sides; the decoder's pull reaches the prefiller before its request does.
TEST_P(ConnectorE2ETest, PullBeforePrefill) {
  Make();
  const auto prompt = RandomPrompt(40, 7);
  Collector pc, dc;
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 6), DecodeLeg(*p_, "xfer-early"), dc).ok());
  ASSERT_TRUE(WaitFor([&] { return p_->conn->GetStats().waiting_pulls == 1; }));
  auto pr = p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-early"), pc);
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(*pr, engine::KvRole::kHoldForRemote);
  ASSERT_TRUE(dc.WaitFinished("d", 60s));
  EXPECT_EQ(dc.Get("d").tokens, ReferenceGreedy(prompt, 6));
  EXPECT_EQ(p_->conn->GetStats().waiting_pulls, 0);
  ASSERT_TRUE(pc.WaitFinished("p"));
}

TEST_P(ConnectorE2ETest, DecoderPrefixHitFetchesOnlyMissingBlocks) {
  Make();
  const auto prompt = RandomPrompt(45, 8);
  // Warm the decoder's prefix cache with the first two blocks.
  Collector wc;
  std::vector<int32_t> head(prompt.begin(), prompt.begin() + 33);
  ASSERT_TRUE(d_->Add("warm", Greedy("", head, 1), RequestKvParams{}, wc).ok());
  ASSERT_TRUE(wc.WaitFinished("warm"));
  const Result r = RunPair("hit", prompt, 6);
  EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 6));
  ASSERT_TRUE(p_->BlocksFree());
  const ConnectorStats ps = p_->conn->GetStats();
  EXPECT_EQ(ps.transfers_total, 1u);
  EXPECT_EQ(ps.transfer_bytes_total, p_->eng->kv_bytes_per_block());  // the third block only
  EXPECT_EQ(ps.transfer_blocks_total, 1u);
  EXPECT_EQ(ps.transfer_descriptors_total, 1u);
}

// The decoder aborts while its pull waits for the prefill: the empty pull cancels it, and the
// prefill that arrives later holds nothing.
TEST_P(ConnectorE2ETest, AbortBeforeKvArrives) {
  Make();
  const auto prompt = RandomPrompt(40, 9);
  Collector pc, dc;
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 6), DecodeLeg(*p_, "xfer-ab"), dc).ok());
  ASSERT_TRUE(WaitFor([&] { return p_->conn->GetStats().waiting_pulls == 1; }));
  d_->eng->Abort("d");
  ASSERT_TRUE(dc.WaitFinished("d"));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kAbort);
  ASSERT_TRUE(WaitFor([&] { return p_->conn->GetStats().waiting_pulls == 0; }, 5s));
  auto pr = p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-ab"), pc);
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(*pr, engine::KvRole::kLocal);
  ASSERT_TRUE(pc.WaitFinished("p"));
  EXPECT_TRUE(pc.Get("p").held_blocks.empty());
  EXPECT_TRUE(p_->BlocksFree(5s));  // well before the 30 s abort timeout
  EXPECT_EQ(p_->conn->GetStats().expired_requests_total, 0u);
  EXPECT_EQ(d_->conn->GetStats().failed_receives_total, 0u);
}

// The prefill finished and holds its blocks; the decoder never runs the request (Add failed):
// its empty pull frees the prefiller at once.
TEST_P(ConnectorE2ETest, DecoderCancelFreesHeldBlocks) {
  Make();
  const auto prompt = RandomPrompt(40, 10);
  Collector pc;
  ASSERT_TRUE(p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-c"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p"));
  EXPECT_EQ(pc.Get("p").held_blocks.size(), 3u);
  EXPECT_EQ(p_->conn->GetStats().held_requests, 1);
  auto role = d_->conn->BeginRequest("d", DecodeLeg(*p_, "xfer-c"));
  ASSERT_TRUE(role.ok());
  d_->conn->CancelRequest("d");
  EXPECT_TRUE(p_->BlocksFree(5s));
  EXPECT_EQ(p_->conn->GetStats().held_requests, 0);
  EXPECT_EQ(p_->conn->GetStats().expired_requests_total, 0u);
}

TEST_P(ConnectorE2ETest, AbortTimeoutFreesHeldBlocks) {
  SideOptions po;
  po.abort_timeout = 300ms;
  Make(po);
  const auto prompt = RandomPrompt(40, 11);
  Collector pc, dc;
  ASSERT_TRUE(p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-exp"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p"));
  EXPECT_GT(p_->eng->GetStats().blocks_held, 0);
  const double t0 = NowSeconds();
  ASSERT_TRUE(p_->BlocksFree(10s));
  EXPECT_GE(NowSeconds() - t0, 0.1);
  EXPECT_EQ(p_->conn->GetStats().expired_requests_total, 1u);
  EXPECT_NE(p_->conn->MetricsText().find("kvferry:kv_expired_requests_total 1"), std::string::npos);
  // A late pull gets a clear error.
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-exp"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 20s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kError);
  EXPECT_NE(dc.Get("d").error.message().find("expired"), std::string::npos) << dc.Get("d").error.ToString();
}

// A pull whose prefill never comes fails after the prefiller's abort timeout, not never.
TEST_P(ConnectorE2ETest, PullWithoutPrefillTimesOut) {
  SideOptions po;
  po.abort_timeout = 300ms;
  Make(po);
  Collector dc;
  ASSERT_TRUE(d_->Add("d", Greedy("", RandomPrompt(20, 12), 4), DecodeLeg(*p_, "xfer-none"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 20s));
  const Result r = dc.Get("d");
  EXPECT_EQ(r.reason, FinishReason::kError);
  EXPECT_NE(r.error.message().find("no prefill request"), std::string::npos) << r.error.ToString();
  EXPECT_EQ(d_->conn->GetStats().failed_receives_total, 1u);
}

// Routers send the decode leg even when the prefill leg never reached the prefiller: its pull is
// answered after the unclaimed-pull bound, not the (long) abort timeout; the failure policy applies.
TEST_P(ConnectorE2ETest, UnclaimedPullEndsAtItsBound) {
  for (LoadFailurePolicy policy : {LoadFailurePolicy::kFail, LoadFailurePolicy::kRecompute}) {
    SideOptions po, dopt;
    po.abort_timeout = 60s;
    po.unclaimed = 400ms;
    dopt.policy = policy;
    Make(po, dopt);
    const auto prompt = RandomPrompt(20, 12);
    Collector dc;
    const double t0 = NowSeconds();
    ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-unclaimed"), dc).ok());
    ASSERT_TRUE(dc.WaitFinished("d", 20s));
    const double took = NowSeconds() - t0;
    EXPECT_GE(took, 0.3);
    EXPECT_LT(took, 10.0);
    const Result r = dc.Get("d");
    if (policy == LoadFailurePolicy::kFail) {
      EXPECT_EQ(r.reason, FinishReason::kError);
      EXPECT_NE(r.error.message().find("no prefill request with transfer_id xfer-unclaimed"), std::string::npos)
          << r.error.ToString();
    } else {
      EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 4));
    }
    EXPECT_EQ(p_->conn->GetStats().waiting_pulls, 0);
    // A prefill leg that comes after its decoder gave up runs without holding its KV.
    auto late = p_->conn->BeginRequest("p-late", PrefillLeg("xfer-unclaimed"));
    ASSERT_TRUE(late.ok()) << late.status().ToString();
    EXPECT_EQ(*late, engine::KvRole::kLocal);
    p_->conn->CancelRequest("p-late");
    TearDown();
  }
}

// A prefill leg the server refused: pulls for its transfer_id, waiting or later, get ERROR at once.
TEST_P(ConnectorE2ETest, RefusedPrefillLegAnswersPullsAtOnce) {
  SideOptions po;
  po.abort_timeout = 60s;  // both bounds long: only the refusal can end the pulls quickly
  po.unclaimed = 60s;
  Make(po);
  const auto prompt = RandomPrompt(24, 14);
  Collector dc;
  ASSERT_TRUE(d_->Add("d1", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-refused"), dc).ok());
  ASSERT_TRUE(WaitFor([&] { return p_->conn->GetStats().waiting_pulls == 1; }, 10s));
  const double t0 = NowSeconds();
  p_->conn->OnRejected(PrefillLeg("xfer-refused"), InvalidArgumentError("'temperature' must be in [0, 100]"));
  ASSERT_TRUE(dc.WaitFinished("d1", 20s));
  EXPECT_LT(NowSeconds() - t0, 3.0);
  EXPECT_EQ(dc.Get("d1").reason, FinishReason::kError);
  EXPECT_NE(dc.Get("d1").error.message().find("refused: 'temperature'"), std::string::npos)
      << dc.Get("d1").error.ToString();
  // A pull that comes after the refusal.
  ASSERT_TRUE(d_->Add("d2", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-refused"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d2", 5s));
  EXPECT_EQ(dc.Get("d2").reason, FinishReason::kError);
  // A refused duplicate does not touch the accepted request that owns the id.
  Collector pc;
  ASSERT_TRUE(p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-owned"), pc).ok());
  EXPECT_EQ(p_->conn->BeginRequest("p-dup", PrefillLeg("xfer-owned")).status().code(), StatusCode::kAlreadyExists);
  p_->conn->OnRejected(PrefillLeg("xfer-owned"), AlreadyExistsError("duplicate"));
  ASSERT_TRUE(d_->Add("d3", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-owned"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d3", 60s));
  EXPECT_EQ(dc.Get("d3").tokens, ReferenceGreedy(prompt, 4));
  ASSERT_TRUE(pc.WaitFinished("p", 60s));  // its callback must be done before pc goes away
}

// A decoder that refuses a decode leg (bad body) or cannot pull it (engine_id mismatch) still
// tells the prefiller, which frees the held KV at once rather than at the abort timeout.
TEST_P(ConnectorE2ETest, DecoderRefusalFreesThePrefillersKv) {
  SideOptions po;
  po.abort_timeout = 60s;
  Make(po);
  const auto prompt = RandomPrompt(50, 15);
  Collector pc, dc;
  ASSERT_TRUE(p_->Add("p1", Greedy("", prompt, 1), PrefillLeg("xfer-r1"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p1"));
  EXPECT_EQ(p_->conn->GetStats().held_requests, 1);
  d_->conn->OnRejected(DecodeLeg(*p_, "xfer-r1"), InvalidArgumentError("bad top_p"));
  EXPECT_TRUE(p_->BlocksFree(5s));
  EXPECT_EQ(p_->conn->GetStats().held_requests, 0);
  ASSERT_TRUE(p_->Add("p2", Greedy("", prompt, 1), PrefillLeg("xfer-r2"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p2"));
  RequestKvParams wrong = DecodeLeg(*p_, "xfer-r2");
  wrong.remote_engine_id = "engine-not-this-one";
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), wrong, dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 20s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kError);
  EXPECT_NE(dc.Get("d").error.message().find("does not match"), std::string::npos) << dc.Get("d").error.ToString();
  EXPECT_TRUE(p_->BlocksFree(5s));
  EXPECT_EQ(p_->conn->GetStats().held_requests, 0);
}

TEST(ConnectorCreateTest, DefaultEngineIdIsStable) {
  ConnectorOptions o;
  o.config.role = KvRole::kProducer;
  o.advertise_host = "10.1.2.3";
  o.instance_port = 8010;
  auto a = Connector::Create(o);
  auto b = Connector::Create(o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->config().engine_id, StableEngineId("10.1.2.3", 8010, 0));
  EXPECT_EQ((*a)->config().engine_id, (*b)->config().engine_id);
  o.config.engine_id = "mine";
  auto c = Connector::Create(o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->config().engine_id, "mine");  // an explicit engine_id wins
  o.config.engine_id.clear();
  o.instance_port = 0;  // no stable identity: random
  auto d = Connector::Create(o), e = Connector::Create(o);
  ASSERT_TRUE(d.ok() && e.ok());
  EXPECT_NE((*d)->config().engine_id, (*e)->config().engine_id);
}

TEST_P(ConnectorE2ETest, DuplicateTransferIdRejected) {
  Make();
  const auto prompt = RandomPrompt(30, 13);
  Collector pc;
  ASSERT_TRUE(p_->Add("p1", Greedy("", prompt, 1), PrefillLeg("xfer-dup"), pc).ok());
  EXPECT_EQ(p_->conn->BeginRequest("p2", PrefillLeg("xfer-dup")).status().code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(pc.WaitFinished("p1"));
  // Still held: still taken.
  EXPECT_EQ(p_->conn->BeginRequest("p3", PrefillLeg("xfer-dup")).status().code(), StatusCode::kAlreadyExists);
  // Bad params.
  EXPECT_EQ(p_->conn->BeginRequest("p4", PrefillLeg("")).status().code(), StatusCode::kInvalidArgument);
  RequestKvParams no_addr = DecodeLeg(*p_, "t");
  no_addr.remote_bootstrap_addr.clear();
  EXPECT_EQ(d_->conn->BeginRequest("d0", no_addr).status().code(), StatusCode::kInvalidArgument);
  // Pulled and freed: the id may be used again.
  Collector dc;
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 3), DecodeLeg(*p_, "xfer-dup"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 60s));
  EXPECT_EQ(dc.Get("d").tokens, ReferenceGreedy(prompt, 3));
  ASSERT_TRUE(p_->BlocksFree());
  auto again = p_->conn->BeginRequest("p5", PrefillLeg("xfer-dup"));
  EXPECT_TRUE(again.ok()) << again.status().ToString();
  p_->conn->CancelRequest("p5");
}

// Junk on the ROUTER port: raw bytes, a frame that is not msgpack, a pull with the wrong block
// size. Each is rejected; the prefiller keeps serving.
TEST_P(ConnectorE2ETest, GarbageOnSideChannel) {
  Make();
  auto map = QueryBootstrap(p_->conn->bootstrap_url(), Deadline::After(5s));
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  const std::string addr = map->at(0).worker_addr.at(0).at(0);
  ASSERT_EQ(addr.rfind("tcp://127.0.0.1:", 0), 0u) << addr;
  const int port = std::stoi(addr.substr(addr.rfind(':') + 1));
  {  // Raw TCP garbage.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    std::string junk(4096, '\xff');
    EXPECT_GT(::write(fd, junk.data(), junk.size()), 0);
    ::close(fd);
  }
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 10000);
  s.connect(addr);
  auto ask = [&](const std::string& bytes) -> StatusOr<XferResponse> {
    s.send(zmq::buffer(bytes), zmq::send_flags::none);
    zmq::message_t m;
    if (!s.recv(m)) return DeadlineExceededError("no reply");
    return DecodeXferResponse(std::string_view(static_cast<const char*>(m.data()), m.size()));
  };
  auto r1 = ask("not msgpack at all");
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_EQ(r1->status, XferStatus::kError);
  EXPECT_GE(p_->conn->GetStats().rejected_messages_total, 1u);
  XferMetadata m;
  m.remote_hostname = "127.0.0.1";
  m.remote_port = 1;
  m.req_blocks["zz"] = ReqBlocks{"xfer-zz", {{0, 1}}};
  m.kv_caches_base_addr = {4096};
  m.block_lens = {12345};
  auto r2 = ask(EncodeXferMetadata(m));
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(r2->status, XferStatus::kError);
  EXPECT_EQ(r2->err_reqs, std::vector<std::string>{"zz"});
  EXPECT_NE(r2->err_msg.find("block size mismatch"), std::string::npos) << r2->err_msg;
  s.close();
  // Still serving.
  const auto prompt = RandomPrompt(20, 14);
  EXPECT_EQ(RunPair("after", prompt, 4).tokens, ReferenceGreedy(prompt, 4));
}

TEST_P(ConnectorE2ETest, BootstrapUnreachableFails) {
  Make();
  RequestKvParams p = DecodeLeg(*p_, "xfer-nobody");
  p.remote_bootstrap_addr = "http://127.0.0.1:1";
  Collector dc;
  const double t0 = NowSeconds();
  ASSERT_TRUE(d_->Add("d", Greedy("", RandomPrompt(20, 15), 4), p, dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 30s));
  EXPECT_LT(NowSeconds() - t0, 10.0);
  const Result r = dc.Get("d");
  EXPECT_EQ(r.reason, FinishReason::kError);
  EXPECT_NE(r.error.message().find("bootstrap server http://127.0.0.1:1"), std::string::npos) << r.error.ToString();
  EXPECT_EQ(d_->conn->GetStats().failed_receives_total, 1u);
}

TEST_P(ConnectorE2ETest, BootstrapUnreachableRecomputes) {
  SideOptions dopt;
  dopt.policy = LoadFailurePolicy::kRecompute;
  Make({}, dopt);
  RequestKvParams p = DecodeLeg(*p_, "xfer-nobody");
  p.remote_bootstrap_addr = "127.0.0.1:1";
  const auto prompt = RandomPrompt(20, 16);
  Collector dc;
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), p, dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 30s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kLength);
  EXPECT_EQ(dc.Get("d").tokens, ReferenceGreedy(prompt, 4));
  EXPECT_EQ(d_->conn->GetStats().failed_receives_total, 1u);
}

// The bootstrap server lists a worker that has since died (between the decoder's /query and its
// pull): the side-channel connect is refused, and the load ends at once under either policy
// instead of waiting out the load timeout (20 s here) while ZMQ retries.
TEST_P(ConnectorE2ETest, DeadWorkerListedByBootstrapEndsTheLoadAtOnce) {
  auto bs = BootstrapServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(bs.ok()) << bs.status().ToString();
  // A port nothing listens on: bound, then closed.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  const std::string dead = "tcp://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  ASSERT_TRUE((*bs)->registry().Register({"engine-dead", 0, 0, 0, dead}).ok());
  for (LoadFailurePolicy policy : {LoadFailurePolicy::kFail, LoadFailurePolicy::kRecompute}) {
    SideOptions dopt;
    dopt.protocol = GetParam();
    dopt.policy = policy;
    d_ = std::make_unique<Side>("d", dopt);
    ASSERT_TRUE(d_->started);
    RequestKvParams p;
    p.do_remote_prefill = true;
    p.transfer_id = "xfer-dead";
    p.remote_bootstrap_addr = "127.0.0.1:" + std::to_string((*bs)->port());
    p.remote_engine_id = "engine-dead";
    const auto prompt = RandomPrompt(20, 21);
    Collector dc;
    const double t0 = NowSeconds();
    ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), p, dc).ok());
    ASSERT_TRUE(dc.WaitFinished("d", 30s));
    EXPECT_LT(NowSeconds() - t0, 10.0);
    const Result r = dc.Get("d");
    if (policy == LoadFailurePolicy::kFail) {
      EXPECT_EQ(r.reason, FinishReason::kError);
      EXPECT_NE(r.error.message().find("refused the side-channel connection"), std::string::npos) << r.error.ToString();
    } else {
      EXPECT_EQ(r.reason, FinishReason::kLength);
      EXPECT_EQ(r.tokens, ReferenceGreedy(prompt, 4));
    }
    EXPECT_EQ(d_->conn->GetStats().failed_receives_total, 1u);
    TearDown();
  }
}

// Different --block-size on the two sides: a clear error, and the prefiller frees at once.
TEST_P(ConnectorE2ETest, BlockSizeMismatchIsAClearError) {
  SideOptions dopt;
  dopt.block_size = 8;
  Make({}, dopt);
  const auto prompt = RandomPrompt(30, 17);
  Collector pc, dc;
  ASSERT_TRUE(p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-bs"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p"));
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-bs"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 30s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kError);
  EXPECT_NE(dc.Get("d").error.message().find("block size mismatch"), std::string::npos) << dc.Get("d").error.ToString();
  EXPECT_TRUE(p_->BlocksFree(5s));
}

// A decoder that loaded other weights of the same shape (the KV blocks are the same size, so
// the block-size check cannot tell): the prefiller refuses the pull, naming both models, and
// frees at once; the same model on both sides passes (every other test).
TEST_P(ConnectorE2ETest, OtherModelOnTheDecoderIsAClearError) {
  const std::string other = ::testing::TempDir() + "/kvf_connector_other_model_" + std::to_string(::getpid());
  std::filesystem::remove_all(other);
  model::MakeTinyOptions mo;
  mo.seed = 12;  // the shared tiny model's shape, other weights
  mo.dtype = model::DType::kF32;
  mo.show_progress = false;
  ASSERT_TRUE(model::MakeTinyModel(other, mo).ok());
  SideOptions dopt;
  dopt.model_dir = other;
  Make({}, dopt);
  EXPECT_NE(p_->eng->model_fingerprint(), d_->eng->model_fingerprint());
  EXPECT_EQ(p_->eng->model_fingerprint().rfind("Qwen2ForCausalLM f32 ", 0), 0u) << p_->eng->model_fingerprint();
  const auto prompt = RandomPrompt(30, 22);
  Collector pc, dc;
  ASSERT_TRUE(p_->Add("p", Greedy("", prompt, 1), PrefillLeg("xfer-model"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p"));
  ASSERT_TRUE(d_->Add("d", Greedy("", prompt, 4), DecodeLeg(*p_, "xfer-model"), dc).ok());
  ASSERT_TRUE(dc.WaitFinished("d", 30s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kError);
  const std::string msg = dc.Get("d").error.message();
  EXPECT_NE(msg.find("model mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find(d_->eng->model_fingerprint()), std::string::npos) << msg;
  EXPECT_TRUE(p_->BlocksFree(5s));
  std::filesystem::remove_all(other);
}

// Shutdown with work outstanding: the pending load fails at once, held blocks are freed,
// and a second Shutdown is a no-op.
TEST_P(ConnectorE2ETest, ShutdownWithWorkOutstanding) {
  Make();
  Collector pc, dc;
  ASSERT_TRUE(p_->Add("p", Greedy("", RandomPrompt(30, 18), 1), PrefillLeg("xfer-held"), pc).ok());
  ASSERT_TRUE(pc.WaitFinished("p"));
  ASSERT_TRUE(d_->Add("d", Greedy("", RandomPrompt(30, 19), 4), DecodeLeg(*p_, "xfer-never"), dc).ok());
  ASSERT_TRUE(WaitFor([&] { return p_->conn->GetStats().waiting_pulls == 1; }));
  const double t0 = NowSeconds();
  d_->conn->Shutdown(Deadline::After(5s));
  d_->conn->Shutdown(Deadline::After(5s));
  ASSERT_TRUE(dc.WaitFinished("d", 10s));
  EXPECT_EQ(dc.Get("d").reason, FinishReason::kError);
  p_->conn->Shutdown(Deadline::After(5s));
  p_->conn->Shutdown(Deadline::After(5s));
  EXPECT_LT(NowSeconds() - t0, 5.0);
  EXPECT_FALSE(p_->conn->Ready());
}

INSTANTIATE_TEST_SUITE_P(Protocols, ConnectorE2ETest,
                         ::testing::Values(transfer::Protocol::kTcp, transfer::Protocol::kShm),
                         [](const auto& info) { return std::string(transfer::ProtocolName(info.param)); });

}  // namespace
}  // namespace kvferry::connector
