#pragma once

#include <array>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// Measurements of a hematoma mask on its grid (the `hematoma` block of result.json).
struct HematomaMeasurements {
  int64_t voxels = 0;
  double volume_ml = 0.0;       // voxels x voxel volume
  double abc2_volume_ml = 0.0;  // the bedside ABC/2 estimate, from the mask (see measure_hematoma)
  double mean_hu = 0.0, std_hu = 0.0, p10_hu = 0.0, p90_hu = 0.0;
  int64_t components = 0;          // 26-connected
  // Exposed voxel faces x 2/3: unbiased for curved surfaces (isotropic normals; a ball is
  // within 5%), but flat faces aligned with the grid come out 1/3 too small.
  double surface_area_mm2 = 0.0;
  double sphericity = 0.0;         // pi^(1/3) (6 V)^(2/3) / area; 1 for a ball
  bool touches_border = false;     // some mask voxel lies on the edge of the volume

  nlohmann::json to_json() const;
};

// mask: uint8/bool (z, y, x), nonzero = hematoma; hu: float (z, y, x) on the same grid g.
// ABC/2: on the slice (index axis 2) with the largest area, A = the longest chord between voxel
// centres plus one pixel, B = the widest extent perpendicular to A plus one pixel, C = the
// number of slices holding hematoma times the slice spacing; volume = A B C / 2.
// An empty mask gives zeros (statistics of an empty set are reported as 0).
HematomaMeasurements measure_hematoma(const torch::Tensor& mask, const torch::Tensor& hu, const Geometry& g);

// Surface area of a mask (nonzero = inside) on grid g: the exposed voxel faces weighted by
// their area, times 2/3 (see HematomaMeasurements::surface_area_mm2 for its accuracy).
double surface_area_mm2(const torch::Tensor& mask, const Geometry& g);

// The smallest box holding every nonzero voxel of a (z, y, x) mask, in tensor order: begin
// and size per dim; empty() when the mask has none. Measuring inside the box gives the same
// numbers as on the whole volume at a fraction of the cost (a hematoma is a few mL of a
// 512 x 512 x 300 volume).
struct MaskBox {
  std::array<int64_t, 3> begin{0, 0, 0}, size{0, 0, 0};
  bool empty() const { return size[0] == 0; }
  torch::Tensor crop(const torch::Tensor& volume) const;  // a view of the box
  Geometry crop(const Geometry& g) const;                 // spacing kept, size of the box
  // The box grown by `by` voxels on each side per dim (z, y, x), clipped to `volume`'s extent.
  MaskBox grown(const std::array<int64_t, 3>& by, const torch::Tensor& volume) const;
};
MaskBox mask_bounding_box(const torch::Tensor& mask);

// Dilation of a (z, y, x) mask (nonzero = set) by a box of 2 r + 1 voxels per dim, radius r in
// (z, y, x) order; beyond the volume counts as unset (as max pooling with r of padding). Running
// counts: the cost does not grow with the radius. Returns bool, on the mask's device.
torch::Tensor dilate_box(const torch::Tensor& mask, const std::array<int64_t, 3>& radius);

// Number of 26-connected components of a mask, and a label volume (int32, 0 = background,
// components numbered 1.. in scan order) when labels is not null.
int64_t connected_components(const torch::Tensor& mask, torch::Tensor* labels = nullptr);

// The bounding box of each label 1..n of a label volume (int32, as connected_components gives),
// in one pass: element k is label k's box (element 0, the background, and absent labels: empty).
std::vector<MaskBox> label_boxes(const torch::Tensor& labels, int64_t n);

// How many voxels of a uint8 label map hold each code 0..255, in one pass on the ATen threads
// (a comparison per code would read a 512 x 512 x 300 map once per label).
std::array<int64_t, 256> code_counts(const torch::Tensor& codes);

}  // namespace hemexp
