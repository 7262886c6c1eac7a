// NCCT expansion markers measured on shapes and densities with known answers.
#include <gtest/gtest.h>

#include "test_shapes.hpp"

#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/statistics.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kBrainHu = 30.f, kBloodHu = 65.f;

Geometry grid(std::array<int64_t, 3> size, Vec3 spacing) { return test::grid(size, spacing, {-40, 12, 7}); }
using test::ball;

// Blood in the mask, brain elsewhere, plus Gaussian noise of sd_hu (seeded: same every run).
torch::Tensor clot_hu(const torch::Tensor& mask, double noise_sd_hu = 0.0, uint64_t seed = 1) {
  torch::Tensor hu = kBrainHu + (kBloodHu - kBrainHu) * mask.to(torch::kFloat32);
  if (noise_sd_hu > 0) {
    auto gen = at::detail::createCPUGenerator(seed);
    hu += float(noise_sd_hu) * at::normal(0.0, 1.0, hu.sizes(), gen).to(torch::kFloat32);
  }
  return hu;
}

TEST(Markers, UniformBallHasNoHypodensityAndIsRound) {
  const Geometry g = grid({80, 80, 40}, {0.5, 0.5, 1.0});
  const torch::Tensor m = ball(g, {40.2, 39.7, 20.1}, 12.0);
  const NcctMarkers r = measure_markers(m, clot_hu(m), g);
  EXPECT_EQ(r.voxels, m.sum().item<int64_t>());
  EXPECT_GT(r.interior_voxels, r.voxels / 2);
  EXPECT_LT(r.interior_voxels, r.voxels);
  EXPECT_DOUBLE_EQ(r.hypodense_fraction, 0.0);
  EXPECT_NEAR(r.hu_sd, 0.0, 1e-9);
  EXPECT_NEAR(r.hu_cv, 0.0, 1e-9);
  EXPECT_TRUE(std::isnan(r.bimodality_coefficient));  // constant HU: no shape to the histogram
  EXPECT_EQ(r.satellite_count, 0);
  EXPECT_EQ(r.satellite_volume_ml, 0.0);
  EXPECT_EQ(r.island_count, 0);
  EXPECT_NEAR(r.surface_ratio, 1.0, 0.05);
  // The same surface estimate as measure_hematoma: surface_ratio is 1 / sphericity.
  EXPECT_NEAR(r.surface_ratio, 1.0 / measure_hematoma(m, clot_hu(m), g).sphericity, 1e-12);

  // Noise: SD and CV follow it; a normal distribution is unimodal (coefficient near 1/3).
  const NcctMarkers noisy = measure_markers(m, clot_hu(m, 4.0), g);
  EXPECT_NEAR(noisy.hu_sd, 4.0, 0.2);
  EXPECT_NEAR(noisy.hu_cv, 4.0 / 65.0, 0.005);
  EXPECT_LT(noisy.hypodense_fraction, 0.001);  // 18 HU is 4.5 SD
  EXPECT_NEAR(noisy.bimodality_coefficient, 1.0 / 3.0, 0.03);
  EXPECT_LT(noisy.bimodality_coefficient, 0.555);
}

TEST(Markers, HypodensePartIsCountedAndMakesTheHistogramBimodal) {
  const Geometry g = grid({80, 80, 40}, {0.5, 0.5, 1.0});
  const Vec3 c{40.2, 39.7, 20.1};
  const torch::Tensor m = ball(g, c, 12.0);
  // Just under half the clot (x below the centre plane) 30 HU darker.
  const torch::Tensor left = (torch::arange(80, torch::kFloat32) < float(c[0]) - 0.5f).view({1, 1, 80}).expand({40, 80, 80});
  const torch::Tensor darker = (m.to(torch::kBool) & left);
  const torch::Tensor hu = clot_hu(m, 2.0) - 30.f * darker.to(torch::kFloat32);
  const NcctMarkers r = measure_markers(m, hu, g);
  EXPECT_GT(r.hypodense_fraction, 0.42);
  EXPECT_LT(r.hypodense_fraction, 0.5);
  EXPECT_NEAR(r.hu_sd, 15.0, 1.0);  // two densities 30 HU apart, near half and half
  EXPECT_GT(r.bimodality_coefficient, 0.9);

  // A 60/40 split is still clearly bimodal; a unimodal clot with wide noise is not.
  const torch::Tensor fifth = (torch::arange(80, torch::kFloat32) < float(c[0]) - 5.0f).view({1, 1, 80}).expand({40, 80, 80});
  const NcctMarkers split = measure_markers(m, clot_hu(m, 2.0) - 30.f * (m.to(torch::kBool) & fifth).to(torch::kFloat32), g);
  EXPECT_GT(split.bimodality_coefficient, 0.555);
  EXPECT_GT(split.hypodense_fraction, 0.15);
  const NcctMarkers wide = measure_markers(m, clot_hu(m, 8.0), g);
  EXPECT_LT(wide.bimodality_coefficient, 0.555);
}

