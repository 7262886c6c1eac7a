// Hematomas inserted into real NCCT volumes (`hemexp synth --background`). The background
// is brought to canonical orientation; per axial slice, bone (> 300 HU, dilated by 3 mm)
// forms a barrier and a flood fill from the image border marks everything outside the
// skull, so the intracranial space is what the fill cannot reach. Parenchyma is the
// intracranial tissue with a local mean of 18-55 HU (so not CSF, ventricles, bone or air).
// Blood and edema replace the local mean only there; the real residual noise is kept, so
// the inserted hematoma carries the scanner's own noise texture.
#include <algorithm>
#include <cmath>
#include <deque>

#include "hemexp/core/error.hpp"
#include "synth_internal.hpp"

namespace hemexp::synth {

namespace {
constexpr double kBoneHu = 300.0;
constexpr float kParenchymaLoHu = 18.f, kParenchymaHiHu = 55.f;

struct IndexBox {
  int64_t lo[3], hi[3];
};

IndexBox index_box(const Geometry& g, V3 centre, float radius) {
  IndexBox b{{g.size[0], g.size[1], g.size[2]}, {-1, -1, -1}};
  for (int corner = 0; corner < 8; ++corner) {
    const Vec3 p{centre.x + ((corner & 1) ? radius : -radius), centre.y + ((corner & 2) ? radius : -radius),
                 centre.z + ((corner & 4) ? radius : -radius)};
    const Vec3 idx = g.point_to_index(p);
    for (int a = 0; a < 3; ++a) {
      b.lo[a] = std::min<int64_t>(b.lo[a], static_cast<int64_t>(std::floor(idx[a])));
      b.hi[a] = std::max<int64_t>(b.hi[a], static_cast<int64_t>(std::ceil(idx[a])));
    }
  }
  for (int a = 0; a < 3; ++a) {
    b.lo[a] = std::clamp<int64_t>(b.lo[a], 0, g.size[a] - 1);
    b.hi[a] = std::clamp<int64_t>(b.hi[a], 0, g.size[a] - 1);
  }
  return b;
}

inline V3 to_v3(const Vec3& v) { return {static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2])}; }

// The box one of ns through-slice samples of a voxel of grid g stands for (slices along k).
SampleExtent sample_extent(const Geometry& g, int ns) {
  const Vec3 a = g.index_to_point({0.0, 0.0, 0.0}), b = g.index_to_point({0.0, 0.0, 1.0});
  const V3 step = to_v3(Vec3{b[0] - a[0], b[1] - a[1], b[2] - a[2]});
  SampleExtent e;
  e.pv_mm = static_cast<float>(std::fmax(g.spacing_mm[0], 0.4));
  e.slab_mm = static_cast<float>(g.spacing_mm[2]) / ns;
  e.slice_axis = (1.f / len3(step)) * step;
  return e;
}

// Separable square max filter (in-plane dilation) of a binary slice.
void dilate_slice(std::vector<uint8_t>& m, int64_t nx, int64_t ny, int r) {
  std::vector<uint8_t> tmp(m.size());
  for (int64_t j = 0; j < ny; ++j)
    for (int64_t i = 0; i < nx; ++i) {
      uint8_t v = 0;
      for (int64_t d = std::max<int64_t>(0, i - r); d <= std::min<int64_t>(nx - 1, i + r) && !v; ++d) v = m[j * nx + d];
      tmp[j * nx + i] = v;
    }
  for (int64_t j = 0; j < ny; ++j)
    for (int64_t i = 0; i < nx; ++i) {
      uint8_t v = 0;
      for (int64_t d = std::max<int64_t>(0, j - r); d <= std::min<int64_t>(ny - 1, j + r) && !v; ++d) v = tmp[d * nx + i];
      m[j * nx + i] = v;
    }
}
}  // namespace

