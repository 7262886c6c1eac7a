#include "hemexp/core/geometry.hpp"

#include <cmath>
#include <sstream>

#include "hemexp/core/error.hpp"

namespace hemexp {

Mat3 mat_mul(const Mat3& a, const Mat3& b) {
  Mat3 r{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += a[i * 3 + k] * b[k * 3 + j];
      r[i * 3 + j] = s;
    }
  return r;
}

Vec3 mat_vec(const Mat3& a, const Vec3& v) {
  Vec3 r{};
  for (int i = 0; i < 3; ++i) r[i] = a[i * 3] * v[0] + a[i * 3 + 1] * v[1] + a[i * 3 + 2] * v[2];
  return r;
}

double mat_det(const Mat3& a) {
  return a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) +
         a[2] * (a[3] * a[7] - a[4] * a[6]);
}

Mat3 mat_inverse(const Mat3& a) {
  const double d = mat_det(a);
  if (std::abs(d) < 1e-12) throw CoreError("direction matrix is singular");
  Mat3 r{};
  r[0] = (a[4] * a[8] - a[5] * a[7]) / d;
  r[1] = (a[2] * a[7] - a[1] * a[8]) / d;
  r[2] = (a[1] * a[5] - a[2] * a[4]) / d;
  r[3] = (a[5] * a[6] - a[3] * a[8]) / d;
  r[4] = (a[0] * a[8] - a[2] * a[6]) / d;
  r[5] = (a[2] * a[3] - a[0] * a[5]) / d;
  r[6] = (a[3] * a[7] - a[4] * a[6]) / d;
  r[7] = (a[1] * a[6] - a[0] * a[7]) / d;
  r[8] = (a[0] * a[4] - a[1] * a[3]) / d;
  return r;
}

Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }
Vec3 normalized(const Vec3& a) {
  const double n = norm(a);
  if (n == 0) throw CoreError("cannot normalise a zero vector");
  return {a[0] / n, a[1] / n, a[2] / n};
}
Vec3 operator-(const Vec3& a, const Vec3& b) { return {a[0] - b[0], a[1] - b[1], a[2] - b[2]}; }
Vec3 operator+(const Vec3& a, const Vec3& b) { return {a[0] + b[0], a[1] + b[1], a[2] + b[2]}; }
Vec3 operator*(double s, const Vec3& a) { return {s * a[0], s * a[1], s * a[2]}; }
Vec3 column(const Mat3& m, int j) { return {m[j], m[3 + j], m[6 + j]}; }
Mat3 from_columns(const Vec3& c0, const Vec3& c1, const Vec3& c2) {
  return {c0[0], c1[0], c2[0], c0[1], c1[1], c2[1], c0[2], c1[2], c2[2]};
}

Vec3 Geometry::index_to_point(const Vec3& index) const {
  const Vec3 scaled{index[0] * spacing_mm[0], index[1] * spacing_mm[1], index[2] * spacing_mm[2]};
  return origin_mm + mat_vec(direction, scaled);
}

Vec3 Geometry::point_to_index(const Vec3& point_mm) const {
  const Vec3 scaled = mat_vec(mat_inverse(direction), point_mm - origin_mm);
  return {scaled[0] / spacing_mm[0], scaled[1] / spacing_mm[1], scaled[2] / spacing_mm[2]};
}

bool Geometry::same_grid(const Geometry& other, double tol_mm) const {
  if (size != other.size) return false;
  for (int corner = 0; corner < 8; ++corner) {
    const Vec3 idx{(corner & 1) ? double(size[0] - 1) : 0.0, (corner & 2) ? double(size[1] - 1) : 0.0,
                   (corner & 4) ? double(size[2] - 1) : 0.0};
    if (norm(index_to_point(idx) - other.index_to_point(idx)) > tol_mm) return false;
  }
  return true;
}

std::string Geometry::describe() const {
  std::ostringstream s;
  s << size[0] << "x" << size[1] << "x" << size[2] << " voxels of " << spacing_mm[0] << "x"
    << spacing_mm[1] << "x" << spacing_mm[2] << " mm";
  return s.str();
}

std::vector<int64_t> tensor_shape(const Geometry& g) { return {g.size[2], g.size[1], g.size[0]}; }

void check_matches(const Geometry& g, const torch::Tensor& t, const char* what) {
  if (!t.defined() || t.dim() != 3 || t.size(0) != g.size[2] || t.size(1) != g.size[1] ||
      t.size(2) != g.size[0]) {
    std::ostringstream s;
    s << what << ": tensor shape does not match the grid " << g.describe();
    throw CoreError(s.str());
  }
}

}  // namespace hemexp
