#pragma once
// The timing loop of the benchmark executables: one warm-up call, then `repeats` timed calls;
// median and minimum in seconds (the median through core/statistics, the one median).
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "hemexp/core/statistics.hpp"

namespace hemexp::bench {

struct Timing {
  double median = 0, min = 0;
};

inline Timing time_it(int repeats, const std::function<void()>& f) {
  f();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return {median(t), *std::min_element(t.begin(), t.end())};
}

}  // namespace hemexp::bench
