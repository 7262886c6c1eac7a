#pragma once

#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_pipeline.hpp"
#include "hemexp/app/case_result.hpp"
#include "hemexp/io/inputs.hpp"

namespace hemexp {
class FileLock;
}

namespace spdlog {
class logger;
}

namespace hemexp {

// How a cohort is split, resumed and reported; shared by every command that runs cases.
struct CohortOptions {
  std::vector<std::string> inputs;  // as -i takes them
  std::vector<CaseInput> cases;     // the cases themselves, instead of inputs (hemexp expansion)
  std::vector<LeftOut> left_out;    // what the search that found `cases` left out (logged, run.json)
  std::string output_dir;
  bool resume = false;
  bool overwrite = false;
  int shard_index = 1;  // this process handles cases K, K+N, K+2N, ... of the input list (1-based)
  int shard_count = 1;
  std::string log_level = "info";
  bool progress = true;
  bool read_ahead = false;  // read the next case on a second thread (run with a CaseReader)
};

// Analyses one case into its folder and returns its result. A bad scan must come back as a
// failed result, not an exception; an exception escaping is recorded as a failure all the same.
using CaseFunction =
    std::function<CaseResult(const CaseInput& input, const std::filesystem::path& case_dir, spdlog::logger& log)>;
// A case in two stages, so that reading case k+1 (ITK, decompression, DICOM assembly, tilt
// correction) overlaps the analysis of case k: the reader runs on a second thread, and the
// analysis gets its future (nullptr when read-ahead is off: the analysis reads for itself).
using CaseReader = std::function<ReadCase(const CaseInput& input, spdlog::logger& log)>;
using StagedCaseFunction = std::function<CaseResult(const CaseInput& input, const std::filesystem::path& case_dir,
                                                    spdlog::logger& log, std::future<ReadCase>* read)>;

// The cohort around the cases: output folder, input list, shards, resume, progress,
// results.csv (rewritten atomically after every case, in input order), run.json and the log.
// Use: (load models) -> prepare() -> open_log() -> run(f, run_info).
// SIGINT, SIGTERM and SIGHUP (a dropped ssh or `srun --pty` session) ask a run to stop between
// cases: the case being analysed is finished, the tables written, exit 5. A second signal ends
// the process at once. Held for a whole command, from before its models load; a holder made
// while another is held shares its state (the runner's own).
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  static int received();  // the first signal, 0 if none
};
const char* signal_name(int sig);

class CohortRunner {
 public:
  CohortRunner(CohortOptions options, std::vector<std::string> argv);
  ~CohortRunner();

  // Output folder writable, not silently mixed with an earlier run, and not in use by another
  // process for the same shard (a lock held until the runner is destroyed); inputs expanded;
  // this shard's cases chosen. Returns kExitOk, or the exit code to stop with (reason logged).
  int prepare();
  const std::vector<CaseInput>& cases() const { return cases_; }
  size_t cohort_size() const { return cohort_size_; }  // all shards

  // Opens OUTDIR's log (appended to when resuming), records argv, version and host.
  spdlog::logger& open_log();

  // Runs f on every case of the shard, keeping those a previous run finished when resuming and
  // whose fingerprint (CaseInput::fingerprint: input content, models, options) is unchanged;
  // f must record c.fingerprint in the result it writes. run_info (device, threads, models
  // role -> provenance with sha256, result_options, library versions) goes into run.json
  // beside the runner's own fields. SIGINT or SIGTERM end the run after the case being
  // analysed, with results.csv and run.json written (run.json `interrupted`); a second signal
  // stops at once. Returns kExitOk, kExitCaseFailed when some case failed, kExitAllFailed when
  // every case analysed failed and none succeeded or was kept, kExitInterrupted, or
  // kExitOutputFailed when results.csv or the final run.json could not be written.
  int run(const CaseFunction& f, const nlohmann::json& run_info);
  // The same with read-ahead (CohortOptions::read_ahead): at most one case is read ahead.
  int run(const StagedCaseFunction& f, const CaseReader& read, const nlohmann::json& run_info);

  // The file names of this process: a sharded run gets its own CSV, JSON and log so that
  // the N processes of a job array can share one OUTDIR without touching each other's files.
  std::string results_name() const;
  std::string run_json_name() const;
  std::string log_name() const;

 private:
  // stem + extension, or stem-K-of-N + extension for shard K of N.
  std::string shard_file_name(const std::string& stem, const std::string& extension) const;
  std::optional<CaseResult> previous_result(const CaseInput& c) const;  // an ok result with its mask

  CohortOptions options_;
  std::vector<std::string> argv_;
  std::filesystem::path out_;
  std::vector<CaseInput> cases_;
  size_t cohort_size_ = 0;
  std::vector<std::string> extra_columns_;
  std::string inputs_sha256_;  // of every case's id and path, all shards (run.json `inputs`)
  std::vector<LeftOut> left_out_;  // what the folder search left out (expand_inputs), logged and in run.json
  std::shared_ptr<spdlog::logger> log_;
  // OUTDIR/.hemexp.lock (exclusive, or shared by the shards of a job array) and a shard's own
  // .hemexp-K-of-N.lock (exclusive): one process per shard of an OUTDIR (lock_output_folder).
  std::unique_ptr<FileLock> folder_lock_, lock_;
  std::string lock_note_;  // why OUTDIR could not be locked, warned in the log
  int lock_output_folder();
  std::string file_of_another_split() const;
};

// run.json `left_out`: every path, by reason in the order first met (not under `inputs`, which
// `hemexp merge` requires to be the same in every shard: what was left out may change between a
// shard and its resume, and merge writes every shard's together through this).
nlohmann::json left_out_json(const std::vector<LeftOut>& left_out);

// Why a previous result cannot be kept for a case with fingerprint `expected` ("" when it can):
// no fingerprint (written before hemexp recorded one), input content changed, a model changed
// (which), options changed (which, from what to what).
std::string resume_mismatch(const CaseResult& previous, const nlohmann::json& expected);
// The previous result's mask (case_dir/mask.nii.gz) when that result is ok, has a hematoma
// block, and differs from `expected` only in the classification model (same input, same
// segmentation model, same options); empty otherwise. --resume then scores the kept mask with the
// new classifier instead of segmenting again (a saved probability.nii.gz stays: it is the same
// model's on the same input).
std::filesystem::path reusable_mask(const CaseResult& previous, const nlohmann::json& expected,
                                    const std::filesystem::path& case_dir);

// The progress line shown on a terminal: "[done/total] ok 3, failed 1, kept 0 | 0m42s
// elapsed, ETA 1m10s | <current>" (ETA "?" while unknown: the median case time times the
// cases left).
std::string progress_line(size_t done, size_t total, const std::map<std::string, int>& counts, double elapsed_s,
                          double eta_s, const std::string& current);

std::string utc_now();
std::string host_name();

// The split a file of a sharded run belongs to, from its name: {K, N} for run-K-of-N.json,
// results-K-of-N.csv, hemexp-K-of-N.log and .hemexp-K-of-N.lock; nullopt for any other name.
std::optional<std::pair<int, int>> shard_of_file(const std::string& file_name);

// The files `<stem>-K-of-N<extension>` of sharded runs in `folder` (stem "run", ".json": their
// records; "results", ".csv": their tables), ordered by N then K.
struct ShardFile {
  int index = 0, count = 0;
  std::filesystem::path path;
};
std::vector<ShardFile> shard_files(const std::filesystem::path& folder, const std::string& stem,
                                   const std::string& extension);

}  // namespace hemexp
