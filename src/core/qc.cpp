#include "hemexp/core/qc.hpp"

#include <algorithm>
#include <cmath>

namespace hemexp {

torch::Tensor qc_mosaic(const Volume& canonical, const torch::Tensor& mask, int64_t tiles, int64_t columns) {
  check_matches(canonical.geometry, canonical.voxels, "QC picture");
  check_matches(canonical.geometry, mask, "QC picture mask");
  const int64_t nz = canonical.geometry.size[2];
  std::vector<int64_t> candidates;
  const torch::Tensor per_slice = (mask != 0).sum({1, 2});
  for (int64_t z = 0; z < nz; ++z)
    if (per_slice[z].item<int64_t>() > 0) candidates.push_back(z);
  if (candidates.empty())
    for (int64_t z = 0; z < nz; ++z) candidates.push_back(z);
  const int64_t n = std::min<int64_t>(tiles, int64_t(candidates.size()));
  std::vector<int64_t> chosen;
  for (int64_t i = 0; i < n; ++i)
    chosen.push_back(candidates[size_t(n == 1 ? candidates.size() / 2 : i * (int64_t(candidates.size()) - 1) / (n - 1))]);

  const int64_t h = canonical.geometry.size[1], w = canonical.geometry.size[0];
  const int64_t step = std::max<int64_t>(1, (std::max(h, w) + 255) / 256);
  const int64_t th = (h + step - 1) / step, tw = (w + step - 1) / step;
  const int64_t cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  torch::Tensor out = torch::zeros({rows * th, cols * tw, 3}, torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t z = chosen[size_t(i)];
    const torch::Tensor hu = canonical.voxels[z].slice(0, 0, h, step).slice(1, 0, w, step).to(torch::kFloat32);
    const torch::Tensor m = (mask[z].slice(0, 0, h, step).slice(1, 0, w, step) != 0).to(torch::kFloat32);
    const torch::Tensor grey = ((hu - 0.f) / 80.f).clamp(0, 1) * 255.f;  // W80 L40: 0..80 HU
    torch::Tensor rgb = torch::stack({grey, grey, grey}, -1);
    const torch::Tensor red = torch::tensor({255.f, 0.f, 0.f}).view({1, 1, 3});
    const torch::Tensor alpha = (0.45f * m).unsqueeze(-1);
    rgb = rgb * (1 - alpha) + red * alpha;
    const int64_t r = i / cols, c = i % cols;
    out.slice(0, r * th, r * th + rgb.size(0)).slice(1, c * tw, c * tw + rgb.size(1)).copy_(rgb.round().to(torch::kUInt8));
  }
  return out;
}

}  // namespace hemexp
