// Evaluation metrics on masks and scores with known answers.
#include <gtest/gtest.h>

#include "test_shapes.hpp"

#include <cmath>

#include <nlohmann/json.hpp>

#include "hemexp/core/metrics.hpp"

namespace hemexp {
namespace {

using test::ball;
using test::grid;

TEST(Metrics, OverlapOfBoxes) {
  const Geometry g = grid({20, 20, 10}, {0.5, 0.5, 2.0});
  torch::Tensor a = torch::zeros(tensor_shape(g), torch::kUInt8), b = a.clone();
  a.slice(0, 2, 6).slice(1, 4, 14).slice(2, 4, 14).fill_(1);  // 400 voxels
  b.slice(0, 4, 8).slice(1, 4, 14).slice(2, 4, 14).fill_(1);  // 400, 200 shared
  const SegmentationMetrics m = compare_masks(a, b, g);
  EXPECT_DOUBLE_EQ(m.dice, 0.5);
  EXPECT_DOUBLE_EQ(m.iou, 200.0 / 600.0);
  EXPECT_DOUBLE_EQ(m.true_volume_ml, 400 * 0.5 / 1000.0);
  EXPECT_DOUBLE_EQ(m.volume_abs_error_ml, 0.0);
  // Shifted by 2 slices of 2 mm along z: every surface point is at most 4 mm from the other.
  EXPECT_NEAR(m.hd95_mm, 4.0, 1e-9);
}

// HD95 from the exact distance transform equals the brute force over all surface pairs.
TEST(Metrics, Hd95MatchesBruteForceOnRandomShapes) {
  const Geometry g = grid({23, 17, 11}, {0.45, 0.6, 2.5});
  const auto surface_mm = [&](const torch::Tensor& m) {  // 6-neighbour surface voxels, in mm
    const torch::Tensor p = torch::constant_pad_nd(m, {1, 1, 1, 1, 1, 1}, 0);
    torch::Tensor inner = m.clone();
    for (int64_t dim = 0; dim < 3; ++dim)
      for (int64_t shift : {0, 2}) {
        torch::Tensor t = p;
        for (int64_t d = 0; d < 3; ++d) t = t.narrow(d, d == dim ? shift : 1, m.size(d));
        inner = inner * t;
      }
    const torch::Tensor idx = (m - inner).nonzero().to(torch::kFloat64);
    return idx * torch::tensor({2.5, 0.6, 0.45}, torch::kFloat64);
  };
  const auto p95 = [](torch::Tensor d) {
    d = std::get<0>(d.sort());
    const double pos = 0.95 * double(d.numel() - 1);
    const int64_t lo = int64_t(pos), hi = std::min<int64_t>(lo + 1, d.numel() - 1);
    return d[lo].item<double>() * (1 - (pos - double(lo))) + d[hi].item<double>() * (pos - double(lo));
  };
  torch::manual_seed(11);
  for (int trial = 0; trial < 5; ++trial) {
    const torch::Tensor a = (torch::rand(tensor_shape(g)) < 0.15 + 0.1 * trial).to(torch::kUInt8);
    torch::Tensor b = torch::zeros(tensor_shape(g), torch::kUInt8);
    b.slice(0, 3, 9).slice(1, 2 + trial, 12).slice(2, 5, 20).fill_(1);
    const torch::Tensor pa = surface_mm(a), pb = surface_mm(b);
    const double brute = std::max(p95(std::get<0>(torch::cdist(pa, pb).min(1))),
                                  p95(std::get<0>(torch::cdist(pb, pa).min(1))));
    EXPECT_NEAR(hausdorff95_mm(a, b, g), brute, 1e-9) << trial;
  }
}

TEST(Metrics, ConcentricBallsAndEmptyMasks) {
  const Geometry g = grid({60, 60, 60}, {1, 1, 1});
  const torch::Tensor inner = ball(g, {30, 30, 30}, 10), outer = ball(g, {30, 30, 30}, 16);
  EXPECT_NEAR(hausdorff95_mm(inner, outer, g), 6.0, 1.0);
  const torch::Tensor empty = torch::zeros(tensor_shape(g), torch::kUInt8);
  const SegmentationMetrics none = compare_masks(empty, empty, g);
  EXPECT_EQ(none.dice, 1.0);
  EXPECT_EQ(none.hd95_mm, 0.0);
  const SegmentationMetrics missed = compare_masks(empty, inner, g);
  EXPECT_EQ(missed.dice, 0.0);
  EXPECT_TRUE(std::isnan(missed.hd95_mm));
  EXPECT_NEAR(missed.volume_abs_error_ml, missed.true_volume_ml, 1e-12);
}

TEST(Metrics, AucBrierAndCalibration) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.2, 0.8, 0.9}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9, 0.8, 0.2, 0.1}, {0, 0, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(roc_auc({0.5, 0.5, 0.5, 0.5}, {0, 1, 0, 1}), 0.5);  // ties count one half
  EXPECT_TRUE(std::isnan(roc_auc({0.2, 0.3}, {1, 1})));
  EXPECT_DOUBLE_EQ(brier_score({1.0, 0.0, 0.5}, {1, 0, 1}), 0.25 / 3);
  // Two bins of two: predicted 0.25 with 1/2 positive, 0.75 with 1/2 positive.
  EXPECT_DOUBLE_EQ(expected_calibration_error({0.25, 0.25, 0.75, 0.75}, {0, 1, 0, 1}, 2), 0.25);
}

}  // namespace
}  // namespace hemexp