Background prepare_background(const Volume& volume, const std::string& name) {
  Background bg;
  bg.name = name;
  bg.original_geometry = volume.geometry;
  CanonicalVolume canonical = to_canonical(volume);
  bg.axis_map = canonical.map;
  bg.canonical = std::move(canonical.volume);
  bg.canonical.voxels = bg.canonical.voxels.to(torch::kFloat).contiguous();
  const Geometry& g = bg.canonical.geometry;
  const int64_t nx = g.size[0], ny = g.size[1], nz = g.size[2], plane = nx * ny;
  if (nx < 16 || ny < 16 || nz < 1) throw CoreError("background " + name + " is too small to hold a hematoma");
  const float* hu = bg.canonical.voxels.data_ptr<float>();
  bg.local_mean = torch::empty({nz, ny, nx}, torch::kFloat);
  bg.parenchyma = torch::zeros({nz, ny, nx}, torch::kUInt8);
  float* mean = bg.local_mean.data_ptr<float>();
  uint8_t* par = bg.parenchyma.data_ptr<uint8_t>();
  const int bone_r = std::max(1, static_cast<int>(std::ceil(3.0 / g.spacing_mm[0])));
  double cx = 0, cy = 0, cz = 0;
  int64_t n_intra = 0;
  std::vector<uint8_t> barrier(plane), outside(plane), csf(plane);
  // Weighted least squares of the middle of each wide intracranial row: i = a + b j + c k.
  double sums[3][4] = {};  // normal equations [A | y]
  int64_t rows_used = 0;
  const int64_t csf_r = std::max<int64_t>(2, std::lround(3.0 / g.spacing_mm[0]));
  for (int64_t k = 0; k < nz; ++k) {
    const float* s = hu + k * plane;
    for (int64_t j = 0; j < ny; ++j)
      for (int64_t i = 0; i < nx; ++i) {
        float sum = 0.f;
        int cnt = 0;
        for (int64_t b = std::max<int64_t>(0, j - 1); b <= std::min<int64_t>(ny - 1, j + 1); ++b)
          for (int64_t a = std::max<int64_t>(0, i - 1); a <= std::min<int64_t>(nx - 1, i + 1); ++a) {
            sum += s[b * nx + a];
            ++cnt;
          }
        mean[k * plane + j * nx + i] = sum / cnt;
        barrier[j * nx + i] = s[j * nx + i] > kBoneHu;
      }
    dilate_slice(barrier, nx, ny, bone_r);
    std::fill(outside.begin(), outside.end(), 0);
    std::fill(csf.begin(), csf.end(), 0);
    std::deque<int64_t> queue;
    auto seed = [&](int64_t idx) {
      if (!barrier[idx] && !outside[idx]) {
        outside[idx] = 1;
        queue.push_back(idx);
      }
    };
    for (int64_t i = 0; i < nx; ++i) {
      seed(i);
      seed((ny - 1) * nx + i);
    }
    for (int64_t j = 0; j < ny; ++j) {
      seed(j * nx);
      seed(j * nx + nx - 1);
    }
    while (!queue.empty()) {
      const int64_t idx = queue.front();
      queue.pop_front();
      const int64_t i = idx % nx, j = idx / nx;
      if (i > 0) seed(idx - 1);
      if (i < nx - 1) seed(idx + 1);
      if (j > 0) seed(idx - nx);
      if (j < ny - 1) seed(idx + nx);
    }
    for (int64_t j = 0; j < ny; ++j) {
      int64_t first = -1, last = -1;
      for (int64_t i = 0; i < nx; ++i)
        if (!outside[j * nx + i] && !barrier[j * nx + i]) {
          if (first < 0) first = i;
          last = i;
        }
      if (first < 0 || (last - first) * g.spacing_mm[0] < 60.0) continue;
      const double w = double(last - first), x[3] = {1.0, double(j), double(k)}, mid = 0.5 * (first + last);
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) sums[r][c] += w * x[r] * x[c];
        sums[r][3] += w * x[r] * mid;
      }
      ++rows_used;
    }
    for (int64_t idx = 0; idx < plane; ++idx) {
      if (outside[idx] || barrier[idx]) continue;
      const float m = mean[k * plane + idx], v = s[idx];
      ++n_intra;
      cx += idx % nx;
      cy += idx / nx;
      cz += k;
      if (m >= kParenchymaLoHu && m <= kParenchymaHiHu && v > -40.f && v < 140.f) par[k * plane + idx] = 1;
      else if (m > -10.f && m < kParenchymaLoHu && v > -30.f && v < 40.f) csf[idx] = 1;
    }
    // Thin CSF (sulci, fissures): under 35 % CSF within +-3 mm in-plane. Ventricles and
    // cisterns are thick and stay excluded.
    for (int64_t j = 0; j < ny; ++j)
      for (int64_t i = 0; i < nx; ++i) {
        const int64_t idx = j * nx + i;
        if (!csf[idx]) continue;
        int cnt = 0, tot = 0;
        for (int64_t b = std::max<int64_t>(0, j - csf_r); b <= std::min<int64_t>(ny - 1, j + csf_r); b += 2)
          for (int64_t a = std::max<int64_t>(0, i - csf_r); a <= std::min<int64_t>(nx - 1, i + csf_r); a += 2) {
            cnt += csf[b * nx + a];
            ++tot;
          }
        if (cnt < 0.35 * tot) par[k * plane + idx] = 2;
      }
  }
  // Deep candidates: parenchyma whose in-plane neighbourhood (about 5 mm) is parenchyma too.
  const int reach = std::max(2, static_cast<int>(std::lround(5.0 / g.spacing_mm[0])));
  int64_t n_par = 0;
  std::vector<double> diffs;
  for (int64_t k = 0; k < nz; ++k)
    for (int64_t j = reach; j < ny - reach; ++j)
      for (int64_t i = reach; i < nx - reach; ++i) {
        const int64_t idx = k * plane + j * nx + i;
        if (par[idx] != 1) continue;
        ++n_par;
        if (par[idx + 1] == 1 && (i % 3 == 0) && (j % 3 == 0)) diffs.push_back(std::fabs(hu[idx + 1] - hu[idx]));
        bool deep = true;
        for (int dj = -reach; dj <= reach && deep; dj += reach)
          for (int di = -reach; di <= reach && deep; di += reach) deep = par[idx + dj * nx + di] == 1;
        if (deep && (k % 2 == 0) && (j % 2 == 0) && (i % 2 == 0)) bg.candidates.push_back(idx);
      }
  bg.parenchyma_voxels = n_par;
  const double par_ml = n_par * g.voxel_volume_mm3() / 1000.0;
  if (par_ml < 50.0 || bg.candidates.empty())
    throw CoreError("background " + name + " shows too little brain parenchyma (" + std::to_string(par_ml) +
                    " mL) inside a closed skull to insert a hematoma");
  if (!diffs.empty()) {
    std::nth_element(diffs.begin(), diffs.begin() + diffs.size() / 2, diffs.end());
    bg.noise_sd_hu = 1.4826 * diffs[diffs.size() / 2] / std::sqrt(2.0);
  }
  // The midline needs rows over a few centimetres of the head in at least two directions; a
  // single slice gives no slope along k (c = 0).
  if (rows_used >= 20) {
    const bool one_slice = sums[2][2] * sums[0][0] - sums[0][2] * sums[0][2] < 1e-9 * sums[0][0] * sums[0][0];
    const int n = one_slice ? 2 : 3;
    double m[3][4];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) m[r][c] = sums[r][c];
    // Gauss-Jordan on the n x n system.
    bool solved = true;
    for (int p = 0; p < n && solved; ++p) {
      int best = p;
      for (int r = p + 1; r < n; ++r)
        if (std::fabs(m[r][p]) > std::fabs(m[best][p])) best = r;
      std::swap(m[p], m[best]);
      if (std::fabs(m[p][p]) < 1e-12) solved = false;
      for (int r = 0; r < n && solved; ++r) {
        if (r == p) continue;
        const double f = m[r][p] / m[p][p];
        for (int c = 0; c < 4; ++c) m[r][c] -= f * m[p][c];
      }
    }
    if (solved) bg.midline = std::array<double, 3>{m[0][3] / m[0][0], m[1][3] / m[1][1], n == 3 ? m[2][3] / m[2][2] : 0.0};
  }
  const Vec3 centre = g.index_to_point({cx / n_intra, cy / n_intra, cz / n_intra});
  bg.intracranial_centre_mm = {centre[0], centre[1], centre[2]};
  bg.intracranial_radius_mm = std::cbrt(3.0 * n_intra * g.voxel_volume_mm3() / (4.0 * 3.14159265));
  return bg;
}

