#include "hemexp/io/reader.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <sstream>
#include <vector>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/slice_stack.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/dicom.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

// The fewest voxels along any axis of a volume hemexp measures (read_volume).
constexpr int64_t kMinVoxelsPerAxis = 3;

// What stops every series of a folder alike, so that no other series is tried (read_dicom): a
// file of the folder that cannot be read, and a series over --max-voxels (the user's to raise).
struct NoOtherSeries : IoError {
  using IoError::IoError;
};

// One pass over a float32 volume: its NaN or infinite voxels, and its finite ones below `low`.
struct VoxelCounts {
  int64_t not_finite = 0, below = 0;
};
VoxelCounts count_voxels(const torch::Tensor& voxels, float low) {
  const torch::Tensor v = voxels.to(torch::kFloat32).contiguous();  // itself, for a Volume's voxels
  const float* p = v.data_ptr<float>();
  std::atomic<int64_t> not_finite{0}, below{0};
  at::parallel_for(0, v.numel(), int64_t(1) << 18, [&](int64_t begin, int64_t end) {
    int64_t bad = 0, under = 0;
    for (int64_t i = begin; i < end; ++i) {
      bad += !std::isfinite(p[i]);
      under += p[i] < low;  // false for NaN; -inf is counted as not finite as well
    }
    not_finite += bad;
    below += under;
  });
  return {not_finite.load(), below.load()};
}

// Values below the CT range (outside the reconstruction circle, vendor fill values) are
// raised to min_hu; recorded when it happens. n: how many there are (count_voxels).
void clamp_below_range(Volume& v, const ReadOptions& options, InputInfo& info, int64_t n) {
  if (n == 0) return;
  v.voxels.clamp_min_(float(options.min_hu));  // the others, all finite, are left as they are
  info.corrections.push_back(std::to_string(n) + " voxels below " + format_number(options.min_hu, 0) +
                             " HU (outside the reconstruction circle) set to " +
                             format_number(options.min_hu, 0) + " HU");
}

// A head CT in HU has air around the head (near -1000) and almost nothing above bone
// (3000). Percentiles over a strided sample of about a million voxels decide; exact enough and
// cheap. The k-th smallest sample is above a value exactly when at most k samples are at or
// below it, so two counts in one pass decide as the percentiles would (the voxels are finite,
// checked before); only a volume that fails is sorted, for the message, by selection
// (nth_element). Selecting for every volume cost a fixed 6 ms a case (docs/PERFORMANCE.md).
void check_hounsfield(const Volume& v) {
  const torch::Tensor flat = v.voxels.reshape({-1}).to(torch::kFloat32).contiguous();
  const int64_t n = flat.numel();
  const int64_t stride = std::max<int64_t>(1, n / 1000000);
  const float* p = flat.data_ptr<float>();
  const int64_t samples = (n + stride - 1) / stride;
  if (samples == 0) throw IoError("the volume has no voxels");
  const auto rank = [&](double q) { return int64_t(q * double(samples - 1)); };
  int64_t air = 0, below_bone_limit = 0;
  for (int64_t i = 0; i < n; i += stride) {
    air += p[i] <= -500.f;
    below_bone_limit += p[i] <= 4000.f;
  }
  if (air > rank(0.01) && below_bone_limit > rank(0.99)) return;
  std::vector<float> sample;
  sample.reserve(size_t(samples));
  for (int64_t i = 0; i < n; i += stride) sample.push_back(p[i]);
  const auto percentile = [&](double q) {
    const auto k = sample.begin() + rank(q);
    std::nth_element(sample.begin(), k, sample.end());
    return double(*k);
  };
  const double p1 = percentile(0.01), p99 = percentile(0.99);
  if (p1 > -500 || p99 > 4000)
    throw IoError("intensities do not look like head CT in Hounsfield units (1st percentile " +
                  format_number(p1, 0) + ", 99th " + format_number(p99, 0) + "; expected air near -1000 and bone below 3000)");
}

void read_chosen_series(const SeriesChoice& choice, const std::vector<std::string>& unreadable,
                        const ReadOptions& options, LoadedVolume& out);

// The DICOM headers of every folder below `folder` (folders_below), each unreadable file named
// by its path below `folder`.
std::vector<DicomHeader> subtree_headers(const fs::path& folder, std::vector<std::string>* unreadable) {
  std::vector<DicomHeader> out;
  for (const fs::path& f : folders_below(folder)) {
    std::vector<std::string> cannot;
    for (DicomHeader& h : read_folder_headers(f, &cannot)) out.push_back(std::move(h));
    for (const std::string& c : cannot) unreadable->push_back((f.lexically_relative(folder) / c).generic_string());
  }
  return out;
}

