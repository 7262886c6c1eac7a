// The expansion classifier: card recipe (calibration, threshold, risk categories), loading,
// and score() = build_roi + ViT + calibration, on the parity ViT's weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>

#include "hemexp/core/classifier.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/safetensors.hpp"
#include "test_helpers.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kParity = fs::path(HEMEXP_TEST_DATA) / "parity";

json classifier_card() { return test::parity_classifier_card(0.5, 2.0, -1.0); }

fs::path write_model(const json& card, const std::string& name) {
  return test::write_parity_classifier(
      fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".safetensors"), card);
}

TEST(Classifier, RecipeCalibrationAndRiskCategories) {
  const ClassifierRecipe r = ClassifierRecipe::from_card(classifier_card());
  EXPECT_TRUE(r.calibrated());
  EXPECT_DOUBLE_EQ(r.probability(0.5), 1.0 / (1.0 + std::exp(-(2.0 * 0.5 - 1.0))));
  EXPECT_DOUBLE_EQ(r.probability(0.5), 0.5);
  EXPECT_EQ(r.risk(0.05), "low");
  EXPECT_EQ(r.risk(0.1), "intermediate");  // bounds are exclusive above
  EXPECT_EQ(r.risk(0.29), "intermediate");
  EXPECT_EQ(r.risk(0.3), "high");
  EXPECT_EQ(r.risk(0.99), "high");

  auto rejects = [](json card, const std::string& needle) {
    try {
      ClassifierRecipe::from_card(card);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json c = classifier_card();
  c.erase("roi");
  rejects(c, "no roi block");
  c = classifier_card();
  c["calibration"]["slope"] = -1.0;
  rejects(c, "calibration.slope");
  c = classifier_card();
  c["calibration"] = {{"method", "isotonic"}};
  rejects(c, "calibration.method");
  c = classifier_card();
  c["decision"]["threshold"] = 1.5;
  rejects(c, "decision.threshold");
  c = classifier_card();
  c["risk_categories"][2]["below"] = 0.9;
  rejects(c, "must end with a category without an upper bound");
  c = classifier_card();
  c["risk_categories"][1]["below"] = 0.05;
  rejects(c, "bounds must increase");
  c = classifier_card();
  c.erase("calibration");
  rejects(c, "calibration");
}

TEST(Classifier, ScoreIsRoiThenViTThenCalibration) {
  const fs::path path = write_model(classifier_card(), "classifier");
  const Classifier classifier = Classifier::load(path);
  EXPECT_EQ(classifier.file().sha256, sha256_file(path));
  EXPECT_EQ(classifier.file().name(), "random-weights-test-classifier");
  EXPECT_TRUE(classifier.file().tensors.empty()) << "the weights live in the network";

  // A 20 mm blood ball in brain, on a grid with an origin and anisotropic spacing.
  const Geometry g = test::grid({80, 72, 24}, {0.9, 0.9, 5.0}, {-30, 20, -10});
  const torch::Tensor mask = test::ball(g, {40, 36, 12}, 10.0);
  const Volume ct{g, torch::full(tensor_shape(g), 30.0f) + 40.0f * mask.to(torch::kFloat32)};
  const ExpansionScore s = classifier.score(ct, mask);

  // The same steps by hand.
  const Roi roi = build_roi(ct, mask, classifier.recipe().roi);
  EXPECT_TRUE(torch::equal(roi.image, s.roi.image));
  const double logit = classifier.logits(roi.image.unsqueeze(0))[0].item<double>();
  EXPECT_DOUBLE_EQ(s.logit, logit);
  EXPECT_DOUBLE_EQ(s.probability, 1.0 / (1.0 + std::exp(-(2.0 * logit - 1.0))));
  EXPECT_EQ(s.risk, classifier.recipe().risk(s.probability));
  EXPECT_EQ(s.predicted_expansion, s.probability >= 0.3);
  EXPECT_NEAR(s.roi.mask_fraction_inside, 1.0, 1e-9);

  EXPECT_THROW(classifier.score(ct, torch::zeros_like(mask)), CoreError);  // nothing to score
  fs::remove(path);
}

// The intraventricular-blood feature: ln(1 + mL) of the segmenter's IVH label, the training
// mean (0 after normalisation) when the segmenter has no such label (NaN), and what tells the
// runner to warn about that.
TEST(Classifier, IvhVolumeFeature) {
  json card = classifier_card();
  card["features"] = {{{"name", "log_volume_ml"}, {"mean", 2.0}, {"sd", 1.5}},
                      {{"name", "log_ivh_volume_ml"}, {"mean", 0.2}, {"sd", 0.5}}};
  const ClassifierRecipe r = ClassifierRecipe::from_card(card);
  EXPECT_TRUE(r.needs_ivh_label());
  HematomaMeasurements h;
  h.volume_ml = 20.0;
  const NcctMarkers m;
  const torch::Tensor with = r.feature_vector(m, h, 3.0);
  EXPECT_NEAR(with[0][1].item<double>(), (std::log(4.0) - 0.2) / 0.5, 1e-6);
  EXPECT_NEAR(r.feature_vector(m, h, 0.0)[0][1].item<double>(), (0.0 - 0.2) / 0.5, 1e-6);  // none seen: ln 1
  EXPECT_EQ(r.feature_vector(m, h)[0][1].item<double>(), 0.0);  // no IVH label: the training mean
  EXPECT_NEAR(r.feature_vector(m, h)[0][0].item<double>(), (std::log(20.0) - 2.0) / 1.5, 1e-6);
  card["features"] = {{{"name", "log_volume_ml"}, {"mean", 2.0}, {"sd", 1.5}}};
  EXPECT_FALSE(ClassifierRecipe::from_card(card).needs_ivh_label());
}

// A card with scalar features (the vit_features parity network reads 5): each is taken from the
// markers or measurements by name, normalised by the card's mean and sd, NaN becomes 0, and
// they reach the head (changing one changes the logit).
TEST(Classifier, FeaturesFromMarkersNormalisedAsTheCardSays) {
  SafetensorsFile f = read_safetensors(kParity / "vit_features.safetensors");
  json card = classifier_card();
  card["network"] = json::parse(f.metadata.at(kModelCardKey))["network"];
  card["features"] = {{{"name", "log_volume_ml"}, {"mean", 2.0}, {"sd", 1.5}},
                      {{"name", "hypodense_fraction"}, {"mean", 0.1}, {"sd", 0.2}},
                      {{"name", "hu_sd"}, {"mean", 8.0}, {"sd", 4.0}},
                      {{"name", "mean_hu"}, {"mean", 60.0}, {"sd", 10.0}},
                      {{"name", "surface_ratio"}, {"mean", 1.3}, {"sd", 0.2}}};
  f.metadata[kModelCardKey] = card.dump();
  const fs::path path = fs::temp_directory_path() / ("classifier-features-" + std::to_string(::getpid()) + ".safetensors");
  write_safetensors(path, f);
  const Classifier classifier = Classifier::load(path);
  fs::remove(path);
  NcctMarkers m;
  m.hypodense_fraction = 0.3;
  m.hu_sd = NcctMarkers::kNaN;  // no interior: the training mean
  m.surface_ratio = 1.7;
  HematomaMeasurements h;
  h.volume_ml = 20.0;
  h.mean_hu = 65.0;
  const torch::Tensor v = classifier.recipe().feature_vector(m, h);
  ASSERT_EQ(v.sizes().vec(), (std::vector<int64_t>{1, 5}));
  const std::vector<double> expected{(std::log(20.0) - 2.0) / 1.5, (0.3 - 0.1) / 0.2, 0.0, (65.0 - 60.0) / 10.0,
                                     (1.7 - 1.3) / 0.2};
  for (int k = 0; k < 5; ++k) EXPECT_NEAR(v[0][k].item<double>(), expected[k], 1e-6) << k;

  const Geometry g = test::grid({80, 72, 24}, {0.9, 0.9, 5.0}, {-30, 20, -10});
  const torch::Tensor mask = test::ball(g, {40, 36, 12}, 10.0);
  const Volume ct{g, torch::full(tensor_shape(g), 30.0f) + 40.0f * mask.to(torch::kFloat32)};
  const ExpansionScore s = classifier.score(ct, mask, v);
  EXPECT_DOUBLE_EQ(s.logit, classifier.logits(s.roi.image.unsqueeze(0), v)[0].item<double>());
  EXPECT_GT(std::abs(classifier.score(ct, mask, torch::zeros_like(v)).logit - s.logit), 1e-3);
  EXPECT_THROW(classifier.score(ct, mask), CoreError);  // the features are required

  // The card's features must be known, finite, with sd > 0, and as many as the network reads.
  auto rejects = [](json c, const std::string& needle) {
    try {
      ClassifierRecipe::from_card(c);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json bad = card;
  bad["features"][1]["name"] = "blend_sign";
  rejects(bad, "unknown feature 'blend_sign'");
  bad = card;
  bad["features"][2]["sd"] = 0.0;
  rejects(bad, "hu_sd needs a finite mean and a finite sd > 0");
  bad = card;
  bad["features"].erase(4);
  f.metadata[kModelCardKey] = bad.dump();
  write_safetensors(path, f);
  try {
    Classifier::load(path);
    ADD_FAILURE() << "4 features for a network that reads 5 were accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("num_features is 5 but the features block names 4"), std::string::npos)
        << e.what();
  }
  fs::remove(path);
}

// A card with a sign layer (tests/data/parity/vit_signs*): score() reports each sign's
// probability, sigmoid(W f + b) of the layer's weights on the case's features, in card order.
TEST(Classifier, SignLayerProbabilitiesInTheScore) {
  SafetensorsFile f = read_safetensors(kParity / "vit_signs.safetensors");
  f.metadata[kModelCardKey] = test::with_parity_sign_layer(classifier_card(), "vit_signs").dump();
  const fs::path path = fs::temp_directory_path() / ("classifier-signs-" + std::to_string(::getpid()) + ".safetensors");
  write_safetensors(path, f);
  const Classifier classifier = Classifier::load(path);
  fs::remove(path);
  const torch::Tensor v = torch::tensor({{0.5f, -1.0f, 2.0f, 0.25f, -0.75f}});
  const Geometry g = test::grid({80, 72, 24}, {0.9, 0.9, 5.0}, {-30, 20, -10});
  const torch::Tensor mask = test::ball(g, {40, 36, 12}, 10.0);
  const Volume ct{g, torch::full(tensor_shape(g), 30.0f) + 40.0f * mask.to(torch::kFloat32)};
  const ExpansionScore s = classifier.score(ct, mask, v);
  ASSERT_EQ(s.signs.size(), 3u);
  const torch::Tensor expected = torch::sigmoid(torch::matmul(v, f.tensors.at("signs.weight").t()) + f.tensors.at("signs.bias"));
  const std::vector<std::string> names{"swirl", "blend", "black_hole"};
  for (int64_t k = 0; k < 3; ++k) {
    EXPECT_EQ(s.signs[size_t(k)].first, names[size_t(k)]);
    EXPECT_NEAR(s.signs[size_t(k)].second, expected[0][k].item<double>(), 1e-6);
  }
  EXPECT_DOUBLE_EQ(s.logit, classifier.logits(s.roi.image.unsqueeze(0), v)[0].item<double>());
  // Without a sign layer there are none.
  const fs::path plain_path = write_model(classifier_card(), "classifier-plain");
  const Classifier plain = Classifier::load(plain_path);
  fs::remove(plain_path);
  EXPECT_TRUE(plain.score(ct, mask).signs.empty());
}

TEST(Classifier, FilesThatAreNotClassifiers) {
  EXPECT_THROW(Classifier::load(kParity / "umambabot.safetensors"), ModelError);  // a segmenter
  json card = classifier_card();
  card["roi"]["size"] = {6, 20, 16};  // not the network's input
  const fs::path mismatch = write_model(card, "classifier-mismatch");
  try {
    Classifier::load(mismatch);
    ADD_FAILURE() << "a roi that is not the network's input was accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("differs from the roi block"), std::string::npos) << e.what();
  }
  fs::remove(mismatch);
}

}  // namespace
}  // namespace hemexp
