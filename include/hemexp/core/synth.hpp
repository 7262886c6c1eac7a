#pragma once

// Synthetic head NCCT with known hematoma truth (`hemexp synth`). Core layer: LibTorch and
// the standard library only. docs/SYNTH.md describes the model and its parameters.
//
// Determinism: every random number comes from the PRNGs below, seeded from (seed, case
// index, purpose). Nothing uses torch's or std::'s random distributions, and images are
// rendered slice by slice with per-voxel counter-based noise, so a case's bytes depend
// only on (seed, index, arguments), never on --count or the number of threads.

#include <array>
#include <optional>
#include <cstdint>
#include <string>
#include <vector>

#include "hemexp/core/geometry.hpp"
#include "hemexp/core/orientation.hpp"

namespace hemexp::synth {

// ---------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------

// SplitMix64 finaliser: a stateless 64-bit mixing function.
uint64_t mix64(uint64_t x);
// Key for a purpose-specific stream: mix of seed, index and a purpose tag.
uint64_t stream_key(uint64_t seed, uint64_t index, uint64_t purpose);

// xoshiro256** seeded through SplitMix64; own uniform and normal (Box-Muller) samplers.
class Rng {
 public:
  explicit Rng(uint64_t key);
  uint64_t next();
  double uniform();                       // [0, 1)
  double uniform(double lo, double hi);   // [lo, hi)
  double normal();                        // N(0, 1)
  double normal(double mean, double sd);
  bool bernoulli(double p);
  int integer(int n);                     // 0 .. n-1

