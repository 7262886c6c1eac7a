// The hematoma expansion truth of `hemexp synth`: features (location, volume, markers),
// the logistic HE model, intercept calibration to --he-fraction, labels, growth, AUC.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>

#include "hemexp/core/error.hpp"
#include "hemexp/core/synth.hpp"
#include "synth_internal.hpp"

namespace hemexp::synth {

namespace {
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct LocationPrior {
  Location location;
  double share;
  double median_ml;
  double max_ml;
};
// Shares and typical sizes of spontaneous ICH by site (hypertensive deep bleeds dominate).
constexpr LocationPrior kLocations[] = {
    {Location::BasalGanglia, 0.42, 16.0, 140.0},
    {Location::Lobar, 0.28, 22.0, 150.0},
    {Location::Thalamus, 0.15, 8.0, 45.0},
    {Location::Cerebellum, 0.10, 10.0, 50.0},
    {Location::Brainstem, 0.05, 4.0, 16.0},
};
constexpr double kVolumeLogSd = 1.05;
constexpr double kMinVolumeMl = 0.3;

// Marker prevalence: P(m) = sigmoid(base + per_log * ln(V/15) + shared * z), where z is one
// latent "clot immaturity" per patient, so that markers co-occur as they do in cohorts.
struct MarkerPrior {
  double base, per_log, shared;
};
constexpr MarkerPrior kHeterogeneity{-0.4, 0.6, 1.0};
constexpr MarkerPrior kSwirl{-0.9, 0.5, 1.0};
constexpr MarkerPrior kBlend{-1.8, 0.4, 1.0};
constexpr MarkerPrior kBlackHole{-1.9, 0.4, 1.0};
constexpr MarkerPrior kIsland{-1.9, 0.8, 0.9};
constexpr MarkerPrior kIrregular{-0.5, 0.8, 0.7};
constexpr MarkerPrior kHypodensity{-0.6, 0.5, 1.0};

bool draw_marker(Rng& rng, const MarkerPrior& p, double log_v, double z) {
  return rng.bernoulli(sigmoid(p.base + p.per_log * log_v + p.shared * z));
}
}  // namespace

const char* location_name(Location location) {
  switch (location) {
    case Location::BasalGanglia: return "basal_ganglia";
    case Location::Thalamus: return "thalamus";
    case Location::Lobar: return "lobar";
    case Location::Cerebellum: return "cerebellum";
    case Location::Brainstem: return "brainstem";
  }
  return "unknown";
}

int Markers::count() const {
  return heterogeneity + swirl + blend + black_hole + island + irregular_margin + hypodensity;
}

const std::vector<std::string>& marker_names() {
  static const std::vector<std::string> names{"heterogeneity", "swirl",           "blend",      "black_hole",
                                              "island",        "irregular_margin", "hypodensity"};
  return names;
}

std::vector<bool> marker_values(const Markers& m) {
  return {m.heterogeneity, m.swirl, m.blend, m.black_hole, m.island, m.irregular_margin, m.hypodensity};
}

double HeModel::observable_logit(const HeFeatures& f) const {
  const Markers& m = f.markers;
  return volume_per_log * std::log(f.volume_ml / 15.0) + heterogeneity * m.heterogeneity + swirl * m.swirl +
         blend * m.blend + black_hole * m.black_hole + island * m.island +
         irregular_margin * m.irregular_margin + hypodensity * m.hypodensity + ivh * f.ivh;
}

double HeModel::observable_probability(double observable_logit) const {
  // E[sigmoid(x + sd u)], u ~ N(0, 1): Simpson's rule on u in [-8, 8] (the integrand is smooth,
  // and the tails beyond 8 sd weigh below 1e-14); a deterministic function of x.
  if (unobserved_sd <= 0.0) return sigmoid(observable_logit);
  constexpr int kSteps = 1600;  // even
  constexpr double kReach = 8.0, kStep = 2.0 * kReach / kSteps;
  const double norm = 1.0 / std::sqrt(2.0 * 3.14159265358979323846);
  double sum = 0.0;
  for (int i = 0; i <= kSteps; ++i) {
    const double u = -kReach + i * kStep;
    const double w = (i == 0 || i == kSteps) ? 1.0 : (i % 2 ? 4.0 : 2.0);
    sum += w * norm * std::exp(-0.5 * u * u) * sigmoid(observable_logit + unobserved_sd * u);
  }
  return sum * kStep / 3.0;
}

std::vector<double> HeModel::coefficients() const {
  return {volume_per_log, heterogeneity, swirl, blend, black_hole, island, irregular_margin, hypodensity, ivh, unobserved_sd};
}

HeFeatures sample_features(Rng& rng, const HeModel& model) {
  HeFeatures f;
  double u = rng.uniform();
  const LocationPrior* prior = &kLocations[0];
  for (const auto& l : kLocations) {
    prior = &l;
    if (u < l.share) break;
    u -= l.share;
  }
  f.location = prior->location;
  f.left = rng.bernoulli(0.5);
  const double v = std::exp(std::log(prior->median_ml) + kVolumeLogSd * rng.normal());
  f.volume_ml = std::clamp(v, kMinVolumeMl, prior->max_ml);
  const double log_v = std::log(f.volume_ml / 15.0);
  const double z = rng.normal();
  Markers& m = f.markers;
  m.heterogeneity = draw_marker(rng, kHeterogeneity, log_v, z);
  m.swirl = draw_marker(rng, kSwirl, log_v, z);
  m.blend = draw_marker(rng, kBlend, log_v, z);
  m.black_hole = draw_marker(rng, kBlackHole, log_v, z);
  m.island = draw_marker(rng, kIsland, log_v, z);
  m.irregular_margin = draw_marker(rng, kIrregular, log_v, z);
  m.hypodensity = draw_marker(rng, kHypodensity, log_v, z);
  // Intraventricular extension: mostly deep bleeds, more often when large.
  const bool deep = f.location == Location::BasalGanglia || f.location == Location::Thalamus;
  f.ivh = rng.bernoulli(sigmoid((deep ? -1.0 : -2.6) + 0.7 * log_v));
  f.unobserved = model.unobserved_sd * rng.normal();
  return f;
}

double calibrated_intercept(double he_fraction, const HeModel& model, bool ivh_possible) {
  if (!(he_fraction > 0.0 && he_fraction < 1.0))
    throw CoreError("he-fraction must lie strictly between 0 and 1, got " + std::to_string(he_fraction));
  static std::mutex mutex;
  static std::map<std::vector<double>, double> cache;
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<double> key = model.coefficients();
  key.push_back(he_fraction);
  key.push_back(ivh_possible ? 1.0 : 0.0);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  constexpr int kCohort = 20000;
  std::vector<double> logits(kCohort);
  for (int i = 0; i < kCohort; ++i) {
    Rng rng(stream_key(0x43414C4942ULL, static_cast<uint64_t>(i), kPurposeFeatures));
    HeFeatures f = sample_features(rng, model);
    if (!ivh_possible) f.ivh = false;
    logits[i] = model.observable_logit(f) + f.unobserved;
  }
  double lo = -20.0, hi = 20.0;
  for (int iter = 0; iter < 80; ++iter) {
    const double mid = 0.5 * (lo + hi);
    double sum = 0.0;
    for (double l : logits) sum += sigmoid(mid + l);
    (sum / kCohort < he_fraction ? lo : hi) = mid;
  }
  const double intercept = 0.5 * (lo + hi);
  cache[key] = intercept;
  return intercept;
}

std::string case_id_for(int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "synth_%05lld", static_cast<long long>(index));
  return buf;
}

