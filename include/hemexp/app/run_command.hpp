#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_pipeline.hpp"
#include "hemexp/app/cohort.hpp"
#include "hemexp/app/run_options.hpp"

namespace spdlog {
class logger;
}

namespace hemexp {

// What a command that runs cases sets up before them, from the run options: threads, device,
// the models (loaded once), and the run.json fields that describe them.
struct RunSetup {
  CasePipeline pipeline;
  nlohmann::json run_info;  // device, threads, models, libraries
  int threads = 1;
  std::vector<std::pair<bool, std::string>> notes;  // (is a warning, line) for the run's log
};
// Returns kExitOk, or the exit code to stop with (reason on stderr).
int setup_run_pipeline(const RunOptions& options, RunSetup& setup);
// Writes the setup's lines (models, device, threads, shard) into the run's log.
void log_run_setup(spdlog::logger& log, const RunOptions& options, const RunSetup& setup, const CohortRunner& cohort);
// The runner options of a command that runs cases.
CohortOptions cohort_options(const RunOptions& options);

// Every case of the cohort through the pipeline (process_case, read_case for read-ahead).
int run_pipeline(CohortRunner& cohort, const CasePipeline& pipeline, const nlohmann::json& run_info);

// `hemexp run`: reads every case, writes cases/<id>/{mask.nii.gz,result.json}, results.csv,
// run.json and hemexp.log under options.output_dir. A failing case never stops the run.
// argv is recorded in run.json. Returns an ExitCode.
int run_cases(const RunOptions& options, const std::vector<std::string>& argv);

}  // namespace hemexp