// The hypodense-region markers on S (in-plane 2 mm mean of mask voxels): a uniform clot has
// none, even at its margin; a part cut off by a plane reaches the margin and lies off-centre; an
// encapsulated focus at the centre does not reach it and is central.
TEST(Markers, HypodenseRegionsTellACutOffPartFromAnEncapsulatedFocus) {
  const Geometry g = grid({80, 80, 40}, {0.5, 0.5, 1.0});
  const Vec3 c{40.2, 39.7, 20.1};
  const torch::Tensor m = ball(g, c, 12.0);
  const NcctMarkers uniform = measure_markers(m, clot_hu(m), g);
  EXPECT_NEAR(uniform.low_density_p10, 0.0, 1e-4);  // the brain around is not averaged in
  EXPECT_NEAR(uniform.smoothed_hu_iqr, 0.0, 1e-4);
  EXPECT_EQ(uniform.hypodense_region_count, 0);
  EXPECT_EQ(uniform.hypodense_region_fraction, 0.0);
  EXPECT_TRUE(std::isnan(uniform.hypodense_region_margin_contact));
  EXPECT_TRUE(std::isnan(uniform.hypodense_region_centrality));

  // Blend-like: the part with x more than 3 mm below the centre is 25 HU darker (a cap of the ball).
  const torch::Tensor x = torch::arange(80, torch::kFloat32).view({1, 1, 80}).expand({40, 80, 80});
  const torch::Tensor cap = m.to(torch::kBool) & (x < float(c[0]) - 6.f);  // 6 voxels = 3 mm
  const NcctMarkers blend = measure_markers(m, clot_hu(m, 1.0) - 25.f * cap.to(torch::kFloat32), g);
  const NcctMarkers plain = measure_markers(m, clot_hu(m, 1.0), g);
  EXPECT_EQ(blend.hypodense_region_count, 1);
  // The cap of a 12 mm ball cut 3 mm from the centre, h = 9 mm high, holds
  // pi h^2 (3R - h) / 3 over 4 pi R^3 / 3 = 729 / 2304 = 0.316 of its volume; the region is the cap's share of the interior, about as much (within the 1 mm
  // box's blur at the cut).
  EXPECT_NEAR(blend.hypodense_region_fraction, 729.0 / 2304.0, 0.03);
  EXPECT_GT(blend.hypodense_region_margin_contact, 0.3);
  EXPECT_LT(blend.hypodense_region_centrality, 0.4);
  EXPECT_NEAR(blend.low_density_p10, -25.0, 1.0);  // nearly a third of the clot is the cap
  EXPECT_LT(plain.smoothed_hu_iqr, 1.5);            // noise of 1 HU, averaged over 5 x 5 voxels
  EXPECT_EQ(plain.hypodense_region_count, 0);

  // Black-hole-like: a 3 mm ball at the centre 30 HU darker, noise 1 HU.
  const torch::Tensor focus = ball(g, c, 3.0).to(torch::kBool);
  const NcctMarkers hole = measure_markers(m, clot_hu(m, 1.0) - 30.f * focus.to(torch::kFloat32), g);
  EXPECT_EQ(hole.hypodense_region_count, 1);
  EXPECT_NEAR(hole.hypodense_region_fraction, double(focus.sum().item<int64_t>()) / double(hole.interior_voxels), 0.01);
  EXPECT_EQ(hole.hypodense_region_margin_contact, 0.0);
  EXPECT_GT(hole.hypodense_region_centrality, 0.7);  // voxels within 3 mm of the centre of a 12 mm ball
  EXPECT_NEAR(hole.low_density_p10, 0.0, 1.0);  // the focus is under 2 % of the clot

  // Two foci far apart: two regions, the larger one measured.
  // Centres 6 mm either side of the clot's (12 voxels of 0.5 mm).
  const torch::Tensor two = ball(g, {c[0] - 12.0, c[1], c[2]}, 2.5).to(torch::kBool) |
                            ball(g, {c[0] + 12.0, c[1], c[2]}, 3.0).to(torch::kBool);
  const NcctMarkers foci = measure_markers(m, clot_hu(m, 1.0) - 30.f * two.to(torch::kFloat32), g);
  EXPECT_EQ(foci.hypodense_region_count, 2);
  EXPECT_NEAR(foci.hypodense_region_fraction, double(ball(g, {c[0] + 12.0, c[1], c[2]}, 3.0).sum().item<int64_t>()) /
                                                  double(foci.interior_voxels), 0.01);

  // Written and read back.
  const NcctMarkers back = NcctMarkers::from_json(blend.to_json());
  EXPECT_EQ(back.hypodense_region_count, blend.hypodense_region_count);
  EXPECT_DOUBLE_EQ(back.hypodense_region_margin_contact, blend.hypodense_region_margin_contact);
  EXPECT_DOUBLE_EQ(back.low_density_p10, blend.low_density_p10);
}

