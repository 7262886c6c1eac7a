#include "hemexp/core/metrics.hpp"

#include "hemexp/core/text.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>

#include "hemexp/core/error.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/statistics.hpp"

namespace hemexp {

namespace {

// Surface voxels of a mask: mask voxels with at least one of their 6 neighbours outside it
// (or on the edge of the volume).
torch::Tensor surface_of(const torch::Tensor& mask) {
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
  return (m - inner).to(torch::kBool);
}

// Exact squared Euclidean distance transform along one line (Felzenszwalb & Huttenlocher's
// lower envelope of parabolas), samples `step` mm apart: d[q] = min_p (step (q - p))^2 + f[p].
void distance_line(const double* f, int64_t n, double step, double* d, std::vector<int64_t>& v,
                   std::vector<double>& z) {
  const double inf = std::numeric_limits<double>::infinity();
  const double s2 = step * step;
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] == inf) continue;
    double boundary = -inf;
    while (k >= 0) {
      const int64_t p = v[size_t(k)];
      boundary = ((f[q] + s2 * double(q * q)) - (f[p] + s2 * double(p * p))) / (2 * s2 * double(q - p));
      if (boundary > z[size_t(k)]) break;
      --k;
    }
    ++k;
    v[size_t(k)] = q;
    z[size_t(k)] = k == 0 ? -inf : boundary;
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) d[q] = inf;
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (j < k && z[size_t(j + 1)] < double(q)) ++j;
    const double dq = double(q - v[size_t(j)]);
    d[q] = s2 * dq * dq + f[v[size_t(j)]];
  }
}

// Distances (mm) from each surface voxel of `from` to the nearest surface voxel of `to`.
torch::Tensor surface_distances(const torch::Tensor& from, const torch::Tensor& to, const Geometry& g) {
  return squared_distance_map(to, g).masked_select(from).sqrt();
}

double percentile95(const torch::Tensor& d) {
  const torch::Tensor values = d.to(torch::kFloat64).contiguous();
  return percentile(std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel()), 0.95);
}

}  // namespace

torch::Tensor squared_distance_map(const torch::Tensor& features, const Geometry& g) {
  const double inf = std::numeric_limits<double>::infinity();
  torch::Tensor d = torch::where(features, torch::zeros({}, torch::kFloat64), torch::full({}, inf, torch::kFloat64))
                        .contiguous();
  const std::array<int64_t, 3> n{d.size(0), d.size(1), d.size(2)};
  const std::array<double, 3> step{g.spacing_mm[2], g.spacing_mm[1], g.spacing_mm[0]};
  const std::array<int64_t, 3> stride{n[1] * n[2], n[2], 1};
  double* data = d.data_ptr<double>();
  const int64_t longest = std::max({n[0], n[1], n[2]});
  const size_t len_max = static_cast<size_t>(longest);
  std::vector<double> line(len_max), out(len_max), z(len_max + 1);
  std::vector<int64_t> v(len_max);
  for (int axis = 0; axis < 3; ++axis) {
    const int a1 = (axis + 1) % 3, a2 = (axis + 2) % 3;
    for (int64_t i = 0; i < n[size_t(a1)]; ++i)
      for (int64_t j = 0; j < n[size_t(a2)]; ++j) {
        double* base = data + i * stride[size_t(a1)] + j * stride[size_t(a2)];
        const int64_t len = n[size_t(axis)], st = stride[size_t(axis)];
        for (int64_t q = 0; q < len; ++q) line[size_t(q)] = base[q * st];
        distance_line(line.data(), len, step[size_t(axis)], out.data(), v, z);
        for (int64_t q = 0; q < len; ++q) base[q * st] = out[size_t(q)];
      }
  }
  return d;
}

double hausdorff95_mm(const torch::Tensor& a, const torch::Tensor& b, const Geometry& g) {
  torch::Tensor sa = surface_of(a), sb = surface_of(b);
  if (!sa.any().item<bool>() || !sb.any().item<bool>()) throw CoreError("HD95 needs two non-empty masks");
  // Distances between the two surfaces never leave the box that holds both: crop to it.
  const torch::Tensor where = (sa | sb).nonzero();
  for (int64_t dim = 0; dim < 3; ++dim) {
    const int64_t lo = where.select(1, dim).min().item<int64_t>(), hi = where.select(1, dim).max().item<int64_t>();
    sa = sa.narrow(dim, lo, hi - lo + 1);
    sb = sb.narrow(dim, lo, hi - lo + 1);
  }
  return std::max(percentile95(surface_distances(sa, sb, g)), percentile95(surface_distances(sb, sa, g)));
}

