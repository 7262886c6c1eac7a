// Argument parsing: good argv fills the right fields, bad argv is rejected with exit code 2.
#include <CLI/CLI.hpp>
#include <gtest/gtest.h>

#include <fstream>

#include <filesystem>

#include "hemexp/app/cli.hpp"

namespace hemexp {
namespace {

struct Parsed {
  CommandLine line;
  std::string error;  // empty when parsing succeeded
};

Parsed parse(std::vector<std::string> args) {
  Parsed p;
  auto app = make_app(p.line);
  args.insert(args.begin(), "hemexp");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app->parse(int(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    p.error = e.what();
    if (p.error.empty()) p.error = e.get_name();
  }
  return p;
}

const std::string kData = HEMEXP_TEST_DATA;

TEST(Cli, RunDefaults) {
  const Parsed p = parse({"run", "-i", kData, "-o", "/tmp/out"});
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.line.command, "run");
  EXPECT_EQ(p.line.run.inputs, std::vector<std::string>{kData});
  EXPECT_EQ(p.line.run.output_dir, "/tmp/out");
  EXPECT_EQ(p.line.run.device, "cpu");
  EXPECT_EQ(p.line.run.threads, 0);
  EXPECT_EQ(p.line.run.shard_index, 1);
  EXPECT_EQ(p.line.run.shard_count, 1);
  EXPECT_FALSE(p.line.run.resume);
  EXPECT_TRUE(p.line.run.progress);
  EXPECT_TRUE(p.line.run.qc);
  EXPECT_EQ(p.line.run.log_level, "info");
}

TEST(Cli, RunAllOptions) {
  const std::string ge = kData + "/ge-head-ct-tilt-mixed-thickness";
  const Parsed p = parse({"run", "-i", kData, ge, "-o", "out", "--device", "cuda:1", "--threads", "2",
                          "--shard", "3/8", "--resume", "--series-uid", "1.2.3", "--log-level", "debug",
                          "--no-progress", "--no-qc", "--seg-model", kData + "/parity/umambabot.safetensors",
                          "--save-probabilities"});
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.line.run.inputs.size(), 2u);
  EXPECT_EQ(p.line.run.device, "cuda:1");
  EXPECT_EQ(p.line.run.threads, 2);
  EXPECT_EQ(p.line.run.shard_index, 3);
  EXPECT_EQ(p.line.run.shard_count, 8);
  EXPECT_TRUE(p.line.run.resume);
  EXPECT_EQ(p.line.run.series_uid, "1.2.3");
  EXPECT_EQ(p.line.run.log_level, "debug");
  EXPECT_FALSE(p.line.run.progress);
  EXPECT_FALSE(p.line.run.qc);
  EXPECT_TRUE(p.line.run.save_probabilities);
  EXPECT_EQ(p.line.run.seg_model, kData + "/parity/umambabot.safetensors");
  EXPECT_EQ(parse({"run", "-i", kData, "-o", "out", "--seg-model", "none"}).line.run.seg_model, "none");
}

TEST(Cli, RunOptionsFromAConfigFileAndTheCommandLineOverIt) {
  const std::string config = ::testing::TempDir() + "/hemexp-run.toml";
  std::ofstream(config) << "# a cohort's settings\noutput = \"/tmp/from-config\"\nthreads = 2\nseg-model = \"none\"\n"
                           "qc = false\nshard = \"2/4\"\nlog-level = \"warn\"\n";
  const Parsed p = parse({"run", "-i", kData, "--config", config, "--threads", "1"});
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.line.run.output_dir, "/tmp/from-config");
  EXPECT_EQ(p.line.run.threads, 1);  // the command line wins
  EXPECT_EQ(p.line.run.seg_model, "none");
  EXPECT_FALSE(p.line.run.qc);
  EXPECT_EQ(p.line.run.shard_index, 2);
  EXPECT_EQ(p.line.run.shard_count, 4);
  EXPECT_EQ(p.line.run.log_level, "warn");
  std::ofstream(config, std::ios::trunc) << "threads = 0\n";  // validators apply to the file too
  EXPECT_NE(parse({"run", "-i", kData, "-o", "x", "--config", config}).error, "");
}

