#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp prepare`: turns synth folders (<case>/ct.nii.gz + mask.nii.gz) into network-ready
// training files with exactly the preprocessing `run` applies (canonical orientation,
// resampling to the card's spacing, CT normalisation), so training and inference agree.
struct PrepareOptions {
  std::vector<std::string> synth_dirs;
  std::string card_path;  // JSON with at least a "preprocessing" block
  std::string output_dir;
  std::string log_level = "info";
};

CLI::App* setup_prepare(CLI::App& app, PrepareOptions& options);
int run_prepare(const PrepareOptions& options);

}  // namespace hemexp
