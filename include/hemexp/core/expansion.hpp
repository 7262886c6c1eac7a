#pragma once

namespace hemexp {

// Clinical definitions of hematoma expansion (HE) between a baseline and a follow-up scan
// (about 24 h), from the two hematoma volumes in mL. The generator (`hemexp synth`) draws
// follow-ups that agree with its labels under is_expansion; `hemexp expansion` will report
// every definition.

// The common definition: growth > 6 mL or > 33 % of the baseline volume.
bool is_expansion(double baseline_ml, double followup_ml);

}  // namespace hemexp
