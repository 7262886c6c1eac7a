// The cohort runner on its own, with fake per-case functions: isolation of a throwing case,
// shards that partition the input list, resume that keeps what is done, exit codes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <set>

#include "test_helpers.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/app/cohort.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"

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

  // What a fake analysis leaves: the case's mask file and an ok result.json with its fingerprint.
  static CaseResult finish(const CaseInput& c, const fs::path& dir) {
    fs::create_directories(dir);
    std::ofstream(dir / CaseFiles::kMask) << c.id;
    CaseResult r;
    r.case_id = c.id;
    r.input_path = c.path.string();
    r.fingerprint = c.fingerprint;
    r.seconds = 1.0;
    r.write(dir / CaseFiles::kResult);
    return r;
  }

  // A fake analysis: writes the case's mask file, fails scan3 with an exception.
  CaseFunction fake(std::vector<std::string>* called) {
    return [called](const CaseInput& c, const fs::path& dir, spdlog::logger&) {
      if (called) called->push_back(c.id);
      if (ends_with(c.id, "_scan3")) throw std::runtime_error("scan3 is broken\nwith a second line");
      return finish(c, dir);
    };
  }

  int run(const CohortOptions& o, const CaseFunction& f, const nlohmann::json& run_info = {{"device", "cpu"}}) {
    CohortRunner cohort(o, {"hemexp", "test"});
    if (const int code = cohort.prepare(); code != kExitOk) return code;
    return cohort.run(f, run_info);
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

// The shards of a job array start together on one OUTDIR: each one's setup removes what a killed
// run of that shard was writing, and nothing another shard may be writing now (its folder probe
// included: a shared probe name once failed shard 2 with "not writable" at start-up).
TEST_F(Cohort, AShardCleansUpOnlyItsOwnTemporaries) {
  fs::create_directories(root_ / "out");
  // (stem, extension) of the folder probe, the results table and run.json
  const std::vector<std::pair<std::string, std::string>> names{{".hemexp-write-test", ""}, {"results", ".csv"}, {"run", ".json"}};
  const auto temporary = [&](int k, const std::pair<std::string, std::string>& name) {
    const std::string file = name.first + "-" + std::to_string(k) + "-of-2" + name.second;
    return root_ / "out" / (".tmp-999999-" + std::to_string(k) + "-" + file);
  };
  for (int k : {1, 2})
    for (const auto& n : names) std::ofstream(temporary(k, n)) << "being written";
  CohortOptions o = options_;
  o.shard_index = 1;
  o.shard_count = 2;
  EXPECT_EQ(run(o, fake(nullptr)), kExitOk);  // scans 0, 2, 4, 6 (scan3, which fails, is shard 2's)
  for (const auto& n : names) {
    EXPECT_FALSE(fs::exists(temporary(1, n))) << n.first;  // this shard's leftovers
    EXPECT_TRUE(fs::exists(temporary(2, n))) << n.first;   // the other shard's, untouched
  }

  // And for real: two shards setting up at the same moment, again and again.
  std::atomic<int> refused{0};
  std::vector<std::thread> shards;
  for (int k : {1, 2})
    shards.emplace_back([&, k] {
      CohortOptions s = options_;
      s.shard_index = k;
      s.shard_count = 2;
      s.overwrite = true;
      for (int i = 0; i < 300; ++i)
        if (CohortRunner(s, {"hemexp", "test"}).prepare() != kExitOk) ++refused;
    });
  for (std::thread& t : shards) t.join();
  EXPECT_EQ(refused.load(), 0);
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

TEST_F(Cohort, ResumeRedoesCasesWhoseInputModelOrOptionsChanged) {
  const nlohmann::json info = {{"models", {{"segmentation", {{"sha256", "aaa"}}}}},
                               {"result_options", {{"series_uid", ""}, {"qc", true}}}};
  EXPECT_EQ(run(options_, fake(nullptr), info), kExitCaseFailed);
  const nlohmann::json fp = nlohmann::json::parse(slurp(root_ / "out/cases/in_scan0/result.json"))["fingerprint"];
  EXPECT_EQ(fp["input"].get<std::string>().size(), 64u);
  EXPECT_EQ(fp["models"], nlohmann::json({{"segmentation", "aaa"}}));
  CohortOptions o = options_;
  o.resume = true;
  std::vector<std::string> called;
  // Same content, rewritten with the same bytes but a new modification time: done again (the
  // fingerprint is cheap, not clairvoyant); another content of the same size: done again.
  fs::last_write_time(root_ / "in/scan2.nii.gz", fs::last_write_time(root_ / "in/scan2.nii.gz") + std::chrono::seconds(5));
  std::ofstream(root_ / "in/scan4.nii.gz", std::ios::trunc) << "X";
  EXPECT_EQ(run(o, fake(&called), info), kExitCaseFailed);
  EXPECT_EQ(called, (std::vector<std::string>{"in_scan2", "in_scan3", "in_scan4"}));
  const std::string log = slurp(root_ / "out/hemexp.log");
  EXPECT_NE(log.find("in_scan4: done again: its input changed"), std::string::npos) << log;
  // Another model, or another option that changes results: everything again, and why.
  called.clear();
  nlohmann::json other = info;
  other["models"]["segmentation"]["sha256"] = "bbb";
  EXPECT_EQ(run(o, fake(&called), other), kExitCaseFailed);
  EXPECT_EQ(called.size(), 7u);
  EXPECT_NE(slurp(root_ / "out/hemexp.log").find("in_scan0: done again: the segmentation model changed"), std::string::npos);
  called.clear();
  other["result_options"]["series_uid"] = "1.2.3";
  EXPECT_EQ(run(o, fake(&called), other), kExitCaseFailed);
  EXPECT_EQ(called.size(), 7u);
  EXPECT_NE(slurp(root_ / "out/hemexp.log").find("in_scan0: done again: option series_uid changed (\"\" -> \"1.2.3\")"),
            std::string::npos);
  // Unchanged: only the failing case runs again.
  called.clear();
  EXPECT_EQ(run(o, fake(&called), other), kExitCaseFailed);
  EXPECT_EQ(called, (std::vector<std::string>{"in_scan3"}));
  // A result written before fingerprints existed is done again, and the log says why.
  CaseResult old = *CaseResult::read(root_ / "out/cases/in_scan6/result.json");
  old.fingerprint = nullptr;
  old.write(root_ / "out/cases/in_scan6/result.json");
  called.clear();
  EXPECT_EQ(run(o, fake(&called), other), kExitCaseFailed);
  EXPECT_EQ(called, (std::vector<std::string>{"in_scan3", "in_scan6"}));
  EXPECT_NE(slurp(root_ / "out/hemexp.log").find("in_scan6: done again: its result has no fingerprint"), std::string::npos);
}

TEST_F(Cohort, AListsColumnsJoinTheResultsTable) {
  std::ofstream(root_ / "list.csv") << "path,case_id,age,status\nin/scan0.nii.gz,P0,71,inpatient\nin/scan1.nii.gz,P1,64,\n";
  CohortOptions o = options_;
  o.inputs = {(root_ / "list.csv").string()};
  EXPECT_EQ(run(o, fake(nullptr)), kExitOk);
  const CsvTable t = parse_csv(slurp(root_ / "out/results.csv"));
  std::vector<std::string> expected = CaseResult::csv_columns();
  expected.push_back("age");
  expected.push_back("list_status");  // named like a hemexp column
  EXPECT_EQ(t.header, expected);
  const auto rows = t.records();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("case_id"), "P0");
  EXPECT_EQ(rows[0].at("status"), "ok");
  EXPECT_EQ(rows[0].at("age"), "71");
  EXPECT_EQ(rows[0].at("list_status"), "inpatient");
  EXPECT_EQ(rows[1].at("age"), "64");
}

TEST_F(Cohort, ReadAheadReadsTheNextCaseWhileOneIsAnalysed) {
  std::mutex mutex;
  std::set<std::string> read;
  int analysed_with_next_read = 0, without_future = 0;
  const CaseReader reader = [&](const CaseInput& c, spdlog::logger&) {
    if (ends_with(c.id, "_scan3")) throw std::runtime_error("scan3 cannot be read");
    std::lock_guard<std::mutex> lock(mutex);
    read.insert(c.id);
    return ReadCase{};
  };
  const StagedCaseFunction analyse = [&](const CaseInput& c, const fs::path& dir, spdlog::logger&,
                                         std::future<ReadCase>* ahead) {
    if (!ahead) {
      ++without_future;
    } else {
      // While this case is analysed, the next one is read: wait (at most 5 s) until it has been.
      const std::string next = "in_scan" + std::to_string(c.id.back() - '0' + 1);
      for (int i = 0; i < 500; ++i) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (read.count(next) || next == "in_scan3" || next == "in_scan7") break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        analysed_with_next_read += read.count(next) ? 1 : 0;
      }
      // Not under the lock: the reading this waits for may still need it (a deadlock when the
      // machine was busy enough that a read had not started yet).
      ahead->get();  // the reading's exception, for scan3
    }
    return finish(c, dir);
  };
  {
    CohortOptions on = options_;
    on.read_ahead = true;
    CohortRunner cohort(on, {"hemexp", "test"});
    ASSERT_EQ(cohort.prepare(), kExitOk);
    EXPECT_EQ(cohort.run(analyse, reader, {{"device", "cpu"}}), kExitCaseFailed);
  }
  // scan0..scan6: the next case was read during the analysis of 0, 1, 3, 4, 5 (2's next is
  // the unreadable scan3; 6 is the last).
  EXPECT_EQ(analysed_with_next_read, 5);
  EXPECT_EQ(without_future, 0);
  const auto rows = parse_csv(slurp(root_ / "out/results.csv")).records();
  EXPECT_EQ(rows[3].at("status"), "failed");
  EXPECT_EQ(rows[3].at("error"), "scan3 cannot be read");
  // Off: the analysis reads for itself, the reader is never called.
  CohortOptions o = options_;
  o.overwrite = true;
  o.read_ahead = false;
  read.clear();
  CohortRunner cohort(o, {"hemexp", "test"});
  ASSERT_EQ(cohort.prepare(), kExitOk);
  cohort.run(analyse, reader, {{"device", "cpu"}});
  EXPECT_EQ(without_future, 7);
  EXPECT_TRUE(read.empty());
}

