// Tests of the synthetic cohort generator's core: PRNG, HE sampler (prevalence, oracle AUC,
// volume distribution), rendering determinism, mask/volume identity and follow-up growth.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "hemexp/core/error.hpp"
#include "hemexp/core/expansion.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/synth.hpp"
#include "synth_internal.hpp"

namespace hs = hemexp::synth;
using hemexp::mean;
using hemexp::roc_auc;

namespace {

struct Cohort {
  std::vector<double> probability, observable, volume;
  std::vector<bool> label;
};

Cohort sample_cohort(uint64_t seed, int n, double he_fraction) {
  Cohort c;
  for (int i = 0; i < n; ++i) {
    const hs::CaseTruth t = hs::sample_case_truth(seed, i, he_fraction);
    c.probability.push_back(t.he.probability);
    c.observable.push_back(t.he.observable_probability);
    c.volume.push_back(t.features.volume_ml);
    c.label.push_back(t.he.label);
  }
  return c;
}

std::vector<int> ints(const std::vector<bool>& v) { return std::vector<int>(v.begin(), v.end()); }

double prevalence(const std::vector<bool>& v) { return static_cast<double>(std::count(v.begin(), v.end(), true)) / v.size(); }

hs::SynthOptions small_options(uint64_t seed) {
  hs::SynthOptions o;
  o.seed = seed;
  o.matrix = 64;  // 64 x 64 in-plane on a clinical field of view: fast, same anatomy
  o.thin_fraction = 0.0;
  return o;
}

int64_t count_ones(const torch::Tensor& mask) { return mask.to(torch::kLong).sum().item<int64_t>(); }

}  // namespace

TEST(SynthRandom, SameKeySameStreamAndSaneMoments) {
  hs::Rng a(hs::stream_key(7, 3, 1)), b(hs::stream_key(7, 3, 1)), c(hs::stream_key(7, 4, 1));
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    differs |= x != c.next();
  }
  EXPECT_TRUE(differs);
  hs::Rng r(42);
  double s = 0, s2 = 0, u = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = r.normal();
    s += z;
    s2 += z * z;
    u += r.uniform();
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(std::sqrt(s2 / n), 1.0, 0.01);
  EXPECT_NEAR(u / n, 0.5, 0.005);
  // Counter-based normals: a pure function of (key, counter).
  EXPECT_EQ(hs::hash_normal(9, 12345), hs::hash_normal(9, 12345));
  EXPECT_NE(hs::hash_normal(9, 12345), hs::hash_normal(9, 12346));
}

// The documented ranges (docs/SYNTH.md): prevalence = --he-fraction (+- sampling error),
// oracle AUC of the true probabilities 0.80-0.90 on large cohorts; a 500-case cohort is
// allowed a little more sampling error.
TEST(SynthHeModel, PrevalenceAndOracleAuc500Cases) {
  const Cohort c = sample_cohort(2026, 500, 0.2);
  const double p = prevalence(c.label);
  const double auc = roc_auc(c.probability, ints(c.label));
  const double observable_auc = roc_auc(c.observable, ints(c.label));
  RecordProperty("prevalence", std::to_string(p));
  RecordProperty("oracle_auc", std::to_string(auc));
  std::printf("500 cases: prevalence %.3f, mean p %.3f, oracle AUC %.3f, image-observable AUC %.3f\n", p,
              mean(c.probability), auc, observable_auc);
  EXPECT_GE(p, 0.15);
  EXPECT_LE(p, 0.25);
  EXPECT_NEAR(mean(c.probability), 0.2, 0.025);
  EXPECT_GE(auc, 0.78);
  EXPECT_LE(auc, 0.92);
  // The unobserved factor keeps image-observable information below the oracle.
  EXPECT_LT(observable_auc, auc);
  EXPECT_GT(observable_auc, 0.65);
}

