#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

namespace hemexp {

// Where a NIfTI file's header places its voxels, decoded (NIfTI-1 and -2 alike): pixdim (with
// qfac in pixdim[0]), the units, both transforms and their codes. A mask on the same voxel grid
// written with these (write_image_file) is placed by every viewer where it places the scan,
// whichever transform the viewer follows (ITK and ITK-SNAP take the qform when the sform's code
// is not 1; nibabel, FSL, SPM and MRIcroGL take the sform whenever its code is set).
struct NiftiPlacement {
  std::array<double, 8> pixdim{};
  int xyzt_units = 0;
  int qform_code = 0, sform_code = 0;
  std::array<double, 6> quatern{};  // quatern_b, c, d, qoffset_x, y, z
  std::array<double, 12> srow{};    // srow_x, srow_y, srow_z
};

// What a NIfTI-1 or NIfTI-2 single-file header says, read by hemexp itself so that a damaged or
// hostile file is refused with a plain reason before ITK allocates anything.
struct NiftiHeader {
  int version = 1;                      // 1 (348-byte header) or 2 (540 bytes)
  bool byte_swapped = false;            // written on a machine of the other endianness
  int ndim = 0;                         // dim[0]
  std::array<int64_t, 7> dim{};         // dim[1..7]; 1 beyond ndim
  int datatype = 0, bitpix = 0;
  std::array<double, 3> pixdim_mm{};    // pixdim[1..3]
  uint64_t vox_offset = 0;              // where the voxels start
  double scl_slope = 0, scl_inter = 0;  // the stored scaling (a slope of 0: none)
  uint64_t voxels = 0;                  // product of dim[1..ndim]
  NiftiPlacement placement;
  uint64_t data_end() const { return vox_offset + voxels * uint64_t(bitpix / 8); }
};

// Parses the first bytes of a NIfTI file (decompressed) and checks them: header size and
// magic, dimensions (1 to 7 of them, each >= 1, at most max_voxels voxels in all), a scalar
// data type whose bitpix matches, a data offset after the header, voxel spacings
// (pixdim[1..3]) positive and finite, and finite qform/sform values where they are in use.
// Throws IoError naming the problem. Pure: no file access (fuzzed).
NiftiHeader parse_nifti_header(const std::string& first_bytes, uint64_t max_voxels);

// The placement's transforms as 3 x 4 matrices (rows; voxel index to RAS mm), the qform's from
// its quaternion, pixdim and qfac as the NIfTI-1 standard defines it.
std::array<double, 12> nifti_qform_matrix(const NiftiPlacement& p);
std::array<double, 12> nifti_sform_matrix(const NiftiPlacement& p);
// How far a 3 x 4 matrix's axes are from orthogonal, as the largest angle in degrees by which
// one axis leans from the perpendicular of the other two (a sform holding a gantry tilt).
double shear_degrees(const std::array<double, 12>& m);

// What check_nifti_file looks at: the header alone (enough to refuse a file before anything
// is allocated for it), or also the voxel data.
enum class NiftiCheck { kHeader, kWhole };

// Checks a .nii or .nii.gz file before it is read: not empty, a valid header
// (parse_nifti_header), and (kWhole) every voxel the header promises present: for a plain
// file the file size, for a gzip file the whole stream, decompressed and checked against its
// CRC (one streaming pass, bounded memory), float voxels finite. Throws IoError naming the
// problem.
NiftiHeader check_nifti_file(const std::filesystem::path& path, uint64_t max_voxels,
                             NiftiCheck what = NiftiCheck::kWhole);

}  // namespace hemexp
