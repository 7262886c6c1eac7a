#pragma once
// Shapes of known size for the core tests.
#include "hemexp/core/geometry.hpp"
#include "hemexp/core/synth.hpp"

namespace hemexp::test {

inline Geometry grid(std::array<int64_t, 3> size, Vec3 spacing, Vec3 origin = {0, 0, 0}) {
  Geometry g;
  g.size = size;
  g.spacing_mm = spacing;
  g.origin_mm = origin;
  return g;
}

// Ball of radius r (mm) centred at continuous index c, as a uint8 mask (z, y, x).
inline torch::Tensor ball(const Geometry& g, const Vec3& c, double r) {
  torch::Tensor m = torch::zeros(tensor_shape(g), torch::kUInt8);
  auto a = m.accessor<uint8_t, 3>();
  for (int64_t z = 0; z < g.size[2]; ++z)
    for (int64_t y = 0; y < g.size[1]; ++y)
      for (int64_t x = 0; x < g.size[0]; ++x) {
        const double dx = (double(x) - c[0]) * g.spacing_mm[0], dy = (double(y) - c[1]) * g.spacing_mm[1],
                     dz = (double(z) - c[2]) * g.spacing_mm[2];
        if (dx * dx + dy * dy + dz * dz <= r * r) a[z][y][x] = 1;
      }
  return m;
}

// Case 0 of a small procedural cohort (`hemexp synth --seed seed --matrix matrix
// --thin-fraction thin_fraction`): a whole head at a clinical field of view, quick to render.
// Its CT as a float32 volume (HU) on its own grid.
inline Volume synthetic_head(uint64_t seed, int matrix, double thin_fraction, synth::SynthCase* rendered = nullptr) {
  synth::SynthOptions o;
  o.seed = seed;
  o.matrix = matrix;
  o.thin_fraction = thin_fraction;
  synth::SynthCase c = synth::render_procedural_case(o, 0);
  Volume v{c.baseline.geometry, c.baseline.ct.to(torch::kFloat32)};
  if (rendered) *rendered = std::move(c);
  return v;
}

}  // namespace hemexp::test
