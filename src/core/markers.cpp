#include "hemexp/core/markers.hpp"

#include <algorithm>
#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kHypodenseDropHu = 18.0;
constexpr double kSatelliteReachMm = 20.0;
// island_count (docs/MARKERS.md). Candidates: regions of S > median_int(S) - kIslandDropHu (and below
// kIslandMaxHu, not near bone) of kIslandMinMm3 to kIslandMaxMm3 within kIslandReachMm of the clot.
constexpr double kIslandDropHu = 30.0, kIslandMaxHu = 100.0, kIslandReachMm = 10.0;
constexpr double kIslandMinMm3 = 5.0, kIslandMaxMm3 = 400.0, kIslandSmoothMm = 2.0, kIslandSurroundMm = 3.0;
// Never an island: a candidate whose positions' SD along its longest axis exceeds kIslandMaxSpreadMm
// (a strip of falx, cortex or tentorium, which the generator does not draw and so the detector
// below never saw; 188 of the training cohorts' 191 true islands are within it).
constexpr double kIslandMaxSpreadMm = 3.5;
// A candidate is an island when a logistic regression of its eight measurements and their pairwise
// products gives >= 0.5. Fitted (2026-12-05) by scripts/island_detector.py on the candidates of the
// training cohorts (seeds 6501 and 6502: 7,385 candidates, 191 islands by the generator's mask),
// out-of-fold candidate AUC 0.982; its output, pasted:
constexpr double kIslandMean[8] = {3.29333, 7.02874, -27.7683, -24.6946, 10.8505, 13.9242, 1.47039, 1.58864};
constexpr double kIslandSd[8] = {1.0808, 1.96274, 3.72474, 9.30416, 7.02098, 12.0952, 2.53863, 1.31529};
constexpr double kIslandLinear[8] = {0.198369, -0.921313, 0.766846, 0.185418, 1.34474, 0.687178, 0.409016, -0.593114};
constexpr double kIslandQuadratic[36] = {
    -0.0972883, -0.304035,  0.398968,   0.187851,   -0.0581727, 0.0227851,  0.341521,   -0.127473, -0.27017,
    0.0888621,  0.00546033, 0.0723938,  0.0216775,  -0.158362,  0.116999,   -0.0137588, -0.0314596, -0.0691434,
    -0.0610365, -0.0291419, -0.0847343, -0.0645499, -0.101213,  -0.0919231, -0.0517947, -0.0413104, -0.025015,
    -0.0625459, -0.099518,  -0.455573,  -0.0862343, -0.0816884, -0.182342,  -0.0405826, 0.0176528,  0.0495897};
constexpr double kIslandBias = -4.83211;
constexpr double kBoneHu = 200.0, kBoneMarginMm = 3.0;
// Hypodense regions (docs/MARKERS.md: chosen on the validation cohorts procval and bgval).
constexpr double kRegionSmoothMm = 2.0, kRegionDropHu = 12.0, kRegionMinMm3 = 20.0;
// Radial shells: bounds in units of the equivalent radius, and what counts as low in them.
constexpr double kShellInner = 0.4, kShellOuter = 0.7, kShellDropHu = 10.0;

// Dilation of a bool volume by a 3 x 3 x 3 box; beyond the tensor counts as `beyond`.
torch::Tensor grow_by_one(const torch::Tensor& m, bool beyond) {
  torch::Tensor grown = dilate_box(m, {1, 1, 1});
  if (beyond)  // every voxel on a face has a neighbour beyond
    for (int64_t d = 0; d < 3; ++d) grown.select(d, 0).fill_(true), grown.select(d, grown.size(d) - 1).fill_(true);
  return grown;
}

// Voxels whose 26 neighbours are all in the mask (erosion by a 3 x 3 x 3 box); outside the
// tensor counts as outside the mask. Measured on 60 synthetic cases (docs/MARKERS.md), this
// removes the partial-volume rim that gave clots without any hypodense marker 4.7 %
// "hypodense" voxels, and a wider in-plane erosion (1 or 2 mm) separated the markers less well.
torch::Tensor interior_of(const torch::Tensor& m) { return ~grow_by_one(~m, true); }

std::vector<double> to_vector(const torch::Tensor& t) {
  const torch::Tensor v = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
}