namespace {
// The hemisphere a clot is drawn in: voxels across the midline (the falx) take no blood.
struct Hemisphere {
  const std::optional<std::array<double, 3>>* midline = nullptr;
  double side = 1.0;  // +1: patient left (canonical i above the midline), -1: right
  bool allows(int64_t i, int64_t j, int64_t k) const {
    if (!midline || !*midline) return true;
    const auto& m = **midline;
    return side * (double(i) - (m[0] + m[1] * double(j) + m[2] * double(k))) >= 0.0;
  }
};

struct Insert {
  torch::Tensor ct;    // int16, canonical
  torch::Tensor mask;  // uint8, canonical
  torch::Tensor labels;  // uint8 SynthLabel codes, canonical (no IVH: ventricles are never touched)
  int64_t mask_voxels = 0;
  int64_t edema_voxels = 0;
};

Insert insert(const Background& bg, const HematomaShape& shape, float growth, const Hemisphere& hemisphere) {
  const Geometry& g = bg.canonical.geometry;
  const int64_t nx = g.size[0], ny = g.size[1], plane = nx * ny;
  const float* hu = bg.canonical.voxels.data_ptr<float>();
  const float* mean = bg.local_mean.data_ptr<float>();
  const uint8_t* par = bg.parenchyma.data_ptr<uint8_t>();
  torch::Tensor out = bg.canonical.voxels.clone();
  float* o = out.data_ptr<float>();
  Insert r;
  r.mask = torch::zeros_like(bg.parenchyma);
  uint8_t* mask = r.mask.data_ptr<uint8_t>();
  r.labels = torch::zeros_like(bg.parenchyma);
  uint8_t* labels = r.labels.data_ptr<uint8_t>();
  const float reach = shape.bound_mm * growth + shape.edema_mm * 1.25f + 4.f;
  const IndexBox box = index_box(g, shape.center, reach);
  const int ns = slice_samples(g.spacing_mm[2]);
  const SampleExtent extent = sample_extent(g, ns);
  for (int64_t k = box.lo[2]; k <= box.hi[2]; ++k)
    for (int64_t j = box.lo[1]; j <= box.hi[1]; ++j)
      for (int64_t i = box.lo[0]; i <= box.hi[0]; ++i) {
        const int64_t idx = k * plane + j * nx + i;
        const uint8_t cls = par[idx];
        if (!cls || !hemisphere.allows(i, j, k)) continue;  // never bone, air, ventricles, cisterns or the other side
        float occ = 0.f, blood = 0.f, edema = 0.f;
        for (int s = 0; s < ns; ++s) {
          const double off = slice_sample_offset(s, ns);
          const V3 p = to_v3(g.index_to_point({static_cast<double>(i), static_cast<double>(j), k + off}));
          const HematomaSample hs = eval_hematoma(shape, p, growth, extent);
          occ += hs.occupancy;
          blood += hs.occupancy * hs.blood_hu;
          edema += hs.edema * (1.f - hs.occupancy);
        }
        if (occ <= 0.f && edema <= 0.f) continue;
        const float frac = occ / ns;
        // A sulcus takes blood only where the clot surrounds it entirely, never edema.
        if (cls == 2 && frac < 0.999f) continue;
        if (cls == 2) edema = 0.f;
        float v = hu[idx] - shape.edema_drop_hu * edema / ns;
        if (occ > 0.f) v += frac * (blood / occ - mean[idx]);
        o[idx] = v;
        if (frac >= kMaskBloodFraction) {
          mask[idx] = 1;
          labels[idx] = kLabelHematoma;
          ++r.mask_voxels;
        } else if (edema / ns >= 0.5f) {
          labels[idx] = kLabelEdema;
          ++r.edema_voxels;
        }
      }
  r.ct = out.clamp(-1024, 3071).round().to(torch::kInt16);
  return r;
}

// Share of the hematoma's voxels (at voxel centres) that fall on parenchyma.
double retained_fraction(const Background& bg, const HematomaShape& shape, const Hemisphere& hemisphere) {
  const Geometry& g = bg.canonical.geometry;
  const int64_t nx = g.size[0], plane = nx * g.size[1];
  const uint8_t* par = bg.parenchyma.data_ptr<uint8_t>();
  const IndexBox box = index_box(g, shape.center, shape.bound_mm + 1.f);
  int64_t total = 0, kept = 0;
  const SampleExtent extent = sample_extent(g, 1);
  for (int64_t k = box.lo[2]; k <= box.hi[2]; ++k)
    for (int64_t j = box.lo[1]; j <= box.hi[1]; j += 2)
      for (int64_t i = box.lo[0]; i <= box.hi[0]; i += 2) {
        const V3 p = to_v3(g.index_to_point({static_cast<double>(i), static_cast<double>(j), static_cast<double>(k)}));
        if (eval_hematoma(shape, p, 1.f, extent).occupancy < kMaskBloodFraction) continue;
        ++total;
        kept += par[k * plane + j * nx + i] != 0 && hemisphere.allows(i, j, k);
      }
  return total > 0 ? static_cast<double>(kept) / total : 0.0;
}

SynthImages to_output(const Background& bg, const Insert& ins) {
  SynthImages im;
  im.geometry = bg.original_geometry;
  im.ct = from_canonical(ins.ct, bg.axis_map).contiguous();
  im.mask = from_canonical(ins.mask, bg.axis_map).contiguous();
  im.labels = from_canonical(ins.labels, bg.axis_map).contiguous();
  const double voxel_ml = bg.canonical.geometry.voxel_volume_mm3() / 1000.0;
  im.mask_voxels = ins.mask_voxels;
  im.volume_ml = ins.mask_voxels * voxel_ml;
  im.edema_volume_ml = ins.edema_voxels * voxel_ml;
  return im;
}
}  // namespace

