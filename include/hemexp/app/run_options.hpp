#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hemexp {

enum ExitCode : int {
  kExitOk = 0,          // every case succeeded
  kExitUsage = 2,       // bad usage or configuration
  kExitSetup = 3,       // fatal setup error, nothing processed
  kExitCaseFailed = 4,  // the run finished but at least one case failed
  kExitInterrupted = 5, // SIGINT or SIGTERM: stopped after the case being analysed; --resume goes on
  kExitDrift = 6,       // `hemexp check`: the run drifted from its baseline
  kExitOutputFailed = 7, // results.csv could not be written (disk full, quota): stopped, what was written is intact
  kExitAllFailed = 8,    // `run`, `expansion`, `merge`: finished and no case succeeded (every case analysed failed, none kept)
};

// The exit code of a finished cohort from its counts: 0 when nothing failed, 4 when some cases
// failed and others succeeded (or were kept by --resume), 8 when every case failed. "Nothing
// worked" apart from "some failed" (dcm2niix's convention): a wrong path or a missing mount
// fails every case, which a pipeline should not take for a partial success.
inline int outcome_exit_code(int64_t succeeded, int64_t failed) {
  if (failed == 0) return kExitOk;
  return succeeded > 0 ? kExitCaseFailed : kExitAllFailed;
}

// Options of `hemexp run`, as data: filled by CLI11, consumed by run_cases().
struct RunOptions {
  std::vector<std::string> inputs;
  std::string output_dir;
  std::string device = "cpu";
  int threads = 0;  // 0 = all cores
  std::string precision = "fp32";  // the segmentation network's convolutions: fp32, bf16, fp16 (CUDA)
  bool resume = false;
  bool overwrite = false;
  int shard_index = 1;  // --shard K/N: this process handles cases K, K+N, K+2N, ... (1-based)
  int shard_count = 1;
  std::string series_uid;
  uint64_t max_voxels = 512ull * 512 * 2000;  // a larger scan is a failed case, refused before it is read
  std::string seg_model;            // empty: the default model, if one is installed; "none": none
  std::string cls_model;            // the same for the expansion classifier
  bool save_probabilities = false;  // also write the foreground probability map
  bool qc = true;                   // write cases/<id>/qc.png
  std::string log_level = "info";
  bool progress = true;
  bool read_ahead = false;  // read the next case on a second thread while one is analysed (--read-ahead)
  std::string effective_config;  // the options given, as a TOML config that repeats the run (run.json `config`)
};

}  // namespace hemexp