TEST(CohortProgress, OneLineWithCountsElapsedAndEta) {
  EXPECT_EQ(progress_line(3, 2000, {{"ok", 2}, {"failed", 1}, {"skipped", 0}}, 42.4, 3725.0, "p7_ct: ok"),
            "[3/2000] ok 2, failed 1, kept 0 | 0m42s elapsed, ETA 1h02m | p7_ct: ok");
  EXPECT_EQ(progress_line(0, 5, {}, 0.2, std::nan(""), "analysing a"), "[0/5] ok 0, failed 0, kept 0 | 0m00s elapsed, ETA ? | analysing a");
}

// Whether this machine's temporary folder has flock locks that exclude one open file from
// another within a process, as a local file system has (NFS emulates flock with per-process locks).
bool locks_exclude_within_a_process(const fs::path& dir) {
  const FileLock a(dir / "probe.lock", ""), b(dir / "probe.lock", "");
  return a.state() == FileLock::State::held && b.state() == FileLock::State::busy;
}

// A second process for the same shard of an OUTDIR (a job submitted twice, a run started again
// while the first still runs) is refused while the first holds the folder, naming it; another
// shard is not; an unsharded run is not run beside shards, nor shards beside it; the folder is
// free again once the first has gone (the kernel releases its lock however it ends).
TEST_F(Cohort, ASecondRunIntoTheSameOutdirIsRefusedWhileTheFirstHoldsIt) {
  if (!locks_exclude_within_a_process(root_)) GTEST_SKIP() << "no local flock in " << root_;
  const auto said_by = [](CohortRunner& r, int* code) {
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    *code = r.prepare();
    return ::testing::internal::GetCapturedStdout() + ::testing::internal::GetCapturedStderr();
  };
  const std::string out = (root_ / "out").string();
  auto first = std::make_unique<CohortRunner>(options_, std::vector<std::string>{"hemexp", "run"});
  ASSERT_EQ(first->prepare(), kExitOk);
  const std::string holder = slurp(root_ / "out/.hemexp.lock");
  EXPECT_EQ(holder.rfind("pid " + std::to_string(::getpid()) + " on ", 0), 0u) << holder;
  int code = 0;
  {
    CohortOptions resume = options_;  // the results check comes after the lock: "in use", not "use --resume"
    std::ofstream(root_ / "out/results.csv") << "case_id\n";
    CohortRunner second(resume, {"hemexp", "run"});
    const std::string said = said_by(second, &code);
    EXPECT_EQ(code, kExitSetup);
    EXPECT_NE(said.find(out + " is in use by another hemexp run (" + holder + ", as its lock file says)"), std::string::npos) << said;
    fs::remove(root_ / "out/results.csv");
  }
  CohortOptions shard = options_;
  shard.shard_count = 2;
  shard.shard_index = 2;
  {
    CohortRunner beside_unsharded(shard, {"hemexp", "run"});
    const std::string said = said_by(beside_unsharded, &code);
    EXPECT_EQ(code, kExitSetup);
    EXPECT_NE(said.find(out + " is in use by another hemexp run (" + holder + ", as its lock file says)"), std::string::npos) << said;
  }
  first.reset();
  CohortRunner shard2(shard, {"hemexp", "run"});
  ASSERT_EQ(shard2.prepare(), kExitOk);
  EXPECT_TRUE(fs::exists(root_ / "out/.hemexp-2-of-2.lock"));
  shard.shard_index = 1;
  CohortRunner shard1(shard, {"hemexp", "run"});
  EXPECT_EQ(shard1.prepare(), kExitOk);  // the shards of one job array side by side
  {
    shard.shard_index = 2;
    CohortRunner twice(shard, {"hemexp", "run"});
    const std::string said = said_by(twice, &code);
    EXPECT_EQ(code, kExitSetup);
    EXPECT_NE(said.find(out + " is in use by another hemexp run of shard 2/2 (pid " + std::to_string(::getpid())),
              std::string::npos)
        << said;
    CohortRunner unsharded(options_, {"hemexp", "run"});
    const std::string said2 = said_by(unsharded, &code);
    EXPECT_EQ(code, kExitSetup);
    EXPECT_NE(said2.find(out + " is in use by the shards of a job array"), std::string::npos) << said2;
  }
}