// The radial shells: nothing low in a uniform clot; a dark core at the centre fills the inner
// shell and leaves the outer one alone; a cap cut off at the margin is the other way round.
TEST(Markers, RadialShellsTellACentralCoreFromAMarginalCap) {
  const Geometry g = grid({80, 80, 40}, {0.5, 0.5, 1.0});
  const Vec3 c{40.2, 39.7, 20.1};
  const torch::Tensor m = ball(g, c, 12.0);
  const NcctMarkers uniform = measure_markers(m, clot_hu(m, 1.0), g);
  EXPECT_EQ(uniform.inner_low_fraction, 0.0);
  EXPECT_EQ(uniform.middle_low_fraction, 0.0);
  EXPECT_EQ(uniform.outer_low_fraction, 0.0);
  EXPECT_NEAR(uniform.inner_hu_offset, 0.0, 0.3);

  // A 4 mm core 30 HU darker in a 12 mm ball: the inner shell is rho < 0.4, 4.8 mm, and the core
  // is (4 / 4.8)^3 = 0.58 of it. S, the 2 mm in-plane mean, moves the core's edge out in-plane by
  // 1/3 mm (a voxel is 10 HU low when over a third of its box is core, 30 HU darker): the low
  // share is that of a core 4.33 mm wide in-plane and 4 mm high, (4.33 / 4.8)^2 (4 / 4.8) = 0.68.
  // Its mean S keeps the core's 30 HU over 0.58 of the shell (a box mean moves no HU within it).
  const torch::Tensor core = ball(g, c, 4.0).to(torch::kBool);
  const NcctMarkers swirl = measure_markers(m, clot_hu(m, 1.0) - 30.f * core.to(torch::kFloat32), g);
  EXPECT_NEAR(swirl.inner_low_fraction, std::pow(4.333 / 4.8, 2) * (4.0 / 4.8), 0.03);
  EXPECT_LT(swirl.middle_low_fraction, 0.02);
  EXPECT_EQ(swirl.outer_low_fraction, 0.0);
  EXPECT_NEAR(swirl.inner_hu_offset, -30.0 * std::pow(4.0 / 4.8, 3), 3.0);

  // The cap x < centre - 3 mm, 25 HU darker: in the inner ball (4.8 mm) a cap 1.8 mm high is
  // h^2 (3R - h) / (4 R^3) = 0.092 of it; in the whole ball 0.316; the outer shell holds most of it.
  const torch::Tensor x = torch::arange(80, torch::kFloat32).view({1, 1, 80}).expand({40, 80, 80});
  const torch::Tensor cap = m.to(torch::kBool) & (x < float(c[0]) - 6.f);
  const NcctMarkers blend = measure_markers(m, clot_hu(m, 1.0) - 25.f * cap.to(torch::kFloat32), g);
  EXPECT_NEAR(blend.inner_low_fraction, 1.8 * 1.8 * (3 * 4.8 - 1.8) / (4 * std::pow(4.8, 3)), 0.04);
  EXPECT_GT(blend.outer_low_fraction, blend.middle_low_fraction);
  EXPECT_GT(blend.middle_low_fraction, blend.inner_low_fraction);
  EXPECT_GT(blend.outer_low_fraction, 0.3);

  // Written and read back; a result written before the shells existed reads them as not measured.
  const NcctMarkers back = NcctMarkers::from_json(swirl.to_json());
  EXPECT_DOUBLE_EQ(back.inner_low_fraction, swirl.inner_low_fraction);
  EXPECT_DOUBLE_EQ(back.inner_hu_offset, swirl.inner_hu_offset);
  nlohmann::json old = swirl.to_json();
  old.erase("outer_low_fraction");
  EXPECT_TRUE(std::isnan(NcctMarkers::from_json(old).outer_low_fraction));
}

