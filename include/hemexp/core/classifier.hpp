#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/model_file.hpp"
#include "hemexp/core/roi.hpp"
#include "hemexp/core/vit.hpp"

namespace hemexp {

// One risk category of the card: probabilities below `below` (and at or above the previous
// category's bound) fall in it; the last category has no bound. observed_rate is the
// expansion rate seen in it on the validation data the card names (documentation only).
struct RiskCategory {
  std::string name;
  std::optional<double> below;
  std::optional<double> observed_rate;
};

// How an expansion classifier is run, from its card: the ROI, the smallest hematoma it
// scores, the calibration of its logit into a probability, the decision threshold and the
// risk categories.
//   "roi": see RoiRecipe
//   "min_volume_ml": 0.5
//   "calibration": {"method": "platt", "slope": a, "intercept": b}   p = sigmoid(a logit + b)
//                  (or {"method": "none"}: p = sigmoid(logit))
//   "decision": {"threshold": t, "rule": "..."}                       expansion predicted when p >= t
//   "risk_categories": [{"name": "low", "below": 0.1, "observed_rate": 0.05}, ..., {"name": "high"}]
struct ClassifierRecipe {
  RoiRecipe roi;
  double min_volume_ml = 0.0;
  std::string calibration_method = "none";
  double calibration_slope = 1.0, calibration_intercept = 0.0;
  double threshold = 0.5;
  std::string threshold_rule;
  std::vector<RiskCategory> risk_categories;

  bool calibrated() const { return calibration_method != "none"; }
  double probability(double logit) const;
  const std::string& risk(double probability) const;

  // ModelError naming the field on anything missing or out of range.
  static ClassifierRecipe from_card(const nlohmann::json& card);
};

// The expansion risk of one hematoma.
struct ExpansionScore {
  double logit = 0.0;
  double probability = 0.0;  // calibrated as the card says
  std::string risk;          // the card's category
  bool predicted_expansion = false;  // probability >= threshold
  Roi roi;                   // what the network saw
};

// An expansion classifier ready to run: its ViT (built from the card, weights loaded, on its
// device, in eval mode), its recipe and its provenance; loaded once per run, called through
// the const score().
class Classifier {
 public:
  static Classifier load(const std::filesystem::path& path, const torch::Device& device = torch::kCPU);
  explicit Classifier(ModelFile file, const torch::Device& device = torch::kCPU);

  // canonical_ct_hu and canonical_mask as for build_roi. CoreError for an empty mask.
  ExpansionScore score(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask) const;
  // The network's logits for a batch of ROIs (B, C, D, H, W), on any device.
  torch::Tensor logits(const torch::Tensor& rois) const;

  const ClassifierRecipe& recipe() const { return recipe_; }
  const ModelFile& file() const { return file_; }
  const torch::Device& device() const { return device_; }

 private:
  ModelFile file_;
  ClassifierRecipe recipe_;
  ViT network_{nullptr};
  torch::Device device_;
};

}  // namespace hemexp