// What a CohortRunner's prepare() or `hemexp merge` says on the console, and its exit code.
std::string said_by(const std::function<int()>& f, int* code) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  *code = f();
  return ::testing::internal::GetCapturedStdout() + ::testing::internal::GetCapturedStderr();
}

// One OUTDIR takes one split: a shard of a split into 3 into the folder of a split into 2 would
// analyse cases the other analyses, and merge could not combine them. It is refused before it
// makes any file there; the other split's shards and an unsharded run (which finishes a split's
// leftovers) are not, but need --resume to run beside the other's results, as a run into its own
// results does.
TEST_F(Cohort, AnotherSplitIntoTheSameOutdirIsRefused) {
  CohortOptions o = options_;
  o.shard_count = 2;
  o.shard_index = 1;
  ASSERT_EQ(run(o, fake(nullptr)), kExitOk);  // scan0, 2, 4, 6
  const auto names = [&] {
    std::set<std::string> n;
    for (const auto& e : fs::directory_iterator(root_ / "out")) n.insert(e.path().filename().string());
    return n;
  };
  const std::set<std::string> before = names();
  EXPECT_EQ(before, (std::set<std::string>{".hemexp.lock", ".hemexp-1-of-2.lock", "cases", "hemexp-1-of-2.log",
                                           "results-1-of-2.csv", "run-1-of-2.json"}));
  CohortOptions three = options_;
  three.shard_count = 3;
  three.resume = true;
  for (const int k : {1, 3}) {
    three.shard_index = k;
    CohortRunner other(three, {"hemexp", "run"});
    int code = 0;
    const std::string said = said_by([&] { return other.prepare(); }, &code);
    EXPECT_EQ(code, kExitUsage);
    EXPECT_NE(said.find((root_ / "out").string() + " holds the files of a run split into 2 shards (.hemexp-1-of-2.lock), "
                        "and this is shard " + std::to_string(k) + "/3: one output folder takes one split"),
              std::string::npos)
        << said;
    EXPECT_NE(said.find("delete its files (run-*-of-2.json, results-*-of-2.csv, hemexp-*-of-2.log, .hemexp-*-of-2.lock)"),
              std::string::npos)
        << said;
  }
  EXPECT_EQ(names(), before);
  o.shard_index = 2;
  EXPECT_EQ(run(o, fake(nullptr)), kExitCaseFailed);  // scan3 fails
  CohortOptions whole = options_;
  EXPECT_EQ(run(whole, fake(nullptr)), kExitUsage);  // the shards' results: --resume or --overwrite
  whole.resume = true;
  std::vector<std::string> called;
  EXPECT_EQ(run(whole, fake(&called)), kExitCaseFailed);
  EXPECT_EQ(called, std::vector<std::string>{"in_scan3"});  // the failed case is tried again, the rest kept
  o.shard_index = 1;
  EXPECT_EQ(run(o, fake(nullptr)), kExitUsage);  // a shard beside the unsharded run's results.csv
  o.resume = true;
  EXPECT_EQ(run(o, fake(nullptr)), kExitOk);
  EXPECT_EQ(shard_of_file("run-12-of-30.json"), (std::pair<int, int>{12, 30}));
  EXPECT_EQ(shard_of_file(".hemexp-1-of-2.lock"), (std::pair<int, int>{1, 2}));
  EXPECT_EQ(shard_of_file("hemexp-3-of-4.log"), (std::pair<int, int>{3, 4}));
  EXPECT_EQ(shard_of_file("results-1-of-2.csv"), (std::pair<int, int>{1, 2}));
  for (const char* other : {"results.csv", "run-1-of-2.json.tmp-x", "run-1-of-.json", "results-1-of-2.json", "hemexp.log"})
    EXPECT_FALSE(shard_of_file(other).has_value()) << other;
}

