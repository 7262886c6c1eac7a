#include "hemexp/core/measurements.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/statistics.hpp"
#include "dilation.hpp"

namespace hemexp {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

nlohmann::json HematomaMeasurements::to_json() const {
  return {{"voxels", voxels},       {"volume_ml", volume_ml},   {"abc2_volume_ml", abc2_volume_ml},
          {"mean_hu", mean_hu},     {"std_hu", std_hu},         {"p10_hu", p10_hu},
          {"p90_hu", p90_hu},       {"components", components}, {"surface_area_mm2", surface_area_mm2},
          {"sphericity", sphericity}, {"touches_border", touches_border}};
}

double surface_area_mm2(const torch::Tensor& mask, const Geometry& g) {
  check_matches(g, mask, "measuring a mask's surface");
  // Exposed faces, weighted by their area, times 2/3.
  const torch::Tensor padded = torch::constant_pad_nd((mask != 0).to(torch::kInt16), {1, 1, 1, 1, 1, 1}, 0);
  const double face_area[3] = {g.spacing_mm[1] * g.spacing_mm[2],   // faces normal to x
                               g.spacing_mm[0] * g.spacing_mm[2],   // to y
                               g.spacing_mm[0] * g.spacing_mm[1]};  // to z
  double faces = 0;
  for (int axis = 0; axis < 3; ++axis) {
    const int64_t dim = 2 - axis;
    const torch::Tensor d = padded.narrow(dim, 1, padded.size(dim) - 1) - padded.narrow(dim, 0, padded.size(dim) - 1);
    faces += double(d.abs().sum().item<int64_t>()) * face_area[axis];
  }
  return faces * 2.0 / 3.0;
}

int64_t connected_components(const torch::Tensor& mask, torch::Tensor* labels) {
  const torch::Tensor m = (mask != 0).to(torch::kUInt8).contiguous();
  const int64_t nz = m.size(0), ny = m.size(1), nx = m.size(2);
  const uint8_t* in = m.data_ptr<uint8_t>();
  torch::Tensor out = torch::zeros({nz, ny, nx}, torch::kInt32);
  int32_t* lab = out.data_ptr<int32_t>();
  int32_t count = 0;
  std::vector<int64_t> stack;
  for (int64_t start = 0; start < m.numel(); ++start) {
    if (!in[start] || lab[start]) continue;
    lab[start] = ++count;
    stack.push_back(start);
    while (!stack.empty()) {
      const int64_t v = stack.back();
      stack.pop_back();
      const int64_t z = v / (ny * nx), y = (v / nx) % ny, x = v % nx;
      for (int64_t dz = -1; dz <= 1; ++dz)
        for (int64_t dy = -1; dy <= 1; ++dy)
          for (int64_t dx = -1; dx <= 1; ++dx) {
            const int64_t zz = z + dz, yy = y + dy, xx = x + dx;
            if (zz < 0 || yy < 0 || xx < 0 || zz >= nz || yy >= ny || xx >= nx) continue;
            const int64_t w = (zz * ny + yy) * nx + xx;
            if (in[w] && !lab[w]) lab[w] = count, stack.push_back(w);
          }
    }
  }
  if (labels) *labels = out;
  return count;
}

MaskBox mask_bounding_box(const torch::Tensor& mask) {
  if (mask.dim() != 3) throw CoreError("bounding box: the mask must be (z, y, x)");
  MaskBox box;
  // One pass, slices in parallel, a row skipped at the cost of an OR over its bytes when it holds
  // nothing (most rows of a scan). A contiguous uint8 or bool mask on the CPU (every caller's) is
  // read as it is; any other is made one first.
  const bool binary = mask.scalar_type() == torch::kUInt8 || mask.scalar_type() == torch::kBool;
  const torch::Tensor m = (binary ? mask : mask.ne(0)).to(torch::kCPU).contiguous();
  const int64_t nz = m.size(0), ny = m.size(1), nx = m.size(2);
  const uint8_t* p = static_cast<const uint8_t*>(m.data_ptr());
  std::vector<std::array<int64_t, 4>> per_slice(static_cast<size_t>(nz));  // y first, y last, x first, x last (-1: none)
  at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      std::array<int64_t, 4> s{ny, -1, nx, -1};
      for (int64_t y = 0; y < ny; ++y) {
        const uint8_t* row = p + (z * ny + y) * nx;
        if (!dilation::any_set(row, nx)) continue;
        int64_t first = 0, last = nx - 1;
        while (!row[first]) ++first;
        while (!row[last]) --last;
        s[0] = std::min(s[0], y), s[1] = y, s[2] = std::min(s[2], first), s[3] = std::max(s[3], last);
      }
      per_slice[size_t(z)] = s;
    }
  });
  std::array<int64_t, 6> lohi{nz, ny, nx, -1, -1, -1};
  for (int64_t z = 0; z < nz; ++z) {
    const auto& s = per_slice[size_t(z)];
    if (s[1] < 0) continue;
    lohi[0] = std::min(lohi[0], z), lohi[3] = z;
    lohi[1] = std::min(lohi[1], s[0]), lohi[4] = std::max(lohi[4], s[1]);
    lohi[2] = std::min(lohi[2], s[2]), lohi[5] = std::max(lohi[5], s[3]);
  }
  if (lohi[3] < 0) return MaskBox{};
  box.begin = {lohi[0], lohi[1], lohi[2]};
  box.size = {lohi[3] - lohi[0] + 1, lohi[4] - lohi[1] + 1, lohi[5] - lohi[2] + 1};
  return box;
}