// A ball with partial volume: each voxel's occupancy from 4 x 4 x 4 sub-samples, HU blended
// between blood and a darker (edematous) surround, mask where occupancy >= 1/2, on thick slices.
TEST(Markers, PartialVolumeRimIsNotHypodense) {
  const Geometry g = grid({100, 100, 14}, {0.45, 0.45, 5.0});
  const Vec3 c{49.6, 50.3, 6.7};
  const double radius_mm = 10.0;
  torch::Tensor occupancy = torch::zeros(tensor_shape(g), torch::kFloat32);
  auto occ = occupancy.accessor<float, 3>();
  for (int64_t z = 0; z < g.size[2]; ++z)
    for (int64_t y = 0; y < g.size[1]; ++y)
      for (int64_t x = 0; x < g.size[0]; ++x) {
        int inside = 0;
        for (int s = 0; s < 64; ++s) {
          const double dx = (double(x) + ((s & 3) + 0.5) / 4 - 0.5 - c[0]) * g.spacing_mm[0];
          const double dy = (double(y) + (((s >> 2) & 3) + 0.5) / 4 - 0.5 - c[1]) * g.spacing_mm[1];
          const double dz = (double(z) + ((s >> 4) + 0.5) / 4 - 0.5 - c[2]) * g.spacing_mm[2];
          inside += dx * dx + dy * dy + dz * dz <= radius_mm * radius_mm;
        }
        occ[z][y][x] = float(inside) / 64.f;
      }
  const torch::Tensor m = (occupancy >= 0.5f).to(torch::kUInt8);
  const float edema_hu = 22.f;
  const torch::Tensor hu = edema_hu + (66.f - edema_hu) * occupancy + 3.f * at::normal(0.0, 1.0, occupancy.sizes(), at::detail::createCPUGenerator(7)).to(torch::kFloat32);
  const NcctMarkers r = measure_markers(m, hu, g);
  // Rim voxels at occupancy 1/2 sit at 44 HU, 22 below the blood: counting every mask voxel
  // would call them hypodense. The interior does not hold them.
  const torch::Tensor all = hu.masked_select(m.to(torch::kBool)).to(torch::kFloat64);
  const double median_all = median(std::vector<double>(all.data_ptr<double>(), all.data_ptr<double>() + all.numel()));
  EXPECT_GT((all < median_all - 18).to(torch::kFloat64).mean().item<double>(), 0.05);
  EXPECT_LT(r.hypodense_fraction, 0.01);
}

TEST(Markers, SatellitesAreIslandsNearTheMainClot) {
  // Main ball r = 10 mm; two 2 mm balls whose nearest voxels are about 10 mm from it (along x
  // and y), one 60 mm away (along x): two satellites.
  const Geometry g = grid({160, 100, 40}, {0.8, 0.8, 2.0});
  const Vec3 main{30, 50, 20};
  const auto offset = [&](double dx_mm, double dy_mm) {
    return Vec3{main[0] + dx_mm / g.spacing_mm[0], main[1] + dy_mm / g.spacing_mm[1], main[2]};
  };
  const torch::Tensor near_x = ball(g, offset(22, 0), 2.0), near_y = ball(g, offset(0, -22), 2.0);
  const torch::Tensor m = ball(g, main, 10.0) | near_x | near_y | ball(g, offset(72, 0), 2.0);
  const NcctMarkers r = measure_markers(m, clot_hu(m), g);
  EXPECT_EQ(connected_components(m), 4);
  EXPECT_EQ(r.satellite_count, 2);
  EXPECT_NEAR(r.satellite_volume_ml, double((near_x | near_y).sum().item<int64_t>()) * g.voxel_volume_mm3() / 1000.0, 1e-12);
}

// An 8 mm clot on a 0.8 x 0.8 x 2 mm grid, with points given in mm from its centre.
struct ClotScene {
  Geometry g = grid({140, 100, 30}, {0.8, 0.8, 2.0});
  Vec3 centre;
  torch::Tensor clot;
  explicit ClotScene(Vec3 c) : centre(c), clot(ball(g, c, 8.0)) {}
  Vec3 at(double dx_mm, double dy_mm, double dz_mm) const {
    return Vec3{centre[0] + dx_mm / g.spacing_mm[0], centre[1] + dy_mm / g.spacing_mm[1],
                centre[2] + dz_mm / g.spacing_mm[2]};
  }
};