// he_observable_probability is P(expansion | what an image shows): the unobserved factor
// integrated out, not left out. Against a Monte Carlo mean of sigmoid(x + sd u); then on 20,000
// case truths it must be calibrated against the labels (its mean is the prevalence, its slope 1),
// where sigmoid(x) alone has slope about 0.8 and a mean below the prevalence.
TEST(SynthHeModel, ObservableProbabilityIsCalibrated) {
  const hs::HeModel model;
  hs::Rng r(5);
  std::vector<double> u(400000);
  for (double& z : u) z = r.normal();
  double previous = 0.0;
  for (const double x : {-3.0, -1.3, 0.0, 2.0}) {
    double mc = 0.0;
    for (const double z : u) mc += 1.0 / (1.0 + std::exp(-(x + model.unobserved_sd * z)));
    mc /= double(u.size());
    const double p = model.observable_probability(x);
    EXPECT_NEAR(p, mc, 1.5e-3) << "x " << x;
    EXPECT_GT(p, previous) << "x " << x;  // increasing: the ranking (and AUC) of sigmoid(x)
    previous = p;
  }
  hs::HeModel sure = model;
  sure.unobserved_sd = 0.0;
  EXPECT_DOUBLE_EQ(sure.observable_probability(-1.3), 1.0 / (1.0 + std::exp(1.3)));

  const Cohort c = sample_cohort(4242, 20000, 0.2);
  const hemexp::CalibrationFit fit = hemexp::calibration_fit(c.observable, ints(c.label));
  const hemexp::CalibrationFit truth = hemexp::calibration_fit(c.probability, ints(c.label));
  std::printf("20000 cases: prevalence %.4f, mean P %.4f, mean observable P %.4f, slope %.3f (true P %.3f), "
              "intercept %.3f\n", prevalence(c.label), mean(c.probability), mean(c.observable), fit.slope,
              truth.slope, fit.intercept);
  EXPECT_NEAR(mean(c.observable), mean(c.probability), 0.003);
  EXPECT_NEAR(fit.slope, 1.0, 0.08);
  EXPECT_NEAR(fit.intercept, 0.0, 0.08);
}

// A case drawn into a real background, where IVH is never rendered, has no IVH in its truth:
// its probability and label come from what its image can show (and the unobserved factor), the
// intercept calibrated for such patients, so the prevalence is still --he-fraction. The other
// features are the procedural draw's.
TEST(SynthHeModel, BackgroundTruthHasNoIvhAndKeepsThePrevalence) {
  const hs::HeModel model;
  double p_sum = 0.0;
  int with_ivh = 0, differs = 0;
  constexpr int kCases = 4000;
  const double intercept = hs::calibrated_intercept(0.2, model, false);
  EXPECT_GT(intercept, hs::calibrated_intercept(0.2, model, true));  // IVH's +term made up elsewhere
  for (int i = 0; i < kCases; ++i) {
    const hs::CaseTruth bg = hs::sample_case_truth(77, i, 0.2, false), procedural = hs::sample_case_truth(77, i, 0.2);
    ASSERT_FALSE(bg.features.ivh) << i;
    EXPECT_EQ(bg.features.volume_ml, procedural.features.volume_ml);
    EXPECT_EQ(bg.features.markers.count(), procedural.features.markers.count());
    const double observable = intercept + model.observable_logit(bg.features);
    EXPECT_NEAR(bg.he.observable_probability, model.observable_probability(observable), 1e-12) << i;
    EXPECT_NEAR(bg.he.logit, observable + bg.features.unobserved, 1e-12) << i;
    with_ivh += procedural.features.ivh;
    differs += bg.he.logit != procedural.he.logit;
    p_sum += bg.he.probability;
  }
  EXPECT_GT(with_ivh, kCases / 20);
  EXPECT_EQ(differs, kCases);  // the intercept differs for every case
  EXPECT_NEAR(p_sum / kCases, 0.2, 0.01);
}

TEST(SynthHeModel, PrevalenceFollowsHeFraction) {
  for (const double f : {0.1, 0.35, 0.5}) {
    const Cohort c = sample_cohort(11, 500, f);
    EXPECT_NEAR(mean(c.probability), f, 0.03) << "he_fraction " << f;
    EXPECT_NEAR(prevalence(c.label), f, 0.07) << "he_fraction " << f;
  }
  EXPECT_THROW(hs::calibrated_intercept(0.0), hemexp::CoreError);
  EXPECT_THROW(hs::calibrated_intercept(1.0), hemexp::CoreError);
}

TEST(SynthHeModel, VolumesSpanSmallToVeryLarge) {
  const Cohort c = sample_cohort(5, 2000, 0.2);
  std::vector<double> v = c.volume;
  std::sort(v.begin(), v.end());
  EXPECT_LT(v.front(), 1.0);
  EXPECT_GT(v.back(), 100.0);
  const double median = v[v.size() / 2];
  EXPECT_GT(median, 8.0);
  EXPECT_LT(median, 25.0);
  // Larger hematomas expand more often (volume is part of the model).
  std::vector<bool> big_label, small_label;
  for (size_t i = 0; i < c.volume.size(); ++i) (c.volume[i] > median ? big_label : small_label).push_back(c.label[i]);
  EXPECT_GT(prevalence(big_label), prevalence(small_label));
}

