#include "hemexp/core/preprocessing.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"

namespace hemexp {

Preprocessing Preprocessing::from_json(const nlohmann::json& j) {
  Preprocessing p;
  try {
    const auto s = j.at("spacing_mm").get<std::vector<double>>();
    // Bounded: a model grid of 1e-6 mm would be a terabyte-sized resampling of any scan.
    if (s.size() != 3 || !std::all_of(s.begin(), s.end(), [](double v) { return v >= 0.05 && v <= 20; }))
      throw CoreError("model card: preprocessing.spacing_mm must be 3 numbers (x, y, z), each 0.05 to 20 mm");
    p.spacing_mm = {s[0], s[1], s[2]};
    const nlohmann::json& n = j.at("normalization");
    if (n.value("type", "") != "ct") throw CoreError("model card: preprocessing.normalization.type must be 'ct'");
    const auto clip = n.at("clip_hu").get<std::vector<double>>();
    if (clip.size() != 2 || clip[0] >= clip[1]) throw CoreError("model card: normalization.clip_hu must be [low, high]");
    p.clip_low_hu = clip[0];
    p.clip_high_hu = clip[1];
    p.mean_hu = n.at("mean_hu").get<double>();
    p.std_hu = n.at("std_hu").get<double>();
    if (!(p.std_hu > 0) || !std::isfinite(p.std_hu) || !std::isfinite(p.mean_hu) || !std::isfinite(p.clip_low_hu) ||
        !std::isfinite(p.clip_high_hu))
      throw CoreError("model card: normalization mean_hu, std_hu and clip_hu must be finite, std_hu positive");
  } catch (const nlohmann::json::exception& e) {
    throw CoreError(std::string("model card: preprocessing block is incomplete: ") + e.what());
  }
  return p;
}

nlohmann::json Preprocessing::to_json() const {
  return {{"spacing_mm", spacing_mm},
          {"normalization",
           {{"type", "ct"}, {"clip_hu", {clip_low_hu, clip_high_hu}}, {"mean_hu", mean_hu}, {"std_hu", std_hu}}}};
}

Geometry grid_with_spacing(const Geometry& g, const Vec3& spacing_mm) {
  Geometry out = g;
  out.spacing_mm = spacing_mm;
  for (int a = 0; a < 3; ++a) {
    const double extent = double(g.size[a] - 1) * g.spacing_mm[a];
    out.size[a] = std::max<int64_t>(1, int64_t(std::floor(extent / spacing_mm[a] + 1e-6)) + 1);
  }
  return out;
}

namespace {

// a + (b - a) w along `dim` of a float tensor, a and b its slices i0[j] and i1[j], w[j] a float:
// what index_select, sub_, mul_ and add_ give (each operation rounded on its own: this file is
// compiled without fused multiply-add), in one pass over the output and without its four
// output-sized temporaries.
torch::Tensor lerp_along(const torch::Tensor& x, int64_t dim, const torch::Tensor& i0, const torch::Tensor& i1,
                         const torch::Tensor& w) {
  const torch::Tensor src = x.contiguous();
  const torch::Tensor lo = i0.contiguous(), hi = i1.contiguous(), weight = w.reshape({-1}).contiguous();
  const int64_t in_size = src.size(dim), out_size = lo.numel();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= src.size(d);
  for (int64_t d = dim + 1; d < src.dim(); ++d) inner *= src.size(d);
  std::vector<int64_t> shape = src.sizes().vec();
  shape[size_t(dim)] = out_size;
  torch::Tensor out = torch::empty(shape, src.options());
  const float* in = src.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const int64_t *p0 = lo.data_ptr<int64_t>(), *p1 = hi.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  if (inner == 1) {  // along the rows: a gather per output element
    at::parallel_for(0, outer, std::max<int64_t>(1, 32768 / std::max<int64_t>(out_size, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = in + r * in_size;
        float* d = o + r * out_size;
        for (int64_t j = 0; j < out_size; ++j) {
          const float a = row[p0[j]];
          d[j] = (row[p1[j]] - a) * wp[j] + a;
        }
      }
    });
  } else {  // whole rows or planes at a time
    at::parallel_for(0, outer * out_size, std::max<int64_t>(1, 32768 / inner), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r = k / out_size, j = k % out_size;
        const float* a = in + (r * in_size + p0[j]) * inner;
        const float* b = in + (r * in_size + p1[j]) * inner;
        const float wj = wp[j];
        float* d = o + k * inner;
        for (int64_t t = 0; t < inner; ++t) d[t] = (b[t] - a[t]) * wj + a[t];
      }
    });
  }
  return out;
}

}  // namespace

