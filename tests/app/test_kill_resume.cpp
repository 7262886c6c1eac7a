// The hemexp executable killed at random moments (SIGKILL) and resumed gives what one
// uninterrupted run gives; SIGTERM ends a run cleanly with its own exit code.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "test_helpers.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::slurp;
using Clock = std::chrono::steady_clock;

pid_t start(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
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

TEST(KillResume, KilledAtRandomMomentsAndResumedEqualsOneRun) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-kill-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "in");
  synth::SynthOptions so;
  so.seed = 21;
  so.matrix = 96;
  so.thin_fraction = 0.0;
  for (int i = 0; i < 6; ++i) {
    const synth::SynthCase c = synth::render_procedural_case(so, i);
    write_image_file(root / "in" / ("head" + std::to_string(i) + ".nii.gz"), c.baseline.ct, c.baseline.geometry);
  }
  const std::string model = test::write_random_segmenter(root / "model.safetensors").string();
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
  const auto cases_done = [&] {
    int n = 0;
    if (fs::exists(root / "killed/cases"))
      for (const auto& e : fs::directory_iterator(root / "killed/cases")) n += fs::exists(e.path() / "mask.nii.gz");
    return n;
  };
  int killed_mid_run = 0;
  for (int k = 0; k < 12 && killed_mid_run < 4 && cases_done() < 6; ++k) {
    const double left = seconds * std::max(1.0, 6.0 - cases_done()) / 6.0;
    const pid_t pid = start(args("killed", k > 0));
    std::this_thread::sleep_for(std::chrono::duration<double>(fraction(rng) * left));
    kill(pid, SIGKILL);
    killed_mid_run += wait_exit(pid) == 128 + SIGKILL ? 1 : 0;
  }
  EXPECT_GE(killed_mid_run, 3) << "the kills landed after the runs had finished: the test did not test";
  ASSERT_EQ(wait_exit(start(args("killed", true))), kExitOk);
  expect_same_run(root / "ref", root / "killed");

  // SIGTERM: the case being analysed is finished, the tables are written, exit code 5.
  const pid_t pid = start(args("term", false));
  std::this_thread::sleep_for(std::chrono::duration<double>(0.4 * seconds));
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
  fs::remove_all(root);
}

}  // namespace
}  // namespace hemexp
