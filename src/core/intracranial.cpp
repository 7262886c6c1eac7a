#include "hemexp/core/intracranial.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "hemexp/core/error.hpp"
#include "hemexp/core/statistics.hpp"

namespace hemexp {

namespace {

// Marks pixels of a (h, w) slice reachable from the slice border through non-wall pixels
// (4-connected): what is not reached and not wall is enclosed.
void flood_from_border(const uint8_t* wall, int64_t h, int64_t w, std::vector<uint8_t>& outside,
                       std::vector<int64_t>& stack) {
  outside.assign(size_t(h * w), 0);
  stack.clear();
  auto push = [&](int64_t i) {
    if (!wall[i] && !outside[size_t(i)]) {
      outside[size_t(i)] = 1;
      stack.push_back(i);
    }
  };
  for (int64_t x = 0; x < w; ++x) push(x), push((h - 1) * w + x);
  for (int64_t y = 0; y < h; ++y) push(y * w), push(y * w + w - 1);
  while (!stack.empty()) {
    const int64_t i = stack.back();
    stack.pop_back();
    const int64_t y = i / w, x = i % w;
    if (x > 0) push(i - 1);
    if (x + 1 < w) push(i + 1);
    if (y > 0) push(i - w);
    if (y + 1 < h) push(i + w);
  }
}

}  // namespace

IntracranialContent intracranial_content(const Volume& canonical, const IntracranialOptions& o) {
  check_matches(canonical.geometry, canonical.voxels, "intracranial check");
  torch::NoGradGuard no_grad;
  const Geometry& g = canonical.geometry;
  const int64_t nz = g.size[2], h = g.size[1], w = g.size[0];
  // Closing (dilate then erode) of the bone with a square, per slice, by max pooling; in
  // chunks of slices so that a thin-slice scan needs little memory beyond its own voxels.
  const int64_t ry = std::max<int64_t>(1, std::lround(o.closing_radius_mm / g.spacing_mm[1]));
  const int64_t rx = std::max<int64_t>(1, std::lround(o.closing_radius_mm / g.spacing_mm[0]));
  const std::vector<int64_t> k{2 * ry + 1, 2 * rx + 1}, pad{ry, rx}, stride{1, 1};
  constexpr int64_t kChunk = 16;
  std::vector<uint8_t> outside;
  std::vector<int64_t> stack;
  std::vector<float> inside;  // HU of the enclosed voxels
  double sum_x = 0, sum_y = 0, sum_z = 0;  // of their indices
  for (int64_t z0 = 0; z0 < nz; z0 += kChunk) {
    const torch::Tensor hu = canonical.voxels.slice(0, z0, std::min(nz, z0 + kChunk)).to(torch::kFloat32).contiguous();
    const torch::Tensor bone = (hu > float(o.bone_hu)).to(torch::kFloat32).unsqueeze(1);  // (z,1,h,w)
    // A square is a row times a column: two 1D poolings instead of one 2D.
    const auto max_square = [&](const torch::Tensor& t, std::vector<int64_t> p) {
      const torch::Tensor rows = torch::max_pool2d(t, {1, k[1]}, stride, {0, p[1]});
      return torch::max_pool2d(rows, {k[0], 1}, stride, {p[0], 0});
    };
    const torch::Tensor dilated = max_square(bone, pad);
    // Erosion pads with 1 (as if bone continued outside the slice) so the border is not eaten.
    const torch::Tensor padded = torch::constant_pad_nd(dilated, {rx, rx, ry, ry}, 1.0);
    const torch::Tensor wall = (max_square(-padded, {0, 0}) < -0.5).squeeze(1).to(torch::kUInt8).contiguous();
    const uint8_t* wp = wall.data_ptr<uint8_t>();
    const float* hp = hu.data_ptr<float>();
    for (int64_t z = 0; z < wall.size(0); ++z) {
      const uint8_t* ws = wp + z * h * w;
      const float* hs = hp + z * h * w;
      flood_from_border(ws, h, w, outside, stack);
      for (int64_t i = 0; i < h * w; ++i)
        if (!ws[i] && !outside[size_t(i)]) {
          inside.push_back(hs[i]);
          sum_x += double(i % w);
          sum_y += double(i / w);
          sum_z += double(z0 + z);
        }
    }
  }
  IntracranialContent r;
  r.brain_low_hu = o.brain_low_hu;
  r.brain_high_hu = o.brain_high_hu;
  const size_t n = inside.size();
  r.volume_ml = double(n) * g.voxel_volume_mm3() / 1000.0;
  r.skull_found = r.volume_ml >= o.min_intracranial_ml;
  if (n > 0) {
    const int64_t in_range = std::count_if(inside.begin(), inside.end(), [&](float v) {
      return v >= float(o.brain_low_hu) && v < float(o.brain_high_hu);
    });
    r.brain_fraction = double(in_range) / double(n);
    r.median_hu = median(std::vector<double>(inside.begin(), inside.end()));
    const Vec3 centroid = g.index_to_point({sum_x / double(n), sum_y / double(n), sum_z / double(n)});
    const Vec3 centre = g.index_to_point({0.5 * double(w - 1), 0.5 * double(h - 1), 0.5 * double(nz - 1)});
    for (int a = 0; a < 3; ++a) r.centroid_offset_mm[size_t(a)] = centroid[size_t(a)] - centre[size_t(a)];
  }
  r.brain_like = !r.skull_found || r.brain_fraction >= o.min_brain_fraction;
  return r;
}

nlohmann::json IntracranialContent::to_json() const {
  return {{"skull_found", skull_found},
          {"volume_ml", volume_ml},
          {"median_hu", median_hu},
          {"brain_fraction", brain_fraction},
          {"centroid_offset_mm", centroid_offset_mm}};
}

std::string IntracranialContent::describe() const {
  char buf[256];
  if (!skull_found)
    std::snprintf(buf, sizeof buf, "no closed skull found (%.0f mL enclosed by bone)", volume_ml);
  else
    std::snprintf(buf, sizeof buf, "%.0f mL inside the skull, median %.0f HU, %.0f%% in the brain range %.0f to %.0f HU",
                  volume_ml, median_hu, 100.0 * brain_fraction, brain_low_hu, brain_high_hu);
  return buf;
}

}  // namespace hemexp