torch::Tensor interpolate_axis(const torch::Tensor& x, int64_t dim, int64_t out_size, double first, double step,
                               std::optional<double> outside, int64_t first_k) {
  if (!outside && !x.is_floating_point())
    return interpolate_axis(x.to(torch::kFloat32), dim, out_size, first, step, outside, first_k);
  const int64_t in_size = x.size(dim);
  if (!outside && in_size == out_size && first_k == 0 && first == 0.0 && std::abs(step - 1.0) < 1e-12) return x;
  // arange(first_k, ...) holds the same exact integers as the whole arange's part: the same positions.
  auto pos = first + torch::arange(first_k, first_k + out_size, torch::kFloat64) * step;
  std::vector<int64_t> shape(size_t(x.dim()), 1);
  shape[size_t(dim)] = out_size;
  if (!outside) {
    pos = pos.clamp(0, double(in_size - 1));
    const auto i0 = pos.floor().to(torch::kLong).clamp(0, in_size - 1);
    const auto i1 = (i0 + 1).clamp(0, in_size - 1);
    const auto w = (pos - i0.to(torch::kFloat64)).to(x.scalar_type()).reshape(shape);
    if (x.scalar_type() == torch::kFloat32 && x.device().is_cpu() && x.numel() > 0) return lerp_along(x, dim, i0, i1, w);
    const auto a = x.index_select(dim, i0);
    // a + (b - a) w, in place in b: two output-sized tensors instead of five (the same values:
    // the same operations, and addition commutes exactly).
    return x.index_select(dim, i1).sub_(a).mul_(w).add_(a);
  }
  // Each neighbour inside the input keeps its linear weight; one outside gives its weight to
  // `outside`. The weights are computed in double so that they sum to 1 to double precision
  // and a constant region comes out exactly constant. Bool or integer input is converted only
  // after the gather, and the arithmetic is in place: fresh memory is what this costs most.
  const auto i0 = pos.floor().to(torch::kLong), i1 = i0 + 1;
  const auto w = pos - i0.to(torch::kFloat64);
  const auto inside = [&](const torch::Tensor& i) { return ((i >= 0) & (i < in_size)).to(torch::kFloat64); };
  const auto w0 = (1 - w) * inside(i0), w1 = w * inside(i1);
  const auto w_outside = 1 - w0 - w1;
  torch::Tensor a = x.index_select(dim, i0.clamp(0, in_size - 1)), b = x.index_select(dim, i1.clamp(0, in_size - 1));
  if (!a.is_floating_point()) a = a.to(torch::kFloat32), b = b.to(torch::kFloat32);
  const auto as_a = [&](const torch::Tensor& t) { return t.to(a.scalar_type()).reshape(shape); };
  a.mul_(as_a(w0)).add_(b.mul_(as_a(w1)));
  if (*outside != 0) a.add_(as_a(w_outside * *outside));
  return a;
}

torch::Tensor resample_between_grids(const torch::Tensor& voxels, const Geometry& from, const Geometry& to) {
  return resample_block_between_grids(voxels, from, to, {0, 0, 0}, {to.size[2], to.size[1], to.size[0]});
}

torch::Tensor resample_block_between_grids(const torch::Tensor& voxels, const Geometry& from, const Geometry& to,
                                           const std::array<int64_t, 3>& begin, const std::array<int64_t, 3>& end) {
  if (voxels.dim() < 3) throw CoreError("resampling needs at least 3 dimensions");
  for (int a = 0; a < 3; ++a)
    if (std::abs(from.origin_mm[a] - to.origin_mm[a]) > 1e-6)
      throw CoreError("resampling between grids with different origins is not supported");
  for (int d = 0; d < 3; ++d)
    if (begin[size_t(d)] < 0 || end[size_t(d)] <= begin[size_t(d)] || end[size_t(d)] > to.size[2 - d])
      throw CoreError("resampling: the block lies outside the output grid or is empty");
  torch::Tensor x = voxels;
  const int64_t last = voxels.dim() - 1;
  for (int a = 0; a < 3; ++a) {  // axis a (x, y, z) is tensor dim last - a, block index 2 - a
    const size_t b = size_t(2 - a);
    x = interpolate_axis(x, last - a, end[b] - begin[b], 0.0, to.spacing_mm[a] / from.spacing_mm[a], std::nullopt,
                         begin[b]);
  }
  return x.contiguous();
}

double sample_trilinear(const Volume& v, const Vec3& continuous_index) {
  check_matches(v.geometry, v.voxels, "sampling a volume");
  const torch::Tensor f = v.voxels.to(torch::kFloat32).contiguous();
  auto acc = f.accessor<float, 3>();
  std::array<int64_t, 3> lo{}, hi{};
  std::array<double, 3> w{};
  for (int a = 0; a < 3; ++a) {
    const double last = double(v.geometry.size[a] - 1);
    double i = std::clamp(continuous_index[a], 0.0, last);
    if (std::abs(i - std::round(i)) < 1e-6) i = std::round(i);  // exact on grid points
    lo[a] = int64_t(std::floor(i));
    hi[a] = std::min<int64_t>(lo[a] + 1, v.geometry.size[a] - 1);
    w[a] = i - double(lo[a]);
  }
  double sum = 0;
  for (int corner = 0; corner < 8; ++corner) {
    const int cx = corner & 1, cy = (corner >> 1) & 1, cz = (corner >> 2) & 1;
    const double weight = (cx ? w[0] : 1 - w[0]) * (cy ? w[1] : 1 - w[1]) * (cz ? w[2] : 1 - w[2]);
    if (weight == 0) continue;
    sum += weight * acc[cz ? hi[2] : lo[2]][cy ? hi[1] : lo[1]][cx ? hi[0] : lo[0]];
  }
  return sum;
}

torch::Tensor normalize_ct(const torch::Tensor& hu, const Preprocessing& p) {
  return (hu.clamp(p.clip_low_hu, p.clip_high_hu) - p.mean_hu) / p.std_hu;
}

}  // namespace hemexp
