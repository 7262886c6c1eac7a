// Hematoma shapes and their NCCT appearance: a rotated ellipsoid whose radius is modulated
// by lobes and surface roughness (irregular margin), blood density with texture and the
// expansion markers (heterogeneity, swirl, blend, black hole, island, hypodensity), and a
// rim of perihematomal edema.
#include <algorithm>
#include <cmath>

#include "synth_internal.hpp"

namespace hemexp::synth {

namespace {
constexpr float kPi = 3.14159265f;
constexpr int kSphereDirections = 1500;

const std::vector<V3>& sphere_directions() {
  static const std::vector<V3> dirs = [] {
    std::vector<V3> d(kSphereDirections);
    const double golden = 3.14159265358979 * (3.0 - std::sqrt(5.0));
    for (int i = 0; i < kSphereDirections; ++i) {
      const double z = 1.0 - (i + 0.5) * 2.0 / kSphereDirections;
      const double r = std::sqrt(1.0 - z * z);
      d[i] = {static_cast<float>(r * std::cos(golden * i)), static_cast<float>(r * std::sin(golden * i)),
              static_cast<float>(z)};
    }
    return d;
  }();
  return dirs;
}

V3 random_unit(Rng& rng) {
  V3 v{static_cast<float>(rng.normal()), static_cast<float>(rng.normal()), static_cast<float>(rng.normal())};
  const float n = len3(v);
  return n > 1e-6f ? (1.f / n) * v : V3{1, 0, 0};
}

// Radius of the main body along unit direction u (local frame), before volume_scale.
float unit_radius(const HematomaShape& s, V3 u) {
  const float ex = u.x / s.radii.x, ey = u.y / s.radii.y, ez = u.z / s.radii.z;
  float r = 1.f / std::sqrt(ex * ex + ey * ey + ez * ez);
  float mod = 1.f;
  for (const auto& lobe : s.lobes) mod += lobe.amplitude * std::exp((dot3(u, lobe.dir) - 1.f) / lobe.width);
  mod += s.rough_amplitude * gradient_noise(s.key, u.x * s.rough_frequency + 11.3f, u.y * s.rough_frequency + 7.1f,
                                             u.z * s.rough_frequency + 3.7f);
  return r * std::fmax(mod, 0.3f);
}

Blob make_blob(Rng& rng, float max_offset, float r_lo, float r_hi, float drop_lo, float drop_hi, float edge) {
  Blob b;
  b.c = static_cast<float>(max_offset * std::cbrt(rng.uniform())) * random_unit(rng);
  b.r = static_cast<float>(rng.uniform(r_lo, r_hi));
  b.drop_hu = static_cast<float>(rng.uniform(drop_lo, drop_hi));
  b.edge_mm = edge;
  return b;
}

// Weight 1 inside a blob (positions in units of the current equivalent radius).
inline float blob_weight(const Blob& b, V3 unit_local, uint64_t key) {
  const V3 d = unit_local - b.c;
  const float dist = len3(d) / b.r;
  if (dist > 1.f + b.edge_mm + 0.3f) return 0.f;
  const float wobble = 0.18f * gradient_noise(key, d.x * 3.f / b.r, d.y * 3.f / b.r, d.z * 3.f / b.r);
  return smoothstep(1.f + b.edge_mm, 1.f - b.edge_mm, dist + wobble);
}
}  // namespace

HematomaShape make_hematoma_shape(Rng& rng, const HeFeatures& f, V3 center, const M3& orientation) {
  HematomaShape s;
  s.center = center;
  s.rotation = orientation;
  s.key = rng.next();
  const Markers& m = f.markers;
  // Elongated ellipsoid, long axis along local x.
  s.radii = {1.f, static_cast<float>(rng.uniform(0.6, 1.0)), static_cast<float>(rng.uniform(0.5, 0.9))};
  if (m.irregular_margin) {
    const int n = 3 + rng.integer(4);
    for (int i = 0; i < n; ++i)
      s.lobes.push_back({random_unit(rng), static_cast<float>(rng.uniform(0.2, 0.45)),
                         static_cast<float>(rng.uniform(0.12, 0.3))});
    s.rough_amplitude = static_cast<float>(rng.uniform(0.1, 0.18));
    s.rough_frequency = static_cast<float>(rng.uniform(2.5, 4.0));
  } else {
    const int n = rng.integer(3);
    for (int i = 0; i < n; ++i)
      s.lobes.push_back({random_unit(rng), static_cast<float>(rng.uniform(0.05, 0.2)),
                         static_cast<float>(rng.uniform(0.3, 0.6))});
    s.rough_amplitude = static_cast<float>(rng.uniform(0.02, 0.05));
    s.rough_frequency = 1.5f;
  }
  // Volume: scale so that (4 pi / 3) mean(r^3) equals the target.
  s.volume_scale = 1.f;
  const double v1 = analytic_volume_mm3(s, 1.f);
  s.volume_scale = static_cast<float>(std::cbrt(f.volume_ml * 1000.0 / v1));
  s.equivalent_radius_mm = static_cast<float>(std::cbrt(3.0 * f.volume_ml * 1000.0 / (4.0 * kPi)));

  s.blood_hu = static_cast<float>(std::clamp(rng.normal(66.0, 6.0), 52.0, 85.0));
  s.texture_hu = static_cast<float>(rng.uniform(1.5, 3.0));
  if (m.heterogeneity) s.heterogeneity_hu = static_cast<float>(rng.uniform(6.0, 10.0));
  if (m.swirl) {
    const int n = 1 + rng.integer(3);
    for (int i = 0; i < n; ++i) s.hypo.push_back(make_blob(rng, 0.45f, 0.2f, 0.35f, 15.f, 28.f, 0.35f));
  }
  if (m.hypodensity) {
    const int n = 1 + rng.integer(3);
    for (int i = 0; i < n; ++i) s.hypo.push_back(make_blob(rng, 0.8f, 0.15f, 0.3f, 12.f, 25.f, 0.25f));
  }
  if (m.black_hole) s.black.push_back(make_blob(rng, 0.3f, 0.15f, 0.28f, 28.f, 40.f, 0.06f));
  if (m.blend) {
    s.blend = true;
    s.blend_normal = random_unit(rng);
    s.blend_offset = static_cast<float>(rng.uniform(0.15, 0.5));
    s.blend_drop_hu = static_cast<float>(rng.uniform(18.0, 30.0));
  }
  // The defining difference of a blend or black hole holds down to the unclotted-blood floor.
  for (const Blob& b : s.black) s.blood_hu = std::fmax(s.blood_hu, kUnclottedBloodHu + b.drop_hu);
  if (s.blend) s.blood_hu = std::fmax(s.blood_hu, kUnclottedBloodHu + s.blend_drop_hu);
  if (m.island) {
    const int n = 3 + rng.integer(3);
    for (int i = 0; i < n; ++i) {
      const V3 u = random_unit(rng);
      Blob b;
      b.r = static_cast<float>(rng.uniform(1.5, 3.5));
      const float dist = unit_radius(s, u) * s.volume_scale + b.r + static_cast<float>(rng.uniform(1.5, 5.0));
      b.c = dist * u;
      s.islands.push_back(b);
    }
  }
  s.edema_mm = static_cast<float>(rng.uniform(0.5, 1.5) * std::cbrt(f.volume_ml) + 1.0);
  s.edema_drop_hu = static_cast<float>(rng.uniform(7.0, 13.0));
  float max_r = 0.f;
  for (const V3& u : sphere_directions()) max_r = std::fmax(max_r, unit_radius(s, u) * s.volume_scale);
  for (const Blob& b : s.islands) max_r = std::fmax(max_r, len3(b.c) + b.r);
  s.bound_mm = max_r;
  s.ivh = f.ivh;
  s.ivh_side = f.left ? 1.f : -1.f;
  return s;
}

double analytic_volume_mm3(const HematomaShape& s, float growth_scale) {
  double sum = 0.0;
  for (const V3& u : sphere_directions()) {
    const double r = unit_radius(s, u) * s.volume_scale * growth_scale;
    sum += r * r * r;
  }
  return 4.0 / 3.0 * 3.14159265358979 * sum / kSphereDirections;
}

namespace {
// Width of the sample's box along unit normal n (local frame): in-plane part and slab part.
float ramp_width(const SampleExtent& e, V3 axis_local, V3 n) {
  const float c = std::fabs(dot3(n, axis_local));
  return std::fmax(e.pv_mm * std::sqrt(std::fmax(1.f - c * c, 0.f)) + e.slab_mm * c, 0.05f);
}
}  // namespace

HematomaSample eval_hematoma(const HematomaShape& s, V3 p, float growth_scale, const SampleExtent& e) {
  HematomaSample out;
  const V3 d = p - s.center;
  const float rho = len3(d);
  const float edema_reach = s.edema_mm * (growth_scale > 1.f ? 1.25f : 1.f) + 3.f;
  if (rho > s.bound_mm * growth_scale + edema_reach + e.pv_mm + e.slab_mm) return out;
  const V3 local = s.rotation.apply_transposed(d);
  const V3 axis_local = s.rotation.apply_transposed(e.slice_axis);
  const V3 u = rho > 1e-4f ? (1.f / rho) * local : V3{1, 0, 0};
  const float r = unit_radius(s, u) * s.volume_scale * growth_scale;
  float dist = rho - r;  // approximate signed distance to the margin (mm), normal about u
  float occ = clamp01(0.5f - dist / ramp_width(e, axis_local, u));
  for (const Blob& b : s.islands) {
    const V3 db = local - growth_scale * b.c;
    const float lb = len3(db);
    const float di = lb - b.r;
    const V3 ub = lb > 1e-4f ? (1.f / lb) * db : V3{1, 0, 0};
    occ = std::fmax(occ, clamp01(0.5f - di / ramp_width(e, axis_local, ub)));
    dist = std::fmin(dist, di);
  }
  const float edema_mm = s.edema_mm * (growth_scale > 1.f ? 1.25f : 1.f);
  out.edema = dist > -0.5f ? smoothstep(edema_mm + 1.5f, edema_mm - 1.5f, dist) : 0.f;
  out.occupancy = occ;
  if (occ <= 0.f) return out;
  const float req = s.equivalent_radius_mm * growth_scale;
  const V3 unit_local = (1.f / req) * local;
  float hu = s.blood_hu;
  if (s.heterogeneity_hu > 0.f)
    hu += s.heterogeneity_hu * (gradient_noise(s.key ^ 0x2, local.x / 4.f, local.y / 4.f, local.z / 4.f) +
                                0.5f * gradient_noise(s.key ^ 0x3, local.x / 2.f, local.y / 2.f, local.z / 2.f));
  for (size_t i = 0; i < s.hypo.size(); ++i)
    hu -= s.hypo[i].drop_hu * blob_weight(s.hypo[i], unit_local, s.key ^ (0x10 + i));
  for (size_t i = 0; i < s.black.size(); ++i)
    hu -= s.black[i].drop_hu * blob_weight(s.black[i], unit_local, s.key ^ (0x20 + i));
  if (s.blend) {
    const float t = dot3(s.blend_normal, unit_local) - s.blend_offset;
    hu -= s.blend_drop_hu * smoothstep(-0.03f, 0.03f, t);
  }
  out.blood_hu = std::fmax(hu, kUnclottedBloodHu) +
                 s.texture_hu * gradient_noise(s.key ^ 0x1, local.x / 2.5f, local.y / 2.5f, local.z / 2.5f);
  return out;
}

}  // namespace hemexp::synth
