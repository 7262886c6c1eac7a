#pragma once

#include <vector>

namespace hemexp {

// The one implementation of these summaries in hemexp. All return NaN for an empty input.

double mean(const std::vector<double>& values);

// The q-quantile (0 <= q <= 1) by linear interpolation between order statistics: position
// q (n - 1) in the sorted values (the default of NumPy and R type 7). O(n): partial sorts
// only. NaN values are not allowed (they have no order).
double percentile(std::vector<double> values, double q);

// percentile(values, 0.5): the middle value, or the mean of the two middle values.
double median(std::vector<double> values);
// The same for float values (e.g. HU) without a double copy of them (the same result as the
// median of their double copy); reorders them.
double median_in_place(std::vector<float>& values);

// The mean and the central moments m2, m3, m4 (population: divided by n), summed in order in
// one thread, so that a result never depends on the thread count (a parallel reduction's
// order does). NaN for an empty input.
struct Moments {
  double mean, m2, m3, m4;
};
Moments central_moments(const std::vector<double>& values);

}  // namespace hemexp
