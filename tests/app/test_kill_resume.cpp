// The hemexp executable killed at random moments (SIGKILL) and resumed gives what one
// uninterrupted run gives; SIGTERM ends a run cleanly with its own exit code.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "test_helpers.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::slurp;
using Clock = std::chrono::steady_clock;

// file_size_limit > 0: the child may not write a file beyond that many bytes (RLIMIT_FSIZE):
// a write past it fails as on a full disk (EFBIG), without root or a small file system.
// `ignore_hangup`: the child starts with SIGHUP ignored, as under `nohup`.
pid_t start(const std::vector<std::string>& args, rlim_t file_size_limit = 0, bool ignore_hangup = false) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (ignore_hangup) signal(SIGHUP, SIG_IGN);
    if (file_size_limit > 0) {
      const rlimit limit{file_size_limit, file_size_limit};
      setrlimit(RLIMIT_FSIZE, &limit);
      signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of killing the process
    }
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    // The child's own output would interleave with the test's: keep only errors.
    execv(HEMEXP_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Two run folders equal apart from timings, dates, version and the kept-case status; every
// file of every case byte-identical (masks, pictures); no temporary file left anywhere.
void expect_same_run(const fs::path& a, const fs::path& b) {
  const CsvTable ta = parse_csv(slurp(a / "results.csv")), tb = parse_csv(slurp(b / "results.csv"));
  ASSERT_EQ(ta.header, tb.header);
  ASSERT_EQ(ta.rows.size(), tb.rows.size());
  for (size_t r = 0; r < ta.rows.size(); ++r)
    for (size_t c = 0; c < ta.header.size(); ++c) {
      if (ta.header[c] == "seconds" || ta.header[c] == "status") continue;
      EXPECT_EQ(ta.rows[r][c], tb.rows[r][c]) << ta.header[c] << " of row " << r;
    }
  for (const auto& row : ta.records()) {
    const fs::path ca = a / "cases" / row.at("case_id"), cb = b / "cases" / row.at("case_id");
    json ja = json::parse(slurp(ca / "result.json")), jb = json::parse(slurp(cb / "result.json"));
    for (const char* k : {"timings_s", "seconds", "hemexp_version"}) {
      ja.erase(k);
      jb.erase(k);
    }
    EXPECT_EQ(ja, jb) << row.at("case_id");
    std::vector<std::string> fa, fb;
    for (const auto& e : fs::directory_iterator(ca)) fa.push_back(e.path().filename().string());
    for (const auto& e : fs::directory_iterator(cb)) fb.push_back(e.path().filename().string());
    std::sort(fa.begin(), fa.end());
    std::sort(fb.begin(), fb.end());
    EXPECT_EQ(fa, fb) << row.at("case_id");
    for (const std::string& f : fa)
      if (f != "result.json") EXPECT_TRUE(slurp(ca / f) == slurp(cb / f)) << row.at("case_id") << "/" << f;
  }
  for (const auto& e : fs::recursive_directory_iterator(b))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// A fresh folder `root` with small synthetic heads root/in/head<first>..head<last>.nii.gz (96 x 96
// matrix, no thin slices) and a random-weights segmenter root/model.safetensors (returned).
void write_heads(const fs::path& root, uint64_t seed, int first, int last) {
  synth::SynthOptions so;
  so.seed = seed;
  so.matrix = 96;
  so.thin_fraction = 0.0;
  fs::create_directories(root / "in");
  for (int i = first; i <= last; ++i) {
    const synth::SynthCase c = synth::render_procedural_case(so, i);
    write_image_file(root / "in" / ("head" + std::to_string(i) + ".nii.gz"), c.baseline.ct, c.baseline.geometry);
  }
}

std::string fresh_cohort(const fs::path& root, uint64_t seed, int count) {
  fs::remove_all(root);
  write_heads(root, seed, 0, count - 1);
  return test::write_random_segmenter(root / "model.safetensors").string();
}

TEST(KillResume, KilledAtRandomMomentsAndResumedEqualsOneRun) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-kill-" + std::to_string(::getpid()));
  const std::string model = fresh_cohort(root, 21, 6);
  const auto args = [&](const std::string& out, bool resume) {
    std::vector<std::string> a{"hemexp", "run", "-i", (root / "in").string(), "-o", (root / out).string(), "--seg-model",
                               model, "--threads", "1", "--no-progress", "--log-level", "error"};
    if (resume) a.push_back("--resume");
    if (out != "ref") a.push_back("--read-ahead");  // and read-ahead changes nothing in the results
    return a;
  };

  const auto t0 = Clock::now();
  ASSERT_EQ(wait_exit(start(args("ref", false))), kExitOk);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  // SIGKILL at random moments of what is left of the run (a resumed run only does the cases
  // not done yet), each time resumed, until four kills have landed while a run was working;
  // then the run is finished. Fixed seed: the same draws on every run of the test.
  std::mt19937 rng(20261202);
  std::uniform_real_distribution<double> fraction(0.05, 0.9);
  // Cases of a run folder whose mask is written (masks are written under a temporary name, then renamed).
  const auto cases_done = [&](const char* run) {
    int n = 0;
    if (fs::exists(root / run / "cases"))
      for (const auto& e : fs::directory_iterator(root / run / "cases")) n += fs::exists(e.path() / "mask.nii.gz");
    return n;
  };
  // The reference run's time is only an estimate (other tests may have been running beside it):
  // when a cohort is finished before four kills landed in it, it is started again from nothing
  // with the time estimate halved, so that the folder finally compared was killed mid-run.
  int killed_mid_run = 0;
  double estimate = seconds;
  for (int k = 0; k < 24 && killed_mid_run < 4; ++k) {
    if (cases_done("killed") >= 6) {
      fs::remove_all(root / "killed");
      killed_mid_run = 0;
      estimate *= 0.5;
    }
    const double left = estimate * std::max(1.0, 6.0 - cases_done("killed")) / 6.0;
    const pid_t pid = start(args("killed", fs::exists(root / "killed")));
    std::this_thread::sleep_for(std::chrono::duration<double>(fraction(rng) * left));
    kill(pid, SIGKILL);
    killed_mid_run += wait_exit(pid) == 128 + SIGKILL ? 1 : 0;
  }
  EXPECT_GE(killed_mid_run, 3) << "the kills landed after the runs had finished: the test did not test";
  ASSERT_EQ(wait_exit(start(args("killed", true))), kExitOk);
  expect_same_run(root / "ref", root / "killed");

  // SIGTERM: the case being analysed is finished, the tables are written, exit code 5. Sent as
  // soon as the first case's mask is there (the run's handler is installed by then): a fixed
  // share of the reference run's time could fall into the start-up (model loading) on a busy
  // machine, where the default action ends the process (exit 143).
  const pid_t pid = start(args("term", false));
  for (const auto until = Clock::now() + std::chrono::duration<double>(20 * seconds + 60);
       cases_done("term") == 0 && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), kExitInterrupted);
  const json run = json::parse(slurp(root / "term/run.json"));
  EXPECT_EQ(run["interrupted"]["signal"], "SIGTERM") << run;
  EXPECT_GT(run["interrupted"]["not_started"].get<int>(), 0);
  const auto rows = parse_csv(slurp(root / "term/results.csv")).records();
  EXPECT_EQ(rows.size() + run["interrupted"]["not_started"].get<size_t>(), 6u);
  for (const auto& r : rows) EXPECT_TRUE(fs::exists(root / "term/cases" / r.at("case_id") / "mask.nii.gz"));
  ASSERT_EQ(wait_exit(start(args("term", true))), kExitOk);
  expect_same_run(root / "ref", root / "term");

  // SIGHUP (a dropped ssh session) as SIGTERM, here before any case is done: exit 5, recorded.
  const pid_t hup = start(args("hup", false));
  for (const auto until = Clock::now() + std::chrono::duration<double>(20 * seconds + 60);
       !fs::exists(root / "hup/hemexp.log") && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(hup, SIGHUP);
  EXPECT_EQ(wait_exit(hup), kExitInterrupted);
  const json hup_run = json::parse(slurp(root / "hup/run.json"));
  EXPECT_EQ(hup_run["interrupted"]["signal"], "SIGHUP") << hup_run;
  // Started to ignore SIGHUP (nohup), it goes on to the end.
  const pid_t nohup = start(args("nohup", false), 0, true);
  for (const auto until = Clock::now() + std::chrono::duration<double>(20 * seconds + 60);
       !fs::exists(root / "nohup/hemexp.log") && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(nohup, SIGHUP);
  EXPECT_EQ(wait_exit(nohup), kExitOk);
  EXPECT_FALSE(json::parse(slurp(root / "nohup/run.json")).contains("interrupted"));
  // A second signal, of another kind, ends the process at once.
  const pid_t twice = start(args("twice", false));
  for (const auto until = Clock::now() + std::chrono::duration<double>(20 * seconds + 60);
       cases_done("twice") == 0 && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(twice, SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(twice, SIGINT);
  EXPECT_EQ(wait_exit(twice), 128 + SIGINT);
  ASSERT_EQ(wait_exit(start(args("twice", true))), kExitOk);
  expect_same_run(root / "ref", root / "twice");
  fs::remove_all(root);
}

// A second hemexp process into an OUTDIR whose shard another process holds exits 3 before it
// touches anything; once the holder has gone, the same command runs. The holder here is the
// test itself (deterministic: a second real run would race the first to its end); that a killed
// run releases the folder is shown by every resume of KilledAtRandomMomentsAndResumedEqualsOneRun.
TEST(KillResume, ASecondProcessIntoAFolderInUseIsRefused) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-lock-" + std::to_string(::getpid()));
  const std::string model = fresh_cohort(root, 22, 1);
  fs::create_directories(root / "out");
  const std::vector<std::string> args{"hemexp", "run", "-i", (root / "in").string(), "-o", (root / "out").string(),
                                      "--seg-model", model, "--threads", "1", "--no-progress", "--log-level", "error"};
  {
    const FileLock held(root / "out/.hemexp.lock", "pid 1 on elsewhere since then");
    if (held.state() != FileLock::State::held) GTEST_SKIP() << "no flock in " << root << ": " << held.detail();
    EXPECT_EQ(wait_exit(start(args)), kExitSetup);
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(root / "out")) left.push_back(e.path().filename().string());
    EXPECT_EQ(left, std::vector<std::string>{".hemexp.lock"});
    EXPECT_EQ(slurp(root / "out/.hemexp.lock"), "pid 1 on elsewhere since then");  // the holder's word stays
  }
  EXPECT_EQ(wait_exit(start(args)), kExitOk);
  EXPECT_EQ(parse_csv(slurp(root / "out/results.csv")).rows.size(), 1u);
  fs::remove_all(root);
}

// Determinism: the same cohort with 1 and with 2 threads (and again with 2) gives byte-identical
// masks and pictures and equal numbers.
TEST(Determinism, SameCohortSameBytesForAnyThreadCount) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-threads-" + std::to_string(::getpid()));
  const std::string model = fresh_cohort(root, 29, 3);
  const auto run = [&](const std::string& out, const std::string& threads) {
    return wait_exit(start({"hemexp", "run", "-i", (root / "in").string(), "-o", (root / out).string(), "--seg-model",
                            model, "--threads", threads, "--no-progress", "--log-level", "error"}));
  };
  ASSERT_EQ(run("t1", "1"), kExitOk);
  ASSERT_EQ(run("t2", "2"), kExitOk);
  ASSERT_EQ(run("t2-again", "2"), kExitOk);
  expect_same_run(root / "t1", root / "t2");
  expect_same_run(root / "t2", root / "t2-again");
  fs::remove_all(root);
}

std::map<std::string, std::string> files_under(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = slurp(e.path());
  return out;
}

TEST(WriteFailure, AFullDiskFailsTheCaseOrStopsTheRunAndKeepsEverythingWritten) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-full-" + std::to_string(::getpid()));
  const std::string model = fresh_cohort(root, 23, 3);
  const auto head = [&](int i) { write_heads(root, 23, i, i); };  // one more scan of the cohort
  const std::vector<std::string> args{"hemexp", "run", "-i", (root / "in").string(), "-o", (root / "out").string(),
                                      "--seg-model", model, "--threads", "1", "--no-progress", "--log-level", "error",
                                      "--resume"};
  ASSERT_EQ(wait_exit(start(args)), kExitOk);
  const auto before = files_under(root / "out/cases");
  const std::string results_before = slurp(root / "out/results.csv");

  // A fourth scan, and room for the tables but not for its picture: the case fails, naming the
  // write; the three done before are untouched; the run finishes with exit code 4.
  head(3);
  const uintmax_t limit = 2 * results_before.size() + 2048;
  ASSERT_GT(before.at("in_head0/qc.png").size(), limit) << "the picture must not fit for this test to test";
  ASSERT_GT(limit, slurp(root / "out/run.json").size() + 512);
  EXPECT_EQ(wait_exit(start(args, limit)), kExitCaseFailed);
  const auto rows = parse_csv(slurp(root / "out/results.csv")).records();
  ASSERT_EQ(rows.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rows[size_t(i)].at("status"), "skipped");
  EXPECT_EQ(rows[3].at("status"), "failed");
  EXPECT_NE(rows[3].at("error").find("writing"), std::string::npos) << rows[3].at("error");
  EXPECT_NE(rows[3].at("error").find("head3"), std::string::npos) << rows[3].at("error");
  auto after = files_under(root / "out/cases");
  EXPECT_EQ(after.count("in_head3/result.json"), 1u);
  after.erase("in_head3/result.json");  // all that is left of the failed case
  EXPECT_EQ(after, before);
  for (const auto& e : fs::recursive_directory_iterator(root / "out"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();

  // Room for run.json but, after a row or two, not for results.csv: the run stops with exit
  // code 7, saying so in run.json, and the results.csv left is a complete table.
  head(4);
  head(5);
  // The limit from the table's own row width (it grows with every column added): the four rows
  // there now fit, with half a row to spare, and so does run.json; a fifth row does not.
  const std::string results_now = slurp(root / "out/results.csv");
  const uintmax_t row = (results_now.size() - results_now.find('\n') - 1) / 4;
  const uintmax_t tight = std::max<uintmax_t>(slurp(root / "out/run.json").size() + 300, results_now.size() + row / 2);
  ASSERT_GT(results_now.size() + row, tight) << "results.csv must outgrow the limit for this test to test";
  EXPECT_EQ(wait_exit(start(args, tight)), kExitOutputFailed);
  const json stopped = json::parse(slurp(root / "out/run.json"));
  EXPECT_TRUE(stopped.contains("output_failure")) << stopped;
  const auto partial = parse_csv(slurp(root / "out/results.csv")).records();
  EXPECT_GE(partial.size(), 4u);
  EXPECT_LT(partial.size(), 6u);
  for (const auto& e : fs::recursive_directory_iterator(root / "out"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();

  // A disk too full even for run.json: nothing is done, exit code 7, results.csv untouched.
  const std::string results_kept = slurp(root / "out/results.csv");
  EXPECT_EQ(wait_exit(start(args, 512)), kExitOutputFailed);
  EXPECT_EQ(slurp(root / "out/results.csv"), results_kept);

  // Room again: --resume finishes the cohort.
  EXPECT_EQ(wait_exit(start(args)), kExitOk);
  const auto done = parse_csv(slurp(root / "out/results.csv")).records();
  ASSERT_EQ(done.size(), 6u);
  for (const auto& r : done) EXPECT_NE(r.at("status"), "failed") << r.at("case_id") << ": " << r.at("error");
  fs::remove_all(root);
}

// With two threads a case's files are written side by side (measure_and_write_case): the picture
// that does not fit fails the case once the others are finished, and nothing of it is left
// but its result.json (no mask written beside the picture, no temporary file). What it checks
// is the clean-up after a failure on that path; that the writes overlap is measured, not tested.
TEST(WriteFailure, FilesWrittenSideBySideFailTheCaseTogether) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-full2-" + std::to_string(::getpid()));
  const std::string model = fresh_cohort(root, 37, 1);
  const std::vector<std::string> args{"hemexp", "run", "-i", (root / "in").string(), "-o", (root / "out").string(),
                                      "--seg-model", model, "--threads", "2", "--no-progress", "--log-level", "error",
                                      "--resume"};
  ASSERT_EQ(wait_exit(start(args)), kExitOk);
  const auto before = files_under(root / "out/cases");
  ASSERT_TRUE(before.count("in_head0/mask.nii.gz"));
  fs::copy_file(root / "in/head0.nii.gz", root / "in/head1.nii.gz");  // a second scan with files of the same sizes
  // Room for every file of a case but its picture (and for the tables).
  uintmax_t limit = std::max<uintmax_t>(2 * slurp(root / "out/results.csv").size(), slurp(root / "out/run.json").size()) + 2048;
  for (const auto& [name, bytes] : before)
    if (name != "in_head0/qc.png") limit = std::max<uintmax_t>(limit, bytes.size() + 2048);
  ASSERT_GT(before.at("in_head0/qc.png").size(), limit) << "the picture must not fit for this test to test";
  EXPECT_EQ(wait_exit(start(args, limit)), kExitCaseFailed);
  const auto rows = parse_csv(slurp(root / "out/results.csv")).records();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].at("status"), "failed");
  EXPECT_NE(rows[1].at("error").find("qc.png"), std::string::npos) << rows[1].at("error");
  auto after = files_under(root / "out/cases");
  EXPECT_EQ(after.count("in_head1/result.json"), 1u);
  after.erase("in_head1/result.json");
  EXPECT_EQ(after, before);
  for (const auto& e : fs::recursive_directory_iterator(root / "out"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  fs::remove_all(root);
}

}  // namespace
}  // namespace hemexp
