#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp prepare`: network-ready training files made by the code `run` uses, so training and
// inference agree.
//  - Segmentation card (a "preprocessing" block): synth folders (<case>/ct.nii.gz + mask.nii.gz)
//    -> canonical orientation, resampling to the card's spacing, CT normalisation; image + label.
//  - Classifier card (a "roi" block): synth folders (true masks, labels.csv) or a run folder
//    (predicted masks) with a labels CSV -> the classifier's ROI, the hematoma volume and the
//    NCCT markers, one row per case in cases.csv.
struct PrepareOptions {
  std::vector<std::string> synth_dirs;
  std::string run_dir;     // classifier ROIs from the masks of a `hemexp run` folder
  std::string labels_csv;  // with run_dir: case_id,he_label (run case ids or synth case folders)
  std::string card_path;   // JSON with a "preprocessing" or a "roi" block
  std::string output_dir;
  std::string log_level = "info";
};

CLI::App* setup_prepare(CLI::App& app, PrepareOptions& options);
int run_prepare(const PrepareOptions& options);

}  // namespace hemexp