// Returns the interior's median HU (NaN when there is no interior).
double measure_density(const torch::Tensor& values, NcctMarkers& r) {
  const int64_t n = values.numel();
  if (n == 0) return NcctMarkers::kNaN;
  const std::vector<double> hu = to_vector(values);
  const double median_hu = median(hu);
  r.hypodense_fraction = (values < median_hu - kHypodenseDropHu).sum().item<double>() / double(n);
  const Moments moments = central_moments(hu);  // the same digits for any --threads
  const double mean_hu = moments.mean, m2 = moments.m2, m3 = moments.m3, m4 = moments.m4;
  r.hu_sd = std::sqrt(m2);
  r.hu_cv = mean_hu > 0 ? r.hu_sd / mean_hu : NcctMarkers::kNaN;
  if (n < 4 || !(m2 > 0)) return median_hu;
  const double nn = double(n);
  // Sample skewness and excess kurtosis (the bias-corrected G1, G2 of SAS and Sarle).
  const double g1 = m3 / std::pow(m2, 1.5), g2 = m4 / (m2 * m2) - 3.0;
  const double skew = g1 * std::sqrt(nn * (nn - 1)) / (nn - 2);
  const double excess_kurtosis = (nn - 1) / ((nn - 2) * (nn - 3)) * ((nn + 1) * g2 + 6);
  r.bimodality_coefficient =
      (skew * skew + 1) / (excess_kurtosis + 3 * (nn - 1) * (nn - 1) / ((nn - 2) * (nn - 3)));
  return median_hu;
}

// Odd box width of about `mm` at `spacing_mm` (at least 1).
int64_t odd_width(double mm, double spacing_mm) { return std::max<int64_t>(1, std::llround(mm / spacing_mm) | 1); }

// In-plane box mean of about `mm` (odd widths), borders averaged over the voxels inside the box.
torch::Tensor in_plane_mean(const torch::Tensor& values, const Geometry& g, double mm) {
  const int64_t ky = odd_width(mm, g.spacing_mm[1]), kx = odd_width(mm, g.spacing_mm[0]);
  return torch::avg_pool3d(values.to(torch::kFloat32).unsqueeze(0), {1, ky, kx}, 1, {0, ky / 2, kx / 2}, false, false)
      .squeeze(0);
}

// The positions (mm, (n, 3) as z, y, x from the box's first voxel) of a bool volume's true voxels,
// in memory order (as masked_select walks them).
torch::Tensor positions_mm(const torch::Tensor& voxels, const Geometry& g) {
  return voxels.nonzero().to(torch::kFloat64) *
         torch::tensor({g.spacing_mm[2], g.spacing_mm[1], g.spacing_mm[0]}, torch::kFloat64);
}

// The radial shells (docs/MARKERS.md): rho = distance of an interior voxel's centre from the
// mask's centroid over the radius of the ball of the mask's volume; inner rho < 0.4, middle 0.4 to
// 0.7, outer >= 0.7. In each, the share of interior voxels whose S lies more than kShellDropHu
// below the interior's median HU; in the inner one also the mean S minus that median.
void measure_shells(const torch::Tensor& m, const torch::Tensor& interior, const torch::Tensor& smooth,
                    const Geometry& box, double median_hu, NcctMarkers& r) {
  const torch::Tensor centroid = positions_mm(m, box).mean(0);
  const double radius = std::cbrt(3.0 * double(r.voxels) * box.voxel_volume_mm3() / (4.0 * kPi));
  // Both walk the interior in memory order: rho[i] belongs to s[i].
  const torch::Tensor rho = (positions_mm(interior, box) - centroid).pow(2).sum(1).sqrt() / radius;
  const torch::Tensor s = smooth.masked_select(interior).to(torch::kFloat64);
  const torch::Tensor low = s < median_hu - kShellDropHu;
  const torch::Tensor shells[] = {rho < kShellInner, (rho >= kShellInner) & (rho < kShellOuter), rho >= kShellOuter};
  double* fractions[] = {&r.inner_low_fraction, &r.middle_low_fraction, &r.outer_low_fraction};
  for (int k = 0; k < 3; ++k) {
    const int64_t n = shells[k].sum().item<int64_t>();
    if (n == 0) continue;
    *fractions[k] = double((low & shells[k]).sum().item<int64_t>()) / double(n);
    if (k == 0) r.inner_hu_offset = s.masked_select(shells[0]).mean().item<double>() - median_hu;
  }
}