namespace hemexp {
namespace {

TEST(ClassificationMetrics, BootstrapCiCalibrationFitAndConfusion) {
  // Probabilities that are exactly calibrated in expectation: labels drawn from them.
  std::vector<double> p;
  std::vector<int> y;
  uint64_t s = 12345;
  auto uniform = [&s] {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(s >> 11) / double(1ULL << 53);
  };
  for (int i = 0; i < 4000; ++i) {
    const double logit = 3.0 * (uniform() - 0.5) * 2.0;
    const double truth = 1.0 / (1.0 + std::exp(-logit));
    y.push_back(uniform() < truth);
    p.push_back(truth);
  }
  const CalibrationFit fit = calibration_fit(p, y);
  EXPECT_NEAR(fit.slope, 1.0, 0.1);
  EXPECT_NEAR(fit.intercept, 0.0, 0.1);
  // Overconfident probabilities (logit doubled) have slope about 1/2.
  std::vector<double> over;
  for (double q : p) over.push_back(1.0 / (1.0 + std::exp(-2.0 * std::log(q / (1 - q)))));
  EXPECT_NEAR(calibration_fit(over, y).slope, 0.5, 0.06);

  const double auc = roc_auc(p, y);
  const auto ci = roc_auc_ci95(p, y, 500, 7);
  EXPECT_LT(ci[0], auc);
  EXPECT_GT(ci[1], auc);
  EXPECT_LT(ci[1] - ci[0], 0.06);
  EXPECT_EQ(roc_auc_ci95(p, y, 500, 7), ci);  // reproducible
  EXPECT_TRUE(std::isnan(roc_auc_ci95({0.1, 0.2}, {1, 1})[0]));

  const BinaryMetrics b = binary_metrics({0.9, 0.8, 0.4, 0.2, 0.1}, {1, 0, 1, 0, 0}, 0.5);
  EXPECT_EQ(b.tp, 1);
  EXPECT_EQ(b.fp, 1);
  EXPECT_EQ(b.fn, 1);
  EXPECT_EQ(b.tn, 2);
  EXPECT_DOUBLE_EQ(b.accuracy(), 0.6);
  EXPECT_DOUBLE_EQ(b.sensitivity(), 0.5);
  EXPECT_DOUBLE_EQ(b.specificity(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(b.ppv(), 0.5);
  EXPECT_DOUBLE_EQ(b.npv(), 2.0 / 3.0);
  EXPECT_TRUE(std::isnan(binary_metrics({0.1}, {0}, 0.5).ppv()));  // nothing called positive
  // Each case at its own threshold (cases scored by two classifiers): 0.4 is called at 0.3.
  const BinaryMetrics own = binary_metrics({0.9, 0.8, 0.4, 0.2, 0.1}, {1, 0, 1, 0, 0}, {0.5, 0.5, 0.3, 0.3, 0.5});
  EXPECT_EQ(own.tp, 2);
  EXPECT_EQ(own.fn, 0);
  EXPECT_EQ(own.fp, 1);
  EXPECT_EQ(own.tn, 2);
  const nlohmann::json mixed = classification_report({0.9, 0.8, 0.4, 0.2, 0.1}, {1, 0, 1, 0, 0}, {0.5, 0.5, 0.3, 0.3, 0.5});
  EXPECT_TRUE(mixed["threshold"].is_null());
  EXPECT_EQ(mixed["threshold_per_case"], true);
  EXPECT_EQ(mixed["tp"], 2);
  const nlohmann::json single = classification_report({0.9, 0.8, 0.4, 0.2, 0.1}, {1, 0, 1, 0, 0}, 0.5);
  EXPECT_DOUBLE_EQ(single["threshold"].get<double>(), 0.5);
  EXPECT_FALSE(single.contains("threshold_per_case"));
  EXPECT_EQ(single["tp"], 1);
}

// Newton's method from (1, 0) overshoots on a small cohort with one confident miss: the full
// step saturates every probability and the fit stopped there (slope 431.55, intercept 640.41).
// The maximum-likelihood fit (a grid and gradient ascent in Python: -0.4677, -0.4515) is found
// with step halving; when logit(p) separates the classes there is no finite fit, and none is
// made up.
TEST(Metrics, CalibrationFitFindsTheMaximumOrSaysThereIsNone) {
  const std::vector<int> y{0, 1, 1, 0, 1, 0};
  const CalibrationFit fit = calibration_fit({0.99, 0.3029, 0.0812, 0.0960, 0.1605, 0.1894}, y);
  EXPECT_NEAR(fit.slope, -0.4677, 1e-3);
  EXPECT_NEAR(fit.intercept, -0.4515, 1e-3);
  // Separated (every expansion above every other case), and quasi-separated (they meet at one
  // value): no slope.
  EXPECT_TRUE(std::isnan(calibration_fit({0.1, 0.2, 0.3, 0.7, 0.8}, {0, 0, 0, 1, 1}).slope));
  EXPECT_TRUE(std::isnan(calibration_fit({0.1, 0.2, 0.5, 0.5, 0.8}, {0, 0, 0, 1, 1}).slope));
  EXPECT_TRUE(std::isnan(calibration_fit({0.9, 0.8, 0.1}, {0, 0, 1}).intercept));
  // Probabilities of exactly 0 and 1 that do not separate: a finite fit, set by the clip at
  // 1e-6 (y = 1 at p = 0 and 1, y = 0 at p = 0 and 1: slope 0, intercept 0).
  const CalibrationFit flat = calibration_fit({0.0, 1.0, 0.0, 1.0}, {1, 1, 0, 0});
  EXPECT_NEAR(flat.slope, 0.0, 1e-9);
  EXPECT_NEAR(flat.intercept, 0.0, 1e-9);
}

}  // namespace
}  // namespace hemexp
