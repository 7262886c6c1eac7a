#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <torch/types.h>

namespace hemexp {

using Vec3 = std::array<double, 3>;
// Row-major 3x3 matrix. Column j is the physical direction (LPS, as ITK and DICOM use)
// of index axis j, exactly as itk::Image::GetDirection() stores it.
using Mat3 = std::array<double, 9>;

// The grid of a volume: everything needed to map a voxel index to a physical point (mm).
// Index order is (x, y, z) as in ITK; the voxel tensor of a Volume is laid out (z, y, x).
struct Geometry {
  std::array<int64_t, 3> size{0, 0, 0};
  Vec3 spacing_mm{1.0, 1.0, 1.0};
  Vec3 origin_mm{0.0, 0.0, 0.0};
  Mat3 direction{1, 0, 0, 0, 1, 0, 0, 0, 1};

  int64_t voxel_count() const { return size[0] * size[1] * size[2]; }
  double voxel_volume_mm3() const { return spacing_mm[0] * spacing_mm[1] * spacing_mm[2]; }

  // Physical point of a (continuous) index.
  Vec3 index_to_point(const Vec3& index) const;
  // Continuous index of a physical point (inverse of index_to_point).
  Vec3 point_to_index(const Vec3& point_mm) const;

  // Same grid, to within tol_mm of every corner voxel's position.
  bool same_grid(const Geometry& other, double tol_mm = 1e-4) const;
  std::string describe() const;
};

// A CT volume: voxels in HU (float32, shape z,y,x) and the grid they live on.
struct Volume {
  Geometry geometry;
  torch::Tensor voxels;  // float32, contiguous, shape {size[2], size[1], size[0]}
};

Mat3 mat_mul(const Mat3& a, const Mat3& b);
Vec3 mat_vec(const Mat3& a, const Vec3& v);
Mat3 mat_inverse(const Mat3& a);
double mat_det(const Mat3& a);
Vec3 cross(const Vec3& a, const Vec3& b);
double dot(const Vec3& a, const Vec3& b);
double norm(const Vec3& a);
Vec3 normalized(const Vec3& a);
Vec3 operator-(const Vec3& a, const Vec3& b);
Vec3 operator+(const Vec3& a, const Vec3& b);
Vec3 operator*(double s, const Vec3& a);
// Column j of a direction matrix.
Vec3 column(const Mat3& m, int j);
Mat3 from_columns(const Vec3& c0, const Vec3& c1, const Vec3& c2);

// Tensor shape {z, y, x} for a grid.
std::vector<int64_t> tensor_shape(const Geometry& g);
// Throws CoreError if the tensor does not match the grid.
void check_matches(const Geometry& g, const torch::Tensor& t, const char* what);

}  // namespace hemexp
