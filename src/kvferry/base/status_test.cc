#include <gtest/gtest.h>

#include <cerrno>
#include <memory>

#include "kvferry/base/base.h"

namespace kvferry {
namespace {

TEST(StatusTest, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(InvalidArgumentError("").code() == StatusCode::kInvalidArgument);
}

TEST(StatusTest, CarriesCodeMessageAndContext) {
  Status s = UnavailableError("peer gone").WithContext("write 10.0.0.1:5");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.ToString(), "UNAVAILABLE: write 10.0.0.1:5: peer gone");
  EXPECT_TRUE(Status().WithContext("x").ok());
}

TEST(StatusTest, ErrnoMapping) {
  EXPECT_EQ(ErrnoToStatus(ECONNREFUSED, "c").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToStatus(ECONNRESET, "c").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToStatus(ETIMEDOUT, "c").code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ErrnoToStatus(EADDRINUSE, "c").code(), StatusCode::kAlreadyExists);
}

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd");
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  KVF_ASSIGN_OR_RETURN(int h, Half(x));
  KVF_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  KVF_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(StatusOrTest, ValueAndErrorPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(3).ok());
}

TEST(StatusOrTest, MoveOnlyValueAndOkStatusIsAnError) {
  StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> v = std::move(p).value();
  EXPECT_EQ(*v, 7);
  StatusOr<int> bad = Status::Ok();
  EXPECT_EQ(bad.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace kvferry
