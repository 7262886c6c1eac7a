#include "hemexp/core/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace hemexp {

double mean(const std::vector<double>& values) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (double v : values) sum += v;
  return sum / double(values.size());
}

namespace {

// percentile() for float or double values: order statistics in the values' own type (exactly
// representable in double), interpolated in double, so float input gives what its double
// copy would, without the copy.
template <typename T>
double percentile_of(std::vector<T>& values, double q) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double pos = std::clamp(q, 0.0, 1.0) * double(values.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const double frac = pos - double(lo);
  std::nth_element(values.begin(), values.begin() + std::ptrdiff_t(lo), values.end());
  const double low = double(values[lo]);
  if (frac == 0.0 || lo + 1 >= values.size()) return low;
  // The next order statistic is the smallest of the values after position lo.
  const double high = double(*std::min_element(values.begin() + std::ptrdiff_t(lo) + 1, values.end()));
  return low * (1 - frac) + high * frac;
}

}  // namespace

double percentile(std::vector<double> values, double q) { return percentile_of(values, q); }

double median(std::vector<double> values) { return percentile_of(values, 0.5); }

double median_in_place(std::vector<float>& values) { return percentile_of(values, 0.5); }

Moments central_moments(const std::vector<double>& values) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (values.empty()) return {nan, nan, nan, nan};
  const double n = double(values.size()), mu = mean(values);
  Moments m{mu, 0, 0, 0};
  for (double v : values) {
    const double d = v - mu, d2 = d * d;
    m.m2 += d2;
    m.m3 += d2 * d;
    m.m4 += d2 * d2;
  }
  m.m2 /= n;
  m.m3 /= n;
  m.m4 /= n;
  return m;
}

}  // namespace hemexp
