#include "hemexp/app/cli.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <regex>

#include "hemexp/app/case_result.hpp"
#include "hemexp/app/run_command.hpp"
#include "hemexp/app/synth_command.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/version.hpp"

namespace hemexp {

namespace {

const CLI::Validator kDevice(
    [](std::string& value) -> std::string {
      static const std::regex re(R"(^(cpu|cuda(:\d+)?)$)");
      return std::regex_match(value, re) ? "" : "device must be cpu, cuda or cuda:N, not '" + value + "'";
    },
    "cpu|cuda|cuda:N", "Device");

// A TOML/INI config file whose plain `key = value` lines are options of the command on the
// command line (run, expansion), not of hemexp itself.
class SubcommandConfig : public CLI::ConfigTOML {
 public:
  explicit SubcommandConfig(const CLI::App* app) : app_(app) {}
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::vector<CLI::ConfigItem> items = CLI::ConfigTOML::from_config(input);
    for (const CLI::App* sub : app_->get_subcommands())
      for (CLI::ConfigItem& item : items)
        if (item.parents.empty() || item.parents.front() != sub->get_name()) item.parents.insert(item.parents.begin(), sub->get_name());
    return items;
  }

 private:
  const CLI::App* app_;
};

}  // namespace

CLI::App* setup_run(CLI::App& app, RunOptions& o) {
  CLI::App* run = app.add_subcommand("run", "Segment, measure and score every input scan");
  run->add_option("-i,--input", o.inputs,
                  "NIfTI/MHA/NRRD files, DICOM files or folders, cohort folders, or .txt/.csv lists")
      ->required()
      ->check(CLI::ExistingPath);
  add_run_options(run, o);
  return run;
}

void add_run_options(CLI::App* run, RunOptions& o) {
  run->add_option("-o,--output", o.output_dir, "Output folder")->required();
  run->add_option("--device", o.device, "cpu, cuda or cuda:N")->check(kDevice)->capture_default_str();
  run->add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(CLI::Range(1, 1024));
  run->add_option("--precision", o.precision,
                  "Segmentation network's convolutions: fp32 (validated), bf16 (CPU with AVX-512 BF16, or CUDA) "
                  "or fp16 (CUDA); the Mamba layers stay fp32")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  auto* resume = run->add_flag("--resume", o.resume, "Keep cases already done in OUTDIR, do the rest");
  auto* overwrite = run->add_flag("--overwrite", o.overwrite, "Replace the results of a previous run in OUTDIR");
  resume->excludes(overwrite);
  run->add_option_function<std::string>(
         "--shard",
         [&o](const std::string& value) {
           const auto slash = value.find('/');
           o.shard_index = std::stoi(value.substr(0, slash));
           o.shard_count = std::stoi(value.substr(slash + 1));
         },
         "Process part K of N (1-based), e.g. --shard 2/8 for a SLURM array")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            static const std::regex re(R"(^(\d+)/(\d+)$)");
            std::smatch m;
            if (!std::regex_match(value, m, re)) return "shard must look like K/N, e.g. 2/8";
            const long k = std::stol(m[1]), n = std::stol(m[2]);
            if (n < 1 || k < 1 || k > n) return "shard K/N needs 1 <= K <= N";
            return "";
          },
          "K/N", "Shard"));
  run->add_option("--seg-model", o.seg_model,
                  "Segmentation model (.safetensors with model card); default: models/; 'none': no segmentation")
      ->check(CLI::ExistingFile | CLI::IsMember({"none"}));
  run->add_option("--cls-model", o.cls_model,
                  "Expansion classifier (.safetensors with model card); default: models/; 'none': no expansion risk")
      ->check(CLI::ExistingFile | CLI::IsMember({"none"}));
  run->add_flag("--qc,!--no-qc", o.qc, "Write (or not) cases/<id>/qc.png, a mosaic of the hematoma slices (default: on)");
  run->add_flag("--save-probabilities", o.save_probabilities, "Also write cases/<id>/probability.nii.gz");
  run->add_option("--series-uid", o.series_uid, "DICOM: read this SeriesInstanceUID instead of choosing");
  run->add_option("--max-voxels", o.max_voxels,
                  "Refuse (as a failed case, before reading its voxels) a scan of more voxels than this; "
                  "default 524288000, a 512 x 512 x 2000 scan (about 2 GB as float)")
      ->check(CLI::Range(uint64_t(1), uint64_t(1) << 40))
      ->capture_default_str();
  run->add_option("--log-level", o.log_level, "Log detail")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
      ->capture_default_str();
  // --config is the main app's (CLI11 reads config files there only); fallthrough lets it follow
  // the command, and SubcommandConfig gives the file's keys to the command given.
  run->fallthrough();
  run->add_flag("--read-ahead", o.read_ahead,
                "Read the next scan on a second thread while one is analysed (for slow or network storage; off by "
                "default: no gain measured on a local disk)");
  // Named as --qc is, so that run.json's `config` says progress = false and replays it (a flag
  // with only the negated name was written as no-progress = false, and read back the other way).
  run->add_flag("--progress,!--no-progress", o.progress, "Per-case progress lines on the console (default: on)");
}

