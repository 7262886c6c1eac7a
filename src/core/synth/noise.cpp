// CT noise: counter-based white Gaussian noise per voxel (a pure function of key, slice and
// pixel, so threads and case order do not matter), correlated in-plane by a binomial
// kernel as a filtered back-projection correlates it, scaled to unit variance, then by a
// per-pixel sd map.
#include <cmath>
#include <vector>

#include "synth_internal.hpp"

namespace hemexp::synth {

void add_slice_noise(float* slice, const float* sd_map, int64_t nx, int64_t ny, uint64_t key, int64_t slice_index) {
  constexpr int kRadius = 4;
  constexpr int kTaps = 2 * kRadius + 1;
  // Binomial(8) kernel: sd about 1.4 pixels.
  constexpr float kKernel[kTaps] = {1.f / 256, 8.f / 256, 28.f / 256, 56.f / 256, 70.f / 256,
                                    56.f / 256, 28.f / 256, 8.f / 256, 1.f / 256};
  // Unit variance after both passes: 1 / sum(w_i^2) (per axis) = 65536 / 12870.
  const float norm = 65536.f / 12870.f;
  const int64_t px = nx + 2 * kRadius, py = ny + 2 * kRadius;
  std::vector<float> white(static_cast<size_t>(px * py));
  const uint64_t base = static_cast<uint64_t>(slice_index) * static_cast<uint64_t>(px * py);
  for (int64_t i = 0; i < px * py; ++i) white[i] = hash_normal(key, base + static_cast<uint64_t>(i));
  std::vector<float> rows(static_cast<size_t>(px * ny));
  for (int64_t y = 0; y < ny; ++y)
    for (int64_t x = 0; x < px; ++x) {
      float s = 0.f;
      for (int k = 0; k < kTaps; ++k) s += kKernel[k] * white[(y + k) * px + x];
      rows[y * px + x] = s;
    }
  for (int64_t y = 0; y < ny; ++y)
    for (int64_t x = 0; x < nx; ++x) {
      float s = 0.f;
      for (int k = 0; k < kTaps; ++k) s += kKernel[k] * rows[y * px + x + k];
      const int64_t idx = y * nx + x;
      slice[idx] += norm * s * sd_map[idx];
    }
}

}  // namespace hemexp::synth
