// The cohort runner on its own, with fake per-case functions: isolation of a throwing case,
// shards that partition the input list, resume that keeps what is done, exit codes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "test_helpers.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/app/cohort.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;

using test::slurp;

class Cohort : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("hemexp-cohort-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "in");
    for (int i = 0; i < 7; ++i) std::ofstream(root_ / "in" / ("scan" + std::to_string(i) + ".nii.gz")) << i;
    options_.inputs = {(root_ / "in").string()};
    options_.output_dir = (root_ / "out").string();
    options_.progress = false;
  }
  void TearDown() override { fs::remove_all(root_); }

  // A fake analysis: writes the case's mask file, fails scan3 with an exception.
  CaseFunction fake(std::vector<std::string>* called) {
    return [called](const CaseInput& c, const fs::path& dir, spdlog::logger&) {
      if (called) called->push_back(c.id);
      if (ends_with(c.id, "_scan3")) throw std::runtime_error("scan3 is broken\nwith a second line");
      fs::create_directories(dir);
      std::ofstream(dir / CaseFiles::kMask) << c.id;
      CaseResult r;
      r.case_id = c.id;
      r.input_path = c.path.string();
      r.seconds = 1.0;
      r.write(dir / CaseFiles::kResult);
      return r;
    };
  }

  int run(const CohortOptions& o, const CaseFunction& f) {
    CohortRunner cohort(o, {"hemexp", "test"});
    if (const int code = cohort.prepare(); code != kExitOk) return code;
    return cohort.run(f, {{"device", "cpu"}});
  }

  fs::path root_;
  CohortOptions options_;
};

TEST_F(Cohort, AThrowingCaseIsIsolated) {
  std::vector<std::string> called;
  EXPECT_EQ(run(options_, fake(&called)), kExitCaseFailed);
  EXPECT_EQ(called.size(), 7u);  // every case was tried after the failure
  const CsvTable t = parse_csv(slurp(root_ / "out/results.csv"));
  ASSERT_EQ(t.rows.size(), 7u);
  const auto records = t.records();
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i].at("case_id"), "in_scan" + std::to_string(i));  // input order
    EXPECT_EQ(records[i].at("status"), i == 3 ? "failed" : "ok");
  }
  EXPECT_EQ(records[3].at("error"), "scan3 is broken");  // one line
  const auto run_json = nlohmann::json::parse(slurp(root_ / "out/run.json"));
  EXPECT_EQ(run_json["cases"], nlohmann::json({{"total", 7}, {"ok", 6}, {"failed", 1}, {"skipped", 0}}));
  EXPECT_EQ(run_json["device"], "cpu");  // the caller's fields beside the runner's
  EXPECT_EQ(run_json["argv"], nlohmann::json({"hemexp", "test"}));
  EXPECT_NE(slurp(root_ / "out/hemexp.log").find("in_scan3: failed: scan3 is broken"), std::string::npos);
}

TEST_F(Cohort, ShardsPartitionTheInputList) {
  std::multiset<std::string> seen;
  for (int k = 1; k <= 3; ++k) {
    CohortOptions o = options_;
    o.shard_index = k;
    o.shard_count = 3;
    std::vector<std::string> called;
    run(o, fake(&called));
    const std::string tag = std::to_string(k) + "-of-3";
    const CsvTable t = parse_csv(slurp(root_ / ("out/results-" + tag + ".csv")));
    ASSERT_EQ(t.rows.size(), called.size());
    for (size_t i = 0; i < called.size(); ++i) {
      EXPECT_EQ(t.rows[i][0], called[i]);
      EXPECT_EQ(called[i], "in_scan" + std::to_string(k - 1 + 3 * int(i)));  // K, K+N, K+2N, ...
      seen.insert(called[i]);
    }
    EXPECT_TRUE(fs::exists(root_ / ("out/run-" + tag + ".json")));
    EXPECT_TRUE(fs::exists(root_ / ("out/hemexp-" + tag + ".log")));
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 7u);  // each case exactly once
  EXPECT_FALSE(fs::exists(root_ / "out/results.csv"));
}

TEST_F(Cohort, ResumeKeepsWhatIsDoneAndRetriesTheRest) {
  EXPECT_EQ(run(options_, fake(nullptr)), kExitCaseFailed);
  EXPECT_EQ(run(options_, fake(nullptr)), kExitUsage);  // an earlier run's results are not mixed in silently
  // A case whose mask went missing, and one whose result.json is cut short, are done again.
  fs::remove(root_ / "out/cases/in_scan1" / CaseFiles::kMask);
  const std::string text = slurp(root_ / "out/cases/in_scan5/result.json");
  std::ofstream(root_ / "out/cases/in_scan5/result.json", std::ios::trunc) << text.substr(0, text.size() / 2);
  CohortOptions o = options_;
  o.resume = true;
  std::vector<std::string> called;
  EXPECT_EQ(run(o, fake(&called)), kExitCaseFailed);
  EXPECT_EQ(called, (std::vector<std::string>{"in_scan1", "in_scan3", "in_scan5"}));
  const auto records = parse_csv(slurp(root_ / "out/results.csv")).records();
  ASSERT_EQ(records.size(), 7u);
  for (size_t i = 0; i < 7; ++i)
    EXPECT_EQ(records[i].at("status"), i == 3 ? "failed" : (i == 1 || i == 5) ? "ok" : "skipped") << i;
  EXPECT_EQ(records[0].at("seconds"), "1.00");  // the kept row is the previous result's

  // A case given with another path under the same id is not "done".
  fs::rename(root_ / "in", root_ / "moved");
  o.inputs = {(root_ / "moved").string()};
  called.clear();
  // The ids come from the folder name: "moved_scan0"... all new, so all run.
  EXPECT_EQ(run(o, fake(&called)), kExitCaseFailed);
  EXPECT_EQ(called.size(), 7u);

  CohortOptions overwrite = options_;
  overwrite.inputs = o.inputs;
  overwrite.overwrite = true;
  called.clear();
  EXPECT_EQ(run(overwrite, fake(&called)), kExitCaseFailed);
  EXPECT_EQ(called.size(), 7u);
}

TEST_F(Cohort, SetupExitCodes) {
  CohortOptions o = options_;
  std::ofstream(root_ / "a-file") << "x";
  o.output_dir = (root_ / "a-file/out").string();
  EXPECT_EQ(run(o, fake(nullptr)), kExitSetup);
  o = options_;
  fs::create_directories(root_ / "empty");
  o.inputs = {(root_ / "empty").string()};
  EXPECT_EQ(run(o, fake(nullptr)), kExitUsage);
  o = options_;
  std::ofstream(root_ / "list.txt") << (root_ / "in/scan0.nii.gz").string() << "\n" << (root_ / "nope.nii.gz").string() << "\n";
  o.inputs = {(root_ / "list.txt").string()};
  EXPECT_EQ(run(o, fake(nullptr)), kExitUsage);  // a list naming a missing file (today: the whole run stops)
}

}  // namespace
}  // namespace hemexp
