#include "hemexp/core/expansion.hpp"

namespace hemexp {

bool is_expansion(double baseline_ml, double followup_ml) {
  const double growth = followup_ml - baseline_ml;
  return growth > 6.0 || (baseline_ml > 0.0 && growth > 0.33 * baseline_ml);
}

}  // namespace hemexp
