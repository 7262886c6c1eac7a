// Assembling DICOM-like slices: tilt removal, spacing resampling, and the failures.
#include <gtest/gtest.h>

#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/preprocessing.hpp"
#include "hemexp/core/slice_stack.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Intensity of a smooth synthetic object at a physical point: slowly varying so that
// bilinear interpolation is accurate to a fraction of a HU.
double field(const Vec3& p) {
  return 100.0 * std::sin(p[0] / 9.0) + 80.0 * std::cos(p[1] / 11.0) + 3.0 * p[2];
}

// Slices of a gantry-tilted acquisition: orientation rotated about x by tilt_deg, slice
// origins moved straight along z (as the table moves), like the GE series in tests/data.
std::vector<Slice> tilted_slices(double tilt_deg, const std::vector<double>& z_positions,
                                 const std::vector<double>& thickness) {
  const double a = tilt_deg * kPi / 180.0;
  std::vector<Slice> out;
  for (size_t k = 0; k < z_positions.size(); ++k) {
    Slice s;
    s.geometry.rows = 40;
    s.geometry.columns = 36;
    s.geometry.row_spacing_mm = 1.25;
    s.geometry.column_spacing_mm = 1.5;
    s.geometry.row_direction = {1, 0, 0};
    s.geometry.column_direction = {0, std::cos(a), -std::sin(a)};
    s.geometry.position_mm = {-20, -25, z_positions[k]};
    s.geometry.thickness_mm = thickness[k];
    s.hu = torch::empty({40, 36}, torch::kFloat32);
    auto acc = s.hu.accessor<float, 2>();
    for (int r = 0; r < 40; ++r)
      for (int c = 0; c < 36; ++c)
        acc[r][c] = float(field(s.geometry.position_mm + (c * 1.5) * s.geometry.row_direction +
                                (r * 1.25) * s.geometry.column_direction));
    s.source = "slice" + std::to_string(k);
    out.push_back(s);
  }
  std::reverse(out.begin(), out.end());  // input order must not matter
  return out;
}

TEST(SliceStack, UntiltedUniformSeriesIsStackedExactly) {
  auto slices = tilted_slices(0.0, {0, 5, 10, 15}, {5, 5, 5, 5});
  StackReport report;
  const Volume v = assemble_slices(slices, report);
  EXPECT_EQ(v.geometry.size, (std::array<int64_t, 3>{36, 40, 4}));
  EXPECT_DOUBLE_EQ(v.geometry.spacing_mm[2], 5.0);
  EXPECT_DOUBLE_EQ(report.gantry_tilt_deg, 0.0);
  EXPECT_TRUE(report.corrections.empty());
  // Sorted along the normal: slice z=0 first, voxel values identical to the input.
  EXPECT_TRUE(torch::equal(v.voxels[0], slices.back().hu));
  EXPECT_TRUE(torch::equal(v.voxels[3], slices.front().hu));
}

TEST(SliceStack, GantryTiltIsMeasuredAndRemoved) {
  std::vector<double> z;
  for (int k = 0; k < 10; ++k) z.push_back(4.2 * k);
  auto slices = tilted_slices(18.5, z, std::vector<double>(10, 4.0));
  StackReport report;
  const Volume v = assemble_slices(slices, report);
  EXPECT_NEAR(report.gantry_tilt_deg, 18.5, 0.05);
  ASSERT_EQ(report.corrections.size(), 1u);
  EXPECT_NE(report.corrections[0].find("gantry tilt"), std::string::npos);
  // Orthogonal output grid: slice spacing is the distance along the normal.
  EXPECT_NEAR(v.geometry.spacing_mm[2], 4.2 * std::cos(18.5 * kPi / 180), 1e-6);
  EXPECT_NEAR(mat_det(v.geometry.direction), 1.0, 1e-9);
  // The grid grows to hold every shifted slice.
  EXPECT_GT(v.geometry.size[1], 40);

  // Every input pixel (away from the slice edge, where interpolation meets air) is found at
  // its true physical point in the corrected volume.
  double worst = 0;
  for (const Slice& s : slices)
    for (int r = 2; r < 38; r += 3)
      for (int c = 2; c < 34; c += 3) {
        const Vec3 p = s.geometry.position_mm + (c * 1.5) * s.geometry.row_direction +
                       (r * 1.25) * s.geometry.column_direction;
        const Vec3 idx = v.geometry.point_to_index(p);
        worst = std::max(worst, std::abs(sample_trilinear(v, idx) - s.hu[r][c].item<double>()));
      }
  EXPECT_LT(worst, 1.0);
}

