#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hemexp/core/slice_stack.hpp"

namespace hemexp {

// What hemexp needs from one DICOM file's header.
struct DicomHeader {
  std::filesystem::path path;
  std::string sop_class_uid, modality, series_uid, series_description, image_type,
      convolution_kernel, transfer_syntax;
  std::string patient_id, study_uid;
  std::string sop_instance_uid;  // (0008,0018): the same image sent twice has the same one
  std::string contrast_agent;    // ContrastBolusAgent (0018,0010), as written ("" when absent)
  // When the images were made, as "YYYY-MM-DDTHH:MM:SS" (seconds may carry a fraction), from
  // the first of AcquisitionDateTime, AcquisitionDate+Time, SeriesDate+Time, StudyDate+Time,
  // ContentDate+Time that is complete and valid; empty when none is. datetime_source names it.
  std::string datetime, datetime_source;
  int64_t series_number = 0, instance_number = 0;
  int64_t rows = 0, columns = 0, frames = 1;
  int bits_allocated = 16, pixel_representation = 0;
  bool has_position = false, has_orientation = false, has_pixel_spacing = false;
  SliceGeometry geometry;
  double rescale_slope = 1.0, rescale_intercept = 0.0;
  std::optional<double> padding_value;        // stored (raw) value, signedness resolved
  std::optional<double> gantry_tilt_tag_deg;  // (0018,1120) as written by the scanner
  int64_t pixel_data_bytes = -1;              // raw pixel data length; -1 encapsulated, -2 absent
  bool pixel_data_truncated = false;          // the file ends before the raw pixel data does

  bool is_secondary_capture() const;
  bool is_localizer() const;
  bool is_enhanced_multiframe() const;
};

// A DICOM date (DA, YYYYMMDD) and time (TM, HHMMSS.FFFFFF; HHMM and HH allowed, ':' tolerated)
// as "YYYY-MM-DDTHH:MM:SS[.F]"; a DT value (YYYYMMDDHHMMSS.F, a UTC offset ignored) is
// accepted as `date` with an empty `time`. Empty when the date is missing or not a real date.
std::string dicom_datetime(const std::string& date, const std::string& time);

// The file of a series with the earliest date-time stamp (slices of one series can be stamped
// seconds apart), or nullptr when no file has one.
const DicomHeader* earliest_stamp(const std::vector<DicomHeader>& series);

// Cheap test used when walking folders: DICM preamble, or a header GDCM can parse (tried on
// names a DICOM file without preamble has: no extension, .dcm, .ima, or a UID's last digits).
// A file named DICOMDIR (an export's index) is not an image.
bool looks_like_dicom(const std::filesystem::path& path);

// Whether the file is named as a DICOM file is (.dcm or .ima, any case).
bool has_dicom_extension(const std::filesystem::path& path);

// Why a file cannot be a whole DICOM file: empty, cut inside its preamble, or it ends inside
// an element before its pixel data or inside its compressed pixel data's fragments (a copy cut
// short; GDCM aborts the process on many such files). nullopt when the walk finds nothing wrong
// or cannot tell (native pixel data's length is checked when it is decoded).
std::optional<std::string> header_cut_short(const std::filesystem::path& path);

// Reads the header (throws IoError if the file is not readable DICOM).
DicomHeader read_dicom_header(const std::filesystem::path& path);

// Why this file cannot be a slice of a CT volume, or "" if it can.
std::string slice_problem(const DicomHeader& h);

// Pixel values of a single-frame file in HU: rescale applied, padding values mapped to
// air_hu. Shape {rows, columns}, float32. Throws IoError when the pixel data is truncated or
// cannot be decoded.
struct PixelStats {
  int64_t padding_voxels = 0;
};
torch::Tensor read_dicom_pixels(const DicomHeader& h, double air_hu, PixelStats* stats = nullptr);

// Whether a ContrastBolusAgent value names an agent ("NONE", "N/A", "NO CONTRAST" ... do not).
bool names_contrast_agent(const std::string& value);

// Choosing one series among the files of a folder.
struct SeriesChoice {
  std::string series_uid;
  std::vector<DicomHeader> files;  // of the chosen series, one file per image (SOPInstanceUID)
  std::string description;         // "series 2 'Head 5mm' (CT, 28 images)"
  std::string explanation;         // why this series, and why the others were skipped
  size_t series_in_folder = 1;     // how many series the choice was made among
  std::map<std::string, std::string> skipped;  // series UID -> why it was not chosen
  // The other usable series, best first: read in turn when the chosen one cannot be read (a
  // series with slices lost in transfer beside a complete one).
  std::vector<SeriesChoice> next_best;
};
// Picks the axial non-contrast CT series with the most images: skipping localizers, secondary
// captures, non-CT, series of fewer than 3 images, series with repeated slice positions
// (perfusion, dynamic), non-axial reformats, and bone or lung kernels when a soft-tissue series
// exists; contrast-enhanced series (ContrastBolusAgent) rank after non-contrast ones, DERIVED
// after ORIGINAL ones.
// The same image twice (one SOPInstanceUID in two files) counts once. wanted_uid, when given,
// overrides the choice. Throws IoError when nothing qualifies.
SeriesChoice choose_series(const std::vector<DicomHeader>& headers, const std::string& wanted_uid);

// The folders below `folder` (not itself), at most 4 levels deep (patient/study/series and one
// more), hidden ones and their contents skipped, in path order: where `run` looks for the series
// of a folder that holds no DICOM file of its own (a patient's export named in a list).
std::vector<std::filesystem::path> folders_below(const std::filesystem::path& folder);

// Reads every DICOM file of a folder (not recursive). Files that are not DICOM are ignored.
std::vector<DicomHeader> read_folder_headers(const std::filesystem::path& folder,
                                             std::vector<std::string>* unreadable = nullptr);

}  // namespace hemexp
