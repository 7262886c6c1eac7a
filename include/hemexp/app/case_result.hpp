#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/intracranial.hpp"
#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/io/reader.hpp"

namespace hemexp {

nlohmann::json geometry_json(const Geometry& g);
Geometry geometry_from_json(const nlohmann::json& j);
// The `input` block of result.json, and back.
nlohmann::json input_json(const InputInfo& info);
InputInfo input_from_json(const nlohmann::json& j);

// The expansion-risk block of a case (`he` in result.json), filled by the classifier.
struct ExpansionRisk {
  std::optional<double> probability;  // absent, with a reason, when there is nothing to score
  std::optional<double> logit;        // the network's output before calibration
  std::string risk;                   // the card's category: low, intermediate, high
  std::optional<double> roi_mask_fraction_inside;  // share of the hematoma inside the ROI
  double threshold = 0.0;             // the card's decision threshold on the probability
  bool calibrated = false;
  std::string reason;                 // why the probability is absent
  nlohmann::json model;               // provenance of the classifier
  nlohmann::json signs;               // {sign: probability} from a card with a sign layer, else null

  nlohmann::json to_json() const;
  static ExpansionRisk from_json(const nlohmann::json& j);
};

// A further label of a multi-class segmenter (intraventricular blood, perihematomal edema):
// its code in labels.nii.gz and its volume on the input grid.
struct LabelVolume {
  int code = 0;
  int64_t voxels = 0;
  double volume_ml = 0.0;
};

// Everything known about one case: what result.json holds and results.csv shows. The one
// place both files come from, and what --resume reads back.
struct CaseResult {
  std::string case_id;
  std::string status = "ok";  // ok, failed, skipped
  std::string error;          // one line, for a failed case
  std::string input_path;
  // Set once the scan was read: the input's description; and the QC flags raised by the
  // analysis. A case that fails while reading records only its path.
  std::optional<InputInfo> input;
  std::vector<std::string> qc_flags;
  std::optional<IntracranialContent> intracranial;
  std::optional<HematomaMeasurements> hematoma;
  std::map<std::string, LabelVolume> labels;  // by the card's label name (codes >= 2); none for a two-class model
  std::optional<NcctMarkers> markers;
  std::optional<ExpansionRisk> he;
  std::string corrected_ct;                     // file name of the corrected CT, when written
  std::map<std::string, double> timings_s;      // per stage
  std::map<std::string, nlohmann::json> models;  // role ("segmentation") -> provenance
  nlohmann::json fingerprint;                   // CaseInput::fingerprint of the analysis
  double seconds = 0.0;                         // the whole case
  std::string hemexp_version;

  nlohmann::json to_json() const;
  // CoreError when j is not a result.json of this format.
  static CaseResult from_json(const nlohmann::json& j);

  // The results.csv row: column -> formatted value (missing columns are empty).
  std::map<std::string, std::string> csv_row() const;
  // results.csv columns, in order.
  static const std::vector<std::string>& csv_columns();

  // result.json, written atomically; read back (nullopt when missing or unreadable).
  void write(const std::filesystem::path& file) const;
  static std::optional<CaseResult> read(const std::filesystem::path& file);
};

// The files of a case folder (cases/<case_id>/), named once: what a case writes and what is
// removed when it fails come from here.
struct CaseFiles {
  static constexpr const char* kResult = "result.json";
  static constexpr const char* kMask = "mask.nii.gz";                // uint8 hematoma mask, input grid
  static constexpr const char* kLabels = "labels.nii.gz";            // uint8 label codes, multi-class models
  static constexpr const char* kProbability = "probability.nii.gz";  // --save-probabilities
  static constexpr const char* kQc = "qc.png";                       // unless --no-qc
  static constexpr const char* kCorrectedCt = "ct.nii.gz";           // when reading resampled the grid
  // Every output of a case but result.json: none may survive a failed attempt.
  static const std::vector<std::string>& outputs();
  static void remove_outputs(const std::filesystem::path& case_dir);
};

// A bounded, one-line reason for results.csv.
std::string one_line(const std::string& what);

// The input path of a result.json's "input" object, exactly: its "path_bytes" where the name is
// not UTF-8 (the "path" text then holds U+FFFD in place of those bytes).
std::string input_path_of(const nlohmann::json& input);

// The case ids a run lists in its results table (results.csv; else, for a job array not merged
// yet, its shards' results-K-of-N.csv), in table order; nullopt when it has none (a run stopped
// before writing one). Case folders an earlier run left in OUTDIR are not the run's.
std::optional<std::vector<std::string>> listed_case_ids(const std::filesystem::path& run);

// The folders a run was started in (run.json `working_directory`, else each shard record's by
// shard number; unknown ones skipped), where its relative input paths start.
std::vector<std::filesystem::path> run_working_folders(const std::filesystem::path& run);

// A case's input as the run read it: a relative path from the first of the run's working
// folders where the file is, else as it is (a run folder copied elsewhere and evaluated from its
// own root still finds its inputs as given).
std::filesystem::path run_input_path(const std::vector<std::filesystem::path>& working_folders, const std::string& input);

}  // namespace hemexp