std::unique_ptr<CLI::App> make_app(CommandLine& line) {
  auto app = std::make_unique<CLI::App>(
      "hemexp: hematoma segmentation, measurement and expansion risk from non-contrast head CT.\n"
      "Research use only; not for clinical decisions.",
      "hemexp");
  app->set_version_flag("--version", std::string("hemexp ") + kVersion + " (" + kGitCommit + ")");
  app->require_subcommand(1);
  app->set_config("--config", "", "Read the command's options from a TOML (or INI) file, one `name = value` per "
                                  "option (e.g. threads = 2); options on the command line override it")
      ->check(CLI::ExistingFile);
  app->config_formatter(std::make_shared<SubcommandConfig>(app.get()));
  CLI::App* run = setup_run(*app, line.run);
  run->callback([&line] { line.command = "run"; });
  CLI::App* synth = setup_synth(*app, line.synth);
  synth->callback([&line] { line.command = "synth"; });
  CLI::App* prepare = setup_prepare(*app, line.prepare);
  prepare->callback([&line] { line.command = "prepare"; });
  CLI::App* eval = setup_eval(*app, line.eval);
  eval->callback([&line] { line.command = "eval"; });
  CLI::App* expansion = setup_expansion(*app, line.expansion);
  expansion->callback([&line] { line.command = "expansion"; });
  CLI::App* merge = setup_merge(*app, line.merge);
  merge->callback([&line] { line.command = "merge"; });
  CLI::App* check = setup_check(*app, line.check);
  check->callback([&line] { line.command = "check"; });
  CLI::App* info = setup_info(*app, line.info);
  info->callback([&line] { line.command = "info"; });
  return app;
}

void record_given_options(const CLI::App& app, CommandLine& line) {
  for (const char* name : {"run", "expansion"}) {
    const CLI::App* sub = app.get_subcommand(name);
    // Only what was given: CLI11 writes options left at their defaults in ways that do not read
    // back (an empty model path fails its file check; flags it never saw as false).
    if (sub->parsed()) (line.command == "run" ? line.run : line.expansion.run).effective_config = sub->config_to_str(false, false);
  }
}

int main_entry(int argc, const char* const* argv) {
  keep_freed_memory();  // before the first large tensor (core/runtime.hpp)
  // Every command reports the same way: diagnostics on stderr as "error: ...", "warning: ...";
  // results on stdout or in files. `run` adds its log file to this (cohort.cpp).
  auto console = std::make_shared<spdlog::logger>("console", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  console->set_pattern("%^%l%$: %v");
  spdlog::set_default_logger(console);
  CommandLine line;
  auto app = make_app(line);
  try {
    app->parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app->exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  // Not for synth, whose workers hand their memory back after each case (core/runtime.hpp).
  if (line.command != "synth") use_huge_page_heap();
  const std::vector<std::string> args(argv, argv + argc);
  record_given_options(*app, line);
  // What a command does not catch itself (a write that fails where it was not expected to) is
  // said on one line with its exit code, not an abort with a core dump.
  try {
    if (line.command == "run") return run_cases(line.run, args);
    if (line.command == "merge") return run_merge(line.merge);
    if (line.command == "check") return run_check(line.check);
    if (line.command == "expansion") return run_expansion(line.expansion, args);
    if (line.command == "synth") return run_synth(line.synth, args);
    if (line.command == "prepare") return run_prepare(line.prepare);
    if (line.command == "eval") return run_eval(line.eval);
    if (line.command == "info") return run_info(line.info);
  } catch (const std::exception& e) {
    spdlog::error("{}", one_line(e.what()));
    return kExitSetup;
  }
  return kExitUsage;
}

}  // namespace hemexp
