#include "kvferry/server/metrics.h"

#include <gtest/gtest.h>

namespace kvferry::server {
namespace {

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(MergeExpositions, OneHeaderPerFamilyAndEveryPagesSamplesGrouped) {
  const std::string rank =
      "# HELP a:x_total Things.\n# TYPE a:x_total counter\na:x_total{model_name=\"m\"} 3\n"
      "# HELP a:plain Plain.\n# TYPE a:plain gauge\na:plain 7\n"
      "# HELP a:h Hist.\n# TYPE a:h histogram\na:h_bucket{model_name=\"m\",le=\"+Inf\"} 2\na:h_sum{} 1.5\n";
  const std::string merged = MergeExpositions({{"0", rank}, {"1", rank}, {"", rank}}, "engine");
  EXPECT_EQ(Count(merged, "# TYPE a:x_total counter\n"), 1u);
  EXPECT_EQ(Count(merged, "# HELP a:plain Plain.\n"), 1u);
  // Labels are added in front of the page's own; a sample without labels gets a label set.
  EXPECT_NE(merged.find("a:x_total{engine=\"0\",model_name=\"m\"} 3\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:x_total{engine=\"1\",model_name=\"m\"} 3\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:x_total{model_name=\"m\"} 3\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:plain{engine=\"1\"} 7\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:plain 7\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:h_bucket{engine=\"0\",model_name=\"m\",le=\"+Inf\"} 2\n"), std::string::npos) << merged;
  EXPECT_NE(merged.find("a:h_sum{engine=\"1\"} 1.5\n"), std::string::npos) << merged;
  // Each family's samples follow its header, before the next family starts.
  const size_t plain = merged.find("# HELP a:plain");
  EXPECT_LT(merged.rfind("a:x_total{"), plain);
  EXPECT_GT(merged.find("a:plain{engine=\"0\"}"), plain);
  EXPECT_LT(merged.rfind("a:plain"), merged.find("# HELP a:h "));
}

TEST(AddEngineStats, SumsRanks) {
  engine::EngineStats a, b, t;
  a.num_running = 2;
  a.blocks_used = 5;
  a.generation_tokens_total = 10;
  b.num_running = 1;
  b.blocks_used = 1;
  b.generation_tokens_total = 4;
  AddEngineStats(a, &t);
  AddEngineStats(b, &t);
  EXPECT_EQ(t.num_running, 3);
  EXPECT_EQ(t.blocks_used, 6);
  EXPECT_EQ(t.generation_tokens_total, 14u);
}

}  // namespace
}  // namespace kvferry::server
