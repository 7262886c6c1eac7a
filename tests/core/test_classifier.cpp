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