// hemexp merge holds the folder's lock as an unsharded run does: while shards still run it
// refuses (exit 3) and writes nothing; a shard that never finished while none runs was stopped,
// and merge says so and how to go on; once every shard has finished it merges.
TEST_F(Cohort, MergeWaitsForRunningShardsAndNamesAStoppedOne) {
  if (!locks_exclude_within_a_process(root_)) GTEST_SKIP() << "no local flock in " << root_;
  CohortOptions o = options_;
  o.shard_count = 2;
  for (const int k : {1, 2}) {
    o.shard_index = k;
    ASSERT_NE(run(o, fake(nullptr)), kExitSetup);
  }
  const std::string out = (root_ / "out").string();
  const char* merge[] = {"hemexp", "merge", out.c_str()};
  int code = 0;
  {
    o.shard_index = 2;
    o.resume = true;
    CohortRunner running(o, {"hemexp", "run"});
    ASSERT_EQ(running.prepare(), kExitOk);
    const std::string said = said_by([&] { return main_entry(3, merge); }, &code);
    EXPECT_EQ(code, kExitSetup);
    EXPECT_NE(said.find(out + " is in use by shards that are still running (each OUTDIR/.hemexp-K-of-N.lock names one): "
                        "merge once every shard has finished"),
              std::string::npos)
        << said;
    EXPECT_FALSE(fs::exists(root_ / "out/results.csv"));
  }
  const std::string finished = slurp(root_ / "out/run-2-of-2.json");
  nlohmann::json stopped = nlohmann::json::parse(finished);
  stopped["finished"] = nullptr;  // as a shard killed with SIGKILL leaves it
  write_text_atomically(root_ / "out/run-2-of-2.json", stopped.dump(2));
  std::string said = said_by([&] { return main_entry(3, merge); }, &code);
  EXPECT_EQ(code, kExitUsage);
  EXPECT_NE(said.find("shard 2 was stopped before it finished (killed, or its node lost): rerun it with --resume"),
            std::string::npos)
      << said;
  EXPECT_FALSE(fs::exists(root_ / "out/results.csv"));
  write_text_atomically(root_ / "out/run-2-of-2.json", finished);
  said = said_by([&] { return main_entry(3, merge); }, &code);
  EXPECT_EQ(code, kExitCaseFailed) << said;  // merged; scan3 failed, as in an unsharded run
  EXPECT_EQ(parse_csv(slurp(root_ / "out/results.csv")).rows.size(), 7u);
  EXPECT_EQ(slurp(root_ / "out/.hemexp.lock").find("(hemexp merge)") != std::string::npos, true);
}