// The six markers on S (the in-plane 2 mm mean) of the mask's box: m the mask, interior its
// interior, median_hu the interior's median HU (finite); then the radial shells on the same S.
void measure_hypodense_regions(const torch::Tensor& m, const torch::Tensor& interior, const torch::Tensor& values_hu,
                               const Geometry& box, double median_hu, NcctMarkers& r) {
  // The mean over the clot's own voxels only: next to the margin a plain box mean would take in
  // the darker brain around it and call the rim hypodense.
  const torch::Tensor inside = m.to(torch::kFloat32);
  const torch::Tensor smooth =
      in_plane_mean(values_hu.to(torch::kFloat32) * inside, box, kRegionSmoothMm) / in_plane_mean(inside, box, kRegionSmoothMm);
  const std::vector<double> s = to_vector(smooth.masked_select(interior));
  const int64_t n = int64_t(s.size());
  r.low_density_p10 = percentile(s, 0.10) - median_hu;
  r.smoothed_hu_iqr = percentile(s, 0.75) - percentile(s, 0.25);
  measure_shells(m, interior, smooth, box, median_hu, r);
  r.hypodense_region_fraction = 0.0;

  const torch::Tensor dark = interior & (smooth < float(median_hu - kRegionDropHu));
  torch::Tensor labels;
  const int64_t regions = connected_components(dark, &labels);
  if (regions == 0) return;
  const torch::Tensor flat = labels.reshape({-1}).to(torch::kLong);
  torch::Tensor counts = torch::bincount(flat, {}, regions + 1);
  counts[0] = 0;
  r.hypodense_region_count =
      (counts.to(torch::kFloat64) * box.voxel_volume_mm3() >= kRegionMinMm3).sum().item<int64_t>();
  const int64_t largest = counts.argmax().item<int64_t>();
  const torch::Tensor region = labels == largest;
  r.hypodense_region_fraction = double(counts[largest].item<int64_t>()) / double(n);

  // Its shell: the 26 neighbours not in it.
  const torch::Tensor shell = grow_by_one(region, false) & ~region;
  const int64_t shell_voxels = shell.sum().item<int64_t>();
  if (shell_voxels > 0)
    r.hypodense_region_margin_contact = double((shell & ~interior).sum().item<int64_t>()) / double(shell_voxels);

  // Distance to the nearest voxel outside the mask; the box is padded by one voxel of outside.
  const torch::Tensor outside = torch::constant_pad_nd((~m).to(torch::kUInt8), {1, 1, 1, 1, 1, 1}, 1).to(torch::kBool);
  const torch::Tensor depth = squared_distance_map(outside, box)
                                  .slice(0, 1, -1).slice(1, 1, -1).slice(2, 1, -1).sqrt();
  const double deepest = depth.masked_select(m).max().item<double>();
  if (deepest > 0) r.hypodense_region_centrality = depth.masked_select(region).mean().item<double>() / deepest;
}

