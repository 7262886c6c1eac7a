#pragma once

#include <filesystem>
#include <optional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
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
//   "features": [{"name": "log_volume_ml", "mean": m, "sd": s}, ...]   optional, in the order the
//                  network's head reads them (network.num_features of them); names: log_volume_ml
//                  (natural log of the mask volume in mL), mean_hu, log_ivh_volume_ml (ln(1 + mL of
//                  the segmenter's intraventricular-blood label); missing with a segmenter
//                  without that label), or an NcctMarkers name
// One scalar feature the network reads beside the ROI, and how it is normalised:
// (value - mean) / sd; a missing value (NaN: e.g. a mask with no interior for the density
// markers) becomes 0, the training mean.
struct FeatureNorm {
  std::string name;
  double mean = 0.0, sd = 1.0;
};

struct ClassifierRecipe {
  RoiRecipe roi;
  double min_volume_ml = 0.0;
  std::string calibration_method = "none";
  double calibration_slope = 1.0, calibration_intercept = 0.0;
  double threshold = 0.5;
  std::string threshold_rule;
  std::vector<RiskCategory> risk_categories;
  std::vector<FeatureNorm> features;

  // The names a "features" entry may have.
  static const std::vector<std::string>& feature_names();
  // The normalised features of one hematoma, (1, features.size()), or an undefined tensor when
  // the card has none. ivh_volume_ml: the segmenter's intraventricular blood, NaN when it has no
  // such label.
  torch::Tensor feature_vector(const NcctMarkers& markers, const HematomaMeasurements& hematoma,
                               double ivh_volume_ml = std::numeric_limits<double>::quiet_NaN()) const;
  // Whether the features include one the segmenter must provide beyond the hematoma mask
  // (log_ivh_volume_ml: a segmenter with an "ivh" label).
  bool needs_ivh_label() const;

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
  // With a sign layer (network.signs): each NCCT sign's probability as the card's detector reads
  // it from the features, in the card's order; empty otherwise.
  std::vector<std::pair<std::string, double>> signs;
  Roi roi;                   // what the network saw
};

// An expansion classifier ready to run: its ViT (built from the card, weights loaded, on its
// device, in eval mode), its recipe and its provenance; loaded once per run, called through
// the const score().
class Classifier {
 public:
  static Classifier load(const std::filesystem::path& path, const torch::Device& device = torch::kCPU);
  explicit Classifier(ModelFile file, const torch::Device& device = torch::kCPU);

  // canonical_ct_hu and canonical_mask as for build_roi; features as recipe().feature_vector
  // gives them (undefined for a card without features). CoreError for an empty mask.
  ExpansionScore score(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask,
                       const torch::Tensor& features = {}) const;
  // The network's logits for a batch of ROIs (B, C, D, H, W) and their features (B, F), on any
  // device.
  torch::Tensor logits(const torch::Tensor& rois, const torch::Tensor& features = {}) const;

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