torch::Tensor dilate_box(const torch::Tensor& mask, const std::array<int64_t, 3>& radius) {
  if (mask.dim() != 3) throw CoreError("dilation: the mask must be (z, y, x)");
  for (const int64_t r : radius)
    if (r < 0) throw CoreError("dilation: a radius cannot be negative");
  const bool binary = mask.scalar_type() == torch::kUInt8 || mask.scalar_type() == torch::kBool;
  const torch::Tensor in = (binary ? mask : mask.ne(0)).to(torch::kCPU).contiguous();
  const int64_t nz = in.size(0), h = in.size(1), w = in.size(2), plane = h * w;
  // A window wider than its dim covers all of it: the same result with r = size - 1, which also
  // keeps the 16-bit running counts (at most 2 r + 1 or the size) in range for any scan.
  std::array<int64_t, 3> r = radius;
  for (size_t d = 0; d < 3; ++d) r[d] = std::min(r[d], std::max<int64_t>(in.size(int64_t(d)) - 1, 0));
  for (size_t d = 0; d < 3; ++d)
    if (std::min(2 * r[d] + 1, in.size(int64_t(d))) > 65535) throw CoreError("dilation: a dim of over 65535 voxels");
  const torch::Tensor rows = torch::empty({nz, h, w}, torch::kUInt8);
  torch::Tensor out = torch::empty({nz, h, w}, torch::kBool);
  const uint8_t* ip = static_cast<const uint8_t*>(in.data_ptr());
  uint8_t* rp = rows.data_ptr<uint8_t>();
  uint8_t* op = static_cast<uint8_t*>(out.data_ptr());  // a bool is one byte, 0 or 1
  // In-plane per slice, then along z per column of the volume.
  at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
    std::vector<uint8_t> tmp(static_cast<size_t>(plane));
    std::vector<uint16_t> count;
    for (int64_t z = z0; z < z1; ++z)
      dilation::rectangle(ip + z * plane, tmp.data(), rp + z * plane, h, w, r[1], r[2], count);
  });
  at::parallel_for(0, plane, 4096, [&](int64_t c0, int64_t c1) {
    std::vector<uint16_t> count;
    dilation::columns(rp + c0, op + c0, nz, c1 - c0, plane, r[0], count);
  });
  return out.to(mask.device());
}

std::vector<MaskBox> label_boxes(const torch::Tensor& labels, int64_t n) {
  if (labels.dim() != 3 || labels.scalar_type() != torch::kInt32) throw CoreError("label boxes: need (z, y, x) int32 labels");
  const torch::Tensor l = labels.contiguous();
  const int64_t nz = l.size(0), ny = l.size(1), nx = l.size(2);
  std::vector<std::array<int64_t, 6>> lohi(size_t(n + 1), {nz, ny, nx, -1, -1, -1});
  const int32_t* p = l.data_ptr<int32_t>();
  for (int64_t z = 0; z < nz; ++z)
    for (int64_t y = 0; y < ny; ++y)
      for (int64_t x = 0; x < nx; ++x, ++p) {
        if (*p <= 0 || *p > n) continue;
        auto& b = lohi[size_t(*p)];
        b[0] = std::min(b[0], z), b[1] = std::min(b[1], y), b[2] = std::min(b[2], x);
        b[3] = std::max(b[3], z), b[4] = std::max(b[4], y), b[5] = std::max(b[5], x);
      }
  std::vector<MaskBox> boxes(size_t(n + 1));
  for (int64_t k = 1; k <= n; ++k) {
    const auto& b = lohi[size_t(k)];
    if (b[3] < 0) continue;
    boxes[size_t(k)].begin = {b[0], b[1], b[2]};
    boxes[size_t(k)].size = {b[3] - b[0] + 1, b[4] - b[1] + 1, b[5] - b[2] + 1};
  }
  return boxes;
}

std::array<int64_t, 256> code_counts(const torch::Tensor& codes) {
  if (codes.scalar_type() != torch::kUInt8) throw CoreError("code counts: need a uint8 label map");
  const torch::Tensor c = codes.contiguous();
  const uint8_t* p = c.data_ptr<uint8_t>();
  std::array<int64_t, 256> total{};
  std::mutex merge;
  at::parallel_for(0, c.numel(), int64_t(1) << 20, [&](int64_t begin, int64_t end) {
    std::array<int64_t, 256> local{};
    for (int64_t i = begin; i < end; ++i) ++local[p[i]];
    const std::lock_guard<std::mutex> lock(merge);
    for (size_t k = 0; k < 256; ++k) total[k] += local[k];
  });
  return total;
}

