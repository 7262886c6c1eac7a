#include "hemexp/core/classifier.hpp"

#include <cmath>

#include "hemexp/core/error.hpp"

namespace hemexp {

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

double ClassifierRecipe::probability(double logit) const {
  return calibrated() ? sigmoid(calibration_slope * logit + calibration_intercept) : sigmoid(logit);
}

const std::string& ClassifierRecipe::risk(double p) const {
  for (const RiskCategory& c : risk_categories)
    if (!c.below || p < *c.below) return c.name;
  return risk_categories.back().name;  // from_card guarantees an unbounded last category
}

ClassifierRecipe ClassifierRecipe::from_card(const nlohmann::json& card) {
  ClassifierRecipe r;
  try {
    if (!card.contains("roi")) throw ModelError("model card: no roi block");
    r.roi = RoiRecipe::from_json(card.at("roi"));
    r.min_volume_ml = card.value("min_volume_ml", 0.0);
    if (!(r.min_volume_ml >= 0.0)) throw ModelError("model card: min_volume_ml must be >= 0");
    const nlohmann::json& cal = card.at("calibration");
    r.calibration_method = cal.at("method").get<std::string>();
    if (r.calibration_method == "platt") {
      r.calibration_slope = cal.at("slope").get<double>();
      r.calibration_intercept = cal.at("intercept").get<double>();
      if (!std::isfinite(r.calibration_slope) || !std::isfinite(r.calibration_intercept) || r.calibration_slope <= 0)
        throw ModelError("model card: calibration.slope must be finite and > 0, intercept finite");
    } else if (r.calibration_method != "none") {
      throw ModelError("model card: calibration.method must be platt or none, not " + r.calibration_method);
    }
    const nlohmann::json& decision = card.at("decision");
    r.threshold = decision.at("threshold").get<double>();
    r.threshold_rule = decision.value("rule", "");
    if (!(r.threshold > 0.0 && r.threshold < 1.0)) throw ModelError("model card: decision.threshold must be in (0, 1)");
    double previous = 0.0;
    for (const nlohmann::json& c : card.at("risk_categories")) {
      RiskCategory rc;
      rc.name = c.at("name").get<std::string>();
      if (c.contains("below")) {
        rc.below = c.at("below").get<double>();
        if (!(*rc.below > previous && *rc.below < 1.0))
          throw ModelError("model card: risk_categories bounds must increase within (0, 1)");
        previous = *rc.below;
      }
      if (c.contains("observed_rate") && !c.at("observed_rate").is_null()) rc.observed_rate = c.at("observed_rate").get<double>();
      if (!r.risk_categories.empty() && !r.risk_categories.back().below)
        throw ModelError("model card: only the last risk category may have no upper bound");
      r.risk_categories.push_back(rc);
    }
    if (r.risk_categories.empty() || r.risk_categories.back().below)
      throw ModelError("model card: risk_categories must end with a category without an upper bound");
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(std::string("model card: classifier recipe is incomplete: ") + e.what());
  } catch (const ModelError&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelError(e.what());
  }
  return r;
}

Classifier Classifier::load(const std::filesystem::path& path, const torch::Device& device) {
  return Classifier(ModelFile::read(path, "classification"), device);
}

Classifier::Classifier(ModelFile file, const torch::Device& device) : file_(std::move(file)), device_(device) {
  const std::string name = file_.path.filename().string();
  if (file_.card.kind != "classification")
    throw ModelError("model " + name + ": is a '" + file_.card.kind + "' model, not a classification model");
  try {
    recipe_ = ClassifierRecipe::from_card(file_.card.json);
    network_ = ViT(ViTConfig::from_json(file_.card.json.at("network")));
  } catch (const std::exception& e) {
    throw ModelError("model " + name + ": " + e.what());
  }
  const ViTConfig& config = network_->config();
  if (config.in_channels != int64_t(recipe_.roi.channels.size()) || config.image_size != recipe_.roi.size)
    throw ModelError("model " + name + ": the network's input (channels, image_size) differs from the roi block's");
  file_.install_weights(*network_, device_);
}

torch::Tensor Classifier::logits(const torch::Tensor& rois) const {
  c10::InferenceMode guard;
  ViT net = network_;  // a handle to the same module (forward is not const in LibTorch)
  return net->forward(rois.to(device_, torch::kFloat32)).to(torch::kCPU);
}

ExpansionScore Classifier::score(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask) const {
  ExpansionScore s;
  s.roi = build_roi(canonical_ct_hu, canonical_mask, recipe_.roi);
  s.logit = logits(s.roi.image.unsqueeze(0))[0].item<double>();
  s.probability = recipe_.probability(s.logit);
  s.risk = recipe_.risk(s.probability);
  s.predicted_expansion = s.probability >= recipe_.threshold;
  return s;
}

}  // namespace hemexp
