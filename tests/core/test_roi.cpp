// The classifier ROI, checked by physical points on balls of known size and position.
#include <gtest/gtest.h>

#include "test_shapes.hpp"

#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/roi.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kBrainHu = 30.f, kBloodHu = 60.f;

// 96 x 80 x 30 voxels of 0.8 x 0.9 x 3 mm, off-centre origin, rotated 10 degrees about z
// (still canonical: the closest axis permutation is the identity).
Geometry scan_grid() {
  Geometry g = test::grid({96, 80, 30}, {0.8, 0.9, 3.0}, {-40, 12, 7});
  const double a = 10.0 * kPi / 180.0;
  g.direction = {std::cos(a), -std::sin(a), 0, std::sin(a), std::cos(a), 0, 0, 0, 1};
  return g;
}

// Brain everywhere, blood in the mask.
Volume ct_with(const Geometry& g, const torch::Tensor& mask) {
  return {g, torch::full(tensor_shape(g), kBrainHu) + (kBloodHu - kBrainHu) * mask.to(torch::kFloat32)};
}

RoiRecipe recipe(std::array<int64_t, 3> size = {16, 64, 64}) {
  return RoiRecipe::from_json({{"size", size},
                               {"spacing_mm", {1.5, 1.5, 4.0}},
                               {"channels", {{{"name", "brain"}, {"window_hu", {0, 80}}}, {{"name", "mask"}}}},
                               {"centre", "mask_centroid"}});
}

Vec3 mask_centroid_mm(const Geometry& g, const torch::Tensor& mask) {
  const torch::Tensor zyx = mask.nonzero().to(torch::kFloat64).mean(0);
  return g.index_to_point({zyx[2].item<double>(), zyx[1].item<double>(), zyx[0].item<double>()});
}

double roi_voxel_mm3(const Roi& r) { return r.grid.voxel_volume_mm3(); }

TEST(Roi, CentredOnTheClotWithItsValuesByPhysicalPoint) {
  const Geometry g = scan_grid();
  const Vec3 centre_index{40.3, 37.6, 14.2};
  const double radius_mm = 12.0;
  const torch::Tensor mask = test::ball(g, centre_index, radius_mm);
  const Roi r = build_roi(ct_with(g, mask), mask, recipe());

  const Vec3 sphere_mm = g.index_to_point(centre_index);
  EXPECT_LT(norm(r.centre_mm - mask_centroid_mm(g, mask)), 1e-9);
  EXPECT_LT(norm(r.centre_mm - sphere_mm), 0.2);  // discretisation of the ball only
  EXPECT_LT(norm(r.grid.index_to_point({31.5, 31.5, 7.5}) - r.centre_mm), 1e-9);
  EXPECT_EQ(r.grid.size, (std::array<int64_t, 3>{64, 64, 16}));
  EXPECT_EQ(r.grid.direction, g.direction);
  EXPECT_EQ(r.image.sizes(), (std::vector<int64_t>{2, 16, 64, 64}));
  EXPECT_EQ(r.image.scalar_type(), torch::kFloat32);
  EXPECT_EQ(r.mask_voxels, mask.sum().item<int64_t>());
  EXPECT_DOUBLE_EQ(r.mask_fraction_inside, 1.0);

  // Fixed physical scale: the mask channel holds the sphere's volume.
  const double sphere_mm3 = 4.0 / 3.0 * kPi * std::pow(radius_mm, 3);
  EXPECT_NEAR(r.image[1].sum().item<double>() * roi_voxel_mm3(r), sphere_mm3, 0.03 * sphere_mm3);

  // Every ROI voxel whose trilinear neighbours (within one input voxel diagonal, 3.2 mm) all
  // lie on one side of the sphere's surface holds exactly that side's values.
  const double reach_mm = norm(g.spacing_mm);
  auto image = r.image.accessor<float, 4>();
  int64_t deep_inside = 0, far_outside = 0;
  for (int64_t z = 0; z < 16; ++z)
    for (int64_t y = 0; y < 64; ++y)
      for (int64_t x = 0; x < 64; ++x) {
        const double d = norm(r.grid.index_to_point({double(x), double(y), double(z)}) - sphere_mm);
        if (d < radius_mm - reach_mm) {
          ++deep_inside;
          EXPECT_NEAR(image[0][z][y][x], 0.75, 1e-6);  // 60 HU in [0, 80]
          EXPECT_NEAR(image[1][z][y][x], 1.0, 1e-6);
        } else if (d > radius_mm + reach_mm) {
          const Vec3 input_index = g.point_to_index(r.grid.index_to_point({double(x), double(y), double(z)}));
          bool in_scan = true;
          for (int a = 0; a < 3; ++a) in_scan = in_scan && input_index[a] >= 0 && input_index[a] <= double(g.size[a] - 1);
          if (!in_scan) continue;
          ++far_outside;
          EXPECT_NEAR(image[0][z][y][x], 0.375, 1e-6);  // 30 HU
          EXPECT_NEAR(image[1][z][y][x], 0.0, 1e-6);
        }
      }
  EXPECT_GT(deep_inside, 250);
  EXPECT_GT(far_outside, 10000);
}

