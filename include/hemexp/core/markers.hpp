#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// NCCT signs of hematoma expansion measured on the baseline image and its hematoma mask only
// (never from a generator's truth), as numbers a classifier or a reader can use. docs/MARKERS.md
// has the definitions, their literature and what they measure on synthetic cases.
//
// The density markers (hypodense_fraction, hu_sd, hu_cv, bimodality_coefficient) use the
// mask's interior, the voxels whose 26 neighbours are all in the mask, so partial-volume rim
// voxels (blood averaged with darker brain or edema) are not read as hypodense blood: on 60
// synthetic cases all voxels gave clots without hypodense markers 4.7 % "hypodense" voxels
// and the interior 0.0 %. A mask with no interior (under 3 voxels thick) gives NaN for them.
struct NcctMarkers {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

  int64_t voxels = 0;           // mask voxels
  int64_t interior_voxels = 0;  // voxels the density markers are measured on

  // Share of interior voxels more than 18 HU below the interior's median HU:
  //   #{v : HU(v) < median - 18} / n. Blend sign and hypodensities differ by >= 18 HU.
  double hypodense_fraction = kNaN;
  // Density heterogeneity: population SD of the interior HU, and SD / mean (NaN if mean <= 0).
  double hu_sd = kNaN;
  double hu_cv = kNaN;
  // Sarle's bimodality coefficient of the interior HU, with the sample skewness G1 and sample
  // excess kurtosis G2: (G1^2 + 1) / (G2 + 3 (n-1)^2 / ((n-2)(n-3))). Above 5/9 = 0.555 (a
  // uniform distribution) suggests two densities (blend); a normal distribution gives 1/3.
  // NaN for n < 4 or constant HU.
  double bimodality_coefficient = kNaN;
  // Islands: 26-connected components other than the largest whose nearest voxel lies within
  // 20 mm of the largest component (centre to centre), and their total volume.
  int64_t satellite_count = 0;
  double satellite_volume_ml = 0.0;
  // Islands seen in the image, whatever the mask kept (a segmenter's post-processing removes
  // small components, so satellite_count of a predicted mask misses them): within 10 mm of the
  // mask's largest component, 26-connected regions of blood-like density (in-plane 2 mm box
  // mean above the clot's interior median - 30 HU and below 100 HU, not within 3 mm of bone
  // > 200 HU) of 5 to 400 mm^3, separate from the region holding the clot, that a logistic
  // detector of eight measurements (fitted on the generator's islands: scripts/island_detector.py,
  // docs/MARKERS.md) gives >= 0.5 and whose voxels' positions spread at most 3.5 mm (SD along the
  // longest axis; strips of cortex or falx are never islands).
  int64_t island_count = 0;
  // Shape irregularity: surface area / area of the sphere of the same volume = 1 / sphericity,
  //   A / (pi^(1/3) (6 V)^(2/3)), with measure_hematoma's surface estimate (surface_area_mm2).
  //   1 for a ball, larger for lobulated or elongated clots.
  double surface_ratio = kNaN;

  // The density markers above read the voxel values; the six below read S, the in-plane 2 mm box
  // mean of the HU of mask voxels (which averages the pixel noise away and, taken over the mask
  // only, does not darken the rim), relative to the interior's median HU, and
  // tell the hypodense signs apart by the shape of what is dark (docs/MARKERS.md; chosen on
  // validation cohorts): one part cut off at the margin (blend), rounded foci near the centre
  // (swirl), an encapsulated focus (black hole), small scattered foci (hypodensity).
  //   low_density_p10: 10th percentile of S - median over the interior (HU, <= 0 mostly).
  //   smoothed_hu_iqr: interquartile range of S over the interior (HU).
  double low_density_p10 = kNaN;
  double smoothed_hu_iqr = kNaN;
  // Hypodense regions: 26-connected regions of interior voxels with S < median - 12 HU.
  //   hypodense_region_count: regions of at least 20 mm^3 (0 when the mask has no interior).
  //   hypodense_region_fraction: the largest region's share of the interior voxels (0: none).
  //   hypodense_region_margin_contact: share of the largest region's one-voxel shell (26
  //     neighbours) that is not interior, i.e. lies on the clot's rim or outside it: how much of
  //     it reaches the margin (NaN when there is no region).
  //   hypodense_region_centrality: mean distance of its voxels to the nearest voxel outside the
  //     mask, over the largest such distance in the mask (1: at the clot's centre; NaN: none).
  int64_t hypodense_region_count = 0;
  double hypodense_region_fraction = kNaN;
  double hypodense_region_margin_contact = kNaN;
  double hypodense_region_centrality = kNaN;
  // Radial shells of the interior (on S as above; chosen on validation cohorts, docs/MARKERS.md):
  // rho = distance of a voxel's centre from the mask's centroid / radius of the ball of the mask's
  // volume; inner rho < 0.4, middle 0.4-0.7, outer >= 0.7. *_low_fraction: the shell's share of
  // voxels with S < median - 10 HU (NaN: no interior voxel in that shell); inner_hu_offset: mean S
  // of the inner shell - median (HU). A central hypodensity (swirl) raises the inner share, a part
  // cut off at the margin (blend) the outer one.
  double inner_low_fraction = kNaN;
  double middle_low_fraction = kNaN;
  double outer_low_fraction = kNaN;
  double inner_hu_offset = kNaN;

  // NaN is written as null; from_json reads null back as NaN.
  nlohmann::json to_json() const;
  static NcctMarkers from_json(const nlohmann::json& j);
  // The markers' names, as columns of results.csv and of `hemexp prepare`'s cases.csv.
  static const std::vector<std::string>& names();
  // name -> value with a fixed number of decimals, locale-free; NaN is an empty field.
  std::map<std::string, std::string> csv_fields() const;
};

// mask: nonzero = hematoma, hu: HU, both (z, y, x) on grid g. An empty mask gives voxels 0,
// satellite_count 0, satellite_volume_ml 0 and NaN for every other marker.
NcctMarkers measure_markers(const torch::Tensor& mask, const torch::Tensor& hu, const Geometry& g);

}  // namespace hemexp
