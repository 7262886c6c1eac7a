#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp check`: a run's results against a committed baseline, for CI (regression checks).
struct CheckOptions {
  std::string baseline;  // a run folder (masks compared too) or a results.csv
  std::string run_dir;   // the run folder to check
  double volume_ml = 0.1;        // largest allowed |change| of hematoma_volume_ml
  double probability = 0.02;     // largest allowed |change| of he_probability
  double dice = 0.98;            // smallest allowed Dice between the two masks of a case
  std::string json_path;         // optional: the drift table as JSON
};

// One difference beyond tolerance.
struct Drift {
  std::string case_id, check, baseline, run, tolerance;
};

CLI::App* setup_check(CLI::App& app, CheckOptions& options);
// Every drift of the run against the baseline: a case missing or extra, its status, volume,
// expansion probability (blank against a number is drift) or mask (Dice below the tolerance,
// another grid, a mask missing on one side). Throws IoError/CoreError for unreadable tables.
std::vector<Drift> find_drift(const CheckOptions& options);
// Prints the table of drifts; returns kExitOk without drift, kExitDrift with, kExitUsage when
// a table cannot be read.
int run_check(const CheckOptions& options);

}  // namespace hemexp