torch::Tensor MaskBox::crop(const torch::Tensor& volume) const {
  return volume.narrow(0, begin[0], size[0]).narrow(1, begin[1], size[1]).narrow(2, begin[2], size[2]);
}

Geometry MaskBox::crop(const Geometry& g) const {
  Geometry box = g;  // spacing is all measurements use; the origin is not moved
  for (int d = 0; d < 3; ++d) box.size[size_t(2 - d)] = size[size_t(d)];
  return box;
}

MaskBox MaskBox::grown(const std::array<int64_t, 3>& by, const torch::Tensor& volume) const {
  MaskBox box;
  for (size_t d = 0; d < 3; ++d) {
    box.begin[d] = std::max<int64_t>(0, begin[d] - by[d]);
    box.size[d] = std::min<int64_t>(volume.size(int64_t(d)), begin[d] + size[d] + by[d]) - box.begin[d];
  }
  return box;
}

HematomaMeasurements measure_hematoma(const torch::Tensor& mask, const torch::Tensor& hu, const Geometry& g) {
  check_matches(g, mask, "measuring a hematoma mask");
  check_matches(g, hu, "measuring hematoma HU");
  HematomaMeasurements r;
  const MaskBox box = mask_bounding_box(mask);
  if (box.empty()) return r;
  // Everything below happens in the mask's bounding box (the same numbers, docs/PERFORMANCE.md).
  const torch::Tensor m = box.crop(mask).ne(0).contiguous();
  const Geometry gb = box.crop(g);
  r.voxels = m.sum().item<int64_t>();
  const double voxel_mm3 = g.voxel_volume_mm3();
  r.volume_ml = double(r.voxels) * voxel_mm3 / 1000.0;

  const torch::Tensor values = box.crop(hu).masked_select(m).to(torch::kFloat64).contiguous();
  const std::vector<double> hu_values(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  const Moments moments = central_moments(hu_values);  // the same digits for any --threads
  r.mean_hu = moments.mean;
  r.std_hu = r.voxels > 1 ? std::sqrt(moments.m2) : 0.0;
  r.p10_hu = percentile(hu_values, 0.10);
  r.p90_hu = percentile(hu_values, 0.90);
  r.components = connected_components(m);

  r.surface_area_mm2 = surface_area_mm2(m, gb);
  const double volume_mm3 = double(r.voxels) * voxel_mm3;
  r.sphericity = std::cbrt(kPi) * std::pow(6.0 * volume_mm3, 2.0 / 3.0) / r.surface_area_mm2;

  for (int d = 0; d < 3; ++d)
    if (box.begin[size_t(d)] == 0 || box.begin[size_t(d)] + box.size[size_t(d)] == mask.size(d)) r.touches_border = true;

  // ABC/2 on the slice of largest area.
  const torch::Tensor per_slice = m.sum({1, 2});
  const int64_t best = per_slice.argmax().item<int64_t>();
  const int64_t slices = (per_slice > 0).sum().item<int64_t>();
  const torch::Tensor points = m[best].nonzero().to(torch::kFloat64);  // (n, 2): y, x
  // The longest chord joins two extreme points of the slice, and every extreme point is the
  // leftmost or rightmost voxel of its row: only those are kept (in-plane mm coordinates).
  std::vector<std::array<double, 2>> ends;
  {
    auto acc = points.accessor<double, 2>();
    std::map<int64_t, std::pair<double, double>> rows;
    for (int64_t i = 0; i < points.size(0); ++i) {
      const int64_t y = int64_t(acc[i][0]) + box.begin[1];  // indices of the whole volume
      const double x = acc[i][1] + double(box.begin[2]);
      auto [it, inserted] = rows.try_emplace(y, x, x);
      if (!inserted) it->second.first = std::min(it->second.first, x), it->second.second = std::max(it->second.second, x);
    }
    for (const auto& [y, lr] : rows)
      for (double x : {lr.first, lr.second}) {
        ends.push_back({x * g.spacing_mm[0], double(y) * g.spacing_mm[1]});
      }
  }
  double a_len = 0;
  std::array<double, 2> a_dir{1, 0};
  for (size_t i = 0; i < ends.size(); ++i)
    for (size_t j = i + 1; j < ends.size(); ++j) {
      const double dx = ends[j][0] - ends[i][0], dy = ends[j][1] - ends[i][1];
      const double len = std::hypot(dx, dy);
      if (len > a_len) a_len = len, a_dir = {dx / len, dy / len};
    }
  double lo = 1e300, hi = -1e300;
  for (const auto& e : ends) {
    const double t = -a_dir[1] * e[0] + a_dir[0] * e[1];
    lo = std::min(lo, t), hi = std::max(hi, t);
  }
  const double pixel = 0.5 * (g.spacing_mm[0] + g.spacing_mm[1]);
  const double a_mm = a_len + pixel, b_mm = (hi - lo) + pixel, c_mm = double(slices) * g.spacing_mm[2];
  r.abc2_volume_ml = a_mm * b_mm * c_mm / 2.0 / 1000.0;
  return r;
}

}  // namespace hemexp