TEST(SliceStack, MixedThicknessIsResampledToUniformSpacing) {
  // 4 mm slices, then 7 mm slices starting 1.08 mm after the last 4 mm one (GE layout).
  std::vector<double> z, th;
  for (int k = 0; k < 5; ++k) z.push_back(4.0 * k), th.push_back(4.0);
  for (int k = 0; k < 4; ++k) z.push_back(17.08 + 7.0 * k), th.push_back(7.0);
  auto slices = tilted_slices(0.0, z, th);
  StackReport report;
  const Volume v = assemble_slices(slices, report);
  EXPECT_NEAR(report.min_slice_spacing_mm, 1.08, 1e-9);
  EXPECT_NEAR(report.max_slice_spacing_mm, 7.0, 1e-9);
  EXPECT_DOUBLE_EQ(v.geometry.spacing_mm[2], 4.0);
  EXPECT_EQ(v.geometry.size[2], int64_t(std::floor(38.08 / 4.0)) + 1);
  ASSERT_EQ(report.corrections.size(), 1u);
  EXPECT_NE(report.corrections[0].find("uniform 4.00 mm"), std::string::npos);
  // Output slices that coincide with input slices copy them exactly; the others are the
  // linear blend of their neighbours along the normal.
  const auto by_z = [&](double zz) {
    for (const Slice& s : slices)
      if (std::abs(s.geometry.position_mm[2] - zz) < 1e-9) return s.hu;
    throw std::runtime_error("no slice");
  };
  EXPECT_TRUE(torch::equal(v.voxels[4], by_z(16.0)));
  const double w = (20.0 - 17.08) / 7.0;
  EXPECT_TRUE(torch::allclose(v.voxels[5], by_z(17.08) * float(1 - w) + by_z(24.08) * float(w),
                              1e-5, 1e-3));
}

TEST(SliceStack, Failures) {
  StackReport report;
  auto expect_error = [&](std::vector<Slice> slices, const std::string& needle) {
    try {
      assemble_slices(std::move(slices), report);
      FAIL() << "expected an error containing '" << needle << "'";
    } catch (const CoreError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(tilted_slices(0, {0, 5, 5, 10}, {5, 5, 5, 5}), "duplicate slice positions");
  expect_error(tilted_slices(0, {0, 5, 10, 20}, {5, 5, 5, 5}), "missing slices");
  expect_error(tilted_slices(0, {0}, {5}), "single 2D image");
  auto mixed = tilted_slices(0, {0, 5, 10}, {5, 5, 5});
  mixed[1].geometry.rows = 20;
  mixed[1].hu = torch::zeros({20, 36});
  expect_error(mixed, "mixes image sizes");
}

TEST(SliceStack, ShiftSampleIsBilinear) {
  const torch::Tensor img = torch::arange(12, torch::kFloat32).reshape({3, 4});
  const torch::Tensor out = shift_sample(img, 0.5, -1.0, 3, 4, -1000.f);
  EXPECT_FLOAT_EQ(out[0][0].item<float>(), -1000.f);          // left of the image
  EXPECT_FLOAT_EQ(out[0][1].item<float>(), 0.5f * (0 + 4));     // between rows 0 and 1
  EXPECT_FLOAT_EQ(out[2][1].item<float>(), 0.5f * (8 - 1000));  // below the last row
}

}  // namespace
}  // namespace hemexp
