#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// Overlap and distance between a predicted and a true mask on the same grid g.
struct SegmentationMetrics {
  double dice = 0.0;               // 1 when both masks are empty
  double iou = 0.0;                // 1 when both masks are empty
  double hd95_mm = 0.0;            // NaN when exactly one mask is empty; 0 when both are
  double predicted_volume_ml = 0.0;
  double true_volume_ml = 0.0;
  double volume_abs_error_ml = 0.0;
};

SegmentationMetrics compare_masks(const torch::Tensor& predicted, const torch::Tensor& truth, const Geometry& g);

// 95th-percentile symmetric Hausdorff distance between the surfaces (voxels with a 6-neighbour
// outside the mask) of two non-empty masks, in mm: max of the two directed 95th percentiles.
double hausdorff95_mm(const torch::Tensor& a, const torch::Tensor& b, const Geometry& g);

// Squared distance (mm^2) from every voxel of a (z, y, x) grid with spacing g.spacing_mm to the
// nearest voxel of `features` (bool), exact (Felzenszwalb & Huttenlocher, one pass per axis, so
// O(voxels)); infinity everywhere when there is no feature. Only the spacing of g is used, so a
// cropped box of a volume can be passed with the volume's grid.
torch::Tensor squared_distance_map(const torch::Tensor& features, const Geometry& g);

// Area under the ROC curve (Mann-Whitney, ties count one half). NaN without both classes.
double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels);

// Brier score and expected calibration error (equal-width bins) of probabilities.
double brier_score(const std::vector<double>& probabilities, const std::vector<int>& labels);
double expected_calibration_error(const std::vector<double>& probabilities, const std::vector<int>& labels,
                                  int bins = 10);

// Bootstrap percentile confidence interval of the AUC: `resamples` resamples of the cases
// with replacement (a fixed-seed generator of our own, so reports are reproducible);
// resamples that lack a class are drawn again. {NaN, NaN} without both classes.
std::array<double, 2> roc_auc_ci95(const std::vector<double>& scores, const std::vector<int>& labels,
                                   int resamples = 2000, uint64_t seed = 1);

// Calibration slope and intercept: the logistic regression of the label on logit(p)
// (Newton's method with step halving; p clipped to [1e-6, 1 - 1e-6]). A calibrated model has
// slope 1 and intercept 0; slope < 1 means overconfident. {NaN, NaN} without both classes, and
// when logit(p) separates them (every expansion at or above every other case, or at or below:
// the likelihood then grows without end and there is no slope to report).
struct CalibrationFit {
  double slope = 0.0, intercept = 0.0;
};
CalibrationFit calibration_fit(const std::vector<double>& probabilities, const std::vector<int>& labels);

// The confusion counts and rates of `probability >= threshold` as the expansion call.
struct BinaryMetrics {
  int64_t tp = 0, fp = 0, tn = 0, fn = 0;
  double accuracy() const;
  double sensitivity() const;  // NaN without positives
  double specificity() const;  // NaN without negatives
  double ppv() const;          // NaN when nothing is called positive
  double npv() const;
};
BinaryMetrics binary_metrics(const std::vector<double>& probabilities, const std::vector<int>& labels, double threshold);
// Each case called at its own threshold (cases scored by different classifiers).
BinaryMetrics binary_metrics(const std::vector<double>& probabilities, const std::vector<int>& labels,
                             const std::vector<double>& thresholds);

// Discrimination (AUC with its bootstrap CI), calibration (Brier, ECE over 10 bins, slope and
// intercept, mean probability) and, for a finite threshold, the decision `p >= threshold`
// (counts, accuracy, sensitivity, specificity, PPV, NPV) of predicted probabilities; values
// that are undefined (one class only) are null. null for no cases. With one threshold per case,
// each case is called at its own; when they differ, "threshold" is null and
// "threshold_per_case" true.
nlohmann::json classification_report(const std::vector<double>& probabilities, const std::vector<int>& labels,
                                     double threshold);
nlohmann::json classification_report(const std::vector<double>& probabilities, const std::vector<int>& labels,
                                     const std::vector<double>& thresholds);

}  // namespace hemexp
