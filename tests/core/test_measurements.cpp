// Hematoma measurements on shapes of known size.
#include <gtest/gtest.h>

#include "test_shapes.hpp"

#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/measurements.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;

Geometry grid(std::array<int64_t, 3> size, Vec3 spacing) { return test::grid(size, spacing, {-40, 12, 7}); }
using test::ball;

TEST(Measurements, BallHasItsKnownVolumeShapeAndAbc2) {
  const Geometry g = grid({80, 80, 40}, {0.5, 0.5, 1.0});
  const torch::Tensor m = ball(g, {40.2, 39.7, 20.1}, 12.0);
  const torch::Tensor hu = torch::full(tensor_shape(g), 65.f);
  const HematomaMeasurements r = measure_hematoma(m, hu, g);
  const double true_ml = 4.0 / 3.0 * kPi * 12 * 12 * 12 / 1000.0;  // 7.238 mL
  EXPECT_EQ(r.voxels, m.sum().item<int64_t>());
  EXPECT_NEAR(r.volume_ml, double(r.voxels) * 0.25 / 1000.0, 1e-12);
  EXPECT_NEAR(r.volume_ml, true_ml, 0.01 * true_ml);
  // ABC/2 of a ball is (2r)^3 / 2 = 6.912 mL.
  EXPECT_NEAR(r.abc2_volume_ml, 6.912, 0.05 * 6.912);
  EXPECT_NEAR(r.surface_area_mm2, 4 * kPi * 144, 0.05 * 4 * kPi * 144);
  EXPECT_NEAR(r.sphericity, 1.0, 0.05);
  EXPECT_EQ(r.components, 1);
  EXPECT_FALSE(r.touches_border);
  EXPECT_DOUBLE_EQ(r.mean_hu, 65.0);
  EXPECT_DOUBLE_EQ(r.std_hu, 0.0);
}

TEST(Measurements, ElongatedShapeAndIntensityStatistics) {
  // A 20 x 6 x 3 voxel box: volume exact, sphericity well below 1, ABC/2 = A B C / 2 with
  // A the diagonal of the 20 x 6 rectangle (+1 pixel).
  const Geometry g = grid({30, 20, 10}, {1.0, 1.0, 2.0});
  torch::Tensor m = torch::zeros(tensor_shape(g), torch::kUInt8);
  m.slice(0, 2, 5).slice(1, 4, 10).slice(2, 5, 25).fill_(1);
  torch::Tensor hu = torch::arange(g.voxel_count(), torch::kFloat32).reshape(tensor_shape(g)).remainder(97);
  const HematomaMeasurements r = measure_hematoma(m, hu, g);
  EXPECT_EQ(r.voxels, 360);
  EXPECT_DOUBLE_EQ(r.volume_ml, 360 * 2.0 / 1000.0);
  const double a = std::hypot(19.0, 5.0) + 1.0;
  // B: extent perpendicular to the diagonal, + 1 pixel.
  const double b = 2 * (19.0 * 5.0) / std::hypot(19.0, 5.0) + 1.0;
  EXPECT_NEAR(r.abc2_volume_ml, a * b * 6.0 / 2.0 / 1000.0, 1e-9);
  // Face counting with the isotropic 2/3 factor: exact faces area 2 (20x6 + 20x6 + 6x6) mm2.
  // (Flat axis-aligned faces are under-estimated by 1/3; hematoma surfaces are curved.)
  EXPECT_NEAR(r.surface_area_mm2, 552.0 * 2.0 / 3.0, 1e-9);
  EXPECT_NEAR(r.sphericity, std::cbrt(kPi) * std::pow(6.0 * 720.0, 2.0 / 3.0) / r.surface_area_mm2, 1e-12);
  const torch::Tensor values = hu.masked_select(m.to(torch::kBool)).to(torch::kFloat64);
  EXPECT_NEAR(r.mean_hu, values.mean().item<double>(), 1e-9);
  EXPECT_NEAR(r.std_hu, values.std(false).item<double>(), 1e-9);
  EXPECT_NEAR(r.p10_hu, torch::quantile(values, 0.1).item<double>(), 1e-9);
  EXPECT_NEAR(r.p90_hu, torch::quantile(values, 0.9).item<double>(), 1e-9);
}

