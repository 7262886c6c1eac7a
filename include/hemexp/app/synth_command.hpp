#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hemexp {

// Options of `hemexp synth`, as data: filled by CLI11, consumed by run_synth().
struct SynthOptions {
  std::string output_dir;
  int64_t count = 10;
  uint64_t seed = 1;
  double he_fraction = 0.2;
  std::vector<std::string> backgrounds;  // real NCCT volumes to insert hematomas into
  bool followup = false;
  std::string label = "any";   // "he" / "nhe": only cases with that label (a class top-up)
  int threads = 0;             // 0 = all cores; cases are rendered in parallel
  int matrix = 512;            // in-plane matrix (field of view stays clinical)
  double thin_fraction = 0.1;  // share of thin-slice (1.25 mm) cases
  std::string log_level = "info";
  bool overwrite = false;      // replace an earlier synth's cases in output_dir
};

// Binds SynthOptions to a `synth` subcommand of app (validators included).
CLI::App* setup_synth(CLI::App& app, SynthOptions& options);

// `hemexp synth`: writes OUTDIR/<case_id>/{ct,mask}.nii.gz (and followup_*), labels.csv and
// synth.json. Returns an ExitCode.
int run_synth(const SynthOptions& options, const std::vector<std::string>& argv);

// The labels.csv columns, in order.
const std::vector<std::string>& synth_label_columns();

}  // namespace hemexp
