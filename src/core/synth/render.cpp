// Rendering a procedural case: clinical scan grid, patient pose, hematoma placement by
// location, slice-thickness partial volume (several points per voxel along z), in-plane
// point spread, correlated noise, int16 rounding; the mask is exactly the voxels whose
// averaged hematoma occupancy is at least one half, and volumes are counted from it.
#include <algorithm>
#include <cmath>
#include <functional>

#include "hemexp/core/error.hpp"
#include "hemexp/core/expansion.hpp"
#include "synth_internal.hpp"

namespace hemexp::synth {

namespace {
constexpr float kPi = 3.14159265f;

struct Scan {
  Geometry geometry;
  float holder_rx_mm = 100.f, holder_ry_mm = 120.f, holder_hu = 250.f;  // head holder shell
  float fov_mm = 240.f;
  int sub_samples = 3;
};

// Clinical grid and the z range that covers the head from the skull base to the vertex.
Scan sample_scan(const SynthOptions& o, int64_t index, const HeadParams& head) {
  Rng rng(stream_key(o.seed, static_cast<uint64_t>(index), kPurposeGrid));
  Scan s;
  const bool thin = rng.uniform() < o.thin_fraction;
  s.fov_mm = static_cast<float>(rng.uniform(220.0, 250.0));
  const int n = std::max(16, o.matrix);
  const double dx = s.fov_mm / n;
  static const double kThick[] = {4.0, 4.5, 5.0, 5.0, 5.0, 6.0};
  const double dz = thin ? 1.25 : kThick[rng.integer(6)];
  const double coverage = rng.uniform(140.0, 165.0) * head.scale.z;
  int64_t nz = static_cast<int64_t>(std::lround(coverage / dz));
  if (!thin) nz = std::clamp<int64_t>(nz, 24, 40);
  // Highest point of the head after rotation.
  float z_top = -1e9f;
  for (int i = 0; i < 400; ++i) {
    const double zc = 1.0 - (i + 0.5) * 2.0 / 400, rc = std::sqrt(1.0 - zc * zc), phi = 2.39996323 * i;
    const V3 q{static_cast<float>(78.0 * rc * std::cos(phi)), static_cast<float>(-3.0 + 96.0 * rc * std::sin(phi)),
               static_cast<float>(1.0 + 79.0 * zc)};
    const V3 scaled{q.x * head.scale.x, q.y * head.scale.y, q.z * head.scale.z};
    z_top = std::fmax(z_top, (head.translation + head.rotation.apply(scaled)).z);
  }
  const double z_hi = z_top + rng.uniform(-2.0, 6.0);
  Geometry& g = s.geometry;
  g.size = {n, n, nz};
  g.spacing_mm = {dx, dx, dz};
  g.origin_mm = {-s.fov_mm / 2.0 + dx / 2.0, -s.fov_mm / 2.0 + dx / 2.0, z_hi - (nz - 1) * dz};
  s.sub_samples = slice_samples(dz);
  s.holder_rx_mm = static_cast<float>(rng.uniform(96.0, 108.0));
  s.holder_ry_mm = static_cast<float>(rng.uniform(118.0, 130.0));
  s.holder_hu = static_cast<float>(rng.uniform(150.0, 400.0));
  return s;
}

// Adds whole slices below the scan until its lowest slice centre is at or below z_low (mm);
// false when it already was.
bool extend_scan_down(Scan& s, double z_low) {
  Geometry& g = s.geometry;
  const double dz = g.spacing_mm[2];
  if (z_low >= g.origin_mm[2]) return false;
  const auto k = static_cast<int64_t>(std::ceil((g.origin_mm[2] - z_low) / dz));
  g.origin_mm[2] -= static_cast<double>(k) * dz;
  g.size[2] += k;
  return true;
}

V3 random_in_ball(Rng& rng, float radius) {
  V3 v;
  do {
    v = {static_cast<float>(rng.uniform(-1, 1)), static_cast<float>(rng.uniform(-1, 1)),
         static_cast<float>(rng.uniform(-1, 1))};
  } while (dot3(v, v) > 1.f);
  return radius * v;
}

// Centre (standard frame) and orientation of the hematoma for its location.
void place_hematoma(Rng& rng, const HeFeatures& f, V3& centre, M3& orientation) {
  const float side = f.left ? 1.f : -1.f;
  const float req = static_cast<float>(std::cbrt(3.0 * f.volume_ml * 1000.0 / (4.0 * kPi)));
  switch (f.location) {
    case Location::BasalGanglia: {
      centre = V3{side * (25.f + 0.15f * req), -2.f, 2.f + 0.1f * req} + random_in_ball(rng, 3.f);
      orientation = rotation_xyz(static_cast<float>(rng.normal(0, 0.25)), static_cast<float>(rng.normal(0, 0.2)),
                                 kPi / 2.f + static_cast<float>(rng.normal(0, 0.3)));  // long axis antero-posterior
      break;
    }
    case Location::Thalamus:
      centre = V3{side * 11.f, 13.f, 3.f} + random_in_ball(rng, 2.f);
      orientation = random_rotation(rng);
      break;
    case Location::Cerebellum:
      centre = V3{side * 22.f, 52.f, -47.f} + random_in_ball(rng, 3.f);
      orientation = random_rotation(rng);
      break;
    case Location::Brainstem:
      centre = V3{static_cast<float>(rng.normal(0, 1.5)), 18.f, -40.f + static_cast<float>(rng.uniform(-6, 6))};
      orientation = rotation_xyz(0.f, 0.f, kPi / 2.f);
      break;
    case Location::Lobar: {
      // A point under the cortex of the upper cerebrum, deep enough for the hematoma.
      V3 u;
      do {
        u = {static_cast<float>(rng.normal()), static_cast<float>(rng.normal()), static_cast<float>(rng.normal())};
        u = (1.f / std::fmax(len3(u), 1e-6f)) * u;
      } while (u.z < 0.05f || std::fabs(u.x) < 0.2f);
      u.x = side * std::fabs(u.x);
      // Surface point of the cerebrum ellipsoid along u.
      const float k = 1.f / std::sqrt((u.x / 66.f) * (u.x / 66.f) + (u.y / 84.f) * (u.y / 84.f) + (u.z / 62.f) * (u.z / 62.f));
      const float depth = std::fmin(0.85f * req + 6.f + static_cast<float>(rng.uniform(0, 6)), 0.75f * k);
      centre = V3{0.f, 0.f, 4.f} + (k - depth) * u;  // cerebrum ellipsoid centre
      orientation = random_rotation(rng);
      break;
    }
  }
}

struct RenderInputs {
  const HeadParams* head;
  const HematomaShape* shape;
  V3 shape_centre_std;
  const Scan* scan;
  float growth_scale;
  uint64_t noise_key;
  float ivh_hu;
};

SynthImages render(const RenderInputs& in) {
  const HeadParams& h = *in.head;
  const HematomaShape& shape = *in.shape;
  const Geometry& g = in.scan->geometry;
  const int64_t nx = g.size[0], ny = g.size[1], nz = g.size[2];
  const float dx = static_cast<float>(g.spacing_mm[0]),
              dz = static_cast<float>(g.spacing_mm[2]);
  const int ns = in.scan->sub_samples;
  SampleExtent extent;
  extent.pv_mm = std::fmax(dx, 0.4f);
  extent.slab_mm = dz / ns;
  extent.slice_axis = h.rotation.apply_transposed(V3{0.f, 0.f, 1.f});  // samples step along z

  MassEffect mass;
  const double vol_ml = analytic_volume_mm3(shape, in.growth_scale) / 1000.0;
  if (vol_ml > 4.0) {
    mass.active = true;
    mass.center = in.shape_centre_std;
    const float mean_scale = (h.scale.x + h.scale.y + h.scale.z) / 3.f;
    mass.radius_mm = static_cast<float>(std::cbrt(3.0 * vol_ml * 1000.0 / (4.0 * kPi))) / mean_scale;
    mass.alpha = 0.55f;
  }
  const V3 inv_scale{1.f / h.scale.x, 1.f / h.scale.y, 1.f / h.scale.z};
  const float edema_drop = shape.edema_drop_hu;
  const float ivh_level = shape.ivh_level;
  const float fov_r2 = (in.scan->fov_mm / 2.f) * (in.scan->fov_mm / 2.f);

  SynthImages out;
  out.geometry = g;
  out.ct = torch::empty({nz, ny, nx}, torch::kInt16);
  out.mask = torch::zeros({nz, ny, nx}, torch::kUInt8);
  out.labels = torch::zeros({nz, ny, nx}, torch::kUInt8);
  int16_t* ct = out.ct.data_ptr<int16_t>();
  uint8_t* mask = out.mask.data_ptr<uint8_t>();
  uint8_t* labels = out.labels.data_ptr<uint8_t>();
  std::vector<float> hu(static_cast<size_t>(nx * ny)), blurred(static_cast<size_t>(nx * ny)),
      sd(static_cast<size_t>(nx * ny));
  int64_t mask_voxels = 0, ivh_voxels = 0, edema_voxels = 0;

  for (int64_t k = 0; k < nz; ++k) {
    for (int64_t j = 0; j < ny; ++j) {
      for (int64_t i = 0; i < nx; ++i) {
        const Vec3 pt = g.index_to_point({static_cast<double>(i), static_cast<double>(j), static_cast<double>(k)});
        const int64_t idx = j * nx + i;
        if (pt[0] * pt[0] + pt[1] * pt[1] > fov_r2) {  // outside the reconstruction circle
          hu[idx] = -1024.f;
          sd[idx] = 0.f;
          continue;
        }
        float hu_sum = 0.f, occ_sum = 0.f, ivh_sum = 0.f, edema_sum = 0.f;
        V3 q_mid;
        int done = 0;
        for (int step = 0; step < ns; ++step) {
          // The middle sample first: far from the head, the voxel is air throughout.
          const int s = step == 0 ? ns / 2 : (step <= ns / 2 ? step - 1 : step);
          const float off = slice_sample_offset(s, ns) * dz;
          const V3 p{static_cast<float>(pt[0]), static_cast<float>(pt[1]), static_cast<float>(pt[2]) + off};
          const V3 pat = h.rotation.apply_transposed(p - h.translation);  // patient frame (mm)
          const V3 q{pat.x * inv_scale.x, pat.y * inv_scale.y, pat.z * inv_scale.z};  // standard frame
          if (s == ns / 2) q_mid = q;
          const TissueSample t = eval_head(h, mass, q);
          float v = t.hu;
          if (t.cls == kParenchyma) {
            const HematomaSample hs = eval_hematoma(shape, pat, in.growth_scale, extent);
            if (hs.edema > 0.f) {
              v -= edema_drop * hs.edema;
              edema_sum += hs.edema * (1.f - hs.occupancy);
            }
            if (hs.occupancy > 0.f) {
              v += hs.occupancy * (hs.blood_hu - v);
              occ_sum += hs.occupancy;
            }
          } else if (t.cls == kVentricle && shape.ivh && q.y > ivh_level && q.x * shape.ivh_side > -3.f) {
            v = in.ivh_hu + 3.f * gradient_noise(shape.key ^ 0x44, q.x / 3.f, q.y / 3.f, q.z / 3.f);
            ivh_sum += 1.f;
          }
          hu_sum += v;
          ++done;
          if (step == 0 && t.far_air && dz * 0.5f < kFarAirMm) break;
        }
        hu[idx] = done < ns ? hu_sum / done : hu_sum / ns;
        if (hu[idx] < -900.f) {
          // Head holder: a thin curved shell behind the head, fixed to the scanner.
          const float hx = (static_cast<float>(pt[0]) - h.translation.x) / in.scan->holder_rx_mm;
          const float hy = (static_cast<float>(pt[1]) - h.translation.y) / in.scan->holder_ry_mm;
          const float r = std::sqrt(hx * hx + hy * hy);
          if (hy > -0.1f && std::fabs(r - 1.f) * in.scan->holder_rx_mm < 1.2f) hu[idx] = in.scan->holder_hu;
        }
        sd[idx] = h.noise_sd_hu * noise_factor(h, q_mid);
        const float frac = occ_sum / ns;
        if (frac >= kMaskBloodFraction) {
          mask[k * nx * ny + idx] = 1;
          labels[k * nx * ny + idx] = kLabelHematoma;
          ++mask_voxels;
        } else if (ivh_sum / ns >= 0.5f) {
          labels[k * nx * ny + idx] = kLabelIvh;
          ++ivh_voxels;
        } else if (edema_sum / ns >= 0.5f) {
          labels[k * nx * ny + idx] = kLabelEdema;
          ++edema_voxels;
        }
      }
    }
    // In-plane point spread of the reconstruction kernel ([1 2 1]/4 each way).
    for (int64_t j = 0; j < ny; ++j)
      for (int64_t i = 0; i < nx; ++i) {
        const int64_t i0 = std::max<int64_t>(i - 1, 0), i1 = std::min<int64_t>(i + 1, nx - 1);
        blurred[j * nx + i] = 0.25f * hu[j * nx + i0] + 0.5f * hu[j * nx + i] + 0.25f * hu[j * nx + i1];
      }
    for (int64_t j = 0; j < ny; ++j) {
      const int64_t j0 = std::max<int64_t>(j - 1, 0), j1 = std::min<int64_t>(j + 1, ny - 1);
      for (int64_t i = 0; i < nx; ++i)
        hu[j * nx + i] = 0.25f * blurred[j0 * nx + i] + 0.5f * blurred[j * nx + i] + 0.25f * blurred[j1 * nx + i];
    }
    add_slice_noise(hu.data(), sd.data(), nx, ny, in.noise_key, k);
    int16_t* out_slice = ct + k * nx * ny;
    for (int64_t idx = 0; idx < nx * ny; ++idx) {
      const float v = std::clamp(hu[idx], -1024.f, 3071.f);
      out_slice[idx] = static_cast<int16_t>(std::lround(v));
    }
  }
  const double voxel_ml = g.voxel_volume_mm3() / 1000.0;
  out.mask_voxels = mask_voxels;
  out.volume_ml = mask_voxels * voxel_ml;
  out.ivh_volume_ml = ivh_voxels * voxel_ml;
  out.edema_volume_ml = edema_voxels * voxel_ml;
  return out;
}
}  // namespace

// Renders the follow-up with growth chosen so that the measured growth agrees with the label.
void render_followup(SynthCase& c, const std::function<SynthImages(float)>& render_at) {
  const bool label = c.truth.he.label;
  float scale = static_cast<float>(std::cbrt(std::max(0.2, 1.0 + c.truth.growth_fraction_target)));
  for (int attempt = 0; attempt < 12; ++attempt) {
    c.followup = render_at(scale);
    if (is_expansion(c.baseline.volume_ml, c.followup.volume_ml) == label) break;
    scale *= label ? 1.08f : 0.96f;
  }
  if (is_expansion(c.baseline.volume_ml, c.followup.volume_ml) != label)
    throw CoreError("follow-up of " + c.truth.case_id + " could not be made consistent with its HE label");
  c.has_followup = true;
  c.growth_ml = c.followup.volume_ml - c.baseline.volume_ml;
  c.growth_fraction = c.baseline.volume_ml > 0 ? c.growth_ml / c.baseline.volume_ml : 0.0;
}

SynthCase render_procedural_case(const SynthOptions& options, int64_t index) {
  SynthCase c;
  c.truth = sample_case_truth(options.seed, index, options.he_fraction);
  c.background = "procedural";
  const HeadParams head = sample_head(options.seed, index);
  Scan scan = sample_scan(options, index, head);
  Rng rng(stream_key(options.seed, static_cast<uint64_t>(index), kPurposeHematoma));
  V3 centre_std;
  M3 orientation;
  place_hematoma(rng, c.truth.features, centre_std, orientation);
  const V3 centre_pat{centre_std.x * head.scale.x, centre_std.y * head.scale.y, centre_std.z * head.scale.z};
  HematomaShape shape = make_hematoma_shape(rng, c.truth.features, centre_pat, orientation);
  shape.ivh_level = static_cast<float>(38.0 - rng.uniform(5.0, 45.0) * std::min(1.0, c.truth.features.volume_ml / 30.0 + 0.3));
  const float ivh_hu = static_cast<float>(rng.uniform(50.0, 70.0));
  c.location = location_name(c.truth.features.location);
  c.blood_hu = shape.blood_hu;
  c.noise_sd_hu = head.noise_sd_hu;

  RenderInputs in{&head, &shape, centre_std, &scan, 1.f,
                  stream_key(options.seed, static_cast<uint64_t>(index), kPurposeNoise), ivh_hu};
  c.baseline = render(in);
  if (c.baseline.mask_voxels == 0) {
    // The drawn coverage (140-165 mm down from the vertex) can stop above a posterior-fossa
    // hematoma of a tall or tilted head (seed 15101, case 564: a cerebellar clot 133 mm below
    // the vertex). A head CT covers the posterior fossa, so such a scan is extended downwards
    // past the hematoma's reach (grown as a follow-up grows it, with its edema and a slice more)
    // and rendered again. Only cases that had no hematoma change; the reach does not depend on
    // --followup, so the baseline is the same with or without it.
    const float centre_z = (head.translation + head.rotation.apply(shape.center)).z;
    const float growth =
        1.25f * std::fmax(1.f, static_cast<float>(std::cbrt(std::max(0.2, 1.0 + c.truth.growth_fraction_target))));
    const float reach = shape.bound_mm * growth + shape.edema_mm * 1.25f + 4.f +
                        static_cast<float>(scan.geometry.spacing_mm[2]);
    if (extend_scan_down(scan, static_cast<double>(centre_z - reach))) c.baseline = render(in);
  }
  if (c.baseline.mask_voxels == 0)
    throw CoreError("synthetic case " + c.truth.case_id + " produced an empty hematoma mask");
  if (options.followup) {
    render_followup(c, [&](float scale) {
      RenderInputs f = in;
      f.growth_scale = scale;
      f.noise_key = stream_key(options.seed, static_cast<uint64_t>(index), kPurposeFollowupNoise);
      return render(f);
    });
  }
  return c;
}

}  // namespace hemexp::synth
