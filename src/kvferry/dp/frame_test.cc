// The channel's codec and link: round trips, and malformed bytes from a peer end in clear
// errors (never a crash).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>

#include "kvferry/dp/frame.h"
#include "kvferry/dp/link.h"

namespace kvferry::dp {
namespace {

template <typename T>
T RoundTrip(const Message& m) {
  StatusOr<Message> back = DecodeMessage(EncodeMessage(m));
  EXPECT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(std::holds_alternative<T>(*back));
  return std::get<T>(*back);
}

TEST(Frame, AddRoundTrip) {
  Add a;
  a.dp_rank = 3;
  a.id = "cmpl-1";
  a.prompt = {1, 2, 151643};
  a.sampling.temperature = 0;
  a.sampling.seed = 18446744073709551615ull;
  a.sampling.max_tokens = 7;
  a.sampling.stop_token_ids = {5};
  a.sampling.logprobs = 2;
  a.role = engine::KvRole::kHoldForRemote;
  connector::RequestKvParams kv;
  kv.do_remote_decode = true;
  kv.transfer_id = "xfer-1";
  kv.remote_dp_rank = 1;
  a.kv = kv;
  Add b = RoundTrip<Add>(a);
  EXPECT_EQ(b.dp_rank, 3);
  EXPECT_EQ(b.id, "cmpl-1");
  EXPECT_EQ(b.prompt, a.prompt);
  EXPECT_EQ(b.sampling.temperature, 0);
  EXPECT_EQ(b.sampling.seed, a.sampling.seed);
  EXPECT_EQ(b.sampling.max_tokens, 7);
  EXPECT_EQ(b.sampling.stop_token_ids, a.sampling.stop_token_ids);
  EXPECT_EQ(b.sampling.logprobs, 2);
  EXPECT_EQ(b.role, engine::KvRole::kHoldForRemote);
  ASSERT_TRUE(b.kv.has_value());
  EXPECT_TRUE(b.kv->do_remote_decode);
  EXPECT_EQ(b.kv->transfer_id, "xfer-1");
  EXPECT_EQ(b.kv->remote_dp_rank, 1);
}

TEST(Frame, OutputRoundTripKeepsLogprobsExactly) {
  OutputMsg m;
  m.dp_rank = 1;
  m.out.request_id = "r";
  m.out.new_tokens = {9, 10};
  m.out.logprobs = {{9, -0.1234567f, {{9, -0.1234567f}, {4, -3.5f}}}, {10, -1e-7f, {}}};
  m.out.finished = true;
  m.out.finish_reason = engine::FinishReason::kError;
  m.out.error = UnavailableError("gone");
  m.out.num_prompt_tokens = 12;
  m.out.num_cached_tokens = 8;
  OutputMsg b = RoundTrip<OutputMsg>(m);
  EXPECT_EQ(b.out.new_tokens, m.out.new_tokens);
  ASSERT_EQ(b.out.logprobs.size(), 2u);
  EXPECT_EQ(b.out.logprobs[0].logprob, m.out.logprobs[0].logprob);  // floats survive JSON exactly
  EXPECT_EQ(b.out.logprobs[0].top, m.out.logprobs[0].top);
  EXPECT_EQ(b.out.logprobs[1].logprob, m.out.logprobs[1].logprob);
  EXPECT_EQ(b.out.finish_reason, engine::FinishReason::kError);
  EXPECT_EQ(b.out.error.code(), StatusCode::kUnavailable);
  EXPECT_EQ(b.out.error.message(), "gone");
  EXPECT_EQ(b.out.num_cached_tokens, 8);
}

TEST(Frame, HelloStatsRefuseRoundTrip) {
  Hello h;
  h.instance = "10.0.0.2";
  h.ranks.push_back({1, "eng-1", "tcp://10.0.0.2:5555", 1000, 2048, 16, 1 << 20, 4096, 64});
  Hello h2 = RoundTrip<Hello>(h);
  ASSERT_EQ(h2.ranks.size(), 1u);
  EXPECT_EQ(h2.ranks[0].engine_id, "eng-1");
  EXPECT_EQ(h2.ranks[0].worker_addr, "tcp://10.0.0.2:5555");
  EXPECT_EQ(h2.ranks[0].blocks_total, 64);
  Stats s;
  s.dp_rank = 1;
  s.engine.blocks_used = 5;
  s.engine.steps_total = 1ull << 40;
  s.ready = true;
  s.metrics = "a 1\n";
  Stats s2 = RoundTrip<Stats>(s);
  EXPECT_EQ(s2.engine.blocks_used, 5);
  EXPECT_EQ(s2.engine.steps_total, 1ull << 40);
  EXPECT_TRUE(s2.ready);
  Refuse r2 = RoundTrip<Refuse>(Refuse{"no", true});
  EXPECT_TRUE(r2.final);
  Rejected j;
  j.dp_rank = 2;
  j.kv.transfer_id = "x";
  j.why = ResourceExhaustedError("full");
  Rejected j2 = RoundTrip<Rejected>(j);
  EXPECT_EQ(j2.why.code(), StatusCode::kResourceExhausted);
  RoundTrip<Ping>(Ping{});
  RoundTrip<Welcome>(Welcome{});
}

TEST(Frame, MalformedMessagesAreClearErrors) {
  struct Case {
    const char* payload;
    const char* expect;
  } cases[] = {
      {"not json", "not valid JSON"},
      {"[1,2]", "not a JSON object"},
      {"{}", "no message type"},
      {R"({"t":5})", "no message type"},
      {R"({"t":"explode"})", "unknown message type 'explode'"},
      {R"({"t":"add","dp_rank":1,"id":"a","sampling":{}})", "'prompt' is empty"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":"hi","sampling":{}})", "'prompt' must be a list"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1,"x"],"sampling":{}})", "'prompt' must be a list"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[99999999999],"sampling":{}})", "32-bit"},
      {R"({"t":"add","dp_rank":-1,"id":"a","prompt":[1],"sampling":{}})", "'dp_rank' = -1 is out of range"},
      {R"({"t":"add","dp_rank":1,"prompt":[1],"sampling":{}})", "'id' is missing"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1]})", "'sampling' is missing"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1],"sampling":{"max_tokens":0}})", "'max_tokens' = 0"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1],"sampling":{"temperature":"hot"}})",
       "'temperature' must be a number"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1],"sampling":{},"role":9})", "'role' = 9"},
      {R"({"t":"add","dp_rank":1,"id":"a","prompt":[1],"sampling":{},"kv":[]})", "'kv' must be an object"},
      {R"({"t":"out","dp_rank":1,"id":"a","tokens":[1],"logprobs":[{"token":1,"top":[[1]]}]})",
       "[token, logprob] pairs"},
      {R"({"t":"out","dp_rank":1,"id":"a","tokens":[1,2],"logprobs":[{"token":1}]})", "one entry per token"},
      {R"({"t":"out","dp_rank":1,"id":"a","error":{"msg":"x"}})", "'code' is missing"},
      {R"({"t":"hello","version":1,"ranks":[]})", "1 to 1024 ranks"},
      {R"({"t":"hello","version":1,"ranks":[{"dp_rank":1}]})", "'vocab_size' is missing"},
      {R"({"t":"stats","dp_rank":1,"engine":{"blocks_used":-3}})", "'blocks_used' = -3"},
      {R"({"t":"refuse"})", "'message' is missing"},
  };
  for (const Case& c : cases) {
    StatusOr<Message> m = DecodeMessage(c.payload);
    ASSERT_FALSE(m.ok()) << c.payload;
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << c.payload;
    EXPECT_NE(m.status().message().find(c.expect), std::string::npos) << c.payload << " → " << m.status().message();
  }
}

