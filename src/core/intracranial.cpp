#include "hemexp/core/intracranial.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/statistics.hpp"
#include "dilation.hpp"

namespace hemexp {

namespace {

// Marks pixels of a (h, w) slice reachable from the slice border through non-wall pixels
// (4-connected): what is not reached and not wall is enclosed. A scanline fill: each popped seed
// fills its whole open run of the row, then pushes the first pixel of every open run just above
// and below it (rows in memory order, one stack entry per run instead of per pixel).
void flood_from_border(const uint8_t* wall, int64_t h, int64_t w, std::vector<uint8_t>& outside,
                       std::vector<int64_t>& stack) {
  outside.assign(size_t(h * w), 0);
  uint8_t* out = outside.data();
  const auto open = [&](int64_t i) { return !wall[i] && !out[i]; };
  stack.clear();
  for (int64_t x = 0; x < w; ++x) stack.push_back(x), stack.push_back((h - 1) * w + x);
  for (int64_t y = 0; y < h; ++y) stack.push_back(y * w), stack.push_back(y * w + w - 1);
  while (!stack.empty()) {
    const int64_t i = stack.back();
    stack.pop_back();
    if (!open(i)) continue;
    const int64_t y = i / w, row = y * w;
    int64_t left = i - row, right = left;
    while (left > 0 && open(row + left - 1)) --left;
    while (right + 1 < w && open(row + right + 1)) ++right;
    std::fill(out + row + left, out + row + right + 1, uint8_t(1));
    for (const int64_t ny : {y - 1, y + 1}) {
      if (ny < 0 || ny >= h) continue;
      bool in_run = false;
      for (int64_t x = left; x <= right; ++x) {
        const bool o = open(ny * w + x);
        if (o && !in_run) stack.push_back(ny * w + x);
        in_run = o;
      }
    }
  }
}

}  // namespace

torch::Tensor close_slices(const torch::Tensor& binary, int64_t ry, int64_t rx) {
  if (binary.dim() != 3 || binary.scalar_type() != torch::kUInt8)
    throw CoreError("closing: needs a uint8 (slices, h, w) tensor");
  const torch::Tensor in = binary.contiguous();
  torch::Tensor out = torch::empty_like(in);
  const int64_t h = in.size(1), w = in.size(2);
  const uint8_t* ip = in.data_ptr<uint8_t>();
  uint8_t* op = out.data_ptr<uint8_t>();
  at::parallel_for(0, in.size(0), 1, [&](int64_t z0, int64_t z1) {
    std::vector<uint8_t> a(size_t(h * w)), b(size_t(h * w));
    std::vector<uint16_t> count;
    for (int64_t z = z0; z < z1; ++z) {
      const uint8_t* src = ip + z * h * w;
      uint8_t* dst = op + z * h * w;
      dilation::rectangle(src, b.data(), a.data(), h, w, ry, rx, count);  // a: dilated
      for (auto& v : a) v = !v;                                           // erosion = not (dilation of not),
      dilation::rectangle(a.data(), b.data(), dst, h, w, ry, rx, count);  // clipped windows: outside counts as 1
      for (int64_t i = 0; i < h * w; ++i) dst[i] = !dst[i];
    }
  });
  return out;
}

IntracranialContent intracranial_content(const Volume& canonical, const IntracranialOptions& o) {
  check_matches(canonical.geometry, canonical.voxels, "intracranial check");
  torch::NoGradGuard no_grad;
  const Geometry& g = canonical.geometry;
  const int64_t nz = g.size[2], h = g.size[1], w = g.size[0];
  // Closing (dilate then erode) of the bone with a square, per slice (close_slices), in chunks
  // of slices so that a thin-slice scan needs little memory beyond its own voxels; slices of a
  // chunk in parallel, each keeping its enclosed voxels, joined in slice order.
  const int64_t ry = std::max<int64_t>(1, std::lround(o.closing_radius_mm / g.spacing_mm[1]));
  const int64_t rx = std::max<int64_t>(1, std::lround(o.closing_radius_mm / g.spacing_mm[0]));
  constexpr int64_t kChunk = 16;
  std::vector<std::vector<float>> inside_of(size_t(std::min<int64_t>(nz, kChunk)));  // HU of the enclosed voxels
  std::vector<std::array<double, 3>> sums_of(inside_of.size());
  std::vector<float> inside;
  double sum_x = 0, sum_y = 0, sum_z = 0;  // of their indices
  for (int64_t z0 = 0; z0 < nz; z0 += kChunk) {
    const torch::Tensor hu = canonical.voxels.slice(0, z0, std::min(nz, z0 + kChunk)).to(torch::kFloat32).contiguous();
    const torch::Tensor wall = close_slices((hu > float(o.bone_hu)).to(torch::kUInt8), ry, rx);
    const uint8_t* wp = wall.data_ptr<uint8_t>();
    const float* hp = hu.data_ptr<float>();
    at::parallel_for(0, wall.size(0), 1, [&](int64_t za, int64_t zb) {
      std::vector<uint8_t> outside;
      std::vector<int64_t> stack;
      for (int64_t z = za; z < zb; ++z) {
        const uint8_t* ws = wp + z * h * w;
        const float* hs = hp + z * h * w;
        std::vector<float>& in = inside_of[size_t(z)];
        std::array<double, 3>& sum = sums_of[size_t(z)];
        in.clear();
        sum = {0, 0, 0};
        flood_from_border(ws, h, w, outside, stack);
        for (int64_t y = 0; y < h; ++y)
          for (int64_t x = 0, i = y * w; x < w; ++x, ++i)
            if (!ws[i] && !outside[size_t(i)]) {
              in.push_back(hs[i]);
              sum[0] += double(x);
              sum[1] += double(y);
            }
        sum[2] = double(z0 + z) * double(in.size());
      }
    });
    for (int64_t z = 0; z < wall.size(0); ++z) {  // integer-valued sums: exact in any order
      inside.insert(inside.end(), inside_of[size_t(z)].begin(), inside_of[size_t(z)].end());
      sum_x += sums_of[size_t(z)][0];
      sum_y += sums_of[size_t(z)][1];
      sum_z += sums_of[size_t(z)][2];
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
    r.median_hu = median_in_place(inside);
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
