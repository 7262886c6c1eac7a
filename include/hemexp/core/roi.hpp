#pragma once

#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// One input channel of the expansion classifier's ROI.
struct RoiChannel {
  std::string name;
  bool is_mask = false;  // the hematoma mask (name "mask") rather than a CT window
  // CT window: HU mapped linearly, window_low_hu -> 0 and window_high_hu -> 1, then clipped.
  double window_low_hu = 0.0, window_high_hu = 0.0;
};

// The classifier's view of a hematoma, from its model card's "roi" block:
//   "roi": {"size": [16, 64, 64],              (z, y, x) voxels, each 1..256, <= 2^22 per channel
//           "spacing_mm": [1.5, 1.5, 4.0],     (x, y, z) like preprocessing.spacing_mm, each in (0, 20]
//           "channels": [{"name": "brain", "window_hu": [0, 80]},
//                        {"name": "blood", "window_hu": [40, 90]},
//                        {"name": "mask"}],     1..8 channels, unique names
//           "centre": "mask_centroid"}         the only centre for now
struct RoiRecipe {
  std::array<int64_t, 3> size{16, 64, 64};  // (z, y, x)
  Vec3 spacing_mm{1.5, 1.5, 4.0};           // (x, y, z)
  std::vector<RoiChannel> channels;
  std::string centre = "mask_centroid";

  // Physical extent of the box in mm, (x, y, z): size x spacing (96 x 96 x 64 mm above).
  Vec3 extent_mm() const;

  // Validates every field; a CoreError names the field ("model card: roi.size ...").
  static RoiRecipe from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// A box of fixed physical size (recipe spacing x size) around the hematoma. The scale is fixed
// on purpose, never fitted to the clot: a hematoma fills as much of the ROI as its real size,
// so the classifier sees the baseline volume, one of the strongest predictors of expansion.
struct Roi {
  torch::Tensor image;  // float32 (C, D, H, W) = (channels, size z, size y, size x), values in [0, 1]
  Geometry grid;        // the ROI's grid: the volume's direction, the recipe's spacing and size
  Vec3 centre_mm{0, 0, 0};  // the mask centroid, at continuous ROI index (size - 1) / 2
  int64_t mask_voxels = 0;  // hematoma voxels on the input grid
  // Share of the hematoma's voxels whose centres fall inside the ROI box (the voxels' extent,
  // index -0.5 .. size - 0.5): below 1 the hematoma was cut and the ROI shows only part of it.
  double mask_fraction_inside = 0.0;
};

// canonical_ct_hu: a canonical-orientation CT in HU; canonical_mask: the hematoma (nonzero)
// on its grid. Each ROI voxel is sampled at its physical point: CT trilinear, with positions
// outside the scan taken as air (-1000 HU), not the nearest edge value, so a clot at the edge
// of the scan is not smeared outwards; the mask trilinear of its 0/1 values (0 outside).
// Only the block of the volume under the ROI is read. Throws CoreError("no hematoma: ...")
// for an empty mask and when a tensor does not match the grid.
Roi build_roi(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask, const RoiRecipe& recipe);

}  // namespace hemexp