// A folder named as one case (a patient's folder in a study spreadsheet) that holds volume
// files and no DICOM file, in it or in its subfolders: its one CT volume file (masks and label maps, 8-bit codes,
// are not CT); several are refused, named, since which one is the case cannot be told.
// Nothing for a DICOM folder, or one without volume files.
std::optional<fs::path> volume_file_of_folder(const fs::path& folder) {
  std::vector<fs::path> volumes;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& e = it->path();
    if (e.filename().string()[0] == '.' || !fs::is_regular_file(e, ec)) continue;
    if (is_volume_file(e)) {
      if (codes_not_ct_reason(e).empty()) volumes.push_back(e);
    } else if (has_dicom_extension(e) || looks_like_dicom(e)) {
      return std::nullopt;
    }
  }
  if (volumes.empty()) return std::nullopt;
  // DICOM series in its subfolders (an export beside a converted file) are the scan, as before.
  for (const fs::path& below : folders_below(folder))
    for (fs::directory_iterator it(below, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename().string()[0] != '.' && fs::is_regular_file(it->path(), ec) && !is_volume_file(it->path()) &&
          (has_dicom_extension(it->path()) || looks_like_dicom(it->path())))
        return std::nullopt;
  std::sort(volumes.begin(), volumes.end());
  if (volumes.size() > 1) {
    std::string names;
    for (const fs::path& v : volumes) names += (names.empty() ? "" : ", ") + v.filename().string();
    throw IoError("folder holds " + std::to_string(volumes.size()) + " volume files and no DICOM file (" + names +
                  "): which is the case cannot be told; name each file in the list, one row per scan");
  }
  return volumes.front();
}

LoadedVolume read_dicom(const fs::path& path, const ReadOptions& options) {
  const bool single_file = fs::is_regular_file(path);
  const fs::path folder = single_file ? path.parent_path() : path;
  std::vector<std::string> unreadable;
  std::vector<DicomHeader> headers = read_folder_headers(folder.empty() ? "." : folder, &unreadable);
  // A folder with no DICOM file of its own but series folders below it (a PACS or CD export's
  // patient/study/series layout, named as one case in a list): the series of its whole subtree.
  if (!single_file && headers.empty() && unreadable.empty()) headers = subtree_headers(folder, &unreadable);
  std::string wanted = options.series_uid;
  if (single_file) {
    const DicomHeader h = read_dicom_header(path);
    if (!wanted.empty() && wanted != h.series_uid)
      throw IoError("--series-uid " + wanted + " is not the series of this file (" + h.series_uid +
                    "): give its folder to choose among the folder's series");
    if (wanted.empty()) wanted = h.series_uid;
    // The series of the given file only.
    std::vector<DicomHeader> same;
    for (DicomHeader& other : headers)
      if (other.series_uid == h.series_uid) same.push_back(std::move(other));
    headers = std::move(same);
    if (headers.empty()) headers.push_back(h);
  }
  if (headers.empty()) {
    if (!unreadable.empty()) throw IoError("no readable DICOM file: " + unreadable.front());
    // Series nested deeper than the search goes (folders_below) are named, not called absent.
    std::error_code ec;
    int looked = 0;
    for (fs::recursive_directory_iterator it(folder, fs::directory_options::skip_permission_denied, ec), end;
         !ec && it != end && ++looked < 20000; it.increment(ec))
      if (it.depth() >= 4 && it->path().filename().string()[0] != '.' && fs::is_regular_file(it->path(), ec) &&
          !is_volume_file(it->path()) && looks_like_dicom(it->path()))
        throw IoError("folder holds no DICOM or volume files in it or in its subfolders up to 4 levels down; DICOM "
                      "lies deeper (" + it->path().parent_path().lexically_relative(folder).generic_string() +
                      "): name a folder nearer to the series");
    throw IoError("folder holds no DICOM or volume files");
  }
  if (single_file && headers.size() == 1) {
    const std::string problem = slice_problem(headers.front());
    throw IoError(problem.empty() ? "a single 2D image; a volume needs the whole series" : problem);
  }
  const SeriesChoice choice = choose_series(headers, single_file && options.series_uid.empty() ? "" : wanted);
  // The chosen series, or when it cannot be read (slices lost in transfer, pixels that do not
  // decode) the next usable one, in turn; every failure is kept in the explanation.
  std::vector<const SeriesChoice*> tries{&choice};
  for (const SeriesChoice& next : choice.next_best) tries.push_back(&next);
  std::vector<std::string> failures;  // "series 2 (...) could not be read: ..."
  std::string first_error;              // the chosen series' own reason
  for (size_t k = 0;; ++k) {
    const SeriesChoice& c = *tries[k];
    LoadedVolume out;
    InputInfo& info = out.info;
    info.path = path.string();
    info.format = "dicom";
    const DicomHeader& first = c.files.front();
    info.modality = first.modality;
    info.series_uid = c.series_uid;
    info.series_description = first.series_description;
    info.patient_id = first.patient_id;
    if (const DicomHeader* stamped = earliest_stamp(c.files)) info.datetime = stamped->datetime;
    info.series_choice = k == 0 ? c.explanation
                                : "read " + c.description + ", the next usable series" + c.explanation + ": " +
                                      join(failures, "; ") + " (the first choice: " + choice.explanation + ")";
    try {
      read_chosen_series(c, unreadable, options, out);
      if (names_contrast_agent(first.contrast_agent))
        info.warnings.push_back("the series is contrast-enhanced (ContrastBolusAgent '" + first.contrast_agent +
                                "'): hemexp's models read non-contrast CT, where vessels are not bright like blood");
      if (k > 0)
        info.warnings.push_back("the chosen series could not be read (" + failures.front() + "); read " + c.description +
                                " instead");
      return out;
    } catch (const IoError& e) {
      if (k == 0) first_error = e.what();
      failures.push_back(c.description + " could not be read: " + e.what());
      if (k + 1 < tries.size() && !dynamic_cast<const NoOtherSeries*>(&e)) continue;
      if (k > 0) info.series_choice = "no usable series could be read: " + join(failures, "; ") + " (" + choice.explanation + ")";
      // The case's result keeps which series, and why; among several series the error names
      // the one chosen (and says when the others failed too).
      std::string message = choice.series_in_folder > 1 ? failures.front() : first_error;
      if (k > 0) message += " (the other usable series could not be read either: see series_choice)";
      throw ReadError(message, info);
    }
  }
}

