// Preprocessing (resampling between grids, CT normalisation) and sliding-window inference.
#include <gtest/gtest.h>

#include "hemexp/core/preprocessing.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/sliding_window.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

TEST(SlidingWindow, StartsCoverTheImageWithTheRequestedOverlap) {
  EXPECT_EQ(window_starts(100, 40, 0.5), (std::vector<int64_t>{0, 20, 40, 60}));
  EXPECT_EQ(window_starts(101, 40, 0.5), (std::vector<int64_t>{0, 15, 31, 46, 61}));
  EXPECT_EQ(window_starts(40, 40, 0.5), (std::vector<int64_t>{0}));
  EXPECT_EQ(window_starts(30, 40, 0.5), (std::vector<int64_t>{0}));
  EXPECT_EQ(window_starts(100, 40, 0.0), (std::vector<int64_t>{0, 30, 60}));
  EXPECT_EQ(window_starts(165, 96, 0.5), (std::vector<int64_t>{0, 35, 69}));  // 34.5 rounds up (and in Python)
}

TEST(SlidingWindow, GaussianImportance) {
  const torch::Tensor g = gaussian_importance({9, 16, 16});
  EXPECT_EQ(g.sizes(), (c10::IntArrayRef{9, 16, 16}));
  EXPECT_FLOAT_EQ(g.max().item<float>(), g[4][7][7].item<float>());
  EXPECT_GT(g.min().item<float>(), 0.f);
  EXPECT_TRUE(torch::allclose(g, g.flip({0, 1, 2})));  // symmetric
}

// A voxel-wise "network": logits (0, 3 * value) at every voxel. Whatever the windows,
// overlaps and flips, the result must equal the voxel-wise softmax.
torch::Tensor voxelwise(const torch::Tensor& patch) {
  return torch::cat({torch::zeros_like(patch), 3 * patch}, 1);
}

TEST(SlidingWindow, ReproducesAVoxelwiseNetworkExactly) {
  torch::manual_seed(3);
  for (const bool mirror : {false, true})
    for (const auto& shape : {std::vector<int64_t>{1, 13, 37, 29}, std::vector<int64_t>{1, 5, 9, 7}}) {
      const torch::Tensor image = torch::randn(shape);
      SlidingWindowOptions o;
      o.patch_size = {8, 16, 16};
      o.overlap = 0.5;
      o.mirror = mirror;
      const torch::Tensor p = sliding_window_probabilities(voxelwise, image, 2, o);
      const torch::Tensor expected = torch::softmax(voxelwise(image.unsqueeze(0)), 1)[0];
      EXPECT_EQ(p.sizes(), expected.sizes());
      EXPECT_LT((p - expected).abs().max().item<double>(), 1e-5) << "mirror " << mirror;
    }
}

TEST(SlidingWindow, MirroringAveragesFlippedPredictions) {
  // A network that sees only its patch's first x column: not flip-invariant, so mirroring
  // must change the result, and averaging 8 flips gives probabilities inside (0, 1).
  const auto edge = [](const torch::Tensor& patch) {
    const torch::Tensor first = patch.select(4, 0).unsqueeze(4).expand_as(patch);
    return torch::cat({torch::zeros_like(patch), 4 * first}, 1);
  };
  const torch::Tensor image = torch::linspace(-1, 1, 16).view({1, 1, 1, 16}).expand({1, 8, 8, 16}).contiguous();
  SlidingWindowOptions o;
  o.patch_size = {8, 8, 16};
  const torch::Tensor plain = sliding_window_probabilities(edge, image, 2, o);
  o.mirror = true;
  const torch::Tensor mirrored = sliding_window_probabilities(edge, image, 2, o);
  EXPECT_GT((plain - mirrored).abs().max().item<double>(), 0.1);
  const double expected = (0.5 * (1 / (1 + std::exp(4.0))) + 0.5 * (1 / (1 + std::exp(-4.0))));
  EXPECT_NEAR(mirrored[1][0][0][5].item<double>(), expected, 1e-5);
}

