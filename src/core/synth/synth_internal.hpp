#pragma once
// Internal pieces of the synthetic generator shared by src/core/synth/*.cpp.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "hemexp/core/synth.hpp"

namespace hemexp::synth {

// Purpose tags of the random streams (part of the output contract: changing one changes
// every generated cohort).
constexpr uint64_t kPurposeFeatures = 1;
constexpr uint64_t kPurposeLabel = 2;
constexpr uint64_t kPurposeHead = 3;
constexpr uint64_t kPurposeHematoma = 4;
constexpr uint64_t kPurposeNoise = 5;
constexpr uint64_t kPurposeFollowupNoise = 6;
constexpr uint64_t kPurposeBackground = 7;
constexpr uint64_t kPurposeGrid = 8;

struct V3 {
  float x = 0, y = 0, z = 0;
};
inline V3 operator+(V3 a, V3 b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
inline V3 operator-(V3 a, V3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
inline V3 operator*(float s, V3 a) { return {s * a.x, s * a.y, s * a.z}; }
inline float dot3(V3 a, V3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
inline float len3(V3 a) { return std::sqrt(dot3(a, a)); }

// Row-major 3x3 float rotation.
struct M3 {
  std::array<float, 9> m{1, 0, 0, 0, 1, 0, 0, 0, 1};
  V3 apply(V3 v) const {
    return {m[0] * v.x + m[1] * v.y + m[2] * v.z, m[3] * v.x + m[4] * v.y + m[5] * v.z,
            m[6] * v.x + m[7] * v.y + m[8] * v.z};
  }
  V3 apply_transposed(V3 v) const {
    return {m[0] * v.x + m[3] * v.y + m[6] * v.z, m[1] * v.x + m[4] * v.y + m[7] * v.z,
            m[2] * v.x + m[5] * v.y + m[8] * v.z};
  }
};
M3 rotation_xyz(float rx_rad, float ry_rad, float rz_rad);  // Rz * Ry * Rx
M3 random_rotation(Rng& rng);

inline float clamp01(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }
inline float smoothstep(float e0, float e1, float x) {
  const float t = clamp01((x - e0) / (e1 - e0));
  return t * t * (3.f - 2.f * t);
}

// Axis-aligned ellipsoid; sd() approximates the signed distance in mm. Far from the
// surface (over kFarMm) it returns a cheap lower bound instead, which every caller only
// compares against thresholds well below kFarMm.
struct Ellipsoid {
  static constexpr float kFarMm = 40.f;
  V3 c;
  V3 r{1, 1, 1};
  V3 inv{1, 1, 1};   // 1 / r
  V3 inv2{1, 1, 1};  // 1 / r^2
  float r_max = 1.f;
  Ellipsoid() = default;
  Ellipsoid(V3 centre, V3 radii)
      : c(centre), r(radii), inv{1.f / radii.x, 1.f / radii.y, 1.f / radii.z},
        inv2{1.f / (radii.x * radii.x), 1.f / (radii.y * radii.y), 1.f / (radii.z * radii.z)},
        r_max(std::fmax(radii.x, std::fmax(radii.y, radii.z))) {}
  float sd(V3 p) const {
    const float dx = p.x - c.x, dy = p.y - c.y, dz = p.z - c.z;
    const float d2 = dx * dx + dy * dy + dz * dz;
    const float far = r_max + kFarMm;
    if (d2 > far * far) return std::sqrt(d2) - r_max;
    const float qx = dx * inv.x, qy = dy * inv.y, qz = dz * inv.z;
    const float k0 = std::sqrt(qx * qx + qy * qy + qz * qz);
    const float k1 = std::sqrt(qx * qx * inv2.x + qy * qy * inv2.y + qz * qz * inv2.z);
    return k1 > 1e-9f ? k0 * (k0 - 1.f) / k1 : -std::fmin(r.x, std::fmin(r.y, r.z));
  }
  bool inside(V3 p) const {
    const float qx = (p.x - c.x) * inv.x, qy = (p.y - c.y) * inv.y, qz = (p.z - c.z) * inv.z;
    return qx * qx + qy * qy + qz * qz < 1.f;
  }
};

struct Capsule {
  V3 a, b;
  float radius = 1;
  float sd(V3 p) const {
    const V3 pa = p - a, ba = b - a;
    const float h = clamp01(dot3(pa, ba) / dot3(ba, ba));
    return len3(pa - h * ba) - radius;
  }
};

inline float smin(float a, float b, float k) {
  const float h = clamp01(0.5f + 0.5f * (b - a) / k);
  return b + h * (a - b) - k * h * (1.f - h);
}

// Tissue classes of a sample point.
enum TissueClass : uint8_t { kAir = 0, kSoft, kBone, kCsf, kVentricle, kParenchyma };

// Air at least this far (mm) from any tissue: the renderer skips the voxel's other samples.
constexpr float kFarAirMm = 10.f;

struct TissueSample {
  float hu = -1000.f;
  uint8_t cls = kAir;
  bool far_air = false;
};

// A procedural head in its "standard head" frame (mm; x patient left, y posterior,
// z superior), plus the patient's pose and scanner settings.
struct HeadParams {
  V3 scale{1, 1, 1};
  float ventricle_factor = 1.f;
  float atrophy = 0.f;
  float skull_t0_mm = 6.f;
  float skull_front_back = 0.3f;
  float skull_temporal_thin = 0.4f;
  float scalp_mm = 6.f;
  float csf_sub_mm = 1.5f;
  float sulcus_mm = 1.0f;
  float gyrus_mm = 9.f;
  float fissure_mm = 1.5f;
  float gm_hu = 36.f, wm_hu = 27.f, deep_gm_hu = 35.f, csf_hu = 7.f;
  float cortical_bone_hu = 1600.f, diploe_hu = 700.f;
  float scalp_hu = 40.f, fat_hu = -90.f, falx_hu = 55.f;
  bool pineal_calcified = false, choroid_calcified = false;
  float pineal_mm = 2.5f, choroid_mm = 3.f, calcification_hu = 200.f;
  float noise_sd_hu = 4.f;
  float beam_hardening_hu = 12.f;
  float streak_hu = 8.f;
  float inner_table_hu = 4.f;
  uint64_t anatomy_key = 0;
  // Pose: scanner point = translation + rotation * (scale * standard point).
  M3 rotation;
  V3 translation;
};

HeadParams sample_head(uint64_t seed, int64_t index);

// Mass effect of a hematoma: points near it sample the anatomy from where they came from.
struct MassEffect {
  bool active = false;
  V3 center;
  float radius_mm = 0.f;  // volume-equivalent radius
  float alpha = 0.5f;     // share of the volume that displaced tissue
  V3 displace(V3 p) const;
};

TissueSample eval_head(const HeadParams& h, const MassEffect& mass, V3 p);
// Multiplicative noise sd factor at a standard-frame point (centre of the head is noisier).
float noise_factor(const HeadParams& h, V3 p);

// A hematoma around its centre, in a local (rotated) frame; lengths in mm.
struct Blob {
  V3 c;           // local frame
  float r = 1.f;  // mm
  float drop_hu = 0.f;
  float edge_mm = 1.f;  // soft edge width
};

struct HematomaShape {
  V3 center;  // in the frame it is rendered in (procedural: standard head; background: mm)
  M3 rotation;
  V3 radii{10, 10, 10};  // ellipsoid radii before scaling
  float volume_scale = 1.f;  // multiplies radii so the analytic volume is the target
  struct Lobe {
    V3 dir;
    float amplitude = 0.f;
    float width = 0.3f;
  };
  std::vector<Lobe> lobes;
  float rough_amplitude = 0.03f;
  float rough_frequency = 1.5f;
  uint64_t key = 0;
  float blood_hu = 65.f;
  float texture_hu = 2.5f;
  float heterogeneity_hu = 0.f;
  std::vector<Blob> hypo;       // swirl, hypodensity (soft edges)
  std::vector<Blob> black;      // black hole (sharp, encapsulated)
  bool blend = false;
  V3 blend_normal{1, 0, 0};
  float blend_offset = 0.f;     // in units of the equivalent radius
  float blend_drop_hu = 0.f;
  std::vector<Blob> islands;    // separate satellite blobs, in local frame (part of the mask)
  float edema_mm = 3.f;
  float edema_drop_hu = 10.f;
  float equivalent_radius_mm = 10.f;
  float bound_mm = 30.f;        // no effect beyond this distance from the centre
  bool ivh = false;
  float ivh_level = 0.f;        // IVH fills ventricle points with y above this (standard frame)
  float ivh_side = 1.f;
};

// The darkest a clot is ever drawn (before its 1.5-3 HU texture): whole unclotted blood at a
// normal haematocrit, about 40-45 HU. The hypodense parts of a clot (swirl, blend, black hole,
// hypodensity) are unclotted blood, so they stop here, above grey matter (36 +- 1.5 HU) and the
// edema rim; blend and black-hole clots are drawn dense enough that their defining density
// difference (>= 18 HU, >= 28 HU; Li et al. 2015, 2016) holds down to this floor.
constexpr float kUnclottedBloodHu = 44.f;

struct HematomaSample {
  float occupancy = 0.f;  // 0..1, partial volume within the in-plane voxel
  float blood_hu = 0.f;
  float edema = 0.f;      // 0..1 weight of the edema
};

// The share of a voxel that one of its through-slice samples stands for: in-plane width pv_mm
// and a slab slab_mm thick along slice_axis (a unit vector in the frame of the points given to
// eval_hematoma). The occupancy of the sample is a linear ramp across the clot's surface as wide
// as this box is along the surface normal, so the mean over a voxel's samples is the blood
// fraction of the voxel, and "mask" means more than half of the voxel is blood.
struct SampleExtent {
  float pv_mm = 1.f;
  float slab_mm = 0.f;
  V3 slice_axis{0, 0, 1};
};
// Samples through a slice dz mm thick (one per 1.7 mm, 1 to 4).
inline int slice_samples(double dz) { return std::clamp(static_cast<int>(std::ceil(dz / 1.7)), 1, 4); }
// Offset of through-slice sample s of ns from the voxel centre, in slice thicknesses (-0.5..0.5).
inline float slice_sample_offset(int s, int ns) { return (s + 0.5f) / static_cast<float>(ns) - 0.5f; }
// A voxel is hematoma (mask, label 1) when its blood fraction is at least this.
constexpr float kMaskBloodFraction = 0.5f;

// Builds the shape of a hematoma with the given target volume and markers.
HematomaShape make_hematoma_shape(Rng& rng, const HeFeatures& f, V3 center, const M3& orientation);
// Analytic volume (mm^3) of the main body at a growth scale (radius multiplier).
double analytic_volume_mm3(const HematomaShape& s, float growth_scale);
// Evaluates the hematoma at point p (same frame as s.center) for a sample of extent e.
HematomaSample eval_hematoma(const HematomaShape& s, V3 p, float growth_scale, const SampleExtent& e);

// Adds spatially correlated Gaussian noise (unit sd before sd_map scaling) to a slice.
void add_slice_noise(float* slice, const float* sd_map, int64_t nx, int64_t ny, uint64_t key,
                     int64_t slice_index);

// Renders c.followup through render_at(radius scale), adjusting the scale until the measured
// growth agrees with the HE label; fills growth_ml and growth_fraction.
void render_followup(SynthCase& c, const std::function<SynthImages(float)>& render_at);

}  // namespace hemexp::synth