// The chosen series' pixels, stacked into one volume (read_dicom).
void read_chosen_series(const SeriesChoice& choice, const std::vector<std::string>& unreadable,
                        const ReadOptions& options, LoadedVolume& out) {
  // A file of the folder that could not be read may be one of the series' slices (an end slice
  // leaves no gap to find): the case is not measured on what may be part of a head.
  if (!unreadable.empty())
    throw NoOtherSeries(std::to_string(unreadable.size()) + (unreadable.size() == 1 ? " file" : " files") +
                  " of the folder cannot be read and may be slices of the series (" + unreadable.front() +
                  (unreadable.size() > 1 ? "; ..." : "") + "): replace or remove " +
                  (unreadable.size() == 1 ? "it" : "them"));
  uint64_t voxels = 0;  // from the headers, before any pixel is decoded
  for (const DicomHeader& h : choice.files) voxels += uint64_t(h.rows) * uint64_t(h.columns) * uint64_t(h.frames);
  if (voxels > options.max_voxels)
    throw NoOtherSeries("series of " + std::to_string(choice.files.size()) + " images of " + std::to_string(choice.files.front().rows) +
                  " x " + std::to_string(choice.files.front().columns) + " pixels is more than the limit of " +
                  std::to_string(options.max_voxels) + " voxels (--max-voxels)");
  InputInfo& info = out.info;
  const DicomHeader& first = choice.files.front();

  std::vector<Slice> slices;
  PixelStats stats;
  for (const DicomHeader& h : choice.files) {
    Slice s;
    s.geometry = h.geometry;
    s.source = h.path.filename().string();
    s.hu = read_dicom_pixels(h, options.air_hu, &stats);
    slices.push_back(std::move(s));
  }
  if (stats.padding_voxels > 0)
    info.corrections.push_back(std::to_string(stats.padding_voxels) + " padding voxels (value " +
                               format_number(*first.padding_value, 0) + ") set to air (" +
                               format_number(options.air_hu, 0) + " HU)");
  StackReport report;
  StackOptions stack_options;
  stack_options.air_hu = options.air_hu;
  try {
    out.volume = assemble_slices(std::move(slices), report, stack_options);
  } catch (const CoreError& e) {
    throw IoError(std::string("DICOM ") + e.what());
  }
  info.gantry_tilt_deg = report.gantry_tilt_deg;
  info.min_slice_spacing_mm = report.min_slice_spacing_mm;
  info.max_slice_spacing_mm = report.max_slice_spacing_mm;
  info.source_slices = report.input_slices;
  for (const std::string& c : report.corrections) info.corrections.push_back(c);
  info.grid_resampled = !report.corrections.empty();
  if (first.gantry_tilt_tag_deg && std::abs(std::abs(*first.gantry_tilt_tag_deg) -
                                            std::abs(report.gantry_tilt_deg)) > 1.0)
    info.warnings.push_back("GantryDetectorTilt tag says " + format_number(*first.gantry_tilt_tag_deg, 1) +
                            " deg but slice positions give " + format_number(report.gantry_tilt_deg, 1) +
                            " deg; the positions were used");
}

}  // namespace