SynthCase render_background_case(const SynthOptions& options, int64_t index, const Background& bg) {
  SynthCase c;
  c.truth = sample_case_truth(options.seed, index, options.he_fraction, /*ivh_possible=*/false);
  c.background = bg.name;
  c.noise_sd_hu = bg.noise_sd_hu;
  const Geometry& g = bg.canonical.geometry;
  Rng rng(stream_key(options.seed, static_cast<uint64_t>(index), kPurposeBackground));
  const HeFeatures& f = c.truth.features;  // without IVH: it is not rendered into real backgrounds
  // The clot lies in the hemisphere drawn for it: its centre at least 8 mm from the midline.
  const Hemisphere hemisphere{&bg.midline, f.left ? 1.0 : -1.0};
  const double min_offset_voxels = 8.0 / g.spacing_mm[0];
  HematomaShape best;
  double best_fraction = -1.0;
  for (int attempt = 0, draws = 0; attempt < 40 && best_fraction < 0.92 && draws < 400; ++draws) {
    const int64_t cand = bg.candidates[static_cast<size_t>(rng.uniform() * bg.candidates.size()) % bg.candidates.size()];
    const int64_t i = cand % g.size[0], j = (cand / g.size[0]) % g.size[1], k = cand / (g.size[0] * g.size[1]);
    if (bg.midline) {
      const auto& m = *bg.midline;
      if (hemisphere.side * (double(i) - (m[0] + m[1] * double(j) + m[2] * double(k))) < min_offset_voxels) continue;
    }
    ++attempt;
    const V3 centre = to_v3(g.index_to_point({static_cast<double>(i), static_cast<double>(j), static_cast<double>(k)}));
    const M3 orientation = random_rotation(rng);
    HematomaShape shape = make_hematoma_shape(rng, f, centre, orientation);
    const double fraction = retained_fraction(bg, shape, hemisphere);
    if (fraction > best_fraction) {
      best_fraction = fraction;
      best = shape;
    }
  }
  const Vec3& ic = bg.intracranial_centre_mm;
  const double dist = std::sqrt((best.center.x - ic[0]) * (best.center.x - ic[0]) +
                                (best.center.y - ic[1]) * (best.center.y - ic[1]) +
                                (best.center.z - ic[2]) * (best.center.z - ic[2]));
  c.location = dist < 0.45 * bg.intracranial_radius_mm ? "deep" : "lobar";
  c.blood_hu = best.blood_hu;
  if (best_fraction < 0.0)
    throw CoreError("could not place a hematoma of " + c.truth.case_id + " in the " + (f.left ? "left" : "right") +
                    " hemisphere of background " + bg.name);
  const Insert base = insert(bg, best, 1.f, hemisphere);
  // Without a midline the clot went where it fitted: its side is where it lies against the
  // intracranial centre (canonical x grows towards the patient's left).
  if (!bg.midline && base.mask_voxels > 0) {
    const torch::Tensor x = base.mask.nonzero().select(1, 2).to(torch::kDouble).mean();
    const double centre_i = g.point_to_index(Vec3{ic[0], ic[1], ic[2]})[0];
    c.truth.features.left = x.item<double>() > centre_i;
  }
  c.baseline = to_output(bg, base);
  if (c.baseline.mask_voxels == 0)
    throw CoreError("could not place a hematoma of " + c.truth.case_id + " inside the brain of background " + bg.name);
  if (options.followup) {
    render_followup(c, [&](float scale) { return to_output(bg, insert(bg, best, scale, hemisphere)); });
  }
  return c;
}

}  // namespace hemexp::synth