TEST(Preprocessing, ResamplingIsExactForLinearIntensities) {
  Geometry from;
  from.size = {31, 27, 9};
  from.spacing_mm = {0.45, 0.45, 5.0};
  from.origin_mm = {-10, 20, 3};
  const Geometry to = grid_with_spacing(from, {1.0, 0.8, 2.0});
  EXPECT_EQ(to.size, (std::array<int64_t, 3>{14, 15, 21}));  // floor(13.5/1), floor(11.7/0.8), 40/2, each + 1
  const auto field = [](const Vec3& p) { return 2.0 * p[0] - 3.0 * p[1] + 0.5 * p[2]; };
  torch::Tensor v = torch::empty(tensor_shape(from), torch::kFloat64);
  auto a = v.accessor<double, 3>();
  for (int64_t z = 0; z < from.size[2]; ++z)
    for (int64_t y = 0; y < from.size[1]; ++y)
      for (int64_t x = 0; x < from.size[0]; ++x) a[z][y][x] = field(from.index_to_point({double(x), double(y), double(z)}));
  const torch::Tensor r = resample_between_grids(v, from, to);
  auto b = r.accessor<double, 3>();
  double worst = 0;
  for (int64_t z = 0; z < to.size[2]; ++z)
    for (int64_t y = 0; y < to.size[1]; ++y)
      for (int64_t x = 0; x < to.size[0]; ++x)
        worst = std::max(worst, std::abs(b[z][y][x] - field(to.index_to_point({double(x), double(y), double(z)}))));
  EXPECT_LT(worst, 1e-9);
  // With a channel dimension in front, each channel is resampled alike.
  const torch::Tensor two = resample_between_grids(torch::stack({v, -v}), from, to);
  EXPECT_TRUE(torch::allclose(two[1], -r));
}

TEST(Preprocessing, CtNormalisationFromTheCard) {
  const Preprocessing p = Preprocessing::from_json(
      {{"spacing_mm", {0.9, 0.9, 5.0}}, {"normalization", {{"type", "ct"}, {"clip_hu", {-20, 120}}, {"mean_hu", 40}, {"std_hu", 20}}}});
  const torch::Tensor n = normalize_ct(torch::tensor({-1000.f, 40.f, 80.f, 3000.f}), p);
  EXPECT_TRUE(torch::allclose(n, torch::tensor({-3.f, 0.f, 2.f, 4.f})));
  EXPECT_EQ(Preprocessing::from_json(p.to_json()).spacing_mm, p.spacing_mm);
}

}  // namespace
}  // namespace hemexp

namespace hemexp {
namespace {

// Three boxes of 1000, 150 and 40 voxels at 1 mm^3 (1, 0.15 and 0.04 mL).
TEST(Postprocessing, SmallComponentsGoByVolumeOrByShareOfTheLargest) {
  const Geometry g = test::grid({40, 40, 20}, {1, 1, 1});
  torch::Tensor m = torch::zeros(tensor_shape(g), torch::kUInt8);
  m.slice(0, 0, 10).slice(1, 0, 10).slice(2, 0, 10).fill_(1);
  m.slice(0, 0, 6).slice(1, 20, 25).slice(2, 20, 25).fill_(1);
  m.slice(0, 15, 20).slice(1, 30, 34).slice(2, 30, 32).fill_(1);
  int64_t removed = -1;
  EXPECT_TRUE(remove_small_components(m, g, 0.0, 0.0, &removed).equal(m));
  EXPECT_EQ(removed, 0);
  EXPECT_EQ(remove_small_components(m, g, 0.1, 0.0, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(removed, 1);
  // 20% of the largest is 200 voxels: only the largest stays, whatever the volume floor.
  EXPECT_EQ(remove_small_components(m, g, 0.0, 0.2, &removed).sum().item<int64_t>(), 1000);
  EXPECT_EQ(removed, 2);
  EXPECT_EQ(remove_small_components(m, g, 0.01, 0.1, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(removed, 1);
  // A volume floor above the largest removes everything.
  EXPECT_EQ(remove_small_components(m, g, 2.0, 0.2, &removed).sum().item<int64_t>(), 0);
  EXPECT_EQ(removed, 3);
}

}  // namespace
}  // namespace hemexp
