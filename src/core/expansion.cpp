#include "hemexp/core/expansion.hpp"

namespace hemexp {

bool is_expansion(double baseline_ml, double followup_ml) {
  const double growth = followup_ml - baseline_ml;
  return growth > 6.0 || (baseline_ml > 0.0 && growth > 0.33 * baseline_ml);
}

const std::vector<ExpansionDefinition>& expansion_definitions() {
  static const std::vector<ExpansionDefinition> kDefinitions{
      {"he_label", "growth > 6 mL or > 33 % of the baseline volume", &is_expansion},
      {"he_label_12_5ml", "growth >= 12.5 mL", [](double b, double f) { return f - b >= 12.5; }},
      {"he_label_3ml", "growth >= 3 mL", [](double b, double f) { return f - b >= 3.0; }}};
  return kDefinitions;
}

}  // namespace hemexp
