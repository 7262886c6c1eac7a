#include "hemexp/core/sliding_window.hpp"

#include <cmath>

#include "hemexp/core/error.hpp"

namespace hemexp {

std::vector<int64_t> window_starts(int64_t size, int64_t patch, double overlap) {
  if (size <= patch) return {0};
  const double step = std::max(1.0, double(patch) * (1.0 - overlap));
  const int64_t n = int64_t(std::ceil(double(size - patch) / step)) + 1;
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < n; ++i)
    starts.push_back(int64_t(std::llround(double(i) * double(size - patch) / double(n - 1))));
  return starts;
}

torch::Tensor gaussian_importance(const std::array<int64_t, 3>& patch_size) {
  torch::Tensor g = torch::ones({1}, torch::kFloat64);
  torch::Tensor map;
  std::vector<torch::Tensor> axes;
  for (int a = 0; a < 3; ++a) {
    const double sigma = double(patch_size[a]) / 8.0, centre = double(patch_size[a] - 1) / 2.0;
    const auto x = torch::arange(patch_size[a], torch::kFloat64);
    axes.push_back(torch::exp(-(x - centre).pow(2) / (2 * sigma * sigma)));
  }
  map = axes[0].view({-1, 1, 1}) * axes[1].view({1, -1, 1}) * axes[2].view({1, 1, -1});
  map = map / map.max();
  const double smallest = map.masked_select(map > 0).min().item<double>();
  return map.clamp_min(smallest).to(torch::kFloat32);
}

torch::Tensor sliding_window_probabilities(const PatchNetwork& network, const torch::Tensor& image,
                                           int64_t num_classes, const SlidingWindowOptions& o) {
  if (image.dim() != 4) throw CoreError("sliding window: image must be (C, z, y, x)");
  if (o.overlap < 0 || o.overlap >= 1) throw CoreError("sliding window: overlap must be in [0, 1)");
  // Pad up to one patch where the image is smaller, crop back at the end.
  std::array<int64_t, 3> size{image.size(1), image.size(2), image.size(3)}, padded{};
  std::vector<int64_t> pad;  // constant_pad_nd order: last dim first
  for (int a = 2; a >= 0; --a) {
    padded[a] = std::max(size[a], o.patch_size[a]);
    pad.push_back(0);
    pad.push_back(padded[a] - size[a]);
  }
  const torch::Tensor input = torch::constant_pad_nd(image.to(torch::kFloat32), pad, o.pad_value);
  const torch::Tensor weight_patch = gaussian_importance(o.patch_size);
  torch::Tensor probabilities = torch::zeros({num_classes, padded[0], padded[1], padded[2]}, torch::kFloat32);
  torch::Tensor weights = torch::zeros({padded[0], padded[1], padded[2]}, torch::kFloat32);
  const torch::Tensor weight_on_device = weight_patch.to(o.device);

  std::vector<std::vector<int64_t>> flips{{}};
  if (o.mirror) flips = {{}, {2}, {3}, {4}, {2, 3}, {2, 4}, {3, 4}, {2, 3, 4}};

  for (int64_t z : window_starts(padded[0], o.patch_size[0], o.overlap))
    for (int64_t y : window_starts(padded[1], o.patch_size[1], o.overlap))
      for (int64_t x : window_starts(padded[2], o.patch_size[2], o.overlap)) {
        const torch::Tensor patch = input.slice(1, z, z + o.patch_size[0])
                                        .slice(2, y, y + o.patch_size[1])
                                        .slice(3, x, x + o.patch_size[2])
                                        .unsqueeze(0)
                                        .to(o.device);
        torch::Tensor sum;
        for (const auto& dims : flips) {
          const torch::Tensor in = dims.empty() ? patch : patch.flip(dims);
          torch::Tensor p = torch::softmax(network(in).to(torch::kFloat32), 1);
          if (!dims.empty()) p = p.flip(dims);
          sum = sum.defined() ? sum + p : p;
        }
        if (sum.size(1) != num_classes) throw CoreError("sliding window: the network gives a different class count");
        const torch::Tensor weighted = (sum[0] / float(flips.size()) * weight_on_device).to(torch::kCPU);
        probabilities.slice(1, z, z + o.patch_size[0]).slice(2, y, y + o.patch_size[1]).slice(3, x, x + o.patch_size[2]) +=
            weighted;
        weights.slice(0, z, z + o.patch_size[0]).slice(1, y, y + o.patch_size[1]).slice(2, x, x + o.patch_size[2]) +=
            weight_patch;
      }
  probabilities /= weights.unsqueeze(0);
  return probabilities.slice(1, 0, size[0]).slice(2, 0, size[1]).slice(3, 0, size[2]).contiguous();
}

}  // namespace hemexp
