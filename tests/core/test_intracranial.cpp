// The brain check: space enclosed by the skull, its volume and what it holds, on shapes
// with known answers (a spherical skull), a phantom-like skull full of air with a blood-density
// insert, an unclosed scan, and a procedural synthetic head.
#include <gtest/gtest.h>

#include <cmath>

#include "hemexp/core/intracranial.hpp"
#include "hemexp/core/synth.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;

// A ball of `inside_hu` of radius r_in (mm) in a bone shell 6 mm thick, air outside, on a
// 1 x 1 x 2 mm grid centred on the ball.
Volume skull(double r_in, float inside_hu, double gap_mm = 0.0) {
  const Geometry g = test::grid({160, 160, 80}, {1.0, 1.0, 2.0});
  torch::Tensor v = torch::full(tensor_shape(g), -1000.f);
  auto a = v.accessor<float, 3>();
  for (int64_t z = 0; z < 80; ++z)
    for (int64_t y = 0; y < 160; ++y)
      for (int64_t x = 0; x < 160; ++x) {
        const double dx = x - 79.5, dy = y - 79.5, dz = 2.0 * (z - 39.5);
        const double r = std::sqrt(dx * dx + dy * dy + dz * dz);
        if (r < r_in) a[z][y][x] = inside_hu;
        else if (r < r_in + 6.0 && !(std::abs(dx) < gap_mm / 2 && dy < 0)) a[z][y][x] = 1000.f;
      }
  return {g, v};
}

TEST(Intracranial, SphericalSkullHasItsVolumeAndBrain) {
  const IntracranialContent c = intracranial_content(skull(60.0, 30.f));
  EXPECT_TRUE(c.skull_found);
  EXPECT_TRUE(c.brain_like);
  // 4/3 pi 60^3 = 904.8 mL; the top and bottom caps, where the slice cuts the shell, are lost.
  EXPECT_NEAR(c.volume_ml, 4.0 / 3.0 * kPi * 60 * 60 * 60 / 1000.0, 0.05 * 904.8);
  EXPECT_EQ(c.median_hu, 30.0);
  EXPECT_EQ(c.brain_fraction, 1.0);
}

TEST(Intracranial, NarrowGapInTheSkullIsBridgedWideOneIsNot) {
  const double closed = intracranial_content(skull(60.0, 30.f)).volume_ml;
  EXPECT_NEAR(intracranial_content(skull(60.0, 30.f, 3.0)).volume_ml, closed, 0.02 * closed);
  // A 30 mm opening (a craniectomy on every slice) leaves nothing enclosed.
  const IntracranialContent open = intracranial_content(skull(60.0, 30.f, 30.0));
  EXPECT_FALSE(open.skull_found);
  EXPECT_TRUE(open.brain_like);  // no verdict without a skull
}

TEST(Intracranial, PhantomSkullFullOfAirIsNotABrain) {
  Volume v = skull(60.0, -1000.f);
  // A blood-density cylinder insert, 20 mm across, through the middle.
  auto a = v.voxels.accessor<float, 3>();
  for (int64_t z = 20; z < 60; ++z)
    for (int64_t y = 70; y < 90; ++y)
      for (int64_t x = 70; x < 90; ++x)
        if ((x - 79.5) * (x - 79.5) + (y - 79.5) * (y - 79.5) < 100) a[z][y][x] = 80.f;
  const IntracranialContent c = intracranial_content(v);
  EXPECT_TRUE(c.skull_found);
  EXPECT_FALSE(c.brain_like);
  EXPECT_EQ(c.median_hu, -1000.0);
  EXPECT_EQ(c.brain_fraction, 0.0);
  EXPECT_NE(c.describe().find("median -1000 HU, 0% in the brain range 15 to 45 HU"), std::string::npos)
      << c.describe();
}