// run.json's `config` repeats the run: read back with --config, it gives the same options, flags
// that were turned off included (CLI11's own dump of every option did not read back).
TEST(Cli, TheRecordedConfigRepeatsTheRun) {
  const std::string model = kData + "/parity/umambabot.safetensors";
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"run", "-i", kData, "-o", "out", "--no-progress", "--no-qc", "--resume", "--shard", "3/8", "--max-voxels", "1000",
            "--seg-model", model, "--cls-model", "none", "--series-uid", "1.2.3", "--log-level", "debug", "--threads", "2"},
           {"run", "-i", kData, "-o", "out", "--overwrite", "--save-probabilities", "--read-ahead", "--precision", "bf16"},
           {"run", "-i", kData, "-o", "out"}}) {
    CommandLine line;
    auto app = make_app(line);
    std::vector<const char*> argv{"hemexp"};
    for (const std::string& a : args) argv.push_back(a.c_str());
    ASSERT_NO_THROW(app->parse(int(argv.size()), argv.data()));
    record_given_options(*app, line);
    const std::string file = ::testing::TempDir() + "/hemexp-replay.toml";
    std::ofstream(file, std::ios::trunc) << line.run.effective_config;
    const Parsed again = parse({"run", "--config", file});
    ASSERT_EQ(again.error, "") << line.run.effective_config;
    const RunOptions &a = line.run, &b = again.line.run;
    EXPECT_EQ(a.inputs, b.inputs);
    EXPECT_EQ(a.output_dir, b.output_dir);
    EXPECT_EQ(a.threads, b.threads);
    EXPECT_EQ(a.precision, b.precision);
    EXPECT_EQ(a.resume, b.resume);
    EXPECT_EQ(a.overwrite, b.overwrite);
    EXPECT_EQ(a.shard_index, b.shard_index);
    EXPECT_EQ(a.shard_count, b.shard_count);
    EXPECT_EQ(a.seg_model, b.seg_model);
    EXPECT_EQ(a.cls_model, b.cls_model);
    EXPECT_EQ(a.qc, b.qc);
    EXPECT_EQ(a.save_probabilities, b.save_probabilities);
    EXPECT_EQ(a.series_uid, b.series_uid);
    EXPECT_EQ(a.max_voxels, b.max_voxels);
    EXPECT_EQ(a.log_level, b.log_level);
    EXPECT_EQ(a.read_ahead, b.read_ahead);
    EXPECT_EQ(a.progress, b.progress) << line.run.effective_config;
  }
}

TEST(Cli, BadArgumentsAreRejectedWithAReason) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{}, "A subcommand is required"},
      {{"run", "-o", "out"}, "--input is required"},
      {{"run", "-i", kData}, "--output is required"},
      {{"run", "-i", "/no/such/path", "-o", "out"}, "does not exist"},
      {{"run", "-i", kData, "-o", "out", "--threads", "0"}, "not in range"},
      {{"run", "-i", kData, "-o", "out", "--device", "gpu"}, "device must be cpu, cuda or cuda:N"},
      {{"run", "-i", kData, "-o", "out", "--shard", "5/4"}, "1 <= K <= N"},
      {{"run", "-i", kData, "-o", "out", "--shard", "two"}, "shard must look like K/N"},
      {{"run", "-i", kData, "-o", "out", "--resume", "--overwrite"}, "excludes"},
      {{"run", "-i", kData, "-o", "out", "--log-level", "loud"}, "loud"},
      {{"run", "-i", kData, "-o", "out", "--no-such-flag"}, "--no-such-flag"},
      {{"check", "--baseline", kData, kData, "--volume-ml", "nan"}, "must be a number from"},
      {{"check", "--baseline", kData, kData, "--dice", "nan"}, "must be a number from"},
      {{"frobnicate"}, "A subcommand is required"},
      {{"run", "-i", kData, "-o", "out", "--seg-model", "/no/model.safetensors"}, "does not exist"},
  };
  for (const auto& [args, reason] : bad) {
    const Parsed p = parse(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_NE(p.error.find(reason), std::string::npos) << "argv: " << joined << "\nerror: " << p.error;
  }
}

TEST(Cli, ExitCodes) {
  const char* help[] = {"hemexp", "--help"};
  EXPECT_EQ(main_entry(2, help), kExitOk);
  const char* version[] = {"hemexp", "--version"};
  EXPECT_EQ(main_entry(2, version), kExitOk);
  const char* bad[] = {"hemexp", "run", "--threads", "-3"};
  EXPECT_EQ(main_entry(4, bad), kExitUsage);
  // Everything required is there, so only the unknown flag can stop it (before any case runs).
  const std::string input = kData + "/edge/nibabel/standard.nii.gz";
  const std::string out = ::testing::TempDir() + "hemexp-cli-unknown-flag";
  const char* unknown[] = {"hemexp", "run", "-i", input.c_str(), "-o", out.c_str(), "--no-such-flag"};
  EXPECT_EQ(main_entry(7, unknown), kExitUsage);
  EXPECT_FALSE(std::filesystem::exists(out + "/results.csv"));
  const Parsed p = parse({"run", "-i", input, "-o", out, "--no-such-flag"});
  EXPECT_NE(p.error.find("--no-such-flag"), std::string::npos) << p.error;
}

}  // namespace
}  // namespace hemexp
