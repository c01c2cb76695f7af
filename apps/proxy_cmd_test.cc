// The command line of `kvferry proxy`, parsed by the real CLI11 options.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>

#include "apps/proxy_cmd.h"

namespace kvferry::apps {
int& ExitCode() {
  static int code = 0;
  return code;
}

namespace {

StatusOr<proxy::ProxyOptions> Parse(std::vector<std::string> argv) {
  CLI::App app;
  ProxyCliArgs args;
  AddProxyOptions(app, &args);
  std::vector<const char*> raw{"proxy"};
  for (const std::string& s : argv) raw.push_back(s.c_str());
  try {
    app.parse(static_cast<int>(raw.size()), raw.data());
  } catch (const CLI::ParseError& e) {
    return InvalidArgumentError(e.what());
  }
  return ToProxyOptions(args);
}

TEST(ProxyCommandTest, PrefillTakesAUrlAndAnOptionalBootstrapPort) {
  auto o = Parse({"--prefill", "http://a:8010", "--prefill", "http://b:8011", "9000", "--decode", "http://c:8020",
                  "--decode", "http://d:8021", "--port", "8100", "--host", "0.0.0.0"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  ASSERT_EQ(o->prefill.size(), 2u);
  EXPECT_EQ(o->prefill[0].url, "http://a:8010");
  EXPECT_EQ(o->prefill[0].bootstrap_port, 8998);
  EXPECT_EQ(o->prefill[1].url, "http://b:8011");
  EXPECT_EQ(o->prefill[1].bootstrap_port, 9000);
  EXPECT_EQ(o->decode, (std::vector<std::string>{"http://c:8020", "http://d:8021"}));
  EXPECT_EQ(o->port, 8100);
  EXPECT_EQ(o->host, "0.0.0.0");
  // Port first, then a URL-only prefiller last.
  auto o2 = Parse({"--prefill", "http://a:8010", "8999", "--decode", "http://c:8020", "--prefill", "http://b:8011"});
  ASSERT_TRUE(o2.ok()) << o2.status().ToString();
  ASSERT_EQ(o2->prefill.size(), 2u);
  EXPECT_EQ(o2->prefill[0].bootstrap_port, 8999);
  EXPECT_EQ(o2->prefill[1].bootstrap_port, 8998);
  EXPECT_EQ(o2->port, 8000);
  EXPECT_EQ(o2->host, "127.0.0.1");
  EXPECT_FALSE(Parse({"--decode", "http://c:8020"}).ok());                                    // no prefiller
  EXPECT_FALSE(Parse({"--prefill", "http://a:1", "--decode"}).ok());                          // no decoder URL
  EXPECT_FALSE(Parse({"--prefill", "http://a:1", "x", "y", "--decode", "http://c:2"}).ok());  // three values
  EXPECT_FALSE(Parse({"--prefill", "http://a:1", "99999", "--decode", "http://c:2"}).ok());   // bad port
}

}  // namespace
}  // namespace kvferry::apps
