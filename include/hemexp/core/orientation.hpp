#pragma once

#include <array>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// The canonical internal orientation: index axes permuted and flipped so that the direction
// matrix is as close as possible to identity in LPS (x towards patient left, y towards
// posterior, z towards superior; ITK calls this "RAI"). Only permutations and flips are
// used, so voxels are moved, never interpolated, and the way back is exact.
struct AxisMap {
  // Canonical axis c takes input index axis source_axis[c] ...
  std::array<int, 3> source_axis{0, 1, 2};
  // ... reversed when the input axis points the opposite way.
  std::array<bool, 3> flipped{false, false, false};

  bool is_identity() const;
};

// The map that brings a grid to canonical orientation.
AxisMap canonical_axis_map(const Geometry& g);

// Geometry of the canonical grid (same physical points, permuted/flipped index axes).
Geometry to_canonical(const Geometry& g, const AxisMap& map);
// Voxels (z,y,x) of the input grid -> voxels of the canonical grid.
torch::Tensor to_canonical(const torch::Tensor& voxels, const AxisMap& map);
// Voxels of the canonical grid -> voxels on the input grid (exact inverse of to_canonical).
torch::Tensor from_canonical(const torch::Tensor& canonical_voxels, const AxisMap& map);

// A volume brought to canonical orientation, with the map that takes results back.
struct CanonicalVolume {
  Volume volume;  // canonical grid and voxels
  AxisMap map;    // from_canonical(t, map) puts a canonical tensor back on the input grid
};
CanonicalVolume to_canonical(const Volume& v);

}  // namespace hemexp
