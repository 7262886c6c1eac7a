#pragma once

#include <array>
#include <optional>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// How a model wants its input, from the model card's "preprocessing" block.
struct Preprocessing {
  Vec3 spacing_mm{1.0, 1.0, 1.0};  // (x, y, z) of the model grid
  double clip_low_hu = -1024.0;    // CT normalisation: clip, then (v - mean) / std
  double clip_high_hu = 3071.0;
  double mean_hu = 0.0;
  double std_hu = 1.0;

  static Preprocessing from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// The grid with the same origin and direction, the given spacing, and the size that covers
// the same extent (at least one voxel per axis).
Geometry grid_with_spacing(const Geometry& g, const Vec3& spacing_mm);

// Linear resampling of voxels (..., z, y, x) from grid `from` onto grid `to`, which must share
// origin and direction (only spacing and size differ): separable, so memory stays a small
// multiple of the output. Positions outside `from` take the nearest edge value.
torch::Tensor resample_between_grids(const torch::Tensor& voxels, const Geometry& from, const Geometry& to);

// The block [begin, end) (tensor order z, y, x) of `to` of what resample_between_grids gives,
// computed alone: the same positions and arithmetic, so exactly the same values as that block
// of the whole, at the cost and memory of the block.
torch::Tensor resample_block_between_grids(const torch::Tensor& voxels, const Geometry& from, const Geometry& to,
                                           const std::array<int64_t, 3>& begin, const std::array<int64_t, 3>& end);

// Linear interpolation along tensor dimension `dim`: out_size samples at the continuous input
// positions first + k * step (k = first_k .. first_k + out_size - 1, in input voxels; a
// first_k > 0 gives exactly those samples of a longer interpolation from k = 0). Without `outside`,
// positions beyond the input take the nearest edge value; with it, the input is treated as
// surrounded by voxels of that value (a position half a voxel past the edge is half edge,
// half outside). Bool or integer input gives float32 (with `outside`, converted after
// gathering): a mask is interpolated, never truncated to its integer type. Applied
// once per axis this is trilinear interpolation on an axis-aligned grid.
torch::Tensor interpolate_axis(const torch::Tensor& x, int64_t dim, int64_t out_size, double first, double step,
                               std::optional<double> outside = std::nullopt, int64_t first_k = 0);

// Trilinear value of a volume at a continuous index (x, y, z); indices outside the grid are
// clamped to its edge.
double sample_trilinear(const Volume& v, const Vec3& continuous_index);

// Clip and standardise HU as the card says.
torch::Tensor normalize_ct(const torch::Tensor& hu, const Preprocessing& p);

}  // namespace hemexp