TEST(Measurements, ComponentsBorderAndEmptyMask) {
  const Geometry g = grid({12, 12, 6}, {1, 1, 1});
  torch::Tensor m = torch::zeros(tensor_shape(g), torch::kUInt8);
  m[1][1][1] = 1;
  m[2][2][2] = 1;  // diagonal neighbour: same 26-connected component
  m[4][8][8] = 1;
  m[5][0][3] = 1;  // on the border
  torch::Tensor labels;
  EXPECT_EQ(connected_components(m, &labels), 3);
  EXPECT_EQ(labels[2][2][2].item<int>(), labels[1][1][1].item<int>());
  const HematomaMeasurements r = measure_hematoma(m, torch::zeros(tensor_shape(g)), g);
  EXPECT_EQ(r.components, 3);
  EXPECT_TRUE(r.touches_border);
  const HematomaMeasurements empty = measure_hematoma(torch::zeros(tensor_shape(g), torch::kUInt8), torch::zeros(tensor_shape(g)), g);
  EXPECT_EQ(empty.voxels, 0);
  EXPECT_EQ(empty.volume_ml, 0.0);
  EXPECT_EQ(empty.components, 0);
  // Each label's box, in one pass, equal to mask_bounding_box of that label alone; a label the
  // volume does not hold (4) and the background (0) get empty boxes.
  const std::vector<MaskBox> boxes = label_boxes(labels, 4);
  ASSERT_EQ(boxes.size(), 5u);
  EXPECT_TRUE(boxes[0].empty());
  EXPECT_TRUE(boxes[4].empty());
  for (int k = 1; k <= 3; ++k) {
    const MaskBox one = mask_bounding_box(labels == k);
    EXPECT_EQ(boxes[size_t(k)].begin, one.begin) << k;
    EXPECT_EQ(boxes[size_t(k)].size, one.size) << k;
  }
  EXPECT_EQ(boxes[size_t(labels[1][1][1].item<int>())].size, (std::array<int64_t, 3>{2, 2, 2}));
}

}  // namespace
}  // namespace hemexp