// More shards than scans (a job array of 9 over a 7-scan pilot): the shards without a case
// write a table of their own (the header), and merge combines them; merge stopped with an
// uncaught exception (exit 134, no results.csv) before. The merged run.json is the whole run's:
// shard 1's command and options without --shard, so that `--config` replays the cohort. A shard
// table that cannot be read is a message and exit 2, not an abort.
TEST_F(Cohort, MoreShardsThanScansMergeIntoTheWholeRun) {
  const std::string out = (root_ / "out").string();
  for (int k = 1; k <= 9; ++k) {
    CohortOptions o = options_;
    o.shard_index = k;
    o.shard_count = 9;
    const std::string shard = std::to_string(k) + "/9";
    CohortRunner cohort(o, {"hemexp", "run", "-i", options_.inputs[0], "--shard", shard, "-o", out, "--shard=" + shard});
    ASSERT_EQ(cohort.prepare(), kExitOk);
    ASSERT_EQ(cohort.run(fake(nullptr), {{"config", "threads=1\nshard=\"" + shard + "\"\nqc=false\n"}}),
              k == 4 ? kExitAllFailed : kExitOk);  // shard 4 holds only scan3, which fails
  }
  EXPECT_EQ(slurp(root_ / "out/results-9-of-9.csv"), csv_line(CaseResult::csv_columns()));
  const char* merge[] = {"hemexp", "merge", out.c_str()};
  int code = 0;
  std::string said = said_by([&] { return main_entry(3, merge); }, &code);
  EXPECT_EQ(code, kExitCaseFailed) << said;  // scan3 failed: the whole run's outcome, not shard 4's
  const CsvTable t = parse_csv(slurp(root_ / "out/results.csv"));
  ASSERT_EQ(t.rows.size(), 7u);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(t.rows[i][0], "in_scan" + std::to_string(i));
  const auto run_json = nlohmann::json::parse(slurp(root_ / "out/run.json"));
  EXPECT_EQ(run_json["argv"], nlohmann::json({"hemexp", "run", "-i", options_.inputs[0], "-o", out}));
  EXPECT_EQ(run_json["config"], "threads=1\nqc=false\n");
  EXPECT_EQ(run_json["cases"], nlohmann::json({{"total", 7}, {"ok", 6}, {"failed", 1}, {"skipped", 0}}));
  fs::remove(root_ / "out/results-8-of-9.csv");
  said = said_by([&] { return main_entry(3, merge); }, &code);
  EXPECT_EQ(code, kExitUsage);
  EXPECT_NE(said.find("shard 8: cannot read " + out + "/results-8-of-9.csv"), std::string::npos) << said;
  EXPECT_NE(said.find("rerun it with --resume"), std::string::npos) << said;
}

