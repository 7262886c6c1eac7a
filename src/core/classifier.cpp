#include "hemexp/core/classifier.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

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

const std::vector<std::string>& ClassifierRecipe::feature_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n{"log_volume_ml", "mean_hu", "log_ivh_volume_ml"};
    for (const std::string& m : NcctMarkers::names()) n.push_back(m);
    return n;
  }();
  return names;
}

bool ClassifierRecipe::needs_ivh_label() const {
  return std::any_of(features.begin(), features.end(),
                     [](const FeatureNorm& f) { return f.name == "log_ivh_volume_ml"; });
}

torch::Tensor ClassifierRecipe::feature_vector(const NcctMarkers& markers, const HematomaMeasurements& h,
                                               double ivh_volume_ml) const {
  if (features.empty()) return {};
  const nlohmann::json measured = markers.to_json();
  std::vector<float> values;
  for (const FeatureNorm& f : features) {
    double v = std::numeric_limits<double>::quiet_NaN();
    if (f.name == "log_volume_ml") {
      if (h.volume_ml > 0) v = std::log(h.volume_ml);
    } else if (f.name == "mean_hu") {
      v = h.mean_hu;
    } else if (f.name == "log_ivh_volume_ml") {
      if (ivh_volume_ml >= 0) v = std::log1p(ivh_volume_ml);
    } else if (measured.contains(f.name) && measured.at(f.name).is_number()) {
      v = measured.at(f.name).get<double>();
    }
    values.push_back(std::isfinite(v) ? float((v - f.mean) / f.sd) : 0.0f);
  }
  return torch::tensor(values, torch::kFloat32).unsqueeze(0);
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
    if (card.contains("features")) {
      const std::vector<std::string>& known = feature_names();
      for (const nlohmann::json& f : card.at("features")) {
        FeatureNorm fn{f.at("name").get<std::string>(), f.at("mean").get<double>(), f.at("sd").get<double>()};
        if (std::find(known.begin(), known.end(), fn.name) == known.end())
          throw ModelError("model card: features: unknown feature '" + fn.name + "'");
        if (!std::isfinite(fn.mean) || !std::isfinite(fn.sd) || !(fn.sd > 0))
          throw ModelError("model card: features: " + fn.name + " needs a finite mean and a finite sd > 0");
        r.features.push_back(fn);
      }
    }
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
  if (config.num_features != int64_t(recipe_.features.size()))
    throw ModelError("model " + name + ": network.num_features is " + std::to_string(config.num_features) +
                     " but the features block names " + std::to_string(recipe_.features.size()));
  file_.install_weights(*network_, device_);
}

torch::Tensor Classifier::logits(const torch::Tensor& rois, const torch::Tensor& features) const {
  c10::InferenceMode guard;
  ViT net = network_;  // a handle to the same module (forward is not const in LibTorch)
  const torch::Tensor f = features.defined() ? features.to(device_, torch::kFloat32) : torch::Tensor();
  return net->forward(rois.to(device_, torch::kFloat32), f).to(torch::kCPU);
}

ExpansionScore Classifier::score(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask,
                                 const torch::Tensor& features) const {
  ExpansionScore s;
  s.roi = build_roi(canonical_ct_hu, canonical_mask, recipe_.roi);
  s.logit = logits(s.roi.image.unsqueeze(0), features)[0].item<double>();
  s.probability = recipe_.probability(s.logit);
  s.risk = recipe_.risk(s.probability);
  s.predicted_expansion = s.probability >= recipe_.threshold;
  const std::vector<std::string>& names = network_->config().signs;
  if (!names.empty()) {
    c10::InferenceMode guard;
    ViT net = network_;
    const torch::Tensor p = net->sign_probabilities(features.to(device_, torch::kFloat32)).to(torch::kCPU);
    for (size_t k = 0; k < names.size(); ++k) s.signs.emplace_back(names[k], p[0][int64_t(k)].item<double>());
  }
  return s;
}

}  // namespace hemexp
