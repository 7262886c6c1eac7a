#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

namespace hemexp {

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
  uint64_t data_end() const { return vox_offset + voxels * uint64_t(bitpix / 8); }
};

// Parses the first bytes of a NIfTI file (decompressed) and checks them: header size and
// magic, dimensions (1 to 7 of them, each >= 1, at most max_voxels voxels in all), a scalar
// data type whose bitpix matches, a data offset after the header, voxel spacings
// (pixdim[1..3]) positive and finite, and finite qform/sform values where they are in use.
// Throws IoError naming the problem. Pure: no file access (fuzzed).
NiftiHeader parse_nifti_header(const std::string& first_bytes, uint64_t max_voxels);

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