// A file name that is not UTF-8 (Latin-1 from an old Windows export: "M\xfcller") was analysed,
// then failed at the end with "invalid UTF-8 byte" from the JSON writer, leaving its mask and no
// result.json; named on the command line it stopped the run with a false "free space" advice.
// Its bytes are written as U+FFFD into result.json and run.json; the case is ok.
TEST_F(Cohort, AFileNameThatIsNotUtf8IsRecordedNotFailed) {
  const fs::path latin1 = root_ / "in" / "M\xfcller.nii.gz";
  std::ofstream(latin1) << "x";
  CohortRunner cohort(options_, {"hemexp", "run", "-i", latin1.string()});
  ASSERT_EQ(cohort.prepare(), kExitOk);
  ASSERT_EQ(cohort.run(fake(nullptr), {{"device", "cpu"}}), kExitCaseFailed);  // scan3 only
  const CsvTable t = parse_csv(slurp(root_ / "out/results.csv"));
  ASSERT_EQ(t.rows.size(), 8u);
  const auto records = t.records();
  EXPECT_EQ(records[0].at("case_id"), "in_M-ller");
  EXPECT_EQ(records[0].at("status"), "ok");
  EXPECT_EQ(records[0].at("input"), latin1.string());  // the table keeps the bytes as they are
  const auto result = nlohmann::json::parse(slurp(root_ / "out/cases/in_M-ller/result.json"));
  EXPECT_EQ(result["input"]["path"], (root_ / "in" / "M\xef\xbf\xbdller.nii.gz").string());
  // The bytes are kept beside it, and read back exactly (expansion, prepare and eval find the file).
  EXPECT_TRUE(result["input"].contains("path_bytes"));
  EXPECT_EQ(CaseResult::read(root_ / "out/cases/in_M-ller/result.json")->input_path, latin1.string());
  EXPECT_FALSE(nlohmann::json::parse(slurp(root_ / "out/cases/in_scan0/result.json"))["input"].contains("path_bytes"));
  const auto run_json = nlohmann::json::parse(slurp(root_ / "out/run.json"));
  EXPECT_EQ(run_json["argv"][3], (root_ / "in" / "M\xef\xbf\xbdller.nii.gz").string());
}

