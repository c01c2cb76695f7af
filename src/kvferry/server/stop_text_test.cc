#include "kvferry/server/stop_text.h"

#include <gtest/gtest.h>

namespace kvferry::server {
namespace {

TEST(StopMatcher, NoStopsPassesThrough) {
  StopMatcher m({}, false);
  EXPECT_EQ(m.Push("abc"), "abc");
  EXPECT_EQ(m.Flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, HoldsBackAPossiblePrefixAcrossPieces) {
  StopMatcher m({"STOP"}, false);
  EXPECT_EQ(m.Push("hello S"), "hello ");
  EXPECT_EQ(m.Push("T"), "");
  EXPECT_EQ(m.Push("OP tail"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, ReleasesHeldTextWhenItStopsMatching) {
  StopMatcher m({"STOP"}, false);
  EXPECT_EQ(m.Push("ST"), "");
  EXPECT_EQ(m.Push("x"), "STx");
  EXPECT_EQ(m.Push("ST"), "");
  EXPECT_EQ(m.Flush(), "ST");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, IncludeStopAndEarliestMatchWins) {
  StopMatcher m({"world", "lo w"}, true);
  EXPECT_EQ(m.Push("hello world"), "hello w");
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"b", "ab"}, false);
  EXPECT_EQ(n.Push("xxab"), "xx");
}

TEST(StopMatcher, StopInsideOnePiece) {
  StopMatcher m({"\n\n"}, false);
  EXPECT_EQ(m.Push("line one\n"), "line one");
  EXPECT_EQ(m.Push("\nline two"), "");
  EXPECT_TRUE(m.stopped());
}

}  // namespace
}  // namespace kvferry::server
