// The procedural head: an analytic adult head in a "standard head" frame (mm; x patient
// left, y posterior, z superior; origin at the centre of the cerebrum), varied per patient
// by size, atrophy, skull, intensities and pose. eval_head() gives HU and tissue class at
// a point; the renderer averages several points per voxel (partial volume).
#include <algorithm>
#include <cmath>

#include "synth_internal.hpp"

namespace hemexp::synth {

namespace {
constexpr float kPi = 3.14159265f;
constexpr float kDeg = kPi / 180.f;

// --- standard anatomy (mm) ---------------------------------------------------------
const Ellipsoid kCerebrum{{0, 0, 4}, {66, 84, 62}};
constexpr float kCerebrumFloorZ = -24.f;
const Ellipsoid kTemporal[2] = {{{44, -6, -28}, {22, 32, 20}}, {{-44, -6, -28}, {22, 32, 20}}};
const Ellipsoid kCerebellum[2] = {{{23, 50, -48}, {27, 27, 21}}, {{-23, 50, -48}, {27, 27, 21}}};
const Ellipsoid kVermis{{0, 46, -45}, {11, 26, 19}};
const Capsule kBrainstem{{0, 12, -16}, {0, 20, -85}, 12.f};
const Capsule kPetrous[2] = {{{17, 10, -40}, {50, 30, -47}, 6.5f}, {{-17, 10, -40}, {-50, 30, -47}, 6.5f}};
const Capsule kClivus{{0, -6, -30}, {0, -1, -72}, 6.f};
const Ellipsoid kSphenoidSinus{{0, -22, -42}, {13, 14, 11}};
const Ellipsoid kEthmoid{{0, -58, -38}, {9, 18, 14}};
const Ellipsoid kOrbit[2] = {{{31, -64, -40}, {17, 20, 16}}, {{-31, -64, -40}, {17, 20, 16}}};
const Ellipsoid kGlobe[2] = {{{32, -74, -40}, {12, 12, 12}}, {{-32, -74, -40}, {12, 12, 12}}};
const Ellipsoid kMastoid[2] = {{{52, 24, -50}, {11, 13, 13}}, {{-52, 24, -50}, {11, 13, 13}}};
const Ellipsoid kFace{{0, -52, -72}, {58, 42, 40}};
const Ellipsoid kMaxillary[2] = {{{27, -62, -74}, {14, 15, 16}}, {{-27, -62, -74}, {14, 15, 16}}};
const Ellipsoid kNasal{{0, -70, -68}, {7, 22, 22}};
const Ellipsoid kNeck{{0, 18, -112}, {55, 48, 40}};
const Ellipsoid kPharynx{{0, -18, -82}, {52, 52, 34}};  // soft tissue joining face and neck
const Capsule kSpine{{0, 24, -78}, {0, 28, -150}, 9.f};
const Ellipsoid kAirway{{0, -14, -110}, {8, 6, 40}};
const Ellipsoid kBound{{0, -5, -30}, {100, 120, 130}};

// Deep structures (left = +x, index 0).
struct Deep {
  Ellipsoid frontal_horn[2], body[2], atrium[2], temporal_horn[2], third, fourth;
  Ellipsoid caudate[2], lentiform[2], thalamus[2];
};

Ellipsoid mirror(const Ellipsoid& e) { return {{-e.c.x, e.c.y, e.c.z}, e.r}; }

Deep make_deep(float vf) {
  Deep d;
  d.frontal_horn[0] = {{9.f + 1.5f * (vf - 1), -20, 14}, {5.5f * vf, 15, 7.5f * vf}};
  d.body[0] = {{11.f + 2.f * (vf - 1), 6, 17}, {5.5f * vf, 22, 5.5f * vf}};
  d.atrium[0] = {{19, 30, 8}, {6.f * vf, 14, 8.f * vf}};
  d.temporal_horn[0] = {{31, -4, -22}, {2.5f * vf, 12, 3.f * vf}};
  d.third = {{0, 6, -6}, {2.f * vf, 13, 9}};
  d.fourth = {{0, 33, -44}, {6, 4, 7}};
  d.caudate[0] = {{15.f + 1.5f * (vf - 1), -15, 12}, {5, 9, 9}};
  d.lentiform[0] = {{25, -3, 0}, {6, 14, 10}};
  d.thalamus[0] = {{10, 13, 2}, {8, 12, 9}};
  d.frontal_horn[1] = mirror(d.frontal_horn[0]);
  d.body[1] = mirror(d.body[0]);
  d.atrium[1] = mirror(d.atrium[0]);
  d.temporal_horn[1] = mirror(d.temporal_horn[0]);
  d.caudate[1] = mirror(d.caudate[0]);
  d.lentiform[1] = mirror(d.lentiform[0]);
  d.thalamus[1] = mirror(d.thalamus[0]);
  return d;
}

// One Deep per ventricle factor, built once per head (cheap: a few ellipsoids).
thread_local float t_deep_vf = -1.f;
thread_local Deep t_deep;
const Deep& deep_for(float vf) {
  if (vf != t_deep_vf) {
    t_deep = make_deep(vf);
    t_deep_vf = vf;
  }
  return t_deep;
}

float sd_ventricles(const Deep& d, V3 p) {
  float s = d.third.sd(p);
  s = std::fmin(s, d.fourth.sd(p));
  for (int i = 0; i < 2; ++i) {
    float side = smin(d.frontal_horn[i].sd(p), d.body[i].sd(p), 4.f);
    side = smin(side, d.atrium[i].sd(p), 4.f);
    s = std::fmin(s, std::fmin(side, d.temporal_horn[i].sd(p)));
  }
  return s;
}

inline float mix_f(float a, float b, float t) { return a + (b - a) * t; }
}  // namespace

M3 rotation_xyz(float rx, float ry, float rz) {
  const float cx = std::cos(rx), sx = std::sin(rx), cy = std::cos(ry), sy = std::sin(ry), cz = std::cos(rz),
              sz = std::sin(rz);
  // Rz * Ry * Rx
  M3 r;
  r.m = {cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
         sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
         -sy,     cy * sx,                cy * cx};
  return r;
}

M3 random_rotation(Rng& rng) {
  // Uniform random rotation from a normalised Gaussian quaternion.
  double q[4];
  double n = 0;
  for (double& v : q) {
    v = rng.normal();
    n += v * v;
  }
  n = std::sqrt(n);
  const float w = q[0] / n, x = q[1] / n, y = q[2] / n, z = q[3] / n;
  M3 r;
  r.m = {1 - 2 * (y * y + z * z), 2 * (x * y - z * w),     2 * (x * z + y * w),
         2 * (x * y + z * w),     1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
         2 * (x * z - y * w),     2 * (y * z + x * w),     1 - 2 * (x * x + y * y)};
  return r;
}

V3 MassEffect::displace(V3 p) const {
  if (!active) return p;
  const V3 d = p - center;
  const float r1 = len3(d);
  const float reach = radius_mm + 45.f;
  if (r1 >= reach || r1 < 1e-3f) return p;
  const float r3 = r1 * r1 * r1 - alpha * radius_mm * radius_mm * radius_mm;
  const float r0 = r3 > 0 ? std::cbrt(r3) : 0.f;
  const float fade = 1.f - smoothstep(radius_mm, reach, r1);
  const float r_src = r1 + fade * (r0 - r1);
  return center + (r_src / r1) * d;
}

HeadParams sample_head(uint64_t seed, int64_t index) {
  Rng rng(stream_key(seed, static_cast<uint64_t>(index), kPurposeHead));
  HeadParams h;
  const double common = rng.normal(1.0, 0.045);
  h.scale = {static_cast<float>(common * rng.normal(1.0, 0.03)), static_cast<float>(common * rng.normal(1.0, 0.03)),
             static_cast<float>(common * rng.normal(1.0, 0.03))};
  h.atrophy = static_cast<float>(std::pow(rng.uniform(), 1.5));  // older patients: more atrophy
  h.ventricle_factor = static_cast<float>(0.8 + 0.75 * h.atrophy + rng.normal(0.0, 0.08));
  h.ventricle_factor = std::clamp(h.ventricle_factor, 0.65f, 1.8f);
  h.skull_t0_mm = static_cast<float>(rng.uniform(4.5, 7.5));
  h.skull_front_back = static_cast<float>(rng.uniform(0.1, 0.5));
  h.skull_temporal_thin = static_cast<float>(rng.uniform(0.3, 0.55));
  h.scalp_mm = static_cast<float>(rng.uniform(3.0, 6.0));
  h.csf_sub_mm = static_cast<float>(0.6 + 2.2 * h.atrophy + rng.uniform(0.0, 0.5));
  h.sulcus_mm = static_cast<float>(1.4 + 2.4 * h.atrophy + rng.uniform(0.0, 0.5));
  h.gyrus_mm = static_cast<float>(rng.uniform(17.0, 22.0));
  h.fissure_mm = static_cast<float>(0.8 + 2.0 * h.atrophy);
  h.gm_hu = static_cast<float>(rng.normal(36.0, 1.5));
  h.wm_hu = h.gm_hu - static_cast<float>(rng.uniform(7.5, 11.0));
  h.deep_gm_hu = h.gm_hu - static_cast<float>(rng.uniform(0.0, 2.5));
  h.csf_hu = static_cast<float>(rng.uniform(3.0, 11.0));
  h.cortical_bone_hu = static_cast<float>(rng.uniform(1450.0, 1900.0));
  h.diploe_hu = static_cast<float>(rng.uniform(750.0, 1150.0));
  h.scalp_hu = static_cast<float>(rng.uniform(30.0, 50.0));
  h.fat_hu = static_cast<float>(rng.uniform(-110.0, -70.0));
  h.falx_hu = static_cast<float>(rng.uniform(40.0, 58.0));
  h.pineal_calcified = rng.bernoulli(0.6);
  h.choroid_calcified = rng.bernoulli(0.55);
  h.pineal_mm = static_cast<float>(rng.uniform(1.5, 4.0));
  h.choroid_mm = static_cast<float>(rng.uniform(2.0, 4.0));
  h.calcification_hu = static_cast<float>(rng.uniform(100.0, 300.0));
  h.noise_sd_hu = static_cast<float>(rng.uniform(2.5, 5.0));
  h.beam_hardening_hu = static_cast<float>(rng.uniform(8.0, 25.0));
  h.streak_hu = static_cast<float>(rng.uniform(3.0, 10.0));
  h.inner_table_hu = static_cast<float>(rng.uniform(2.0, 7.0));
  h.anatomy_key = rng.next();
  // Pose: yaw and roll small, pitch (chin up/down, tilt-like) wider.
  const float pitch = static_cast<float>(rng.uniform(-12.0, 22.0)) * kDeg;
  const float roll = static_cast<float>(rng.normal(0.0, 3.5)) * kDeg;
  const float yaw = static_cast<float>(rng.normal(0.0, 5.0)) * kDeg;
  h.rotation = rotation_xyz(pitch, roll, yaw);
  h.translation = {static_cast<float>(rng.normal(0.0, 6.0)), static_cast<float>(rng.normal(8.0, 8.0)), 0.f};
  return h;
}

float noise_factor(const HeadParams& h, V3 p) {
  (void)h;
  // Photon starvation: more noise through the centre of the head and at the skull base.
  const float rr = (p.x * p.x) / (70.f * 70.f) + (p.y * p.y) / (90.f * 90.f);
  const float centre = 1.f + 0.15f * (1.f - clamp01(rr));
  const float base = 1.f + 0.5f * smoothstep(-25.f, -55.f, p.z);
  return centre * base;
}

TissueSample eval_head(const HeadParams& h, const MassEffect& mass, V3 p) {
  TissueSample out;
  if (kBound.sd(p) > 0.f) {  // air far from the head
    out.far_air = true;
    return out;
  }

  // ---- cranial cavity -------------------------------------------------------------
  // Floor of the anterior/middle fossa under the frontal lobes; the orbital roofs bulge up.
  const float ax = std::fabs(p.x) - 28.f;
  const float floor_z = kCerebrumFloorZ + 8.f * std::exp(-ax * ax / 170.f) * smoothstep(-15.f, -45.f, p.y);
  const float sd_cer = -smin(-kCerebrum.sd(p), p.z - floor_z, 4.f);
  const float sd_tmp = std::fmin(kTemporal[0].sd(p), kTemporal[1].sd(p));
  const float sd_cbl = smin(std::fmin(kCerebellum[0].sd(p), kCerebellum[1].sd(p)), kVermis.sd(p), 4.f);
  const float sd_bs = kBrainstem.sd(p);
  const float sd_supra = smin(sd_cer, sd_tmp, 8.f);
  const float sd_infra = smin(sd_cbl, sd_bs, 3.f);
  const float sd_cav = smin(sd_supra, sd_infra, 5.f);

  // Skull thickness varies with direction; the skull base thickens below the floor.
  const float fy = p.y / 84.f, fx = p.x / 66.f;
  float skull = h.skull_t0_mm * (1.f + h.skull_front_back * fy * fy -
                                 h.skull_temporal_thin * fx * fx * smoothstep(25.f, 0.f, p.z));
  // Floors of the cranial fossae are thinner than the vault (petrous bone and clivus are added apart).
  skull *= 1.f - 0.45f * smoothstep(-15.f, -35.f, p.z) * smoothstep(45.f, 25.f, p.y);
  const float dura = 0.6f;
  // Temporalis muscles at the temples; neck muscles behind and beside the posterior fossa.
  const float scalp = h.scalp_mm + 7.f * fx * fx * smoothstep(30.f, 5.f, p.z) * smoothstep(-45.f, -20.f, p.z) +
                      std::clamp((-p.z - 30.f) * 0.9f, 0.f, 30.f) * smoothstep(-20.f, 30.f, p.y);
  const float sd_outer_cranium = sd_cav - (dura + skull + scalp);

  // Petrous ridges and clivus: dense bone, even where the cavity model overlaps.
  const float sd_pet = std::fmin(std::fmin(kPetrous[0].sd(p), kPetrous[1].sd(p)), kClivus.sd(p));

  // ---- face, orbits, neck (below the cranial floor) -------------------------------
  if (sd_cav > 0.f) {
    // Orbit contents override bone and soft tissue.
    float sd_orbits = 1e9f;
    for (int i = 0; i < 2; ++i) {
      const float so = kOrbit[i].sd(p);
      sd_orbits = std::fmin(sd_orbits, so);
      if (so < 0.f) {
        if (kGlobe[i].sd(p) < 0.f) {
          out.hu = kGlobe[i].sd(p) > -1.2f ? 45.f : 12.f;
          out.cls = kSoft;
        } else {
          out.hu = h.fat_hu;
          out.cls = kSoft;
        }
        return out;
      }
      if (so < 1.5f && sd_outer_cranium < 8.f) {
        out.hu = 500.f;
        out.cls = kBone;
        return out;
      }
    }
    const float sd_face = kFace.sd(p), sd_neck = std::fmin(kNeck.sd(p), kPharynx.sd(p));
    const bool in_face = sd_face < 0.f;
    const bool in_neck = sd_neck < 0.f;
    if (sd_outer_cranium > 0.f && !in_face && !in_neck) {  // air
      out.far_air = std::fmin(std::fmin(sd_outer_cranium, sd_orbits), std::fmin(sd_face, sd_neck)) > kFarAirMm;
      return out;
    }
    // Air spaces.
    if (kSphenoidSinus.sd(p) < 0.f || kEthmoid.sd(p) < 0.f || kNasal.sd(p) < 0.f ||
        kMaxillary[0].sd(p) < 0.f || kMaxillary[1].sd(p) < 0.f || kAirway.sd(p) < 0.f) {
      // Thin septa in the ethmoid.
      if (kEthmoid.sd(p) < 0.f && std::fabs(gradient_noise(h.anatomy_key ^ 0x51, p.x / 4.f, p.y / 4.f, p.z / 4.f)) < 0.06f) {
        out.hu = 400.f;
        out.cls = kBone;
        return out;
      }
      out.hu = -990.f;
      out.cls = kAir;
      return out;
    }
    if (kSphenoidSinus.sd(p) < 2.f || kMaxillary[0].sd(p) < 1.5f || kMaxillary[1].sd(p) < 1.5f ||
        kNasal.sd(p) < 1.2f) {
      out.hu = 650.f;
      out.cls = kBone;
      return out;
    }
    const float sd_spine = kSpine.sd(p);
    if (sd_spine < 0.f) {
      out.hu = sd_spine > -2.f ? 1100.f : 350.f;
      out.cls = kBone;
      return out;
    }
    for (int i = 0; i < 2; ++i)
      if (kMastoid[i].sd(p) < 0.f) {
        const float n = gradient_noise(h.anatomy_key ^ 0x3A, p.x / 2.2f, p.y / 2.2f, p.z / 2.2f);
        out.hu = n > 0.05f ? -900.f : 1100.f;
        out.cls = n > 0.05f ? kAir : kBone;
        return out;
      }
    if (sd_pet < 0.f) {
      out.hu = h.cortical_bone_hu + 250.f;
      out.cls = kBone;
      return out;
    }
    if (sd_cav < dura) {
      out.hu = 30.f;
      out.cls = kCsf;
      return out;
    }
    if (sd_cav < dura + skull) {
      const float d_in = sd_cav - dura, d_out = dura + skull - sd_cav;
      const float table = 1.4f;
      const float t = std::fmin(smoothstep(table - 0.6f, table + 0.6f, d_in), smoothstep(table - 0.6f, table + 0.6f, d_out));
      const float diploe = h.diploe_hu + 300.f * gradient_noise(h.anatomy_key ^ 0x77, p.x / 1.5f, p.y / 1.5f, p.z / 1.5f);
      out.hu = mix_f(h.cortical_bone_hu, diploe, t);
      out.cls = kBone;
      return out;
    }
    // Soft tissue: scalp with a fat layer, face, neck.
    if (sd_outer_cranium < 0.f) {
      const float d = sd_cav - dura - skull;  // 0 at the outer table
      const float fat = smoothstep(1.0f, 2.0f, d) * smoothstep(std::fmin(scalp - 1.5f, 5.f), std::fmin(scalp - 3.0f, 4.f), d);
      out.hu = mix_f(h.scalp_hu, h.fat_hu, 0.8f * fat);
      out.cls = kSoft;
      return out;
    }
    out.hu = h.scalp_hu - 10.f;  // face and neck soft tissue
    out.cls = kSoft;
    return out;
  }

  // ---- inside the cranial cavity ----------------------------------------------------
  if (sd_pet < 0.f) {
    out.hu = h.cortical_bone_hu + 250.f;
    out.cls = kBone;
    return out;
  }
  const float depth = -sd_cav;  // mm below the inner table
  const V3 q = mass.displace(p);  // internal anatomy is pushed away by a hematoma

  float tissue_hu;
  uint8_t cls = kParenchyma;

  // Clefts: tentorium between cerebrum and cerebellum, cisterns around the brainstem,
  // Sylvian fissure between frontal and temporal lobes, interhemispheric fissure + falx.
  // Each cleft is the bisector of two components, kept only where both are near.
  auto cleft = [](float a, float b) { return std::fmax(a, b) < 4.f ? 0.5f * std::fabs(a - b) : 99.f; };
  const float tent = cleft(sd_supra, sd_infra);
  const float cistern = cleft(sd_bs, sd_cbl);
  const float amb = cleft(sd_bs, sd_supra);
  const float sylv = (sd_tmp < sd_cer + 6.f && p.z > -30.f && -sd_cav < 18.f && p.y < 12.f) ? 0.5f * std::fabs(sd_cer - sd_tmp) : 99.f;
  const bool cerebellar = sd_infra < sd_supra && sd_cbl < sd_bs;
  const bool brainstem = sd_infra < sd_supra && sd_bs <= sd_cbl;

  // Cortex/sulci: ridged gradient noise; the zero set of the noise is the sulcal line.
  const float gyr = cerebellar ? 3.5f : h.gyrus_mm;
  float sulc_dist = 99.f;
  if (depth < 30.f && !brainstem) {
    // Sulci are sheets running radially into the brain: the noise varies slowly with depth.
    // (Only on the convexity; the basal surfaces get isotropic noise.)
    const float rq = std::fmax(len3(q), 1.f);
    const float radial = (cerebellar ? 45.f : 70.f) + 0.3f * (rq - (cerebellar ? 45.f : 70.f));
    const float w_rad = cerebellar ? 1.f : smoothstep(-5.f, 15.f, q.z);
    const float f = 1.f + w_rad * (radial / rq - 1.f);
    const V3 s{q.x * f, q.y * f, q.z * f};
    const float n = gradient_noise(h.anatomy_key, s.x / gyr, s.y / gyr, s.z / gyr);
    const float n2 = 0.35f * gradient_noise(h.anatomy_key ^ 0x99, s.x / (0.45f * gyr), s.y / (0.45f * gyr), s.z / (0.45f * gyr));
    const float reach = cerebellar ? 10.f : 22.f;
    sulc_dist = std::fabs(n + n2) * gyr * 0.75f - 0.5f * (cerebellar ? 0.6f : h.sulcus_mm) * smoothstep(reach, 2.f, depth);
    sulc_dist += smoothstep(reach - 6.f, reach + 4.f, depth) * 20.f;  // sulci end at depth
  }
  const float x_mid = std::fabs(q.x);
  const float fissure_depth = 38.f - 10.f * smoothstep(-30.f, 10.f, -std::fabs(q.y));
  const bool in_fissure_zone = !cerebellar && !brainstem && q.z > -20.f && depth < fissure_depth;
  const float fissure_half = 0.5f * (h.fissure_mm + 0.8f) * smoothstep(fissure_depth, fissure_depth - 8.f, depth);
  const float csf_edge = std::fmin(std::fmin(depth - h.csf_sub_mm, sulc_dist),
                                   std::fmin(cistern - 0.9f, std::fmin(amb - 1.2f, sylv - 0.6f - h.sulcus_mm * 0.3f)));
  const float fiss_edge = in_fissure_zone ? x_mid - fissure_half : 99.f;
  const float edge = std::fmin(csf_edge, fiss_edge);

  if (in_fissure_zone && x_mid < 0.4f) {
    tissue_hu = h.falx_hu;
    cls = kCsf;
  } else if (tent < 0.45f && !brainstem) {
    tissue_hu = h.falx_hu - 10.f;
    cls = kCsf;
  } else if (edge < 0.f) {
    tissue_hu = h.csf_hu;
    cls = kCsf;
  } else {
    // Grey/white: cortex ribbon of ~2.5-3.2 mm along every CSF surface.
    const float ribbon = cerebellar ? 4.5f : 3.0f;
    float gm_w = smoothstep(ribbon + 0.8f, ribbon - 0.8f, edge);
    if (brainstem) gm_w = 0.35f;
    if (cerebellar) gm_w = std::fmax(gm_w, 0.75f * smoothstep(16.f, 10.f, -sd_cbl));  // folia; white core
    tissue_hu = mix_f(h.wm_hu, h.gm_hu, gm_w);
    // Deep structures (grey nuclei, ventricles, calcifications).
    if (std::fabs(q.x) < 45.f && q.y > -45.f && q.y < 52.f && q.z > -55.f && q.z < 32.f) {
      const Deep& d = deep_for(h.ventricle_factor);
      float deep_w = 0.f;
      for (int i = 0; i < 2; ++i) {
        deep_w = std::fmax(deep_w, smoothstep(1.2f, -1.2f, d.caudate[i].sd(q)));
        deep_w = std::fmax(deep_w, smoothstep(1.2f, -1.2f, d.lentiform[i].sd(q)));
        deep_w = std::fmax(deep_w, smoothstep(1.5f, -1.5f, d.thalamus[i].sd(q)));
      }
      if (deep_w > 0.f) tissue_hu = mix_f(tissue_hu, h.deep_gm_hu, deep_w);
      const float sv = sd_ventricles(d, q);
      if (sv < 0.f) {
        tissue_hu = h.csf_hu;
        cls = kVentricle;
        if (h.choroid_calcified) {
          for (int i = 0; i < 2; ++i) {
            const V3 c = d.atrium[i].c + V3{0, -2, 1};
            if (len3(q - c) < h.choroid_mm) tissue_hu = h.calcification_hu;
          }
        }
      } else if (sv < 1.f) {
        tissue_hu = mix_f(h.csf_hu, tissue_hu, sv);  // ependymal partial volume
      }
      if (h.pineal_calcified && len3(q - V3{0, 24, 1}) < h.pineal_mm) {
        tissue_hu = h.calcification_hu;
        cls = kCsf;
      }
    }
    if (cls == kParenchyma) {
      // Beam-hardening residue: slightly brighter brain under the inner table.
      tissue_hu += h.inner_table_hu * std::exp(-depth / 4.f);
    }
  }
  // Posterior fossa beam hardening: Hounsfield bar between the petrous ridges, streaks.
  if (p.z < -20.f && p.z > -70.f) {
    const float bar = std::exp(-((p.y - 16.f) * (p.y - 16.f)) / 50.f - ((p.z + 44.f) * (p.z + 44.f)) / 90.f) *
                      smoothstep(45.f, 20.f, std::fabs(p.x));
    const float theta = std::atan2(p.y - 18.f, p.x);
    const float r = std::sqrt(p.x * p.x + (p.y - 18.f) * (p.y - 18.f));
    const float streak = gradient_noise(h.anatomy_key ^ 0x5E, theta * 9.f, 0.37f, p.z / 12.f) * std::exp(-r / 40.f);
    tissue_hu += -h.beam_hardening_hu * bar + 2.f * h.streak_hu * streak;
  }
  out.hu = tissue_hu;
  out.cls = cls;
  return out;
}

}  // namespace hemexp::synth