LoadedVolume read_volume(const fs::path& path, const ReadOptions& options) {
  if (!fs::exists(path)) throw IoError("input does not exist");
  LoadedVolume out;
  if (is_volume_file(path)) {
    ImageFileContents file = read_image_file(path, options.max_voxels);
    out.volume = std::move(file.volume);
    out.info.path = path.string();
    out.info.format = file.format;
    out.info.nifti_placement = file.placement;
    out.info.warnings = file.warnings;
    out.info.modality = "CT";  // not recorded by these formats; the HU check below guards it
    const double dz = out.volume.geometry.spacing_mm[2];
    out.info.min_slice_spacing_mm = out.info.max_slice_spacing_mm = dz;
    out.info.source_slices = out.volume.geometry.size[2];
    const Mat3& d = out.volume.geometry.direction;
    // Non-orthogonal direction cosines are how a sheared (tilted) volume shows up here.
    const Vec3 c0 = column(d, 0), c1 = column(d, 1), c2 = column(d, 2);
    if (std::abs(dot(c0, c1)) > 1e-3 || std::abs(dot(c0, c2)) > 1e-3 || std::abs(dot(c1, c2)) > 1e-3)
      out.info.warnings.push_back("direction matrix is not orthogonal (sheared grid)");
  } else if (const std::optional<fs::path> volume = fs::is_directory(path) ? volume_file_of_folder(path) : std::nullopt) {
    // The case is still the folder (its results and --resume name the folder), read from its file.
    LoadedVolume one = read_volume(*volume, options);
    one.info.path = path.string();
    one.info.corrections.push_back("read from " + volume->filename().string() + ", the folder's one CT volume file");
    return one;
  } else if (fs::is_directory(path) || looks_like_dicom(path)) {
    out = read_dicom(path, options);
  } else if (const std::string ext = lower(path.extension().string()); ext == ".hdr" || ext == ".img") {
    throw IoError("a NIfTI or Analyze .hdr/.img pair is not read: save the scan as one .nii.gz file");
  } else {
    throw IoError("not a recognised image: expected NIfTI, MHA, NRRD or DICOM");
  }
  // One pass counts the voxels that are not finite and those below the CT range (no temporary
  // of the volume's size, where a sum, a comparison and a count were three passes and a bool copy).
  try {
    // Two slices through a clot segmented to nothing and came out "ok, 0 mL"; one sagittal slice
    // found no skull. A head CT has many voxels along every axis.
    const auto& n = out.volume.geometry.size;
    if (std::min({n[0], n[1], n[2]}) < kMinVoxelsPerAxis)
      throw IoError("image is " + std::to_string(n[0]) + " x " + std::to_string(n[1]) + " x " + std::to_string(n[2]) +
                    ": fewer than " + std::to_string(kMinVoxelsPerAxis) +
                    " voxels along an axis, too thin a slab to measure; a 3D head CT volume is expected");
    const VoxelCounts counts = count_voxels(out.volume.voxels, float(options.min_hu));
    if (counts.not_finite > 0) throw IoError(std::to_string(counts.not_finite) + " voxels are NaN or infinite");
    check_hounsfield(out.volume);
    clamp_below_range(out.volume, options, out.info, counts.below);
  } catch (const IoError& e) {
    out.info.geometry = out.volume.geometry;
    throw ReadError(e.what(), out.info);
  }
  out.info.geometry = out.volume.geometry;
  return out;
}

}  // namespace hemexp