SegmentationMetrics compare_masks(const torch::Tensor& predicted, const torch::Tensor& truth, const Geometry& g) {
  check_matches(g, predicted, "predicted mask");
  check_matches(g, truth, "true mask");
  const torch::Tensor p = predicted != 0, t = truth != 0;
  // count_nonzero, not sum(): a sum over a bool volume first makes an int64 copy of it.
  const double np = double(torch::count_nonzero(p).item<int64_t>()), nt = double(torch::count_nonzero(t).item<int64_t>());
  const double both = double(torch::count_nonzero(p & t).item<int64_t>());
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

std::array<double, 2> roc_auc_ci95(const std::vector<double>& scores, const std::vector<int>& labels, int resamples,
                                   uint64_t seed) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (std::isnan(roc_auc(scores, labels)) || resamples < 1) return {nan, nan};
  // SplitMix64: a small generator of our own, the same numbers on every platform.
  uint64_t state = seed;
  auto next = [&state] {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  const size_t n = scores.size();
  std::vector<double> aucs, s(n);
  std::vector<int> y(n);
  aucs.reserve(size_t(resamples));
  for (int r = 0; r < resamples;) {
    for (size_t i = 0; i < n; ++i) {
      const size_t k = size_t(next() % n);
      s[i] = scores[k], y[i] = labels[k];
    }
    const double auc = roc_auc(s, y);
    if (std::isnan(auc)) continue;  // a resample with one class only: draw again
    aucs.push_back(auc);
    ++r;
  }
  return {percentile(aucs, 0.025), percentile(aucs, 0.975)};
}

CalibrationFit calibration_fit(const std::vector<double>& p, const std::vector<int>& y) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (p.size() != y.size()) throw CoreError("calibration: probabilities and labels differ in length");
  if (std::isnan(roc_auc(p, y))) return {nan, nan};
  std::vector<double> x(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const double q = std::clamp(p[i], 1e-6, 1.0 - 1e-6);
    x[i] = std::log(q / (1 - q));
  }
  // On one axis the fit exists exactly when the classes overlap: if every expansion's logit is
  // at or above every other case's (or at or below), the likelihood grows without end as the
  // slope does (complete or quasi-complete separation), and no number is the slope.
  double min1 = INFINITY, max1 = -INFINITY, min0 = INFINITY, max0 = -INFINITY;
  for (size_t i = 0; i < x.size(); ++i) {
    double& lo = y[i] ? min1 : min0;
    double& hi = y[i] ? max1 : max0;
    lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  }
  if (max0 <= min1 || max1 <= min0) return {nan, nan};
  // Newton-Raphson on (slope a, intercept b) of P(y=1) = sigmoid(a x + b), each step halved
  // until the log-likelihood does not fall (a full step from far away can overshoot into
  // saturated probabilities, where the Hessian vanishes).
  const auto log_likelihood = [&](double a, double b) {
    double l = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double z = a * x[i] + b;
      // log sigmoid(z) for a label 1, log sigmoid(-z) for a label 0, without overflow
      const double t = y[i] ? z : -z;
      l -= t > 0 ? std::log1p(std::exp(-t)) : -t + std::log1p(std::exp(t));
    }
    return l;
  };
  double a = 1.0, b = 0.0, l = log_likelihood(a, b);
  for (int iter = 0; iter < 200; ++iter) {
    double ga = 0, gb = 0, haa = 0, hab = 0, hbb = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double m = 1.0 / (1.0 + std::exp(-(a * x[i] + b)));
      const double w = m * (1 - m), r = double(y[i]) - m;
      ga += r * x[i], gb += r;
      haa += w * x[i] * x[i], hab += w * x[i], hbb += w;
    }
    const double det = haa * hbb - hab * hab;
    if (!(det > 0)) return {nan, nan};  // all logits equal: no slope to fit
    const double da = (hbb * ga - hab * gb) / det, db = (haa * gb - hab * ga) / det;
    double t = 1.0, next = log_likelihood(a + da, b + db);
    while (!(next >= l) && t > 1e-12) t /= 2, next = log_likelihood(a + t * da, b + t * db);
    if (!(next >= l)) break;  // no step improves: at the maximum to rounding
    a += t * da, b += t * db, l = next;
    if (std::abs(t * da) < 1e-10 && std::abs(t * db) < 1e-10) break;
  }
  return {a, b};
}

