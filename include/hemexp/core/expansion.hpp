#pragma once

#include <string>
#include <vector>

namespace hemexp {

// Clinical definitions of hematoma expansion (HE) between a baseline and a follow-up scan
// (about 24 h), from the two hematoma volumes in mL. The generator (`hemexp synth`) draws
// follow-ups that agree with its labels under is_expansion; `hemexp expansion` reports every
// definition of expansion_definitions().

// The common definition: growth > 6 mL or > 33 % of the baseline volume.
bool is_expansion(double baseline_ml, double followup_ml);

struct ExpansionDefinition {
  std::string column;  // the expansion.csv / labels.csv column: he_label, he_label_12_5ml, ...
  std::string rule;    // in words, for reports
  bool (*test)(double baseline_ml, double followup_ml);
};
// The definitions reported, the common one (is_expansion, column he_label) first, then
// growth >= 12.5 mL (he_label_12_5ml) and growth >= 3 mL (he_label_3ml).
const std::vector<ExpansionDefinition>& expansion_definitions();

}  // namespace hemexp