TEST(Markers, IslandsAreBloodLikeRegionsNearTheClotWhateverTheMaskKept) {
  // The mask holds only the main ball (as after a segmenter's small-component removal); the
  // image also has blood-density balls around it. Counted: the three 2.5 mm balls 3-5 mm
  // outside the margin. Not counted: a ball 30 mm away, a 1 mm speck (4 mm^3), a ball touching
  // the clot (the same bright region), a 70 HU layer along bone (partial volume with bone).
  const ClotScene scene({50, 50, 15});
  const Geometry& g = scene.g;
  const Vec3& main = scene.centre;
  const torch::Tensor& clot = scene.clot;
  const auto at = [&](double dx_mm, double dy_mm, double dz_mm) { return scene.at(dx_mm, dy_mm, dz_mm); };
  const torch::Tensor islands = ball(g, at(14, 0, 0), 2.5) | ball(g, at(0, 13, 0), 2.5) | ball(g, at(-9, -10, 4), 2.5);
  const torch::Tensor others = ball(g, at(38, 0, 0), 2.5) | ball(g, at(0, -11, 0), 1.0) | ball(g, at(-9, 0, 0), 2.5);
  torch::Tensor hu = clot_hu(clot | islands | others, 2.0);
  // Bone 16 mm behind the centre (y), with a 1.6 mm layer of 70 HU in front of it 6.4 mm from
  // the clot's margin: bright, near, but within 3 mm of bone.
  const int64_t bone_y = int64_t(main[1] - 16.0 / g.spacing_mm[1]);
  hu.narrow(1, 0, bone_y).fill_(1000.f);
  hu.narrow(1, bone_y, 2).narrow(0, 14, 3).narrow(2, 47, 6).fill_(70.f);  // about 46 mm^3
  const NcctMarkers r = measure_markers(clot, hu, g);
  EXPECT_EQ(r.satellite_count, 0);  // the mask has one component
  EXPECT_EQ(r.island_count, 3);
  // The same islands in the mask as well: still three (they are separate regions of the image).
  EXPECT_EQ(measure_markers(clot | islands, hu, g).island_count, 3);
  // Without the islands in the image: none.
  EXPECT_EQ(measure_markers(clot, clot_hu(clot | others, 2.0), g).island_count, 0);
  // The layer itself is island-like: without the bone behind it, it counts.
  torch::Tensor no_bone = hu.clone();
  no_bone.narrow(1, 0, bone_y).fill_(kBrainHu);
  EXPECT_EQ(measure_markers(clot, no_bone, g).island_count, 4);
}

TEST(Markers, IslandsStandOutFromTheirSurroundingsAndAreCompact) {
  // Three blood-like regions 3-4 mm outside a clot's margin, none near bone: a 2.5 mm ball of
  // blood (65 HU) in 30 HU brain (counted); the same ball at 45 HU (15 HU above the brain, a faint partial volume
  // or grey matter: not counted); a 65 HU strip 12 mm long, 2.4 mm thick (as bright as blood; the detector alone gives it 0.92,
  // but the SD of its positions along its length, 3.8 mm with the smoothing's halo, is above
  // 3.5 mm: a strip of falx or cortex, never counted).
  const ClotScene s({70, 50, 15});
  const torch::Tensor bright_ball = ball(s.g, s.at(14, 0, 0), 2.5), faint_ball = ball(s.g, s.at(-14, 0, 0), 2.5);
  torch::Tensor strip = torch::zeros_like(s.clot);
  const int64_t y0 = int64_t(std::lround(s.centre[1] + 11.2 / s.g.spacing_mm[1]));
  strip.narrow(0, int64_t(s.centre[2]) - 1, 3).narrow(1, y0, 3).narrow(2, int64_t(s.centre[0]) - 7, 15).fill_(true);
  const auto image = [&](float bright_hu, float faint_hu, bool with_strip) {
    torch::Tensor hu = clot_hu(s.clot, 0.0);
    hu.masked_fill_(bright_ball, bright_hu);
    hu.masked_fill_(faint_ball, faint_hu);
    if (with_strip) hu.masked_fill_(strip, kBloodHu);
    auto gen = at::detail::createCPUGenerator(3);
    return hu + 2.0f * at::normal(0.0, 1.0, hu.sizes(), gen).to(torch::kFloat32);
  };
  EXPECT_EQ(measure_markers(s.clot, image(kBloodHu, 45.f, true), s.g).island_count, 1);
  // Both balls bright: two; neither: none (the strip alone never counts).
  EXPECT_EQ(measure_markers(s.clot, image(kBloodHu, kBloodHu, true), s.g).island_count, 2);
  EXPECT_EQ(measure_markers(s.clot, image(45.f, 45.f, true), s.g).island_count, 0);
}

