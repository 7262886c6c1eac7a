#include "hemexp/core/slice_stack.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "hemexp/core/error.hpp"
#include "hemexp/core/statistics.hpp"

namespace hemexp {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::string fmt(double v, int precision = 2) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(precision);
  s << v;
  return s.str();
}

bool near(const Vec3& a, const Vec3& b, double tol) { return norm(a - b) <= tol; }

void check_consistent(const std::vector<Slice>& slices) {
  const SliceGeometry& g0 = slices.front().geometry;
  for (const Slice& s : slices) {
    const SliceGeometry& g = s.geometry;
    if (g.rows != g0.rows || g.columns != g0.columns)
      throw CoreError("series mixes image sizes (" + std::to_string(g0.columns) + "x" +
                      std::to_string(g0.rows) + " and " + std::to_string(g.columns) + "x" +
                      std::to_string(g.rows) + ")");
    if (!near(g.row_direction, g0.row_direction, 1e-3) ||
        !near(g.column_direction, g0.column_direction, 1e-3))
      throw CoreError("series mixes image orientations");
    if (std::abs(g.row_spacing_mm - g0.row_spacing_mm) > 1e-3 ||
        std::abs(g.column_spacing_mm - g0.column_spacing_mm) > 1e-3)
      throw CoreError("series mixes pixel spacings");
    if (!s.hu.defined() || s.hu.dim() != 2 || s.hu.size(0) != g.rows || s.hu.size(1) != g.columns)
      throw CoreError("pixel data of " + s.source + " does not match its rows and columns");
  }
}

// Finest gap that occurs at least twice (within 2%); a single odd gap (where two
// reconstructions meet) does not set the grid. Falls back to the smallest gap.
double choose_uniform_spacing(std::vector<double> gaps) {
  std::sort(gaps.begin(), gaps.end());
  for (size_t i = 0; i + 1 < gaps.size(); ++i)
    if (gaps[i + 1] - gaps[i] <= 0.02 * gaps[i]) return 0.5 * (gaps[i] + gaps[i + 1]);
  return gaps.front();
}

}  // namespace

torch::Tensor shift_sample(const torch::Tensor& image, double shift_rows, double shift_columns,
                           int64_t out_rows, int64_t out_columns, float fill) {
  const int64_t h = image.size(0), w = image.size(1);
  const double fr_floor = std::floor(shift_rows), fc_floor = std::floor(shift_columns);
  const int64_t ir = int64_t(fr_floor), ic = int64_t(fc_floor);
  const double fr = shift_rows - fr_floor, fc = shift_columns - fc_floor;
  const int64_t pad_top = std::max<int64_t>(0, -ir), pad_left = std::max<int64_t>(0, -ic);
  const int64_t pad_bottom = std::max<int64_t>(0, ir + out_rows + 1 - h);
  const int64_t pad_right = std::max<int64_t>(0, ic + out_columns + 1 - w);
  const torch::Tensor p =
      torch::constant_pad_nd(image, {pad_left, pad_right, pad_top, pad_bottom}, fill);
  const int64_t r0 = ir + pad_top, c0 = ic + pad_left;
  auto window = [&](int64_t dr, int64_t dc) {
    return p.slice(0, r0 + dr, r0 + dr + out_rows).slice(1, c0 + dc, c0 + dc + out_columns);
  };
  torch::Tensor top = window(0, 0) * float(1 - fc);
  if (fc > 0) top = top + window(0, 1) * float(fc);
  if (fr == 0) return top.contiguous();
  torch::Tensor bottom = window(1, 0) * float(1 - fc);
  if (fc > 0) bottom = bottom + window(1, 1) * float(fc);
  return (top * float(1 - fr) + bottom * float(fr)).contiguous();
}

