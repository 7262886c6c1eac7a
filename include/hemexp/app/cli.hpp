#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hemexp/app/eval_command.hpp"
#include "hemexp/app/info_command.hpp"
#include "hemexp/app/prepare_command.hpp"
#include "hemexp/app/synth_command.hpp"

namespace CLI {
class App;
}

namespace hemexp {

enum ExitCode : int {
  kExitOk = 0,          // every case succeeded
  kExitUsage = 2,       // bad usage or configuration
  kExitSetup = 3,       // fatal setup error, nothing processed
  kExitCaseFailed = 4,  // the run finished but at least one case failed
};

// Options of `hemexp run`, as data: filled by CLI11, consumed by run_cases().
struct RunOptions {
  std::vector<std::string> inputs;
  std::string output_dir;
  std::string device = "cpu";
  int threads = 0;  // 0 = all cores
  bool resume = false;
  bool overwrite = false;
  int shard_index = 1;  // --shard K/N: this process handles cases K, K+N, K+2N, ... (1-based)
  int shard_count = 1;
  std::string series_uid;
  std::string seg_model;            // empty: the default model, if one is installed; "none": none
  std::string cls_model;            // the same for the expansion classifier
  bool save_probabilities = false;  // also write the foreground probability map
  bool qc = true;                   // write cases/<id>/qc.png
  std::string log_level = "info";
  bool progress = true;
};

struct CommandLine {
  std::string command;  // the subcommand chosen ("run", ...)
  RunOptions run;
  SynthOptions synth;
  PrepareOptions prepare;
  EvalOptions eval;
  InfoOptions info;
};

// Binds RunOptions to a `run` subcommand of app (validators included).
CLI::App* setup_run(CLI::App& app, RunOptions& options);

// The whole command line interface; the returned app writes into `line` when parsed.
std::unique_ptr<CLI::App> make_app(CommandLine& line);

// Parses argv and runs the chosen command; returns the process exit code.
int main_entry(int argc, const char* const* argv);

}  // namespace hemexp