namespace {
double ratio(int64_t a, int64_t b) { return b > 0 ? double(a) / double(b) : std::numeric_limits<double>::quiet_NaN(); }
}  // namespace

double BinaryMetrics::accuracy() const { return ratio(tp + tn, tp + tn + fp + fn); }
double BinaryMetrics::sensitivity() const { return ratio(tp, tp + fn); }
double BinaryMetrics::specificity() const { return ratio(tn, tn + fp); }
double BinaryMetrics::ppv() const { return ratio(tp, tp + fp); }
double BinaryMetrics::npv() const { return ratio(tn, tn + fn); }

BinaryMetrics binary_metrics(const std::vector<double>& p, const std::vector<int>& y, double threshold) {
  return binary_metrics(p, y, std::vector<double>(p.size(), threshold));
}

BinaryMetrics binary_metrics(const std::vector<double>& p, const std::vector<int>& y,
                             const std::vector<double>& thresholds) {
  if (p.size() != y.size() || p.size() != thresholds.size())
    throw CoreError("binary metrics: probabilities, labels and thresholds differ in length");
  BinaryMetrics m;
  for (size_t i = 0; i < p.size(); ++i) {
    const bool called = p[i] >= thresholds[i];
    if (y[i]) (called ? m.tp : m.fn)++;
    else (called ? m.fp : m.tn)++;
  }
  return m;
}

nlohmann::json classification_report(const std::vector<double>& p, const std::vector<int>& y, double threshold) {
  return classification_report(p, y, std::vector<double>(p.size(), threshold));
}

nlohmann::json classification_report(const std::vector<double>& p, const std::vector<int>& y,
                                     const std::vector<double>& thresholds) {
  if (p.empty()) return nullptr;
  if (thresholds.size() != p.size()) throw CoreError("classification report: one threshold per case is needed");
  const std::array<double, 2> ci = roc_auc_ci95(p, y);
  const CalibrationFit fit = calibration_fit(p, y);
  // One threshold when every case has the same; otherwise each case is called at its own
  // (cases scored by different classifiers) and the report says so.
  const bool one = std::all_of(thresholds.begin(), thresholds.end(), [&](double t) {
    return t == thresholds[0] || (std::isnan(t) && std::isnan(thresholds[0]));
  });
  const double threshold = one ? thresholds[0] : std::numeric_limits<double>::quiet_NaN();
  const bool call = std::all_of(thresholds.begin(), thresholds.end(), [](double t) { return std::isfinite(t); });
  nlohmann::json j = {{"n", p.size()},
            {"auc", json_number(roc_auc(p, y))},
            {"auc_ci95_low", json_number(ci[0])},
            {"auc_ci95_high", json_number(ci[1])},
            {"auc_ci_method", "percentile bootstrap, 2000 resamples, seed 1"},
            {"brier", json_number(brier_score(p, y))},
            {"ece", json_number(expected_calibration_error(p, y, 10))},
            {"calibration_slope", json_number(fit.slope)},
            {"calibration_intercept", json_number(fit.intercept)},
            {"mean_probability", json_number(mean(p))},
            {"threshold", json_number(threshold)}};
  if (!one) j["threshold_per_case"] = true;
  if (call) {
    const BinaryMetrics b = binary_metrics(p, y, thresholds);
    j.update({{"tp", b.tp}, {"fp", b.fp}, {"tn", b.tn}, {"fn", b.fn},
              {"accuracy", json_number(b.accuracy())}, {"sensitivity", json_number(b.sensitivity())},
              {"specificity", json_number(b.specificity())}, {"ppv", json_number(b.ppv())},
              {"npv", json_number(b.npv())}});
  }
  return j;
}

}  // namespace hemexp
