#include "hemexp/core/orientation.hpp"

#include <cmath>

namespace hemexp {

bool AxisMap::is_identity() const {
  for (int c = 0; c < 3; ++c)
    if (source_axis[c] != c || flipped[c]) return false;
  return true;
}

AxisMap canonical_axis_map(const Geometry& g) {
  // Assign each physical axis the index axis most aligned with it, strongest pairs first,
  // so oblique grids still get a unique assignment.
  AxisMap map;
  std::array<bool, 3> axis_used{false, false, false}, physical_used{false, false, false};
  for (int round = 0; round < 3; ++round) {
    double best = -1;
    int best_axis = -1, best_physical = -1;
    for (int j = 0; j < 3; ++j) {
      if (axis_used[j]) continue;
      for (int c = 0; c < 3; ++c) {
        if (physical_used[c]) continue;
        const double v = std::abs(g.direction[c * 3 + j]);
        if (v > best) best = v, best_axis = j, best_physical = c;
      }
    }
    axis_used[best_axis] = physical_used[best_physical] = true;
    map.source_axis[best_physical] = best_axis;
    map.flipped[best_physical] = g.direction[best_physical * 3 + best_axis] < 0;
  }
  return map;
}

Geometry to_canonical(const Geometry& g, const AxisMap& map) {
  Geometry out;
  Vec3 first_index{0, 0, 0};
  std::array<Vec3, 3> columns;
  for (int c = 0; c < 3; ++c) {
    const int j = map.source_axis[c];
    out.size[c] = g.size[j];
    out.spacing_mm[c] = g.spacing_mm[j];
    const Vec3 col = column(g.direction, j);
    columns[c] = map.flipped[c] ? -1.0 * col : col;
    if (map.flipped[c]) first_index[j] = double(g.size[j] - 1);
  }
  out.direction = from_columns(columns[0], columns[1], columns[2]);
  out.origin_mm = g.index_to_point(first_index);
  return out;
}

// Index axis j lives in tensor dimension 2 - j.
torch::Tensor to_canonical(const torch::Tensor& voxels, const AxisMap& map) {
  if (map.is_identity()) return voxels;
  std::vector<int64_t> dims(3);
  for (int c = 0; c < 3; ++c) dims[2 - c] = 2 - map.source_axis[c];
  torch::Tensor t = voxels.permute(dims);
  std::vector<int64_t> flips;
  for (int c = 0; c < 3; ++c)
    if (map.flipped[c]) flips.push_back(2 - c);
  if (!flips.empty()) t = t.flip(flips);
  return t.contiguous();
}

torch::Tensor from_canonical(const torch::Tensor& canonical_voxels, const AxisMap& map) {
  if (map.is_identity()) return canonical_voxels;
  std::vector<int64_t> flips;
  for (int c = 0; c < 3; ++c)
    if (map.flipped[c]) flips.push_back(2 - c);
  torch::Tensor t = flips.empty() ? canonical_voxels : canonical_voxels.flip(flips);
  // Inverse permutation: input tensor dim (2 - source_axis[c]) comes from canonical dim (2 - c).
  std::vector<int64_t> dims(3);
  for (int c = 0; c < 3; ++c) dims[2 - map.source_axis[c]] = 2 - c;
  return t.permute(dims).contiguous();
}

CanonicalVolume to_canonical(const Volume& v) {
  const AxisMap map = canonical_axis_map(v.geometry);
  return {Volume{to_canonical(v.geometry, map), to_canonical(v.voxels, map)}, map};
}

}  // namespace hemexp