TEST(SynthHeModel, TruthIsAPureFunctionOfSeedAndIndex) {
  const hs::CaseTruth a = hs::sample_case_truth(3, 17, 0.2), b = hs::sample_case_truth(3, 17, 0.2);
  EXPECT_EQ(a.case_id, "synth_00017");
  EXPECT_EQ(a.he.probability, b.he.probability);
  EXPECT_EQ(a.he.label, b.he.label);
  EXPECT_EQ(a.features.volume_ml, b.features.volume_ml);
  EXPECT_NE(hs::sample_case_truth(4, 17, 0.2).features.volume_ml, a.features.volume_ml);
}

TEST(SynthHeModel, ExpansionRule) {
  EXPECT_TRUE(hemexp::is_expansion(10.0, 16.5));   // +6.5 mL
  EXPECT_TRUE(hemexp::is_expansion(3.0, 4.2));     // +40 %
  EXPECT_FALSE(hemexp::is_expansion(30.0, 35.0));  // +5 mL, +17 %
  EXPECT_FALSE(hemexp::is_expansion(10.0, 9.0));
}

TEST(SynthRender, SameBytesForSameSeedAndIndex) {
  const auto o = small_options(21);
  const hs::SynthCase a = hs::render_procedural_case(o, 3);
  const hs::SynthCase b = hs::render_procedural_case(o, 3);
  ASSERT_TRUE(a.baseline.ct.equal(b.baseline.ct));
  ASSERT_TRUE(a.baseline.mask.equal(b.baseline.mask));
  const hs::SynthCase c = hs::render_procedural_case(small_options(22), 3);
  EXPECT_FALSE(a.baseline.ct.equal(c.baseline.ct));
}

TEST(SynthRender, AScanDrawnShortOfAPosteriorFossaHematomaIsExtendedDownwards) {
  // Seed 15101, case 564: a 5 mL cerebellar clot 133 mm below the vertex of a tall head whose
  // drawn coverage stopped above it (earlier builds failed the case: empty hematoma mask).
  hs::SynthOptions o;
  o.seed = 15101;
  o.matrix = 64;
  const hs::SynthCase c = hs::render_procedural_case(o, 564);
  EXPECT_EQ(c.location, "cerebellum");
  ASSERT_GT(c.baseline.mask_voxels, 0);
  EXPECT_NEAR(c.baseline.volume_ml / c.truth.features.volume_ml, 1.0, 0.05);  // the whole clot
  // The scan reaches below it: the clot's lowest slice is not the scan's lowest.
  const torch::Tensor per_slice = c.baseline.mask.to(torch::kLong).sum({1, 2});
  EXPECT_EQ(per_slice[0].item<int64_t>(), 0);
  // Its follow-up, on the same extended grid, is not cut either; the baseline is the same
  // whether a follow-up is drawn or not.
  o.followup = true;
  const hs::SynthCase f = hs::render_procedural_case(o, 564);
  ASSERT_TRUE(f.has_followup);
  EXPECT_TRUE(f.baseline.ct.equal(c.baseline.ct));
  EXPECT_EQ(f.followup.mask.to(torch::kLong).sum({1, 2})[0].item<int64_t>(), 0);
}

TEST(SynthRender, MaskDefinesVolumeAndIntensitiesArePlausible) {
  hs::SynthOptions o = small_options(8);
  o.matrix = 128;
  for (int64_t index : {0, 1, 2}) {
    const hs::SynthCase c = hs::render_procedural_case(o, index);
    const hemexp::Geometry& g = c.baseline.geometry;
    ASSERT_EQ(c.baseline.ct.scalar_type(), torch::kInt16);
    ASSERT_EQ(c.baseline.mask.scalar_type(), torch::kUInt8);
    ASSERT_EQ(c.baseline.ct.sizes(), c.baseline.mask.sizes());
    EXPECT_EQ(c.baseline.ct.size(0), g.size[2]);
    EXPECT_GE(g.size[2], 24);
    EXPECT_LE(g.size[2], 40);
    const int64_t voxels = count_ones(c.baseline.mask);
    ASSERT_GT(voxels, 0);
    EXPECT_EQ(voxels, c.baseline.mask_voxels);
    EXPECT_DOUBLE_EQ(c.baseline.volume_ml, voxels * g.voxel_volume_mm3() / 1000.0);
    // Within 35 % of the sampled volume (clipping at ventricles/cortex and islands aside).
    EXPECT_NEAR(c.baseline.volume_ml / c.truth.features.volume_ml, 1.0, 0.35) << c.truth.case_id;
    const torch::Tensor ct = c.baseline.ct.to(torch::kFloat);
    const torch::Tensor blood = ct.masked_select(c.baseline.mask.to(torch::kBool));
    const double blood_median = blood.median().item<double>();
    EXPECT_GT(blood_median, 40.0);
    EXPECT_LT(blood_median, 95.0);
    EXPECT_LE(ct.min().item<float>(), -990.f);                  // air
    EXPECT_GT((ct > 1000).sum().item<int64_t>(), 100);          // cortical bone
    const torch::Tensor brain = ct.masked_select((ct > 0) & (ct < 60));
    EXPECT_GT(brain.numel(), voxels);
  }
}

