#include "hemexp/core/qc.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>

#include "dilation.hpp"

namespace hemexp {

namespace {

// The integer shrink factor that makes an axial slice at most 256 pixels across.
int64_t tile_step(const Geometry& g) { return std::max<int64_t>(1, (std::max(g.size[0], g.size[1]) + 255) / 256); }

// Axial slice z at brain window (W80 L40), every step-th pixel, the mask (label codes) blended
// in: 1 red, 2 blue, 3 yellow, higher green. One loop over the tile's pixels, in the order and
// float rounding of the element-wise tensor operations it replaces (grey = clamp(hu / 80, 0,
// 1) x 255; grey x (1 - alpha) + colour x alpha, rounded half to even), each product rounded on
// its own (no fused multiply-add: -ffp-contract=off, CMakeLists.txt): the same picture, without
// a dozen passes over the tile.
torch::Tensor render_tile(const Volume& canonical, const torch::Tensor& mask, int64_t z, int64_t step) {
  const int64_t h = canonical.geometry.size[1], w = canonical.geometry.size[0];
  const torch::Tensor hu = canonical.voxels[z].slice(0, 0, h, step).slice(1, 0, w, step).to(torch::kFloat32).contiguous();
  const torch::Tensor codes = mask[z].slice(0, 0, h, step).slice(1, 0, w, step).to(torch::kLong).clamp(0, 4).contiguous();
  static constexpr float kColours[5][3] = {{0, 0, 0}, {255, 0, 0}, {40, 120, 255}, {255, 220, 0}, {0, 200, 0}};
  torch::Tensor rgb = torch::empty({hu.size(0), hu.size(1), 3}, torch::kUInt8);
  const float* hp = hu.data_ptr<float>();
  const int64_t* cp = codes.data_ptr<int64_t>();
  uint8_t* out = rgb.data_ptr<uint8_t>();
  for (int64_t i = 0; i < hu.numel(); ++i) {
    const float grey = std::min(std::max((hp[i] - 0.f) / 80.f, 0.f), 1.f) * 255.f;  // W80 L40: 0..80 HU
    const float alpha = 0.45f * float(cp[i] != 0), keep = 1.f - alpha;
    for (int c = 0; c < 3; ++c) {
      const float blended = grey * keep + kColours[cp[i]][c] * alpha;  // in [0, 255]
      // Rounded half to even, as nearbyint (a library call here): adding and taking away 2^23
      // leaves a float in [0, 2^23) rounded to an integer in the default rounding mode.
      out[3 * i + c] = uint8_t((blended + 8388608.f) - 8388608.f);
    }
  }
  return rgb;
}

// The axial slice with the most mask voxels (the middle one without a mask).
int64_t largest_mask_slice(const Volume& canonical, const torch::Tensor& mask) {
  // Slice by slice: a sum over the whole bool volume would make an int64 copy of it.
  int64_t best = -1, best_count = 0;
  for (int64_t z = 0; z < mask.size(0); ++z) {
    const int64_t count = mask[z].ne(0).sum().item<int64_t>();
    if (count > best_count) best = z, best_count = count;  // the first of equal slices, as argmax
  }
  return best < 0 ? canonical.geometry.size[2] / 2 : best;
}

}  // namespace

torch::Tensor qc_mosaic(const Volume& canonical, const torch::Tensor& mask, int64_t tiles, int64_t columns) {
  check_matches(canonical.geometry, canonical.voxels, "QC picture");
  check_matches(canonical.geometry, mask, "QC picture mask");
  const int64_t nz = canonical.geometry.size[2];
  std::vector<int64_t> candidates;
  // Slices with hematoma (code 1) first; a label map without one shows its other labels. The
  // codes as bytes (uint8 and bool masks as they are; any other type compared in its own type
  // first: 1 stays 1, any other nonzero code becomes 2), searched slice by slice with memchr; only
  // where no slice holds a 1 is each slice searched for any nonzero byte (dilation::any_set). (In
  // `hemexp run` this runs on one thread, beside the other files' writing: a byte-by-byte loop
  // took 37 ms of qc_mosaic's time for a 512 x 512 x 300 mask, memchr 7 ms.)
  const bool bytes = mask.scalar_type() == torch::kUInt8 || mask.scalar_type() == torch::kBool;
  const torch::Tensor codes =
      (bytes ? mask.to(torch::kUInt8) : (mask == 1).to(torch::kUInt8) + 2 * ((mask != 0) & (mask != 1)).to(torch::kUInt8))
          .contiguous();
  const int64_t plane = canonical.geometry.size[0] * canonical.geometry.size[1];
  std::vector<char> has_hematoma(size_t(nz), 0), has_code(size_t(nz), 0);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  if (plane > 0)  // (an empty volume's pointer may be null: no memchr on it)
    at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
      for (int64_t z = z0; z < z1; ++z) has_hematoma[size_t(z)] = std::memchr(cp + z * plane, 1, size_t(plane)) != nullptr;
    });
  const bool any_hematoma = std::find(has_hematoma.begin(), has_hematoma.end(), 1) != has_hematoma.end();
  if (!any_hematoma && plane > 0)
    at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
      for (int64_t z = z0; z < z1; ++z) has_code[size_t(z)] = dilation::any_set(cp + z * plane, plane);
    });
  const std::vector<char>& shown = any_hematoma ? has_hematoma : has_code;
  for (int64_t z = 0; z < nz; ++z)
    if (shown[size_t(z)]) candidates.push_back(z);
  if (candidates.empty())
    for (int64_t z = 0; z < nz; ++z) candidates.push_back(z);
  const int64_t n = std::min<int64_t>(tiles, int64_t(candidates.size()));
  std::vector<int64_t> chosen;
  for (int64_t i = 0; i < n; ++i)
    chosen.push_back(candidates[size_t(n == 1 ? candidates.size() / 2 : i * (int64_t(candidates.size()) - 1) / (n - 1))]);

  const int64_t h = canonical.geometry.size[1], w = canonical.geometry.size[0];
  const int64_t step = tile_step(canonical.geometry);
  const int64_t th = (h + step - 1) / step, tw = (w + step - 1) / step;
  const int64_t cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  torch::Tensor out = torch::zeros({rows * th, cols * tw, 3}, torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const torch::Tensor rgb = render_tile(canonical, mask, chosen[size_t(i)], step);
    const int64_t r = i / cols, c = i % cols;
    out.slice(0, r * th, r * th + rgb.size(0)).slice(1, c * tw, c * tw + rgb.size(1)).copy_(rgb);
  }
  return out;
}