TEST(Roi, OddSizeHasItsCentreVoxelOnTheClot) {
  const Geometry g = scan_grid();
  const torch::Tensor mask = test::ball(g, {50, 30, 12}, 9.0);
  const Roi r = build_roi(ct_with(g, mask), mask, recipe({15, 63, 63}));
  EXPECT_LT(norm(r.grid.index_to_point({31, 31, 7}) - r.centre_mm), 1e-9);
  EXPECT_NEAR(r.image[1][7][31][31].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(r.image[0][7][31][31].item<double>(), 0.75, 1e-6);
}

TEST(Roi, TwiceTheRadiusGivesEightTimesTheMask) {
  const Geometry g = scan_grid();
  // (Radii from 8 mm: smaller balls on 3 mm slices sampled at 4 mm are off by a few percent.)
  const torch::Tensor small = test::ball(g, {48.3, 40.2, 15.4}, 8.0), large = test::ball(g, {48.3, 40.2, 15.4}, 16.0);
  const double small_sum = build_roi(ct_with(g, small), small, recipe()).image[1].sum().item<double>();
  const double large_sum = build_roi(ct_with(g, large), large, recipe()).image[1].sum().item<double>();
  EXPECT_NEAR(large_sum / small_sum, 8.0, 0.03 * 8.0);
}

TEST(Roi, OutsideTheScanIsAirAndACutClotIsReported) {
  // A ball 6 mm from the scan's x = 0 face (and cut by it): half the ROI lies outside the scan.
  const Geometry g = scan_grid();
  const torch::Tensor mask = test::ball(g, {7.5, 40, 15}, 10.0);
  const Roi r = build_roi(ct_with(g, mask), mask, recipe());
  auto image = r.image.accessor<float, 4>();
  int64_t outside = 0, ramp = 0;
  for (int64_t z = 0; z < 16; ++z)
    for (int64_t y = 0; y < 64; ++y)
      for (int64_t x = 0; x < 64; ++x) {
        const Vec3 input_index = g.point_to_index(r.grid.index_to_point({double(x), double(y), double(z)}));
        bool beyond = false, within = true;  // beyond: no trilinear neighbour in the scan
        for (int a = 0; a < 3; ++a) {
          beyond = beyond || input_index[a] <= -1 || input_index[a] >= double(g.size[a]);
          within = within && input_index[a] >= 0 && input_index[a] <= double(g.size[a] - 1);
        }
        if (beyond) {
          ++outside;
          EXPECT_EQ(image[0][z][y][x], 0.f);  // -1000 HU in [0, 80]
          EXPECT_EQ(image[1][z][y][x], 0.f);
        } else if (!within) {
          ++ramp;  // between the edge voxel and air: never brighter than the edge
          EXPECT_LE(image[0][z][y][x], 0.75f + 1e-6f);
        }
      }
  EXPECT_GT(outside, 16 * 64 * 20);
  EXPECT_GT(ramp, 0);
  EXPECT_DOUBLE_EQ(r.mask_fraction_inside, 1.0);  // cut by the scan, not by the ROI

  // A ROI smaller than the clot: the share inside is the voxels whose centres are in the box.
  RoiRecipe tight = recipe({6, 16, 16});  // 24 x 24 x 24 mm around a 40 mm ball
  // (Off the voxel lattice, so that no voxel centre lies exactly on a face of the box.)
  const torch::Tensor big = test::ball(g, {48.3, 40.2, 15.4}, 20.0);
  const Roi cut = build_roi(ct_with(g, big), big, tight);
  int64_t in_box = 0;
  const torch::Tensor where = big.nonzero();
  auto w = where.accessor<int64_t, 2>();
  for (int64_t i = 0; i < where.size(0); ++i) {
    const Vec3 roi_index = cut.grid.point_to_index(g.index_to_point({double(w[i][2]), double(w[i][1]), double(w[i][0])}));
    bool in = true;
    for (int a = 0; a < 3; ++a) in = in && roi_index[a] >= -0.5 && roi_index[a] < double(cut.grid.size[a]) - 0.5;
    in_box += in;
  }
  EXPECT_LT(cut.mask_fraction_inside, 0.5);
  EXPECT_NEAR(cut.mask_fraction_inside, double(in_box) / double(where.size(0)), 1e-12);
}

TEST(Roi, EmptyMaskAndMismatchedTensorsAreErrors) {
  const Geometry g = scan_grid();
  const torch::Tensor empty = torch::zeros(tensor_shape(g), torch::kUInt8);
  try {
    build_roi(ct_with(g, empty), empty, recipe());
    FAIL() << "an empty mask built a ROI";
  } catch (const CoreError& e) {
    EXPECT_NE(std::string(e.what()).find("no hematoma"), std::string::npos) << e.what();
  }
  EXPECT_THROW(build_roi(ct_with(g, empty), torch::zeros({3, 4, 5}, torch::kUInt8), recipe()), CoreError);
}

// The CoreError of a bad recipe names the field.
void expect_rejected(const nlohmann::json& j, const std::string& field) {
  try {
    RoiRecipe::from_json(j);
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const CoreError& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << "'" << e.what() << "' does not name " << field;
  }
}

TEST(Roi, RecipeFromJsonRejectsBadFieldsByName) {
  const nlohmann::json good = recipe().to_json();
  const auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    return j;
  };
  const auto without = [&](const std::string& key) {
    nlohmann::json j = good;
    j.erase(key);
    return j;
  };
  for (const char* key : {"size", "spacing_mm", "channels", "centre"}) expect_rejected(without(key), std::string("roi.") + key);
  expect_rejected(with("size", {16, 64}), "roi.size");
  expect_rejected(with("size", {16, 64, 0}), "roi.size");
  expect_rejected(with("size", {16, 64, 257}), "roi.size");
  expect_rejected(with("size", {16, 64.5, 64}), "roi.size");
  expect_rejected(with("size", {256, 256, 256}), "roi.size");  // over 2^22 voxels
  expect_rejected(with("spacing_mm", {1.5, 1.5}), "roi.spacing_mm");
  expect_rejected(with("spacing_mm", {1.5, -1.5, 4}), "roi.spacing_mm");
  expect_rejected(with("spacing_mm", {1.5, 1.5, "4"}), "roi.spacing_mm");
  expect_rejected(with("channels", nlohmann::json::array()), "roi.channels");
  expect_rejected(with("channels", {{{"name", "brain"}}}), "roi.channels[0].window_hu");
  expect_rejected(with("channels", {{{"name", "brain"}, {"window_hu", {80, 0}}}}), "roi.channels[0].window_hu");
  expect_rejected(with("channels", {{{"name", "mask"}, {"window_hu", {0, 1}}}}), "roi.channels[0].window_hu");
  expect_rejected(with("channels", {{{"name", "mask"}}, {{"name", "mask"}}}), "roi.channels[1].name");
  expect_rejected(with("channels", {{{"name", ""}}}), "roi.channels[0].name");
  expect_rejected(with("channels", {{{"name", "mask"}, {"colour", "red"}}}), "roi.channels[0].colour");
  expect_rejected(with("centre", "bounding_box"), "roi.centre");
  expect_rejected(with("spacing", {1, 1, 1}), "roi.spacing");
  expect_rejected(nlohmann::json::array(), "roi");
}

TEST(Roi, RecipeJsonRoundTrip) {
  const nlohmann::json j = {{"size", {8, 32, 48}},
                            {"spacing_mm", {1.25, 1.5, 5.0}},
                            {"channels",
                             {{{"name", "blood"}, {"window_hu", {40, 90}}},
                              {{"name", "mask"}},
                              {{"name", "wide"}, {"window_hu", {-20.5, 120}}}}},
                            {"centre", "mask_centroid"}};
  const RoiRecipe r = RoiRecipe::from_json(j);
  EXPECT_EQ(r.size, (std::array<int64_t, 3>{8, 32, 48}));
  EXPECT_EQ(r.spacing_mm, (Vec3{1.25, 1.5, 5.0}));
  ASSERT_EQ(r.channels.size(), 3u);
  EXPECT_TRUE(r.channels[1].is_mask);
  EXPECT_DOUBLE_EQ(r.channels[2].window_low_hu, -20.5);
  EXPECT_EQ(r.extent_mm(), (Vec3{60.0, 48.0, 40.0}));
  EXPECT_EQ(r.to_json(), j);
  EXPECT_EQ(RoiRecipe::from_json(r.to_json()).to_json(), j);
}

}  // namespace
}  // namespace hemexp