// The probability that an island candidate (label `id` of `labels`, inside `region_box`) is an
// island, from its eight measurements
// (scripts/island_detector.py, in this order): ln of its volume (mm^3), its distance from the
// clot's main component (mm), its mean and peak S minus the clot's median S (reference_hu), its mean
// and peak S minus the median S of its surroundings (the voxels within kIslandSurroundMm in-plane
// and one slice around it not in `excluded`: blood-like, mask, near bone), the SD of S over it and
// the SD of its voxels' positions along its longest axis (mm). No surroundings, or a spread above
// kIslandMaxSpreadMm: 0.
double island_probability(const torch::Tensor& labels, int64_t id, const MaskBox& region_box, const torch::Tensor& smooth,
                          const torch::Tensor& excluded, const torch::Tensor& distance_mm, double reference_hu,
                          const Geometry& g) {
  const int64_t ky = odd_width(2 * kIslandSurroundMm, g.spacing_mm[1]);
  const int64_t kx = odd_width(2 * kIslandSurroundMm, g.spacing_mm[0]);
  const MaskBox box = region_box.grown({1, ky / 2, kx / 2}, labels);  // with the surroundings
  const torch::Tensor r = box.crop(labels) == id, s = box.crop(smooth);
  // Spread along the longest axis: sqrt of the largest eigenvalue of the positions' covariance (mm).
  const torch::Tensor mm = positions_mm(r, g);
  double spread = 0.0;
  if (mm.size(0) > 2) {
    const torch::Tensor centred = mm - mm.mean(0, true);
    const torch::Tensor covariance = centred.t().mm(centred) / double(mm.size(0) - 1);
    spread = std::sqrt(std::max(torch::linalg_eigvalsh(covariance, "L").max().item<double>(), 0.0));
  }
  if (spread > kIslandMaxSpreadMm) return 0.0;
  const torch::Tensor near = dilate_box(r, {1, ky / 2, kx / 2});
  const torch::Tensor surround = near & ~box.crop(excluded);
  if (surround.sum().item<int64_t>() == 0) return 0.0;
  const double around = median(to_vector(s.masked_select(surround)));
  const torch::Tensor v = s.masked_select(r).to(torch::kFloat64);
  const double mean_s = v.mean().item<double>(), peak_s = v.max().item<double>();
  const double x[8] = {std::log(double(v.numel()) * g.voxel_volume_mm3()),
                       box.crop(distance_mm).masked_select(r).min().item<double>(),
                       mean_s - reference_hu,
                       peak_s - reference_hu,
                       mean_s - around,
                       peak_s - around,
                       v.std(/*unbiased=*/false).item<double>(),
                       spread};
  double z[8], logit = kIslandBias;
  for (int i = 0; i < 8; ++i) {
    z[i] = (x[i] - kIslandMean[i]) / kIslandSd[i];
    logit += kIslandLinear[i] * z[i];
  }
  for (int i = 0, k = 0; i < 8; ++i)
    for (int j = i; j < 8; ++j) logit += kIslandQuadratic[k++] * z[i] * z[j];
  return 1.0 / (1.0 + std::exp(-logit));
}

// island_count: blood-like regions in the image near the mask's largest component that are
// not connected to the clot's own region. mask_box is the mask's bounding box in (z, y, x).
int64_t count_islands(const torch::Tensor& mask, const torch::Tensor& hu, const Geometry& g, const MaskBox& mask_box) {
  // The mask's box grown by the reach plus the bone margin and the smoothing half-width.
  std::array<int64_t, 3> grow{};
  for (size_t d = 0; d < 3; ++d)
    grow[d] = int64_t(std::ceil((kIslandReachMm + kBoneMarginMm + kIslandSmoothMm) / g.spacing_mm[2 - d]));
  const MaskBox box = mask_box.grown(grow, mask);
  const Geometry gb = box.crop(g);
  const torch::Tensor m = box.crop(mask).ne(0).contiguous();
  const torch::Tensor values = box.crop(hu).to(torch::kFloat32).contiguous();

  torch::Tensor mask_labels;
  const int64_t mask_components = connected_components(m, &mask_labels);
  torch::Tensor mask_counts = torch::bincount(mask_labels.reshape({-1}).to(torch::kLong), {}, mask_components + 1);
  mask_counts[0] = 0;
  const torch::Tensor main = mask_labels == mask_counts.argmax().item<int64_t>();

  const torch::Tensor smooth = in_plane_mean(values, g, kIslandSmoothMm);
  torch::Tensor reference_voxels = smooth.masked_select(interior_of(m));
  if (reference_voxels.numel() == 0) reference_voxels = smooth.masked_select(m);
  const double reference_hu = median(to_vector(reference_voxels));

  // Bone and what lies within kBoneMarginMm of it (a box): partial volume with bone is bright.
  const torch::Tensor bone = dilate_box(values > float(kBoneHu), {odd_width(2 * kBoneMarginMm, g.spacing_mm[2]) / 2,
                                                                   odd_width(2 * kBoneMarginMm, g.spacing_mm[1]) / 2,
                                                                   odd_width(2 * kBoneMarginMm, g.spacing_mm[0]) / 2});
  const torch::Tensor bright = (smooth > float(reference_hu - kIslandDropHu)) & (smooth < float(kIslandMaxHu)) & ~bone;

  torch::Tensor labels;
  const int64_t n = connected_components(bright, &labels);
  if (n == 0) return 0;
  const torch::Tensor flat = labels.reshape({-1}).to(torch::kLong);
  const torch::Tensor sizes_mm3 = torch::bincount(flat, {}, n + 1).to(torch::kFloat64) * g.voxel_volume_mm3();
  // The clot's own region: the one that overlaps the largest mask component most.
  torch::Tensor overlap = torch::bincount(flat.masked_select(main.reshape({-1})), {}, n + 1);
  overlap[0] = 0;
  const int64_t clot = overlap.max().item<int64_t>() > 0 ? overlap.argmax().item<int64_t>() : -1;
  const torch::Tensor distance_mm = squared_distance_map(main, gb).sqrt();
  const torch::Tensor near_main = distance_mm.reshape({-1}) <= kIslandReachMm;
  torch::Tensor candidate = (torch::bincount(flat.masked_select(near_main), {}, n + 1) > 0) &
                            (sizes_mm3 >= kIslandMinMm3) & (sizes_mm3 <= kIslandMaxMm3);
  candidate[0] = false;
  if (clot > 0) candidate[clot] = false;
  const torch::Tensor not_surround = bright | m | bone;
  const std::vector<MaskBox> boxes = label_boxes(labels, n);
  int64_t islands = 0;
  const torch::Tensor ids = candidate.nonzero().reshape({-1}).contiguous();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t id = ids[i].item<int64_t>();
    if (island_probability(labels, id, boxes[size_t(id)], smooth, not_surround, distance_mm, reference_hu, gb) >= 0.5)
      ++islands;
  }
  return islands;
}