TEST(SynthRender, FollowupGrowthAgreesWithLabel) {
  // Find a few cases of each label with the sampler, then render them with follow-up.
  std::vector<int64_t> picks;
  int pos = 0, neg = 0;
  for (int64_t i = 0; i < 200 && (pos < 2 || neg < 2); ++i) {
    const bool label = hs::sample_case_truth(31, i, 0.2).he.label;
    if (label && pos < 2) {
      ++pos;
      picks.push_back(i);
    } else if (!label && neg < 2) {
      ++neg;
      picks.push_back(i);
    }
  }
  ASSERT_EQ(picks.size(), 4u);
  hs::SynthOptions o = small_options(31);
  o.followup = true;
  o.matrix = 96;
  for (int64_t i : picks) {
    const hs::SynthCase c = hs::render_procedural_case(o, i);
    ASSERT_TRUE(c.has_followup);
    const double voxel_ml = c.baseline.geometry.voxel_volume_mm3() / 1000.0;
    const double v0 = count_ones(c.baseline.mask) * voxel_ml, v1 = count_ones(c.followup.mask) * voxel_ml;
    EXPECT_DOUBLE_EQ(c.growth_ml, v1 - v0);
    EXPECT_EQ(hemexp::is_expansion(v0, v1), c.truth.he.label) << c.truth.case_id << " " << v0 << " -> " << v1;
    EXPECT_TRUE(c.followup.geometry.same_grid(c.baseline.geometry));
  }
}