TEST(Markers, SurfaceRatioGrowsWithIrregularShape) {
  const Geometry g = grid({120, 80, 60}, {0.5, 0.5, 1.0});
  const Vec3 c{60, 40, 30};
  // Prolate spheroid, semi-axes 24 x 6 x 6 mm: analytic ratio 1.28. The face-count surface
  // assumes isotropic normals; this shape's normals lie mostly across its long axis, so the
  // estimate reads about 8 % low (1.18), still clearly above a ball's 1.
  torch::Tensor spheroid = torch::zeros(tensor_shape(g), torch::kUInt8);
  {
    auto a = spheroid.accessor<uint8_t, 3>();
    for (int64_t z = 0; z < g.size[2]; ++z)
      for (int64_t y = 0; y < g.size[1]; ++y)
        for (int64_t x = 0; x < g.size[0]; ++x) {
          const double u = (double(x) - c[0]) * 0.5 / 24, v = (double(y) - c[1]) * 0.5 / 6, w = (double(z) - c[2]) / 6;
          if (u * u + v * v + w * w <= 1) a[z][y][x] = 1;
        }
  }
  const double e = std::sqrt(1 - 36.0 / 576.0);
  const double area = 2 * kPi * 36 * (1 + 24 / (6 * e) * std::asin(e));
  const double volume = 4.0 / 3.0 * kPi * 24 * 36;
  const double analytic = area / (std::cbrt(kPi) * std::pow(6 * volume, 2.0 / 3.0));
  const NcctMarkers elongated = measure_markers(spheroid, clot_hu(spheroid), g);
  EXPECT_NEAR(elongated.surface_ratio, analytic, 0.1 * analytic);
  EXPECT_GT(elongated.surface_ratio, 1.15);

  // Lobulated: a 10 mm ball with six 5 mm lobes centred on its surface.
  torch::Tensor lobulated = ball(g, c, 10.0);
  for (int axis = 0; axis < 3; ++axis)
    for (double sign : {-1.0, 1.0}) {
      Vec3 lobe = c;
      lobe[axis] += sign * 10.0 / g.spacing_mm[axis];
      lobulated = lobulated | ball(g, lobe, 5.0);
    }
  const NcctMarkers lobes = measure_markers(lobulated, clot_hu(lobulated), g);
  EXPECT_GT(lobes.surface_ratio, 1.1);
  EXPECT_EQ(lobes.satellite_count, 0);
}

TEST(Markers, EmptyMaskGivesZerosAndNaN) {
  const Geometry g = grid({20, 20, 10}, {1, 1, 1});
  const NcctMarkers r = measure_markers(torch::zeros(tensor_shape(g), torch::kUInt8), torch::zeros(tensor_shape(g)), g);
  EXPECT_EQ(r.voxels, 0);
  EXPECT_EQ(r.interior_voxels, 0);
  EXPECT_EQ(r.satellite_count, 0);
  EXPECT_EQ(r.satellite_volume_ml, 0.0);
  EXPECT_EQ(r.island_count, 0);
  EXPECT_EQ(r.hypodense_region_count, 0);
  for (double v : {r.hypodense_fraction, r.hu_sd, r.hu_cv, r.bimodality_coefficient, r.surface_ratio, r.low_density_p10,
                   r.smoothed_hu_iqr, r.hypodense_region_fraction, r.hypodense_region_margin_contact,
                   r.hypodense_region_centrality, r.inner_low_fraction, r.middle_low_fraction, r.outer_low_fraction,
                   r.inner_hu_offset})
    EXPECT_TRUE(std::isnan(v));
  const nlohmann::json j = r.to_json();
  EXPECT_TRUE(j.at("hypodense_fraction").is_null() || std::isnan(j.at("hypodense_fraction").get<double>()));
  EXPECT_EQ(j.dump().find("NaN"), std::string::npos);
  EXPECT_NE(j.dump().find("\"surface_ratio\":null"), std::string::npos) << j.dump();
  EXPECT_THROW(measure_markers(torch::zeros({3, 3, 3}), torch::zeros(tensor_shape(g)), g), CoreError);
}

}  // namespace
}  // namespace hemexp