namespace hemexp {
namespace {

// The running-count dilation against max pooling (what the markers used before): every radius
// from none to wider than the volume, per dim, on sparse and dense masks, bool and uint8.
TEST(Measurements, BoxDilationEqualsMaxPooling) {
  torch::manual_seed(5);
  const std::vector<std::array<int64_t, 3>> radii{{0, 0, 0}, {1, 1, 1}, {0, 3, 2}, {2, 6, 6}, {5, 1, 0}, {9, 23, 30}};
  for (const auto& r : radii) {
    for (double density : {0.002, 0.05, 0.3}) {
      const torch::Tensor set = torch::rand({7, 29, 41}) < density;
      const torch::Tensor expected =
          torch::max_pool3d(set.to(torch::kFloat32).unsqueeze(0), {2 * r[0] + 1, 2 * r[1] + 1, 2 * r[2] + 1}, 1,
                            {r[0], r[1], r[2]})
              .squeeze(0) > 0.5f;
      for (const torch::Tensor& in : {set, set.to(torch::kUInt8) * 3, set.to(torch::kFloat32) * 0.5f,
                                      set.transpose(0, 2).contiguous().transpose(0, 2)}) {
        const torch::Tensor got = dilate_box(in, r);
        ASSERT_EQ(got.scalar_type(), torch::kBool);
        EXPECT_TRUE(torch::equal(got, expected)) << r[0] << " " << r[1] << " " << r[2] << " density " << density;
      }
    }
  }
  // A radius wider than the volume: every voxel of a column with one set voxel.
  const torch::Tensor one = torch::zeros({40, 3, 2}, torch::kBool).index_put_({17, 1, 0}, true);
  const torch::Tensor column = dilate_box(one, {100000, 0, 0});
  EXPECT_EQ(column.sum().item<int64_t>(), 40);
  EXPECT_TRUE(column.select(1, 1).select(1, 0).all().item<bool>());
  EXPECT_THROW(dilate_box(torch::zeros({2, 2, 2}, torch::kBool), {0, -1, 0}), CoreError);
}

// The one-pass box of a contiguous uint8 or bool mask against the nonzero voxels' extremes, and
// the same box from a non-contiguous view (the general path) and from a float mask.
TEST(Measurements, BoundingBoxOfEveryLayoutIsTheExtremesOfTheVoxelsSet) {
  torch::manual_seed(6);
  for (double density : {1e-5, 1e-3, 0.05}) {
    for (int trial = 0; trial < 4; ++trial) {
      const torch::Tensor set = torch::rand({9, 33, 70}) < density;
      const torch::Tensor where = set.nonzero();
      if (where.size(0) == 0) {
        EXPECT_TRUE(mask_bounding_box(set).empty());
        continue;
      }
      const torch::Tensor lo = std::get<0>(where.min(0)), hi = std::get<0>(where.max(0));
      const std::array<int64_t, 3> begin{lo[0].item<int64_t>(), lo[1].item<int64_t>(), lo[2].item<int64_t>()};
      const std::array<int64_t, 3> size{hi[0].item<int64_t>() - begin[0] + 1, hi[1].item<int64_t>() - begin[1] + 1,
                                        hi[2].item<int64_t>() - begin[2] + 1};
      const torch::Tensor transposed = set.transpose(0, 2).contiguous().transpose(0, 2);  // same values, other strides
      ASSERT_FALSE(transposed.is_contiguous());
      for (const torch::Tensor& m : {set, set.to(torch::kUInt8), transposed, set.to(torch::kFloat32)}) {
        const MaskBox box = mask_bounding_box(m);
        EXPECT_EQ(box.begin, begin) << density;
        EXPECT_EQ(box.size, size) << density;
      }
    }
  }
}

// The box the measurements work in, and that working in it changes nothing: a mask shifted
// inside a larger volume measures exactly as the same mask filling a tight one.
TEST(Measurements, BoundingBoxAndMeasuringInsideIt) {
  torch::Tensor m = torch::zeros({10, 20, 30}, torch::kUInt8);
  EXPECT_TRUE(mask_bounding_box(m).empty());
  m.index_put_({torch::indexing::Slice(3, 6), torch::indexing::Slice(4, 5), torch::indexing::Slice(7, 19)}, 1);
  m.index_put_({8, 11, 2}, 1);
  const MaskBox box = mask_bounding_box(m);
  EXPECT_EQ(box.begin, (std::array<int64_t, 3>{3, 4, 2}));
  EXPECT_EQ(box.size, (std::array<int64_t, 3>{6, 8, 17}));
  EXPECT_EQ(box.crop(m).sum().item<int64_t>(), m.sum().item<int64_t>());

  const Geometry tight = grid({17, 8, 6}, {0.45, 0.45, 5.0});
  const Geometry large = grid({30, 20, 10}, {0.45, 0.45, 5.0});
  const torch::Tensor hu_large = torch::rand({10, 20, 30}) * 80.0f;
  const HematomaMeasurements a = measure_hematoma(m, hu_large, large);
  const HematomaMeasurements b = measure_hematoma(box.crop(m).contiguous(), box.crop(hu_large).contiguous(), tight);
  EXPECT_EQ(a.voxels, 37);
  // Everything equal to the last digit but ABC/2, whose chord ends are whole-volume coordinates
  // (same as before the box: the offset is added back), here shifted by the box's corner.
  EXPECT_EQ(a.voxels, b.voxels);
  EXPECT_EQ(a.mean_hu, b.mean_hu);
  EXPECT_EQ(a.std_hu, b.std_hu);
  EXPECT_EQ(a.p10_hu, b.p10_hu);
  EXPECT_EQ(a.p90_hu, b.p90_hu);
  EXPECT_EQ(a.surface_area_mm2, b.surface_area_mm2);
  EXPECT_EQ(a.sphericity, b.sphericity);
  EXPECT_NEAR(a.abc2_volume_ml, b.abc2_volume_ml, 1e-12);
  EXPECT_NEAR(a.abc2_volume_ml, 0.0243, 1e-9);
  EXPECT_FALSE(a.touches_border);
  EXPECT_TRUE(b.touches_border);
  EXPECT_EQ(a.components, 2);
}

TEST(Measurements, CodeCountsAreEachCodesVoxels) {
  torch::manual_seed(3);
  // More voxels than one parallel chunk (2^20), codes spread unevenly over 0..255.
  const torch::Tensor codes = (torch::rand({5, 300, 1000}).pow(3) * 256).clamp_max(255).to(torch::kUInt8);
  const torch::Tensor expected = torch::bincount(codes.reshape({-1}).to(torch::kLong), {}, 256);
  const std::array<int64_t, 256> counts = code_counts(codes), strided = code_counts(codes.transpose(0, 2));
  int64_t total = 0;
  for (size_t k = 0; k < 256; ++k) {
    EXPECT_EQ(counts[k], expected[int64_t(k)].item<int64_t>()) << "code " << k;
    EXPECT_EQ(strided[k], counts[k]) << "code " << k;
    total += counts[k];
  }
  EXPECT_EQ(total, codes.numel());
  EXPECT_GT(counts[0], counts[255]);
  EXPECT_THROW(code_counts(codes.to(torch::kInt32)), CoreError);
}

}  // namespace
}  // namespace hemexp