Volume assemble_slices(std::vector<Slice> slices, StackReport& report, const StackOptions& options) {
  if (slices.empty()) throw CoreError("series has no images");
  report = StackReport{};
  report.input_slices = int64_t(slices.size());
  if (slices.size() < 2)
    throw CoreError("series has a single 2D image; a volume needs at least 2 slices");
  check_consistent(slices);

  const SliceGeometry& g0 = slices.front().geometry;
  const Vec3 row = normalized(g0.row_direction), col = normalized(g0.column_direction);
  if (std::abs(dot(row, col)) > 1e-3) throw CoreError("image orientation is not orthogonal");
  const Vec3 normal = normalized(cross(row, col));

  std::sort(slices.begin(), slices.end(), [&](const Slice& a, const Slice& b) {
    return dot(a.geometry.position_mm, normal) < dot(b.geometry.position_mm, normal);
  });
  const size_t n = slices.size();
  const Vec3 p0 = slices.front().geometry.position_mm;
  std::vector<double> s(n), u(n), t(n);  // offsets along normal, row, column (mm)
  for (size_t k = 0; k < n; ++k) {
    const Vec3 d = slices[k].geometry.position_mm - p0;
    s[k] = dot(d, normal);
    u[k] = dot(d, row);
    t[k] = dot(d, col);
  }

  std::vector<double> gaps(n - 1);
  for (size_t k = 0; k + 1 < n; ++k) {
    gaps[k] = s[k + 1] - s[k];
    if (gaps[k] < 0.01)
      throw CoreError("series has duplicate slice positions (" + slices[k].source + " and " +
                      slices[k + 1].source + " at " + fmt(s[k]) + " mm along the normal)");
  }
  report.min_slice_spacing_mm = *std::min_element(gaps.begin(), gaps.end());
  report.max_slice_spacing_mm = *std::max_element(gaps.begin(), gaps.end());

  // Missing slices: within a run of equal thickness the gap should be regular.
  for (size_t a = 0; a + 1 < n;) {
    size_t b = a;
    while (b + 1 < n &&
           std::abs(slices[b + 1].geometry.thickness_mm - slices[a].geometry.thickness_mm) < 1e-3)
      ++b;
    if (b - a >= 2) {
      const double regular = median(std::vector<double>(gaps.begin() + a, gaps.begin() + b));
      for (size_t k = a; k < b; ++k)
        if (gaps[k] > 1.5 * regular)
          throw CoreError("series has missing slices: a gap of " + fmt(gaps[k]) + " mm after " +
                          slices[k].source + " where the other slices are " + fmt(regular) +
                          " mm apart");
    }
    a = b + 1;
  }

  // Gantry tilt: slice origins drift in-plane in proportion to their distance along the normal.
  const double dx = g0.column_spacing_mm, dy = g0.row_spacing_mm;
  double max_shift_px = 0;
  for (size_t k = 0; k < n; ++k)
    max_shift_px = std::max({max_shift_px, std::abs(u[k]) / dx, std::abs(t[k]) / dy});
  const bool tilted = max_shift_px > 0.05;
  if (tilted) {
    // Least-squares slope of the in-plane drift against the position along the normal.
    double ss = 0, su = 0, st = 0;
    for (size_t k = 0; k < n; ++k) ss += s[k] * s[k], su += s[k] * u[k], st += s[k] * t[k];
    const double slope_u = su / ss, slope_t = st / ss;
    const double magnitude = std::atan(std::hypot(slope_u, slope_t)) * 180.0 / kPi;
    report.gantry_tilt_deg = (std::abs(slope_t) >= std::abs(slope_u) ? (slope_t > 0 ? -1 : 1)
                                                                      : (slope_u > 0 ? -1 : 1)) *
                             magnitude;
  }

  const bool uniform = report.max_slice_spacing_mm - report.min_slice_spacing_mm <=
                       1e-3 + 0.01 * report.min_slice_spacing_mm;
  const double spacing = uniform ? s.back() / double(n - 1) : choose_uniform_spacing(gaps);
  const int64_t nz = uniform ? int64_t(n) : int64_t(std::floor(s.back() / spacing + 1e-6)) + 1;

  // In-plane extent that covers every (shifted) slice.
  double min_c = 0, max_c = 0, min_r = 0, max_r = 0;  // offsets in pixels
  if (tilted)
    for (size_t k = 0; k < n; ++k) {
      min_c = std::min(min_c, u[k] / dx), max_c = std::max(max_c, u[k] / dx);
      min_r = std::min(min_r, t[k] / dy), max_r = std::max(max_r, t[k] / dy);
    }
  const int64_t c_lo = int64_t(std::floor(min_c + 1e-6)), r_lo = int64_t(std::floor(min_r + 1e-6));
  const int64_t out_columns = g0.columns + int64_t(std::ceil(max_c - 1e-6)) - c_lo;
  const int64_t out_rows = g0.rows + int64_t(std::ceil(max_r - 1e-6)) - r_lo;

  Volume v;
  v.geometry.size = {out_columns, out_rows, nz};
  v.geometry.spacing_mm = {dx, dy, spacing};
  v.geometry.direction = from_columns(row, col, normal);
  v.geometry.origin_mm = p0 + (double(c_lo) * dx) * row + (double(r_lo) * dy) * col;

  // Each input slice on the output's in-plane grid.
  std::vector<torch::Tensor> planes(n);
  for (size_t k = 0; k < n; ++k) {
    const torch::Tensor hu = slices[k].hu.to(torch::kFloat32);
    planes[k] = tilted ? shift_sample(hu, double(r_lo) - t[k] / dy, double(c_lo) - u[k] / dx,
                                      out_rows, out_columns, float(options.air_hu))
                       : hu.contiguous();
  }
  if (uniform) {
    v.voxels = torch::stack(planes, 0).contiguous();
  } else {
    v.voxels = torch::empty({nz, out_rows, out_columns}, torch::kFloat32);
    size_t k = 0;
    for (int64_t z = 0; z < nz; ++z) {
      const double pos = double(z) * spacing;
      while (k + 2 < n && s[k + 1] <= pos) ++k;
      const double w = std::clamp((pos - s[k]) / (s[k + 1] - s[k]), 0.0, 1.0);
      v.voxels[z] = w == 0 ? planes[k] : planes[k] * float(1 - w) + planes[k + 1] * float(w);
    }
  }

  if (tilted)
    report.corrections.push_back("gantry tilt of " + fmt(report.gantry_tilt_deg, 1) +
                                 " deg removed by resampling onto a de-sheared grid");
  if (!uniform)
    report.corrections.push_back("non-uniform slice spacing (" + fmt(report.min_slice_spacing_mm) +
                                 " to " + fmt(report.max_slice_spacing_mm) +
                                 " mm) resampled to uniform " + fmt(spacing) + " mm (" +
                                 std::to_string(n) + " slices -> " + std::to_string(nz) + ")");
  return v;
}

}  // namespace hemexp
