// Geometry and canonical orientation: every voxel keeps its physical point.
#include <gtest/gtest.h>

#include <cmath>

#include "hemexp/core/orientation.hpp"

namespace hemexp {
namespace {

Mat3 rotation(double ax, double ay, double az) {
  const Mat3 rx{1, 0, 0, 0, std::cos(ax), -std::sin(ax), 0, std::sin(ax), std::cos(ax)};
  const Mat3 ry{std::cos(ay), 0, std::sin(ay), 0, 1, 0, -std::sin(ay), 0, std::cos(ay)};
  const Mat3 rz{std::cos(az), -std::sin(az), 0, std::sin(az), std::cos(az), 0, 0, 0, 1};
  return mat_mul(rz, mat_mul(ry, rx));
}

// A permutation/flip matrix times a small oblique rotation, as real scanners produce.
Geometry make_grid(const std::array<int, 3>& perm, const std::array<int, 3>& sign, double tilt) {
  Mat3 p{};
  for (int j = 0; j < 3; ++j) p[perm[j] * 3 + j] = sign[j];
  Geometry g;
  g.size = {7, 5, 4};
  g.spacing_mm = {0.5, 0.8, 5.0};
  g.origin_mm = {-12.5, 30.25, -7.0};
  g.direction = mat_mul(rotation(tilt, 0.5 * tilt, -0.3 * tilt), p);
  return g;
}

TEST(Geometry, IndexPointRoundTrip) {
  const Geometry g = make_grid({1, 0, 2}, {-1, 1, -1}, 0.2);
  for (const Vec3& idx : {Vec3{0, 0, 0}, Vec3{6, 4, 3}, Vec3{2.5, 1.25, 0.5}}) {
    const Vec3 back = g.point_to_index(g.index_to_point(idx));
    for (int a = 0; a < 3; ++a) EXPECT_NEAR(back[a], idx[a], 1e-9);
  }
  // Spacing scales distances along each axis.
  EXPECT_NEAR(norm(g.index_to_point({0, 0, 1}) - g.index_to_point({0, 0, 0})), 5.0, 1e-12);
  EXPECT_NEAR(g.voxel_volume_mm3(), 0.5 * 0.8 * 5.0, 1e-12);
}

class CanonicalOrientation
    : public ::testing::TestWithParam<std::tuple<std::array<int, 3>, std::array<int, 3>>> {};

TEST_P(CanonicalOrientation, EveryVoxelKeepsItsPhysicalPoint) {
  const auto [perm, sign] = GetParam();
  const Geometry g = make_grid(perm, sign, 0.15);
  const AxisMap map = canonical_axis_map(g);
  const Geometry cg = to_canonical(g, map);

  // The canonical direction is close to identity: positive diagonal dominates.
  for (int c = 0; c < 3; ++c) EXPECT_GT(cg.direction[c * 3 + c], 0.9);

  // Voxel values encode their input index; after reorientation each canonical voxel must hold
  // the input voxel found at the same physical point.
  torch::Tensor values = torch::arange(g.voxel_count(), torch::kFloat32).reshape(tensor_shape(g));
  torch::Tensor cv = to_canonical(values, map);
  check_matches(cg, cv, "canonical");
  auto acc = cv.accessor<float, 3>();
  for (int64_t z = 0; z < cg.size[2]; ++z)
    for (int64_t y = 0; y < cg.size[1]; ++y)
      for (int64_t x = 0; x < cg.size[0]; ++x) {
        const Vec3 p = cg.index_to_point({double(x), double(y), double(z)});
        const Vec3 in = g.point_to_index(p);
        const int64_t ix = std::llround(in[0]), iy = std::llround(in[1]), iz = std::llround(in[2]);
        ASSERT_NEAR(in[0], double(ix), 1e-9);
        ASSERT_NEAR(in[1], double(iy), 1e-9);
        ASSERT_NEAR(in[2], double(iz), 1e-9);
        ASSERT_EQ(acc[z][y][x], float((iz * g.size[1] + iy) * g.size[0] + ix));
      }

  // And the way back is exact.
  EXPECT_TRUE(torch::equal(from_canonical(cv, map), values));
}

INSTANTIATE_TEST_SUITE_P(
    PermutationsAndFlips, CanonicalOrientation,
    ::testing::Values(std::make_tuple(std::array<int, 3>{0, 1, 2}, std::array<int, 3>{1, 1, 1}),
                      std::make_tuple(std::array<int, 3>{0, 1, 2}, std::array<int, 3>{-1, -1, 1}),
                      std::make_tuple(std::array<int, 3>{0, 2, 1}, std::array<int, 3>{1, -1, 1}),
                      std::make_tuple(std::array<int, 3>{2, 0, 1}, std::array<int, 3>{-1, 1, -1}),
                      std::make_tuple(std::array<int, 3>{1, 2, 0}, std::array<int, 3>{1, 1, -1})));

TEST(Geometry, SameGridDetectsShift) {
  Geometry a = make_grid({0, 1, 2}, {1, 1, 1}, 0.0);
  Geometry b = a;
  EXPECT_TRUE(a.same_grid(b));
  b.origin_mm[2] += 0.01;
  EXPECT_FALSE(a.same_grid(b));
}

}  // namespace
}  // namespace hemexp
