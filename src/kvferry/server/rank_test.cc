// Shared::PickRank: which data-parallel rank a request goes to.
#include <gtest/gtest.h>

#include "kvferry/server/frontend_internal.h"

namespace kvferry::server {
namespace {

FrontendOptions Ranks(int n) {
  FrontendOptions o;
  o.served_model_names = {"m"};
  o.ranks.resize(static_cast<size_t>(n));  // PickRank never touches the engines
  return o;
}

http::Request WithRank(const std::string& value) {
  http::Request r;
  r.path = "/v1/completions";
  r.headers.push_back({"X-data-parallel-rank", value});
  return r;
}

TEST(PickRank, HeaderPinsARankAndAnOutOfRangeOneIsRefused) {
  Shared s(Ranks(3));
  EXPECT_EQ(*s.PickRank(WithRank("2"), false), 2);
  EXPECT_EQ(*s.PickRank(WithRank("0"), true), 0);
  for (const char* bad : {"3", "-1", "x", "1x", ""}) {
    StatusOr<int> r = s.PickRank(WithRank(bad), false);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("ranks 0..2"), std::string::npos) << r.status().message();
  }
}

TEST(PickRank, OneRankAcceptsAnyHeader) {
  Shared s(Ranks(1));
  EXPECT_EQ(*s.PickRank(WithRank("7"), false), 0);
  EXPECT_EQ(*s.PickRank(http::Request{}, false), 0);
}

TEST(PickRank, HeaderlessPrefillLegGoesToRankZeroOthersToTheLeastLoaded) {
  Shared s(Ranks(2));
  {
    MutexLock l(s.mu);
    s.rank_load = {3, 1};
  }
  EXPECT_EQ(*s.PickRank(http::Request{}, true), 0);
  EXPECT_EQ(*s.PickRank(http::Request{}, false), 1);
  {
    MutexLock l(s.mu);
    s.rank_load = {0, 5};
  }
  EXPECT_EQ(*s.PickRank(http::Request{}, false), 0);
  // Equal loads: taken in turn.
  {
    MutexLock l(s.mu);
    s.rank_load = {2, 2};
  }
  const int a = *s.PickRank(http::Request{}, false);
  const int b = *s.PickRank(http::Request{}, false);
  EXPECT_NE(a, b);
}

TEST(PickRank, ARankThatIsDownTakesNothingUnpinned) {
  FrontendOptions o = Ranks(2);
  bool rank1_up = false;
  o.ranks[1].up = [&rank1_up] { return rank1_up ? Status::Ok() : UnavailableError("headless instance left"); };
  Shared s(o);
  {
    MutexLock l(s.mu);
    s.rank_load = {5, 0};
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(*s.PickRank(http::Request{}, false), 0);
  EXPECT_EQ(*s.PickRank(WithRank("1"), false), 1);  // pinned: the rank's own error follows at Add
  rank1_up = true;
  EXPECT_EQ(*s.PickRank(http::Request{}, false), 1);
}

}  // namespace
}  // namespace kvferry::server
