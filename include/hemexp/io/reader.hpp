#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hemexp/core/geometry.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/nifti_check.hpp"

namespace hemexp {

// Everything known about where a volume came from and what was done to it on reading.
struct InputInfo {
  std::string path;
  std::string format;  // "nifti", "mha", "nrrd", "dicom"
  std::string modality;
  std::string series_uid, series_description;
  std::string series_choice;  // DICOM: which series was chosen and why
  std::string patient_id;     // DICOM: PatientID, as written
  std::string datetime;       // DICOM: when the images were made (DicomHeader::datetime)
  Geometry geometry;          // grid of the volume as read (after any correction)
  double gantry_tilt_deg = 0.0;
  double min_slice_spacing_mm = 0.0, max_slice_spacing_mm = 0.0;
  int64_t source_slices = 0;
  std::vector<std::string> corrections;
  std::vector<std::string> warnings;
  // DICOM: true when tilt or spacing correction put the voxels on a grid of their own,
  // rather than the grid the slices were acquired on.
  bool grid_resampled = false;
  // NIfTI: where the file's header places the voxels (qform, sform, pixdim), given to the
  // masks written on its grid so that they overlay it in any viewer.
  std::optional<NiftiPlacement> nifti_placement;
};

// A read that failed after it had learnt something about the scan (which series was chosen and
// why, its patient and date): the case's result keeps that.
class ReadError : public IoError {
 public:
  ReadError(const std::string& what, InputInfo info) : IoError(what), info_(std::move(info)) {}
  const InputInfo& info() const { return info_; }

 private:
  InputInfo info_;
};

struct ReadOptions {
  std::string series_uid;     // DICOM: read this series instead of choosing one
  double air_hu = -1000.0;    // value given to padding and to voxels outside the acquisition
  double min_hu = -1024.0;    // values below (outside the reconstruction circle) are raised to it
  uint64_t max_voxels = 512ull * 512 * 2000;  // --max-voxels: larger scans are refused unread
};

struct LoadedVolume {
  Volume volume;  // HU, float32, on the grid in info.geometry
  InputInfo info;
};

// Reads one case: a NIfTI/MHA/NRRD file, a DICOM file (its series in the same folder), or a
// folder of DICOM files (one series, or a study from which one series is chosen).
// Throws IoError with a one-line reason: among others for a scan of more than max_voxels
// voxels (checked from the headers, before the voxels are allocated), NaN or infinite voxels,
// and intensities that are not head CT in HU.
LoadedVolume read_volume(const std::filesystem::path& path, const ReadOptions& options = {});

}  // namespace hemexp