TEST(Frame, UnknownStatusCodesBecomeUnknown) {
  StatusOr<Message> m =
      DecodeMessage(R"({"t":"out","dp_rank":0,"id":"a","finished":true,"reason":4,"error":{"code":999,"msg":"m"}})");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(std::get<OutputMsg>(*m).out.error.code(), StatusCode::kUnknown);
  // An error finish without a status still carries one.
  m = DecodeMessage(R"({"t":"out","dp_rank":0,"id":"a","finished":true,"reason":4})");
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(std::get<OutputMsg>(*m).out.error.ok());
}

TEST(FrameReader, SplitsAndRejectsBadLengths) {
  FrameReader r(100);
  const std::string a = Frame("{\"t\":\"ping\"}"), b = Frame("xyz");
  const std::string all = a + b;
  for (char ch : all) r.Feed(std::string_view(&ch, 1));  // byte by byte
  auto p = r.Next();
  ASSERT_TRUE(p.ok() && p->has_value());
  EXPECT_EQ(**p, "{\"t\":\"ping\"}");
  p = r.Next();
  ASSERT_TRUE(p.ok() && p->has_value());
  EXPECT_EQ(**p, "xyz");
  p = r.Next();
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());

  FrameReader zero;
  zero.Feed(std::string("\0\0\0\0", 4));
  EXPECT_NE(zero.Next().status().message().find("length 0"), std::string::npos);
  FrameReader big(100);
  big.Feed(std::string("\0\0\1\0", 4));
  EXPECT_NE(big.Next().status().message().find("exceeds the 100 byte limit"), std::string::npos);
}

