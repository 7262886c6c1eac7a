#include "hemexp/core/qc.hpp"

#include <algorithm>
#include <cmath>

namespace hemexp {

namespace {

// The integer shrink factor that makes an axial slice at most 256 pixels across.
int64_t tile_step(const Geometry& g) { return std::max<int64_t>(1, (std::max(g.size[0], g.size[1]) + 255) / 256); }

// Axial slice z at brain window (W80 L40), every step-th pixel, the mask (label codes) blended
// in: 1 red, 2 blue, 3 yellow, higher green.
torch::Tensor render_tile(const Volume& canonical, const torch::Tensor& mask, int64_t z, int64_t step) {
  const int64_t h = canonical.geometry.size[1], w = canonical.geometry.size[0];
  const torch::Tensor hu = canonical.voxels[z].slice(0, 0, h, step).slice(1, 0, w, step).to(torch::kFloat32);
  const torch::Tensor codes = mask[z].slice(0, 0, h, step).slice(1, 0, w, step).to(torch::kLong).clamp(0, 4);
  const torch::Tensor grey = ((hu - 0.f) / 80.f).clamp(0, 1) * 255.f;  // W80 L40: 0..80 HU
  torch::Tensor rgb = torch::stack({grey, grey, grey}, -1);
  const torch::Tensor colours =
      torch::tensor({0.f, 0.f, 0.f, 255.f, 0.f, 0.f, 40.f, 120.f, 255.f, 255.f, 220.f, 0.f, 0.f, 200.f, 0.f}).view({5, 3});
  const torch::Tensor alpha = (0.45f * (codes != 0).to(torch::kFloat32)).unsqueeze(-1);
  rgb = rgb * (1 - alpha) + colours.index({codes}) * alpha;
  return rgb.round().to(torch::kUInt8);
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
  // Slices with hematoma (code 1) first; a label map without one shows its other labels.
  // Reduced with any(), not sum(): a sum over a bool volume is an int64 copy of it (630 MB for
  // 512 x 512 x 300).
  const torch::Tensor hematoma = mask == 1;
  const torch::Tensor per_slice = (hematoma.any().item<bool>() ? hematoma : mask != 0).any(2).any(1).contiguous();
  const auto shown = per_slice.accessor<bool, 1>();
  for (int64_t z = 0; z < nz; ++z)
    if (shown[z]) candidates.push_back(z);
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
