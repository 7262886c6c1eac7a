#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// What lies inside the skull of a canonical-orientation CT: a plausibility check that the
// scan is a head CT with a brain before a hematoma is looked for. A test object (e.g. an
// anthropomorphic phantom: a skull with air and plastic inserts inside) or a non-head series
// has bone but no brain-density tissue within it, and a hematoma network trained on heads
// can read uniform blood-density inserts as hemorrhage.
struct IntracranialContent {
  bool skull_found = false;      // the space enclosed by bone is at least min_intracranial_ml
  double volume_ml = 0.0;        // space enclosed by bone on axial slices (bone excluded)
  double median_hu = 0.0;        // of that space
  double brain_fraction = 0.0;   // fraction of it within [brain_low_hu, brain_high_hu)
  // Where the head sits in the field of view: the centroid of that space minus the centre of
  // the grid, physical (LPS) mm.
  Vec3 centroid_offset_mm{0.0, 0.0, 0.0};
  bool brain_like = true;        // false only when a skull was found with too little brain in it
  double brain_low_hu = 15.0, brain_high_hu = 45.0;  // the range used

  nlohmann::json to_json() const;
  // One line for a log or an error when !brain_like.
  std::string describe() const;
};

struct IntracranialOptions {
  double bone_hu = 300.0;            // voxels above are bone
  double closing_radius_mm = 2.0;    // gaps in the skull up to about twice this are bridged
  double brain_low_hu = 15.0, brain_high_hu = 45.0;
  double min_intracranial_ml = 50.0;
  double min_brain_fraction = 0.25;  // measured: real GE head 0.74-0.77, synthetic heads 0.66-0.94
};

// Binary closing of each (h, w) slice of a uint8 (slices, h, w) tensor by a (2 ry + 1) x
// (2 rx + 1) square: dilation, then erosion that treats everything outside the slice as set
// (so the border is not eaten). Separable running counts, slices in parallel; the same result
// as max pooling (tested against it).
torch::Tensor close_slices(const torch::Tensor& binary, int64_t ry, int64_t rx);

// Per axial slice (canonical index axis z): bone, closed by a square of closing_radius_mm,
// holes filled from the slice border; the enclosed non-bone voxels are intracranial.
IntracranialContent intracranial_content(const Volume& canonical, const IntracranialOptions& options = {});

}  // namespace hemexp
