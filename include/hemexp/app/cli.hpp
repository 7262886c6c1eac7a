#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hemexp/app/check_command.hpp"
#include "hemexp/app/eval_command.hpp"
#include "hemexp/app/expansion_command.hpp"
#include "hemexp/app/info_command.hpp"
#include "hemexp/app/merge_command.hpp"
#include "hemexp/app/prepare_command.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/app/synth_command.hpp"

namespace CLI {
class App;
}

namespace hemexp {

struct CommandLine {
  std::string command;  // the subcommand chosen ("run", ...)
  RunOptions run;
  SynthOptions synth;
  PrepareOptions prepare;
  EvalOptions eval;
  InfoOptions info;
  ExpansionOptions expansion;
  CheckOptions check;
  MergeOptions merge;
};

// Binds RunOptions to a `run` subcommand of app (validators included).
CLI::App* setup_run(CLI::App& app, RunOptions& options);
// The options of `run` after -i/--input (output, device, models, shards, ...), for every
// command that runs cases.
void add_run_options(CLI::App* command, RunOptions& options);

// The whole command line interface; the returned app writes into `line` when parsed.
std::unique_ptr<CLI::App> make_app(CommandLine& line);

// The options given to `run` or `expansion` (on the command line and in a --config file), as a
// config file that repeats the run (`--config`), into RunOptions::effective_config for run.json.
void record_given_options(const CLI::App& app, CommandLine& line);

// Parses argv and runs the chosen command; returns the process exit code.
int main_entry(int argc, const char* const* argv);

}  // namespace hemexp