// One row per marker: its name (the key in result.json, the column in results.csv and cases.csv),
// its member, the decimals of its CSV field, and how a result.json written before it existed
// reads back. Every marker list (to_json, from_json, names, csv_fields) is this table.
enum class Absent { kError, kNaN, kZero };  // a missing key: an error, not measured, or 0
struct MarkerField {
  const char* name;
  double NcctMarkers::*real = nullptr;  // exactly one of real and count is set
  int64_t NcctMarkers::*count = nullptr;
  int decimals = 0;
  Absent absent = Absent::kError;
  bool listed = true;  // in names() and csv_fields() (voxel counts are in result.json only)
};

MarkerField real_field(const char* name, double NcctMarkers::*m, int decimals, Absent a = Absent::kError) {
  return {name, m, nullptr, decimals, a, true};
}
MarkerField count_field(const char* name, int64_t NcctMarkers::*m, Absent a = Absent::kError, bool listed = true) {
  return {name, nullptr, m, 0, a, listed};
}

const std::vector<MarkerField>& marker_fields() {
  using M = NcctMarkers;
  static const std::vector<MarkerField> fields{
      count_field("voxels", &M::voxels, Absent::kError, false),
      count_field("interior_voxels", &M::interior_voxels, Absent::kError, false),
      real_field("hypodense_fraction", &M::hypodense_fraction, 4),
      real_field("hu_sd", &M::hu_sd, 2),
      real_field("hu_cv", &M::hu_cv, 4),
      real_field("bimodality_coefficient", &M::bimodality_coefficient, 4),
      count_field("satellite_count", &M::satellite_count),
      real_field("satellite_volume_ml", &M::satellite_volume_ml, 4),
      count_field("island_count", &M::island_count, Absent::kZero),
      real_field("surface_ratio", &M::surface_ratio, 4),
      // Added after results were first written: absent reads as not measured (NaN) or 0.
      real_field("low_density_p10", &M::low_density_p10, 2, Absent::kNaN),
      real_field("smoothed_hu_iqr", &M::smoothed_hu_iqr, 2, Absent::kNaN),
      count_field("hypodense_region_count", &M::hypodense_region_count, Absent::kZero),
      real_field("hypodense_region_fraction", &M::hypodense_region_fraction, 4, Absent::kNaN),
      real_field("hypodense_region_margin_contact", &M::hypodense_region_margin_contact, 4, Absent::kNaN),
      real_field("hypodense_region_centrality", &M::hypodense_region_centrality, 4, Absent::kNaN),
      real_field("inner_low_fraction", &M::inner_low_fraction, 4, Absent::kNaN),
      real_field("middle_low_fraction", &M::middle_low_fraction, 4, Absent::kNaN),
      real_field("outer_low_fraction", &M::outer_low_fraction, 4, Absent::kNaN),
      real_field("inner_hu_offset", &M::inner_hu_offset, 2, Absent::kNaN)};
  return fields;
}

}  // namespace