// --resume writes results.csv anew from each case's result.json: a column a researcher added in
// a spreadsheet went without a word. Such a table is kept aside, and said so.
TEST_F(Cohort, ATableEditedByHandIsKeptAsideOnResume) {
  ASSERT_EQ(run(options_, fake(nullptr)), kExitCaseFailed);
  const std::string own = slurp(root_ / "out/results.csv");
  const std::string edited = "\xef\xbb\xbf" + std::string(own).insert(own.find('\n'), ",reader_note");
  write_text_atomically(root_ / "out/results.csv", edited);
  CohortOptions o = options_;
  o.resume = true;
  int code = 0;
  const std::string said = said_by([&] { return run(o, fake(nullptr)); }, &code);
  EXPECT_EQ(code, kExitCaseFailed);
  EXPECT_EQ(slurp(root_ / "out/results.before-resume.csv"), edited);
  EXPECT_NE(said.find("results.csv has other columns than hemexp writes: the old table is kept as "
                      "results.before-resume.csv"),
            std::string::npos)
      << said;
  EXPECT_EQ(parse_csv(slurp(root_ / "out/results.csv")).header, parse_csv(own).header);
  fs::remove(root_ / "out/results.before-resume.csv");
  ASSERT_EQ(run(o, fake(nullptr)), kExitCaseFailed);  // its own table: nothing kept aside
  EXPECT_FALSE(fs::exists(root_ / "out/results.before-resume.csv"));
}

TEST_F(Cohort, SetupExitCodes) {
  CohortOptions o = options_;
  std::ofstream(root_ / "a-file") << "x";
  o.output_dir = (root_ / "a-file/out").string();
  EXPECT_EQ(run(o, fake(nullptr)), kExitSetup);
  o = options_;
  std::ofstream(root_ / "nothing.txt") << "# no scans\n";
  o.inputs = {(root_ / "nothing.txt").string()};
  EXPECT_EQ(run(o, fake(nullptr)), kExitUsage);  // no scans at all
  EXPECT_FALSE(fs::exists(o.output_dir));         // and no empty OUTDIR left behind
  // An empty folder, and a list naming a missing file, are cases (that fail when read: the
  // problem travels with the case), not the end of the run.
  o = options_;
  o.output_dir = (root_ / "out2").string();
  fs::create_directories(root_ / "empty");
  std::ofstream(root_ / "list.txt") << (root_ / "in/scan0.nii.gz").string() << "\n" << (root_ / "nope.nii.gz").string() << "\n";
  o.inputs = {(root_ / "empty").string(), (root_ / "list.txt").string()};
  std::vector<std::string> problems;
  EXPECT_EQ(run(o, [&](const CaseInput& c, const fs::path& dir, spdlog::logger&) {
              problems.push_back(c.id + ": " + c.problem);
              return finish(c, dir);
            }),
            kExitOk);
  EXPECT_EQ(problems, (std::vector<std::string>{"empty: ", "scan0: ",
                                                "nope: list list.txt names " + (root_ / "nope.nii.gz").string() +
                                                    ", which does not exist"}));
}

}  // namespace
}  // namespace hemexp
