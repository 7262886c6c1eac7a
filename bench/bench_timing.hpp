#pragma once
// The timing loop of the benchmark executables: one warm-up call, then `repeats` timed calls;
// median and minimum in seconds (the median through core/statistics, the one median).
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include <torch/torch.h>

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

// The machine's reference rate: a plain large convolution, 64 -> 64 channels, 3x3x3, on
// 32 x 64 x 64 (29 GFLOP), on `device` with the current thread count. One call of it
// (PlainConvRun, to time it alternately with something else) or the median of `repeats`
// (plain_conv3d: seconds and GFLOP/s).
struct PlainConvRun {
  static constexpr double kFlops = 2.0 * 64 * 64 * 27 * 32 * 64 * 64;
  torch::Tensor x, w;
  explicit PlainConvRun(const torch::Device& device) {
    torch::manual_seed(1);
    x = torch::randn({1, 64, 32, 64, 64}).to(device);
    w = (torch::randn({64, 64, 3, 3, 3}) * 0.05).to(device);
  }
  // item() waits for the device, so the time is the convolution's, not its launch's.
  void operator()() const {
    c10::InferenceMode guard;
    torch::conv3d(x, w, {}, 1, 1).sum().item<float>();
  }
};

struct PlainConv {
  double seconds = 0, gflops = 0;
};

inline PlainConv plain_conv3d(int repeats, const torch::Device& device) {
  const PlainConvRun run(device);
  const double t = time_it(repeats, run).median;
  return {t, PlainConvRun::kFlops / t / 1e9};
}

}  // namespace hemexp::bench