// The boundary convention: a voxel is hematoma when more than half of it is blood. A sphere of
// known radius on thick (5 mm) and thin (1 mm) slices, each voxel's blood fraction measured by
// dense sampling of the voxel box against the generator's fraction (the mean occupancy of its
// through-slice samples, as render and the background insertion compute it).
TEST(SynthBoundary, SphereMaskIsTheVoxelsMoreThanHalfBlood) {
  const float radius = 9.f, dx = 0.45f;
  hs::HematomaShape sphere;
  sphere.radii = {1.f, 1.f, 1.f};
  sphere.volume_scale = radius;
  sphere.rough_amplitude = 0.f;
  sphere.bound_mm = radius;
  for (const float dz : {5.f, 1.f}) {
    const int ns = hs::slice_samples(dz);
    hs::SampleExtent e;
    e.pv_mm = dx;
    e.slab_mm = dz / ns;
    // Voxel centres off the sphere's centre by a fraction of a voxel, so no symmetry helps.
    const float ox = 0.31f * dx, oy = -0.17f * dx, oz = 0.23f * dz;
    const int n_xy = static_cast<int>(std::ceil((radius + 2 * dx) / dx)), n_z = static_cast<int>(std::ceil((radius + dz) / dz));
    int64_t mask = 0, exact_mask = 0, disagree = 0;
    double max_error = 0.0;
    for (int k = -n_z; k <= n_z; ++k)
      for (int j = -n_xy; j <= n_xy; ++j)
        for (int i = -n_xy; i <= n_xy; ++i) {
          const hs::V3 c{i * dx + ox, j * dx + oy, k * dz + oz};
          float occ = 0.f;
          for (int s = 0; s < ns; ++s)
            occ += hs::eval_hematoma(sphere, c + hs::V3{0.f, 0.f, hs::slice_sample_offset(s, ns) * dz}, 1.f, e).occupancy;
          const float frac = occ / ns;
          // Exact blood fraction: 12 x 12 x 48 points spread over the voxel box.
          int inside = 0;
          constexpr int kXy = 12, kZ = 48;
          for (int c3 = 0; c3 < kZ; ++c3)
            for (int b = 0; b < kXy; ++b)
              for (int a = 0; a < kXy; ++a) {
                const hs::V3 p = c + hs::V3{((a + 0.5f) / kXy - 0.5f) * dx, ((b + 0.5f) / kXy - 0.5f) * dx,
                                            ((c3 + 0.5f) / kZ - 0.5f) * dz};
                inside += hs::len3(p) < radius;
              }
          const double exact = static_cast<double>(inside) / (kXy * kXy * kZ);
          max_error = std::max(max_error, std::fabs(exact - frac));
          const bool in_mask = frac >= hs::kMaskBloodFraction;
          mask += in_mask;
          exact_mask += exact >= 0.5;
          if (exact >= 0.6) EXPECT_TRUE(in_mask) << "dz " << dz << " voxel " << i << "," << j << "," << k << " exact " << exact << " generator " << frac;
          if (exact <= 0.4) EXPECT_FALSE(in_mask) << "dz " << dz << " voxel " << i << "," << j << "," << k << " exact " << exact << " generator " << frac;
          disagree += in_mask != (exact >= 0.5);
        }
    const double sphere_voxels = 4.0 / 3.0 * 3.14159265358979 * radius * radius * radius / (dx * dx * dz);
    // The half-blood rule itself undercounts a curved clot on thick slices (the voxels at the
    // poles are mostly less than half blood): 2 % for this 3 mL sphere on 5 mm slices.
    EXPECT_NEAR(mask / sphere_voxels, dz > 2.f ? 0.98 : 1.0, 0.007) << "dz " << dz;
    EXPECT_NEAR(static_cast<double>(mask) / exact_mask, 1.0, 0.005) << "dz " << dz;
    EXPECT_LT(max_error, 0.15) << "dz " << dz;
    EXPECT_LT(static_cast<double>(disagree) / exact_mask, 0.01) << "dz " << dz;
    std::printf("dz %.0f mm: %lld mask voxels, %lld by exact fraction, %lld disagree, max |fraction error| %.3f\n", dz,
                static_cast<long long>(mask), static_cast<long long>(exact_mask), static_cast<long long>(disagree), max_error);
  }
}

// Unclotted blood is the darkest a clot gets: hypodense parts of every kind, stacked, stay at or
// above kUnclottedBloodHu (less the texture), and blend and black hole keep their defining density
// difference (>= 18 HU, >= 28 HU) above that floor.
TEST(SynthDensity, HypodensePartsStayAboveUnclottedBlood) {
  hs::HeFeatures f;
  f.volume_ml = 25.0;
  f.markers = {true, true, true, true, false, false, true};
  int shapes = 0;
  for (uint64_t key = 1; key <= 12; ++key) {
    hs::Rng rng(key);
    const hs::HematomaShape s = hs::make_hematoma_shape(rng, f, {0.f, 0.f, 0.f}, hs::M3{});
    ASSERT_EQ(s.black.size(), 1u);
    ASSERT_TRUE(s.blend);
    EXPECT_GE(s.blood_hu - s.black[0].drop_hu, hs::kUnclottedBloodHu - 1e-3f);
    EXPECT_GE(s.blood_hu - s.blend_drop_hu, hs::kUnclottedBloodHu - 1e-3f);
    EXPECT_GE(s.black[0].drop_hu, 28.f);
    EXPECT_GE(s.blend_drop_hu, 18.f);
    float lowest = 1e9f;
    hs::SampleExtent e;
    e.pv_mm = 0.5f;
    const float step = 0.7f, reach = s.bound_mm;
    for (float z = -reach; z <= reach; z += step)
      for (float y = -reach; y <= reach; y += step)
        for (float x = -reach; x <= reach; x += step) {
          const hs::HematomaSample h = hs::eval_hematoma(s, {x, y, z}, 1.f, e);
          if (h.occupancy >= 1.f) lowest = std::min(lowest, h.blood_hu);
        }
    ASSERT_LT(lowest, 1e8f);
    EXPECT_GE(lowest, hs::kUnclottedBloodHu - 1.5f * s.texture_hu) << "key " << key;
    EXPECT_LT(lowest, hs::kUnclottedBloodHu + 1.5f * s.texture_hu) << "key " << key << ": the floor is reached";
    ++shapes;
  }
  EXPECT_EQ(shapes, 12);
}