nlohmann::json NcctMarkers::to_json() const {
  // NaN (not measurable) is an explicit null, in memory as in the file.
  nlohmann::json j = nlohmann::json::object();
  for (const MarkerField& f : marker_fields())
    j[f.name] = f.real ? json_number(this->*f.real) : nlohmann::json(this->*f.count);
  return j;
}

NcctMarkers NcctMarkers::from_json(const nlohmann::json& j) {
  NcctMarkers m;
  for (const MarkerField& f : marker_fields()) {
    if (!j.contains(f.name) && f.absent != Absent::kError) {
      if (f.real) m.*f.real = f.absent == Absent::kNaN ? kNaN : 0.0;
      else m.*f.count = 0;
      continue;
    }
    const nlohmann::json& v = j.at(f.name);
    if (f.real) m.*f.real = v.is_null() ? kNaN : v.get<double>();
    else m.*f.count = v.get<int64_t>();
  }
  return m;
}

const std::vector<std::string>& NcctMarkers::names() {
  static const std::vector<std::string> n = [] {
    std::vector<std::string> out;
    for (const MarkerField& f : marker_fields())
      if (f.listed) out.emplace_back(f.name);
    return out;
  }();
  return n;
}

std::map<std::string, std::string> NcctMarkers::csv_fields() const {
  std::map<std::string, std::string> out;
  for (const MarkerField& f : marker_fields()) {
    if (!f.listed) continue;
    if (f.count) out[f.name] = std::to_string(this->*f.count);
    else out[f.name] = std::isfinite(this->*f.real) ? format_number(this->*f.real, f.decimals) : std::string();
  }
  return out;
}

NcctMarkers measure_markers(const torch::Tensor& mask, const torch::Tensor& hu, const Geometry& g) {
  check_matches(g, mask, "measuring NCCT markers: mask");
  check_matches(g, hu, "measuring NCCT markers: HU");
  torch::NoGradGuard no_grad;
  NcctMarkers r;
  // Everything happens in the mask's bounding box, with no whole-volume temporary
  // (docs/PERFORMANCE.md: fresh memory is what costs). Every component lies in the box, so
  // distances from the largest one are exact.
  const MaskBox mask_box = mask_bounding_box(mask);
  if (mask_box.empty()) return r;
  const Geometry box = mask_box.crop(g);
  const torch::Tensor m = mask_box.crop(mask).ne(0).contiguous(), values_hu = mask_box.crop(hu);
  r.voxels = m.sum().item<int64_t>();

  const torch::Tensor interior = interior_of(m);
  const torch::Tensor values = values_hu.to(torch::kFloat64).masked_select(interior);
  r.interior_voxels = values.numel();
  const double median_hu = measure_density(values, r);
  if (r.interior_voxels > 0) measure_hypodense_regions(m, interior, values_hu, box, median_hu, r);

  torch::Tensor labels;
  const int64_t components = connected_components(m, &labels);
  const torch::Tensor flat_labels = labels.reshape({-1}).to(torch::kLong);
  torch::Tensor counts = torch::bincount(flat_labels, {}, components + 1);
  counts[0] = 0;
  const int64_t largest = counts.argmax().item<int64_t>();
  if (components > 1) {
    // A component is a satellite when any of its voxels lies within reach of the largest one.
    const torch::Tensor near_largest =
        squared_distance_map(labels == largest, box).reshape({-1}) <= kSatelliteReachMm * kSatelliteReachMm;
    torch::Tensor satellite = torch::bincount(flat_labels.masked_select(near_largest), {}, components + 1) > 0;
    satellite[0] = false;
    satellite[largest] = false;
    r.satellite_count = satellite.sum().item<int64_t>();
    r.satellite_volume_ml =
        double(counts.masked_select(satellite).sum().item<int64_t>()) * g.voxel_volume_mm3() / 1000.0;
  }

  r.island_count = count_islands(mask, hu, g, mask_box);

  const double volume_mm3 = double(r.voxels) * g.voxel_volume_mm3();
  r.surface_ratio = surface_area_mm2(m, box) / (std::cbrt(kPi) * std::pow(6.0 * volume_mm3, 2.0 / 3.0));
  return r;
}

}  // namespace hemexp
