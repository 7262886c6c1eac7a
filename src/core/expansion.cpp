#include "hemexp/core/expansion.hpp"

namespace hemexp {

namespace {

// Volumes are voxel counts times a voxel's volume, so a growth of exactly 33 % or 12.5 mL comes
// out a rounding error above or below it. A millionth of a mL (far below any voxel) decides the
// boundary as the rule says: strictly above for >, at it for >=.
constexpr double kTolerance_ml = 1e-6;
bool above(double growth, double limit) { return growth > limit + kTolerance_ml; }
bool at_least(double growth, double limit) { return growth >= limit - kTolerance_ml; }

}  // namespace

bool is_expansion(double baseline_ml, double followup_ml) {
  const double growth = followup_ml - baseline_ml;
  return above(growth, 6.0) || (baseline_ml > 0.0 && above(growth, 0.33 * baseline_ml));
}

const std::vector<ExpansionDefinition>& expansion_definitions() {
  static const std::vector<ExpansionDefinition> kDefinitions{
      {"he_label", "growth > 6 mL or > 33 % of the baseline volume", &is_expansion},
      {"he_label_12_5ml", "growth >= 12.5 mL", [](double b, double f) { return at_least(f - b, 12.5); }},
      {"he_label_3ml", "growth >= 3 mL", [](double b, double f) { return at_least(f - b, 3.0); }}};
  return kDefinitions;
}

}  // namespace hemexp
