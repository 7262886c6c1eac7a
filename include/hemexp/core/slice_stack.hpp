#pragma once

#include <string>
#include <vector>

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// Geometry of one 2D image as DICOM describes it.
struct SliceGeometry {
  Vec3 position_mm{0, 0, 0};          // ImagePositionPatient: centre of the first pixel
  Vec3 row_direction{1, 0, 0};        // ImageOrientationPatient[0..2]: along a row (x)
  Vec3 column_direction{0, 1, 0};     // ImageOrientationPatient[3..5]: down a column (y)
  double row_spacing_mm = 1.0;        // PixelSpacing[0]: between rows (y)
  double column_spacing_mm = 1.0;     // PixelSpacing[1]: between columns (x)
  int64_t rows = 0;
  int64_t columns = 0;
  double thickness_mm = 0.0;          // SliceThickness, 0 when absent
};

struct Slice {
  SliceGeometry geometry;
  torch::Tensor hu;    // float32, shape {rows, columns}
  std::string source;  // file name, for messages
};

// What assembling a stack of slices found and did.
struct StackReport {
  double gantry_tilt_deg = 0.0;       // from the slice positions (0 = no tilt)
  double min_slice_spacing_mm = 0.0;  // along the slice normal
  double max_slice_spacing_mm = 0.0;
  int64_t input_slices = 0;
  std::vector<std::string> corrections;  // human-readable, one per correction applied
};

struct StackOptions {
  double air_hu = -1000.0;  // value for voxels the acquisition did not cover
};

// Builds one volume on an orthogonal, equidistant grid from 2D slices in any order:
//  - sorts slices along the normal of their common orientation;
//  - fails (CoreError) on mixed sizes, orientations or pixel spacings, duplicate positions,
//    and missing slices (a gap of 1.5x or more the regular gap within slices of equal
//    thickness);
//  - gantry tilt (slice origins drifting in-plane) is removed by shifting each slice onto a
//    de-sheared grid that covers every slice (bilinear, uncovered voxels become air);
//  - non-uniform spacing (e.g. mixed thicknesses) is resampled linearly along the normal to
//    the finest spacing that occurs at least twice.
// The output grid has direction [row, column, normal] and origin on the first slice.
Volume assemble_slices(std::vector<Slice> slices, StackReport& report,
                       const StackOptions& options = {});

// Samples a 2D image at (r + shift_rows, c + shift_columns) for every output pixel (r, c)
// with bilinear interpolation; outside the image the value is fill.
torch::Tensor shift_sample(const torch::Tensor& image, double shift_rows, double shift_columns,
                           int64_t out_rows, int64_t out_columns, float fill);

}  // namespace hemexp
