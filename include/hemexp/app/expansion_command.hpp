#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_result.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/io/inputs.hpp"

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp expansion`: measured hematoma expansion between baseline and follow-up scans.
struct ExpansionOptions {
  std::string pairs_csv;   // --pairs: pair_id, baseline, followup[, hours_between, ...]
  std::string pairs_from;  // --pairs-from: a study folder whose DICOM scans are paired by patient and date
  RunOptions run;          // every run option but -i (the scans come from the pairs)
};

CLI::App* setup_expansion(CLI::App& app, ExpansionOptions& options);
int run_expansion(const ExpansionOptions& options, const std::vector<std::string>& argv);

// A baseline scan and a later scan of the same patient.
struct ScanPair {
  std::string pair_id;
  std::filesystem::path baseline, followup;  // as `run -i` takes them
  std::optional<double> hours_between;       // follow-up time minus baseline time
  std::vector<std::pair<std::string, std::string>> extra;  // other columns, carried through
  std::string hours_source = "pairs.csv";  // where hours_between came from: pairs.csv, dicom
};

// PAIRS.csv: a header with pair_id, baseline, followup (required), hours_between (optional,
// may be empty) and any other columns (carried into expansion.csv). Relative paths are taken
// from the file's folder. CoreError naming the line for a missing column, an empty or repeated
// pair_id, an empty path, or an hours_between that is not a number.
std::vector<ScanPair> read_pairs(const std::filesystem::path& csv);

// The scans of a study folder paired by patient and date: per PatientID, one scan per study
// (the series with the most images; the others reported), ordered by date and time; the first
// is the baseline of a pair with each later one (pair_id PATIENT_fuK). Nothing is guessed: a
// patient with one scan, a scan without PatientID or usable date (and then the whole patient),
// two studies of a patient at the same time, are reported in `problems`, not paired. The
// pairs carry patient_id, baseline_datetime and followup_datetime as extra columns.
struct StudyPairing {
  std::vector<ScanPair> pairs;
  std::vector<std::string> problems;
};
StudyPairing pair_study_scans(const std::vector<StudyScan>& scans);

// pairs.csv of a pairing: what read_pairs reads back.
std::string pairs_csv_text(const std::vector<ScanPair>& pairs);

// Hours from one "YYYY-MM-DDTHH:MM:SS[.F]" stamp (DicomHeader::datetime) to another; nullopt
// when either is not such a stamp.
std::optional<double> hours_between(const std::string& from, const std::string& to);

// The measured change of one pair (expansion.csv row, pairs/<pair_id>/expansion.json).
struct PairResult {
  std::string pair_id;
  std::string status = "ok";  // ok; failed (a scan failed); pending (a scan not analysed yet)
  std::string error;
  std::string baseline_case_id, followup_case_id;
  std::string baseline_path, followup_path;
  std::optional<double> hours_between;
  std::string hours_source;  // "pairs.csv", "dicom" or empty
  std::optional<double> baseline_ml, followup_ml, growth_ml, growth_fraction;
  std::map<std::string, bool> labels;  // ExpansionDefinition::column -> expansion
  std::optional<double> he_probability;  // the baseline's, when a classifier scored it
  std::string he_risk;
  std::vector<std::string> qc_flags;
  std::vector<std::pair<std::string, std::string>> extra;

  nlohmann::json to_json() const;
  std::map<std::string, std::string> csv_row() const;
  // expansion.csv columns; the pairs' extra columns follow these.
  static const std::vector<std::string>& csv_columns();
};

// Thresholds of the pair QC flags.
struct PairQcLimits {
  double intracranial_change = 0.15;     // head_coverage_changed: relative change of the intracranial volume
  double head_shift_mm = 30.0;           // head_position_changed: shift of the head within the field of view
  double field_of_view_ratio = 1.25;     // field_of_view_changed: in-plane extent ratio
  double slice_spacing_ratio = 1.5;      // slice_spacing_changed
};

// The pair from the results of its two scans (nullopt: not analysed yet). Growth and the
// labels of every definition come from the hematoma volumes; the flags: followup_before_baseline,
// baseline_without_hematoma, baseline_/followup_hematoma_touches_border, head_coverage_changed,
// head_position_changed, field_of_view_changed, slice_spacing_changed, different_patients.
PairResult measure_pair(const ScanPair& pair, const std::string& baseline_id, const std::optional<CaseResult>& baseline,
                        const std::string& followup_id, const std::optional<CaseResult>& followup,
                        const PairQcLimits& limits = {});

// The pair that gives each baseline its label: of its ok pairs whose follow-up is not before
// or at the baseline's time, the one closest to 24 h (the first listed when hours are
// unknown); one per baseline, in order of first appearance.
std::vector<const PairResult*> label_pairs(const std::vector<PairResult>& pairs);

// labels.csv: one row per label_pairs pair (case_id = the baseline's case id, what `hemexp
// prepare --run OUTDIR --labels` reads): pair_id, followup_hours, growth_ml and a column per
// definition.
std::string labels_csv_text(const std::vector<PairResult>& pairs);

}  // namespace hemexp