 private:
  std::array<uint64_t, 4> s_{};
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// Counter-based numbers: a pure function of (key, counter).
double hash_uniform(uint64_t key, uint64_t counter);  // (0, 1)
float hash_normal(uint64_t key, uint64_t counter);    // N(0, 1)
// Smooth 3D gradient noise in about [-1, 1], zero on the integer lattice, period-free.
float gradient_noise(uint64_t key, float x, float y, float z);

// ---------------------------------------------------------------------------------------
// Hematoma features and the expansion (HE) model
// ---------------------------------------------------------------------------------------

enum class Location { BasalGanglia, Thalamus, Lobar, Cerebellum, Brainstem };
const char* location_name(Location location);

// The NCCT markers of expansion (docs/SYNTH.md gives the definitions used when rendering).
struct Markers {
  bool heterogeneity = false;
  bool swirl = false;
  bool blend = false;
  bool black_hole = false;
  bool island = false;
  bool irregular_margin = false;
  bool hypodensity = false;
  int count() const;
};
// Names in the order of the labels.csv columns.
const std::vector<std::string>& marker_names();
std::vector<bool> marker_values(const Markers& m);

// What the HE model sees, sampled before any image exists.
struct HeFeatures {
  Location location = Location::BasalGanglia;
  bool left = true;
  double volume_ml = 10.0;  // target (analytic) volume; the rendered mask volume is measured
  Markers markers;
  bool ivh = false;
  double unobserved = 0.0;  // patient factor the image does not show (anticoagulation, BP, time)
};

// Logit(P(HE)) = intercept + volume_per_log * ln(V / 15 mL) + sum(marker coefficients)
//               + ivh + unobserved.
struct HeModel {
  double volume_per_log = 0.44;
  double heterogeneity = 0.44;
  double swirl = 0.60;
  double blend = 0.80;
  double black_hole = 0.80;
  double island = 1.00;
  double irregular_margin = 0.48;
  double hypodensity = 0.64;
  double ivh = 0.30;
  double unobserved_sd = 1.25;
  std::vector<double> coefficients() const;
  // The part of the logit an image can show (no intercept, no unobserved factor).
  double observable_logit(const HeFeatures& f) const;
  // P(expansion | what an image can show) = E[sigmoid(x + unobserved_sd u)] over u ~ N(0, 1),
  // for x = intercept + observable_logit: the calibrated probability of the observable part
  // (sigmoid(x) alone would be too sure of itself: its calibration slope is about 0.8).
  double observable_probability(double observable_logit) const;
};

HeFeatures sample_features(Rng& rng, const HeModel& model);

// Intercept that makes the expected prevalence equal he_fraction (0 < F < 1), found by
// bisection over a fixed 20,000-patient calibration cohort (its own seed). Cached. Without
// ivh_possible, the cohort's patients have no IVH (cases drawn into real backgrounds, where IVH
// is never rendered).
double calibrated_intercept(double he_fraction, const HeModel& model = {}, bool ivh_possible = true);

struct HeTruth {
  double logit = 0.0;
  double probability = 0.0;
  bool label = false;
  double observable_probability = 0.0;  // HeModel::observable_probability(intercept + observable_logit)
};

// Everything about a case that is decided before rendering.
struct CaseTruth {
  int64_t index = 0;
  std::string case_id;
  HeFeatures features;
  HeTruth he;
  double growth_fraction_target = 0.0;  // follow-up growth asked of the renderer (V1/V0 - 1)
};

std::string case_id_for(int64_t index);
// Pure function of (seed, index, he_fraction, ivh_possible): the sampler of the HE truth.
// Without ivh_possible (a case drawn into a real background, where IVH is not rendered) the case
// has no IVH, and its probability and label are drawn without it: nothing in the truth is
// absent from the image.
CaseTruth sample_case_truth(uint64_t seed, int64_t index, double he_fraction, bool ivh_possible = true);

// Follow-ups are drawn to agree with the label under hemexp::is_expansion (core/expansion.hpp).

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

struct SynthOptions {
  uint64_t seed = 1;
  double he_fraction = 0.2;
  bool followup = false;
  double thin_fraction = 0.1;  // share of cases on a thin-slice (1.25 mm) grid
  int matrix = 512;            // in-plane size; the field of view stays clinical
};

// Codes of the label map (labels.nii.gz). A voxel takes a label when at least half of it
// (by sub-samples along z) is that tissue; the parenchymal hematoma wins a tie.
enum SynthLabel : uint8_t { kLabelBackground = 0, kLabelHematoma = 1, kLabelIvh = 2, kLabelEdema = 3 };

// The name a segmentation model card gives each SynthLabel code (index = code).
inline const std::vector<std::string>& synth_label_names() {
  static const std::vector<std::string> names{"background", "hematoma", "ivh", "edema"};
  return names;
}

// A rendered case. ct is int16 HU, mask uint8 (1: parenchymal hematoma) and labels uint8
// (SynthLabel codes; labels == 1 exactly where mask == 1), all (z,y,x) on `geometry`. The
// volumes are the voxel counts of the label map times the voxel volume.
struct SynthImages {
  Geometry geometry;
  torch::Tensor ct;
  torch::Tensor mask;
  torch::Tensor labels;
  int64_t mask_voxels = 0;
  double volume_ml = 0.0;
  double ivh_volume_ml = 0.0;
  double edema_volume_ml = 0.0;
};

struct SynthCase {
  CaseTruth truth;
  std::string location;  // where the hematoma was put (procedural: anatomy; background: deep|lobar)
  double blood_hu = 0.0;
  double noise_sd_hu = 0.0;
  SynthImages baseline;
  bool has_followup = false;
  SynthImages followup;
  double growth_ml = 0.0;        // measured: followup mask volume - baseline mask volume
  double growth_fraction = 0.0;  // growth_ml / baseline volume
  std::string background;        // "procedural" or the background path given
};

// A procedural head with a hematoma.
SynthCase render_procedural_case(const SynthOptions& options, int64_t index);

// A real NCCT (HU, any grid) prepared for hematoma insertion, in canonical orientation.
struct Background {
  std::string name;
  Geometry original_geometry;  // outputs are written back on this grid
  AxisMap axis_map;
  Volume canonical;            // HU, canonical orientation
  torch::Tensor parenchyma;    // uint8 (z,y,x), canonical: 1 parenchyma (blood, edema), 2 thin CSF
                               // (sulci: blood only inside the clot), 0 elsewhere
  torch::Tensor local_mean;    // float (z,y,x), canonical: in-plane 3x3 mean HU
  std::vector<int64_t> candidates;  // voxel indices deep inside the parenchyma
  std::array<double, 3> intracranial_centre_mm{0, 0, 0};
  // The midsagittal plane as the canonical column index i = a + b j + c k, fitted through the
  // middles of the skull's inner rows (the falx: a clot is drawn in one hemisphere); none when
  // too few rows were wide enough to tell.
  std::optional<std::array<double, 3>> midline;
  double intracranial_radius_mm = 60.0;
  double noise_sd_hu = 0.0;    // estimated in the parenchyma
  int64_t parenchyma_voxels = 0;
};
Background prepare_background(const Volume& volume, const std::string& name);

// Inserts a hematoma into a real background; the output is on the background's grid.
SynthCase render_background_case(const SynthOptions& options, int64_t index, const Background& bg);

}  // namespace hemexp::synth
