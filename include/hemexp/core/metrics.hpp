#pragma once

#include <vector>

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

}  // namespace hemexp
