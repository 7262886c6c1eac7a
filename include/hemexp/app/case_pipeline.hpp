#pragma once

#include <filesystem>
#include <future>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_result.hpp"
#include "hemexp/core/classifier.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"

namespace spdlog {
class logger;
}

namespace hemexp {

// What the analysis of every case needs, loaded once per run and shared read-only.
struct CasePipeline {
  ReadOptions read;
  std::optional<Segmenter> segmenter;    // none: masks stay empty (--seg-model none)
  std::optional<Classifier> classifier;  // none: he_probability stays blank (--cls-model none)
  bool save_probabilities = false;
  bool qc = true;

  // Role -> provenance of each model loaded (result.json and run.json `models`).
  std::map<std::string, nlohmann::json> models() const;
};

// A case goes through these stages, each recording what it learns in the CaseResult as it goes,
// so a failure keeps everything learnt before it:

// 1. Reading: the scan as a volume in HU on its (corrected) grid, and how long it took. Throws
//    IoError. Safe to run on a second thread while another case is analysed (read-ahead).
struct ReadCase {
  LoadedVolume loaded;
  double seconds = 0.0;
};
ReadCase read_case(const CaseInput& input, const CasePipeline& pipeline, spdlog::logger& log);

// 2. Segmentation of a loaded volume, no files: canonical orientation, brain check, the masks.
//    Throws (CoreError) for a scan that is not a head CT with a brain.
struct CaseAnalysis {
  CanonicalVolume canonical;
  torch::Tensor canonical_mask;  // uint8 (z,y,x), canonical grid
  torch::Tensor mask;            // uint8 (z,y,x), the input grid
  // A multi-class segmenter's label codes (uint8), canonical and input grid; undefined otherwise.
  torch::Tensor canonical_labels, labels;
  torch::Tensor probability;     // float32 (z,y,x), the input grid; only with save_probabilities
};
// reuse_mask (uint8, the input grid), when defined, replaces the segmentation (CaseInput::reuse_mask):
// the hematoma mask, or for a multi-class segmenter its label map.
CaseAnalysis segment_case(const Volume& volume, const CasePipeline& pipeline, CaseResult& result,
                          spdlog::logger& log, const torch::Tensor& reuse_mask = {});

// 3. Measurements: label volumes, the hematoma's measurements and NCCT markers (nothing without a
//    segmenter). Touches no file.
void measure_case(const Volume& volume, const CaseAnalysis& analysis, const CasePipeline& pipeline,
                  CaseResult& result, spdlog::logger& log);

// 4. The measurements (3), and beside them the CaseFiles of the case folder on the input's
//    exact grid (run_side_by_side: the measurements are mostly one thread's work, and so is each
//    file). With two or more threads every task finishes, and a failure of the measurements is
//    the one rethrown before a file's; with one, they come first and their failure stops the rest.
void measure_and_write_case(const std::filesystem::path& case_dir, const LoadedVolume& loaded,
                            const CaseAnalysis& analysis, const CasePipeline& pipeline, CaseResult& result,
                            spdlog::logger& log);

// 5. Expansion risk (classify_case): the `he` block of a measured case, on all of LibTorch's
//    threads (nothing without a classifier or measurements). expansion_risk gives it: the
//    classifier's calibrated probability and risk, or no probability with the reason (no
//    hematoma, or one below the card's min_volume_ml). The markers and measurements feed the
//    classifier's scalar features when its card has them; ivh_volume_ml is the segmenter's
//    intraventricular blood (NaN: a segmenter without that label).
ExpansionRisk expansion_risk(const Classifier& classifier, const CaseAnalysis& analysis,
                             const HematomaMeasurements& hematoma, const NcctMarkers& markers,
                             double ivh_volume_ml);
void classify_case(const CaseAnalysis& analysis, const CasePipeline& pipeline, CaseResult& result,
                   spdlog::logger& log);

// The stages for one input, into case_dir, with result.json. Never throws for a bad
// scan: the result says failed, why, and no output of the attempt is left behind. With
// read_ahead, the reading was started earlier (CohortRunner's read-ahead): its result, or its
// exception, is taken from there, and the time waited for it is recorded (`read_wait`).
CaseResult process_case(const CaseInput& input, const std::filesystem::path& case_dir, const CasePipeline& pipeline,
                        spdlog::logger& log, std::future<ReadCase>* read_ahead = nullptr);

}  // namespace hemexp
