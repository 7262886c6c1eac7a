#pragma once

#include "hemexp/core/model_file.hpp"
#include "hemexp/core/preprocessing.hpp"
#include "hemexp/core/sliding_window.hpp"

namespace hemexp {

// How a segmentation model is run, from the card's "inference" and "postprocessing" blocks.
struct SegmentationRecipe {
  Preprocessing preprocessing;
  std::array<int64_t, 3> patch_size{16, 112, 112};  // (z, y, x) at the model spacing
  double overlap = 0.5;
  bool mirror = false;
  double threshold = 0.5;         // on the foreground probability, on the input grid
  double min_component_ml = 0.0;  // smaller 26-connected components are removed
  // Components with fewer voxels than this fraction of the largest one are removed too (the
  // largest is always kept): scattered false positives beside a real hematoma.
  double min_component_fraction = 0.0;

  static SegmentationRecipe from_card(const nlohmann::json& card);
};

// The network input for a canonical-orientation CT volume: resampled to the model spacing and
// normalised, shape (1, z, y, x). model_grid receives the grid it lives on.
torch::Tensor prepare_network_input(const Volume& canonical, const Preprocessing& p, Geometry* model_grid);

struct Segmentation {
  torch::Tensor mask;         // uint8 (z, y, x) on the canonical grid of the input
  torch::Tensor probability;  // float32 foreground probability on the same grid
  int64_t removed_components = 0;
};

// Removes the 26-connected components of a uint8 mask smaller than min_ml, or with fewer
// voxels than min_fraction_of_largest times the largest component (which is always kept
// when only the fraction applies). removed receives how many components went.
torch::Tensor remove_small_components(const torch::Tensor& mask, const Geometry& g, double min_ml,
                                      double min_fraction_of_largest, int64_t* removed = nullptr);

// Runs the model on a canonical volume: prepare, sliding window (softmax), foreground
// probability resampled back onto the canonical grid, threshold, small components removed
// (remove_small_components with the card's min_component_ml and min_component_fraction).
Segmentation segment_hematoma(SegmentationModel& model, const SegmentationRecipe& recipe, const Volume& canonical,
                              const torch::Device& device);

}  // namespace hemexp
