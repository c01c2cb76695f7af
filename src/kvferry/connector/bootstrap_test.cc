#include <gtest/gtest.h>

#include "kvferry/connector/connector.h"
#include "kvferry/http/http.h"

namespace kvferry::connector {
namespace {

using namespace std::chrono_literals;

TEST(BootstrapTest, RegisterAndQueryOverHttp) {
  auto server = BootstrapServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::string base = "http://127.0.0.1:" + std::to_string((*server)->port());
  (*server)->registry().Expect(1);
  // Never a 200 without workers (vllm-router takes a 200 {} as final): 503 + Retry-After.
  auto empty = QueryBootstrap(base, Deadline::After(5s));
  EXPECT_EQ(empty.status().code(), StatusCode::kUnavailable);
  auto raw = http::Fetch(base + "/query", http::FetchOptions{}, Deadline::After(5s));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->status, 503);
  ASSERT_NE(raw->Find("Retry-After"), nullptr);
  EXPECT_EQ(*raw->Find("Retry-After"), "1");
  ASSERT_TRUE(RegisterWorker(base, {"eng-a", 0, 0, 0, "tcp://10.0.0.2:5001"}, 5s).ok());
  // dp rank 1 (expected) is still missing.
  raw = http::Fetch(base + "/query", http::FetchOptions{}, Deadline::After(5s));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->status, 503);
  ASSERT_TRUE(RegisterWorker(base, {"eng-a", 0, 1, 0, "tcp://10.0.0.2:5002"}, 5s).ok());
  ASSERT_TRUE(RegisterWorker(base, {"eng-b", 1, 0, 0, "tcp://10.0.0.2:5003"}, 5s).ok());
  auto q = http::Fetch(base + "/query", http::FetchOptions{}, Deadline::After(5s));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(
      q->body,
      R"({"0":{"engine_id":"eng-a","worker_addr":{"0":{"0":"tcp://10.0.0.2:5001"},"1":{"0":"tcp://10.0.0.2:5002"}}},)"
      R"("1":{"engine_id":"eng-b","worker_addr":{"0":{"0":"tcp://10.0.0.2:5003"}}}})");
  auto m = QueryBootstrap(base, Deadline::After(5s));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->at(1).engine_id, "eng-b");
  EXPECT_EQ(m->at(0).worker_addr.at(1).at(0), "tcp://10.0.0.2:5002");
  // Duplicate worker and engine-id conflict: 400, not retried.
  double t0 = NowSeconds();
  Status dup = RegisterWorker(base, {"eng-a", 0, 0, 0, "tcp://x:1"}, 5s);
  EXPECT_FALSE(dup.ok());
  EXPECT_LT(NowSeconds() - t0, 2.5);  // retries would add 1 s + 2 s of backoff
  EXPECT_FALSE(RegisterWorker(base, {"eng-z", 0, 2, 0, "tcp://x:1"}, 5s).ok());
  // Bad bodies.
  http::FetchOptions post;
  post.method = "POST";
  for (const char* body :
       {"{}", "[]", "nope", R"({"engine_id":"e","dp_rank":-1,"tp_rank":0,"pp_rank":0,"addr":"tcp://a:1"})",
        R"({"engine_id":"e","dp_rank":0,"tp_rank":0,"pp_rank":0,"addr":"http://a:1"})"}) {
    post.body = body;
    auto r = http::Fetch(base + "/register", post, Deadline::After(5s));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 400) << body;
  }
  auto nf = http::Fetch(base + "/other", http::FetchOptions{}, Deadline::After(5s));
  ASSERT_TRUE(nf.ok());
  EXPECT_EQ(nf->status, 404);
}

// A headless rank that leaves is dropped; it may come back under its engine_id only, and the
// map stays queryable for the other ranks meanwhile.
TEST(BootstrapTest, HeadlessRankLeavesAndRejoins) {
  BootstrapRegistry reg;
  reg.Expect(0);
  reg.Expect(1);
  ASSERT_TRUE(reg.Register({"eng-0", 0, 0, 0, "tcp://10.0.0.2:5001"}).ok());
  ASSERT_TRUE(reg.Register({"eng-1", 1, 0, 0, "tcp://10.0.0.3:5001"}).ok());
  EXPECT_TRUE(reg.Complete());
  // Registering the same worker again: Register refuses (as vLLM), Adopt accepts it unchanged.
  EXPECT_FALSE(reg.Register({"eng-1", 1, 0, 0, "tcp://10.0.0.3:5001"}).ok());
  EXPECT_TRUE(reg.Adopt({"eng-1", 1, 0, 0, "tcp://10.0.0.3:5001"}).ok());
  EXPECT_FALSE(reg.Adopt({"eng-1", 1, 0, 0, "tcp://10.0.0.3:9999"}).ok());
  reg.Deregister(1);
  EXPECT_EQ(reg.Snapshot().count(1), 0u);
  EXPECT_TRUE(reg.Complete());  // rank 0 goes on being served
  Status other = reg.Register({"eng-x", 1, 0, 0, "tcp://10.0.0.3:5002"});
  EXPECT_EQ(other.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.message().find("same engine_id"), std::string::npos) << other.ToString();
  ASSERT_TRUE(reg.Register({"eng-1", 1, 0, 0, "tcp://10.0.0.3:5002"}).ok());
  EXPECT_EQ(reg.Snapshot().at(1).worker_addr.at(0).at(0), "tcp://10.0.0.3:5002");
  reg.Deregister(7);  // unknown: no-op
}

TEST(BootstrapTest, RegisterRetriesWithBackoffThenFails) {
  double t0 = NowSeconds();
  Status s = RegisterWorker("http://127.0.0.1:1", {"e", 0, 0, 0, "tcp://a:1"}, 1s, 3, 50ms);
  double took = NowSeconds() - t0;
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_GE(took, 0.14);  // 50 ms + 100 ms of backoff
  EXPECT_LT(took, 5.0);
}

TEST(BootstrapTest, MapCodecRejectsJunk) {
  EXPECT_FALSE(DecodeBootstrapMap("[]").ok());
  EXPECT_FALSE(DecodeBootstrapMap(R"({"x":{"engine_id":"e","worker_addr":{}}})").ok());
  EXPECT_FALSE(DecodeBootstrapMap(R"({"0":{"worker_addr":{}}})").ok());
  EXPECT_FALSE(DecodeBootstrapMap(R"({"0":{"engine_id":"e","worker_addr":{"0":{"0":5}}}})").ok());
  EXPECT_TRUE(DecodeBootstrapMap("{}").ok());
}

}  // namespace
}  // namespace kvferry::connector