torch::Tensor qc_pair(const Volume& baseline, const torch::Tensor& baseline_mask, const Volume& followup,
                      const torch::Tensor& followup_mask) {
  check_matches(baseline.geometry, baseline.voxels, "QC pair picture (baseline)");
  check_matches(baseline.geometry, baseline_mask, "QC pair picture (baseline mask)");
  check_matches(followup.geometry, followup.voxels, "QC pair picture (follow-up)");
  check_matches(followup.geometry, followup_mask, "QC pair picture (follow-up mask)");
  const torch::Tensor left =
      render_tile(baseline, baseline_mask, largest_mask_slice(baseline, baseline_mask), tile_step(baseline.geometry));
  const torch::Tensor right =
      render_tile(followup, followup_mask, largest_mask_slice(followup, followup_mask), tile_step(followup.geometry));
  constexpr int64_t kGap = 4;
  torch::Tensor out =
      torch::zeros({std::max(left.size(0), right.size(0)), left.size(1) + kGap + right.size(1), 3}, torch::kUInt8);
  out.slice(0, 0, left.size(0)).slice(1, 0, left.size(1)).copy_(left);
  out.slice(0, 0, right.size(0)).slice(1, left.size(1) + kGap, left.size(1) + kGap + right.size(1)).copy_(right);
  return out;
}

}  // namespace hemexp