// A link on one end of a socketpair; the test writes raw bytes into the other end.
struct LinkFixture {
  int raw = -1;
  std::unique_ptr<Link> link;
  std::promise<Status> closed;
  std::atomic<int> messages{0};
  explicit LinkFixture(Duration idle = std::chrono::seconds(5)) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    raw = sv[1];
    LinkOptions o;
    o.peer = "test-peer";
    o.idle_timeout = idle;
    o.ping_interval = std::chrono::milliseconds(50);
    o.max_frame_bytes = 1024;
    link = Link::Start(
        sv[0], o, [this](const Message&) { ++messages; }, [this](const Status& why) { closed.set_value(why); });
  }
  ~LinkFixture() {
    link.reset();
    ::close(raw);
  }
  void Write(const std::string& bytes) {
    ASSERT_EQ(::write(raw, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }
  Status WaitClosed() {
    auto f = closed.get_future();
    EXPECT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    return f.get();
  }
};

TEST(Link, GarbageClosesTheLinkWithAClearError) {
  LinkFixture f;
  f.Write(Frame(EncodeMessage(Ping{})));
  f.Write(Frame("{\"t\":\"add\",\"dp_rank\":\"one\"}"));
  Status why = f.WaitClosed();
  EXPECT_EQ(why.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(why.message().find("'dp_rank' must be an integer"), std::string::npos) << why.ToString();
  EXPECT_NE(why.message().find("test-peer"), std::string::npos) << why.ToString();
  EXPECT_EQ(f.messages.load(), 1);
  EXPECT_EQ(f.link->Send(Ping{}).code(), StatusCode::kUnavailable);
}

TEST(Link, OversizedFrameClosesTheLink) {
  LinkFixture f;
  f.Write(std::string("\x7f\xff\xff\xff", 4));
  Status why = f.WaitClosed();
  EXPECT_NE(why.message().find("exceeds the 1024 byte limit"), std::string::npos) << why.ToString();
}

TEST(Link, PeerHangUpAndSilenceAreNoticed) {
  {
    LinkFixture f;
    ::shutdown(f.raw, SHUT_RDWR);
    Status why = f.WaitClosed();
    EXPECT_EQ(why.code(), StatusCode::kUnavailable);
    EXPECT_NE(why.message().find("closed the channel"), std::string::npos) << why.ToString();
  }
  {
    LinkFixture f(std::chrono::milliseconds(300));  // the raw end never writes
    Status why = f.WaitClosed();
    EXPECT_EQ(why.code(), StatusCode::kDeadlineExceeded) << why.ToString();
  }
}

TEST(Link, SendsPingsWhenQuiet) {
  LinkFixture f;
  char buf[256];
  const ssize_t n = ::read(f.raw, buf, sizeof(buf));  // a ping within ping_interval
  ASSERT_GT(n, 4);
  FrameReader r;
  r.Feed(std::string_view(buf, static_cast<size_t>(n)));
  auto p = r.Next();
  ASSERT_TRUE(p.ok() && p->has_value());
  StatusOr<Message> m = DecodeMessage(**p);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(std::holds_alternative<Ping>(*m));
}

}  // namespace
}  // namespace kvferry::dp
