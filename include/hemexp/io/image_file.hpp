#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hemexp/core/geometry.hpp"
#include "hemexp/io/nifti_check.hpp"

namespace hemexp {

// NIfTI (.nii, .nii.gz), MHA/MHD, NRRD: anything ITK reads as a scalar 3D image.
bool is_volume_file(const std::filesystem::path& path);

// Why a volume file holds codes rather than a CT, from its header alone: 8-bit integer voxels
// (uint8 or int8) without scaling (a NIfTI scl_slope of 0, not finite, or 1 with scl_inter 0
// or not finite; MHA and NRRD have none), whose 256 values cannot span the -1000 to 3000 HU of
// a head CT: a mask or a label map. Empty when the file may be a CT, or when its header cannot
// be read (the reader says why).
std::string codes_not_ct_reason(const std::filesystem::path& path);

struct ImageFileContents {
  Volume volume;            // voxels as float32 (scl_slope/inter applied by ITK)
  std::string format;       // "nifti", "mha", "nrrd"
  // NIfTI: where its header places the voxels, for the masks written on its grid.
  std::optional<NiftiPlacement> placement;
  // What the reader must know about the header (qform and sform that disagree, a sheared
  // sform, no orientation at all): one line each.
  std::vector<std::string> warnings;
};

// The most voxels a case may have (--max-voxels): a 512 x 512 x 2000 scan. A header that
// claims more is refused before anything is allocated.
constexpr uint64_t kDefaultMaxVoxels = 512ull * 512 * 2000;

// Reads a scalar 3D volume. Throws IoError, with a reason in plain words, for an empty,
// truncated or corrupt file (a NIfTI file is checked by check_nifti_file first), 2D, 4D or
// multi-component images, more than max_voxels voxels, a voxel spacing that is not positive
// and finite, and a direction matrix that is not finite or is singular (|det| < 0.5; milder
// shear, as in a tilted scan stored sheared, is kept and noted by the reader). The grid is
// always ITK's; the voxels of a .nii.gz file of plain values (unscaled, 3D, one intact gzip
// stream) are decompressed by hemexp itself, once, to the same values ITK gives.
ImageFileContents read_image_file(const std::filesystem::path& path, uint64_t max_voxels = kDefaultMaxVoxels);

// The voxels of a .nii.gz file (float32, z, y, x), decompressed once and whole by libdeflate
// (about twice zlib's speed, docs/PERFORMANCE.md, session 49), when the file is one gzip member
// that ends where the voxels end, intact (the CRC and length of its data; libdeflate does not
// check the optional CRC of the gzip header), of plain values: NIfTI-1, 3D, a scalar type up to
// 32 bits or float64, the machine's byte order, no scaling (scl_slope 0 or 1, scl_inter 0),
// float values finite. Then they are exactly what ITK's reader gives (its values cast to float,
// in file order: x fastest), and what the streaming check (check_nifti_file) looks at has been
// checked. Anything else: nothing, and read_image_file leaves the file to ITK and the streaming
// check, whose messages name what is wrong. Nothing is allocated for a length that the file's
// gzip trailer does not state. `header` is check_nifti_file's (NiftiCheck::kHeader).
std::optional<torch::Tensor> plain_nifti_gz_voxels(const std::filesystem::path& path, const NiftiHeader& header);

// A mask or label map (uint8 codes, values rounded) that must lie on `grid` (within 1e-3 mm):
// IoError naming the file otherwise.
torch::Tensor read_codes_on_grid(const std::filesystem::path& path, const Geometry& grid);

// Writes voxels (z,y,x; uint8, int16 or float32) on grid g, atomically. The file type follows
// the extension (.nii.gz, .nii, .mha, .nrrd). With `placement` (the NIfTI scan's own, g being
// the grid it was read as) a .nii.gz file's header places the voxels as the scan's does: its
// pixdim, units, qform, sform and their codes.
void write_image_file(const std::filesystem::path& path, const torch::Tensor& voxels,
                      const Geometry& g, const NiftiPlacement* placement = nullptr);

// Writes an 8-bit grey (H,W) or RGB (H,W,3) uint8 image as PNG (zlib level 1: a QC picture
// is written once per case and looked at, not archived), atomically.
void write_png(const std::filesystem::path& path, const torch::Tensor& pixels);

// Makes ITK's global objects once, in turn, before any thread uses ITK (ITK 5.2 makes them on
// first use without a lock, and two first uses at once corrupted the heap). Called by every
// function here that uses ITK, and by the DICOM reader; cheap after the first call.
void itk_first_use();

// The threads ITK may use for one read (decompression, filters), for every read of this
// process (--threads). Whether a NIfTI file's integrity check runs beside ITK's read
// (read_image_file) and a case's files are written two at a time (measure_and_write_case) is
// LibTorch's thread count instead (run_side_by_side, core/runtime.hpp).
void set_itk_threads(int threads);

// The ITK version this build reads and writes with ("5.2.1").
std::string itk_version();

}  // namespace hemexp
