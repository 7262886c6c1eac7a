#include "hemexp/core/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "hemexp/core/error.hpp"

namespace hemexp {

namespace {

// Physical offsets (mm, in the grid's own axes: distances are the same for orthonormal
// directions) of the surface voxels of a mask.
torch::Tensor surface_points_mm(const torch::Tensor& mask, const Geometry& g) {
  const torch::Tensor m = (mask != 0).to(torch::kUInt8);
  const torch::Tensor padded = torch::constant_pad_nd(m, {1, 1, 1, 1, 1, 1}, 0);
  const auto neighbour = [&](int64_t dim, int64_t shift) {  // the mask moved by shift - 1 along dim
    torch::Tensor t = padded;
    for (int64_t d = 0; d < 3; ++d) t = t.narrow(d, d == dim ? shift : 1, m.size(d));
    return t;
  };
  torch::Tensor inner = m.clone();
  for (int64_t dim = 0; dim < 3; ++dim)
    for (int64_t shift : {0, 2}) inner = inner * neighbour(dim, shift);
  const torch::Tensor surface = (m - inner).to(torch::kBool);
  const torch::Tensor idx = surface.nonzero().to(torch::kFloat64);  // (n, 3): z, y, x
  const torch::Tensor scale = torch::tensor({g.spacing_mm[2], g.spacing_mm[1], g.spacing_mm[0]}, torch::kFloat64);
  return idx * scale;
}

torch::Tensor nearest_distances(const torch::Tensor& from, const torch::Tensor& to) {
  std::vector<torch::Tensor> parts;
  const int64_t chunk = 4096;
  for (int64_t s = 0; s < from.size(0); s += chunk)
    parts.push_back(std::get<0>(torch::cdist(from.slice(0, s, s + chunk), to).min(1)));
  return torch::cat(parts);
}

double percentile95(const torch::Tensor& d) {
  const torch::Tensor sorted = std::get<0>(d.sort());
  const double pos = 0.95 * double(sorted.numel() - 1);
  const int64_t lo = int64_t(std::floor(pos)), hi = std::min<int64_t>(lo + 1, sorted.numel() - 1);
  return sorted[lo].item<double>() * (1 - (pos - double(lo))) + sorted[hi].item<double>() * (pos - double(lo));
}

}  // namespace

double hausdorff95_mm(const torch::Tensor& a, const torch::Tensor& b, const Geometry& g) {
  const torch::Tensor pa = surface_points_mm(a, g), pb = surface_points_mm(b, g);
  if (pa.size(0) == 0 || pb.size(0) == 0) throw CoreError("HD95 needs two non-empty masks");
  return std::max(percentile95(nearest_distances(pa, pb)), percentile95(nearest_distances(pb, pa)));
}

SegmentationMetrics compare_masks(const torch::Tensor& predicted, const torch::Tensor& truth, const Geometry& g) {
  check_matches(g, predicted, "predicted mask");
  check_matches(g, truth, "true mask");
  const torch::Tensor p = predicted != 0, t = truth != 0;
  const double np = double(p.sum().item<int64_t>()), nt = double(t.sum().item<int64_t>());
  const double both = double((p & t).sum().item<int64_t>());
  SegmentationMetrics m;
  m.dice = (np + nt) == 0 ? 1.0 : 2 * both / (np + nt);
  m.iou = (np + nt - both) == 0 ? 1.0 : both / (np + nt - both);
  m.predicted_volume_ml = np * g.voxel_volume_mm3() / 1000.0;
  m.true_volume_ml = nt * g.voxel_volume_mm3() / 1000.0;
  m.volume_abs_error_ml = std::abs(m.predicted_volume_ml - m.true_volume_ml);
  if (np == 0 && nt == 0) m.hd95_mm = 0;
  else if (np == 0 || nt == 0) m.hd95_mm = std::numeric_limits<double>::quiet_NaN();
  else m.hd95_mm = hausdorff95_mm(p, t, g);
  return m;
}

double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels) {
  if (scores.size() != labels.size()) throw CoreError("AUC: scores and labels differ in length");
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mid-ranks for ties.
  std::vector<double> rank(scores.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && scores[order[j + 1]] == scores[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = 0.5 * double(i + j) + 1.0;
    i = j + 1;
  }
  double positives = 0, rank_sum = 0;
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i]) positives += 1, rank_sum += rank[i];
  const double negatives = double(labels.size()) - positives;
  if (positives == 0 || negatives == 0) return std::numeric_limits<double>::quiet_NaN();
  return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

double brier_score(const std::vector<double>& p, const std::vector<int>& y) {
  if (p.empty() || p.size() != y.size()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (size_t i = 0; i < p.size(); ++i) s += (p[i] - y[i]) * (p[i] - y[i]);
  return s / double(p.size());
}

double expected_calibration_error(const std::vector<double>& p, const std::vector<int>& y, int bins) {
  if (p.empty() || p.size() != y.size()) return std::numeric_limits<double>::quiet_NaN();
  std::vector<double> conf(size_t(bins), 0), acc(size_t(bins), 0), n(size_t(bins), 0);
  for (size_t i = 0; i < p.size(); ++i) {
    const size_t b = std::min(size_t(bins - 1), size_t(std::max(0.0, p[i]) * bins));
    conf[b] += p[i], acc[b] += y[i], n[b] += 1;
  }
  double ece = 0;
  for (size_t b = 0; b < size_t(bins); ++b)
    if (n[b] > 0) ece += n[b] / double(p.size()) * std::abs(acc[b] / n[b] - conf[b] / n[b]);
  return ece;
}

}  // namespace hemexp