CaseTruth sample_case_truth(uint64_t seed, int64_t index, double he_fraction, bool ivh_possible) {
  const HeModel model;
  CaseTruth t;
  t.index = index;
  t.case_id = case_id_for(index);
  Rng rng(stream_key(seed, static_cast<uint64_t>(index), kPurposeFeatures));
  t.features = sample_features(rng, model);
  if (!ivh_possible) t.features.ivh = false;
  const double intercept = calibrated_intercept(he_fraction, model, ivh_possible);
  const double observable = intercept + model.observable_logit(t.features);
  t.he.logit = observable + t.features.unobserved;
  t.he.probability = sigmoid(t.he.logit);
  t.he.observable_probability = model.observable_probability(observable);
  Rng label_rng(stream_key(seed, static_cast<uint64_t>(index), kPurposeLabel));
  t.he.label = label_rng.uniform() < t.he.probability;
  // Growth asked of the follow-up: clearly past the HE threshold, or clearly short of it.
  const double v = t.features.volume_ml;
  const double threshold_fraction = std::min(6.0 / v, 0.33);
  if (t.he.label) {
    t.growth_fraction_target = threshold_fraction * label_rng.uniform(1.35, 2.6);
  } else {
    t.growth_fraction_target = threshold_fraction * label_rng.uniform(-0.5, 0.6);
  }
  return t;
}

}  // namespace hemexp::synth