// The fill from the slice border follows a winding channel: air reached only through an
// entrance and five U-turns (up and down) is outside, not enclosed; a closed box beside it holds
// the only enclosed voxels. Walls 3 voxels thick, gaps 6 wide: a closing by 1 voxel changes nothing.
TEST(Intracranial, FillFromTheBorderFollowsAWindingChannel) {
  const Geometry g = test::grid({100, 50, 2}, {1.0, 1.0, 1.0});
  torch::Tensor v = torch::full(tensor_shape(g), -1000.f);
  const auto rect = [&v](int64_t x0, int64_t x1, int64_t y0, int64_t y1, float hu) {
    v.slice(1, y0, y1).slice(2, x0, x1).fill_(hu);
  };
  const auto ring = [&rect](int64_t x0, int64_t x1, int64_t y0, int64_t y1) {
    rect(x0, x1, y0, y1, 1000.f);
    rect(x0 + 3, x1 - 3, y0 + 3, y1 - 3, -1000.f);
  };
  ring(5, 25, 5, 45);
  rect(8, 22, 8, 42, 30.f);  // the closed box: 14 x 34 voxels of brain density
  ring(35, 95, 5, 45);
  rect(35, 38, 22, 28, -1000.f);  // the channel's entrance in the left wall
  for (int64_t k = 0; k < 5; ++k) {  // baffles from the top and from the bottom in turn
    const int64_t x = 44 + 9 * k;
    if (k % 2 == 0) rect(x, x + 3, 8, 36, 1000.f);
    else rect(x, x + 3, 14, 42, 1000.f);
  }
  IntracranialOptions o;
  o.closing_radius_mm = 1.0;
  const IntracranialContent c = intracranial_content({g, v}, o);
  EXPECT_DOUBLE_EQ(c.volume_ml, 2 * 14 * 34 / 1000.0);
  EXPECT_EQ(c.median_hu, 30.0);
  EXPECT_EQ(c.brain_fraction, 1.0);
  // Closing the entrance: the whole channel is enclosed too (54 x 34 minus the baffles).
  rect(35, 38, 22, 28, 1000.f);
  const IntracranialContent closed = intracranial_content({g, v}, o);
  EXPECT_DOUBLE_EQ(closed.volume_ml, 2 * (14 * 34 + 54 * 34 - 3 * 28 * 5) / 1000.0);
}

TEST(Intracranial, SyntheticHeadIsABrain) {
  const IntracranialContent c = intracranial_content(test::synthetic_head(5, 128, 0.0));
  EXPECT_TRUE(c.skull_found);
  EXPECT_TRUE(c.brain_like);
  EXPECT_GT(c.volume_ml, 900.0);   // an adult intracranial volume, about 1.1 to 1.6 L
  EXPECT_LT(c.volume_ml, 1800.0);
  EXPECT_GT(c.brain_fraction, 0.6);
}

}  // namespace
}  // namespace hemexp

// The closing as intracranial_content did it before (max pooling of float maps): dilation with
// zero padding, then erosion of the result padded with ones.
TEST(Intracranial, ClosingEqualsMaxPoolingReference) {
  torch::manual_seed(3);
  for (const auto& [ry, rx] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 3}, {4, 4}, {7, 2}, {20, 30}}) {
    for (double density : {0.02, 0.1, 0.4}) {
      const torch::Tensor binary = (torch::rand({3, 37, 53}) < density).to(torch::kUInt8);
      const torch::Tensor bone = binary.to(torch::kFloat32).unsqueeze(1);
      const std::vector<int64_t> k{2 * ry + 1, 2 * rx + 1};
      const torch::Tensor dilated = torch::max_pool2d(bone, k, {1, 1}, {ry, rx});
      const torch::Tensor padded = torch::constant_pad_nd(dilated, {rx, rx, ry, ry}, 1.0);
      const torch::Tensor expected = (torch::max_pool2d(-padded, k, {1, 1}, {0, 0}) < -0.5).squeeze(1).to(torch::kUInt8);
      const torch::Tensor got = hemexp::close_slices(binary, ry, rx);
      EXPECT_TRUE(torch::equal(got, expected)) << "ry " << ry << " rx " << rx << " density " << density;
      EXPECT_GT(got.sum().item<int64_t>(), binary.sum().item<int64_t>() / 2);  // not trivially empty
    }
  }
}
