// The reader on real scanner data (tests/data, see NOTICE.md) and on defective inputs.
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "hemexp/core/preprocessing.hpp"
#include "hemexp/io/dicom.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"
#include "dicom_maker.hpp"
#include "test_support.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using test::data;
using test::ScratchDir;

std::string error_of(const fs::path& p, const ReadOptions& options = {}) {
  try {
    read_volume(p, options);
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

// --- The GE head series: 18.5 deg gantry tilt, 4 mm and 7 mm slices in one series ------------

class GeHeadSeries : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { loaded_ = new LoadedVolume(read_volume(data("ge-head-ct-tilt-mixed-thickness"))); }
  static void TearDownTestSuite() { delete loaded_; }
  static LoadedVolume* loaded_;
};
LoadedVolume* GeHeadSeries::loaded_ = nullptr;

TEST_F(GeHeadSeries, ReadsAsOneCaseWithTiltAndSpacingRecorded) {
  const InputInfo& info = loaded_->info;
  EXPECT_EQ(info.format, "dicom");
  EXPECT_EQ(info.modality, "CT");
  EXPECT_EQ(info.source_slices, 28);
  EXPECT_NEAR(info.gantry_tilt_deg, 18.5, 0.05);
  EXPECT_NEAR(info.min_slice_spacing_mm, 1.08, 0.01);
  EXPECT_NEAR(info.max_slice_spacing_mm, 7.0, 0.01);
  EXPECT_TRUE(info.grid_resampled);
  ASSERT_EQ(info.corrections.size(), 3u);
  EXPECT_NE(info.corrections[0].find("padding voxels (value -1500) set to air"), std::string::npos);
  EXPECT_NE(info.corrections[1].find("gantry tilt of 18.5 deg"), std::string::npos);
  EXPECT_NE(info.corrections[2].find("resampled to uniform 4.00 mm"), std::string::npos);
  // Orthogonal, equidistant output grid covering all 144 mm of the acquisition.
  const Geometry& g = loaded_->volume.geometry;
  EXPECT_NEAR(g.spacing_mm[2], 4.0, 0.01);
  EXPECT_EQ(g.size[2], 37);
  EXPECT_NEAR(mat_det(g.direction), 1.0, 1e-9);
  EXPECT_NEAR(dot(column(g.direction, 1), column(g.direction, 2)), 0.0, 1e-9);
  // HU: air is air, nothing is left below the CT range, bone is present.
  EXPECT_GE(loaded_->volume.voxels.min().item<float>(), -1024.f);
  EXPECT_GT(loaded_->volume.voxels.max().item<float>(), 1000.f);
}

TEST_F(GeHeadSeries, SlicesSitAtTheirTruePhysicalPositions) {
  // For every original slice, sample the corrected volume at the physical point of each
  // head pixel. With the tilt removed the values agree; reading the slices as a plain stack
  // along the normal (what ITK's series reader does, a silent shear) puts them up to 48 mm off.
  const Volume& v = loaded_->volume;
  std::vector<DicomHeader> headers = read_folder_headers(data("ge-head-ct-tilt-mixed-thickness"));
  ASSERT_EQ(headers.size(), 28u);
  std::sort(headers.begin(), headers.end(),
            [](const DicomHeader& a, const DicomHeader& b) { return a.geometry.position_mm[2] < b.geometry.position_mm[2]; });
  const Vec3 normal = normalized(cross(headers[0].geometry.row_direction, headers[0].geometry.column_direction));
  double true_error = 0, sheared_error = 0;
  int64_t count = 0;
  for (const DicomHeader& h : headers) {
    const torch::Tensor hu = read_dicom_pixels(h, -1000.0);
    auto acc = hu.accessor<float, 2>();
    const SliceGeometry& sg = h.geometry;
    const double along = dot(sg.position_mm - headers[0].geometry.position_mm, normal);
    for (int r = 8; r < sg.rows - 8; r += 16)
      for (int c = 8; c < sg.columns - 8; c += 16) {
        const double value = acc[r][c];
        if (value < -200 || value > 200) continue;  // soft tissue and brain, away from edges
        const Vec3 p = sg.position_mm + (c * sg.column_spacing_mm) * sg.row_direction +
                       (r * sg.row_spacing_mm) * sg.column_direction;
        const Vec3 stacked = headers[0].geometry.position_mm + along * normal +
                             (c * sg.column_spacing_mm) * sg.row_direction +
                             (r * sg.row_spacing_mm) * sg.column_direction;
        const Vec3 i_true = v.geometry.point_to_index(p), i_sheared = v.geometry.point_to_index(stacked);
        const auto inside = [&](const Vec3& i) {
          for (int a = 0; a < 3; ++a)
            if (i[a] < 0 || i[a] > double(v.geometry.size[a] - 1)) return false;
          return true;
        };
        if (!inside(i_true) || !inside(i_sheared)) continue;
        true_error += std::abs(sample_trilinear(v, i_true) - value);
        sheared_error += std::abs(sample_trilinear(v, i_sheared) - value);
        ++count;
      }
  }
  ASSERT_GT(count, 5000);
  true_error /= double(count);
  sheared_error /= double(count);
  EXPECT_LT(true_error, 8.0) << "mean |HU difference| at the true positions";
  EXPECT_GT(sheared_error, 5 * true_error) << "the sheared stack must be visibly wrong";
}

// --- Other real scanner data -----------------------------------------------------------------

TEST(Reader, PhilipsPhantomHasPlausibleHounsfieldUnits) {
  const LoadedVolume lv = read_volume(data("philips-head-phantom-5mm"));
  const Geometry& g = lv.volume.geometry;
  EXPECT_EQ(g.size, (std::array<int64_t, 3>{512, 512, 6}));
  EXPECT_NEAR(g.spacing_mm[0], 0.451, 0.001);
  EXPECT_NEAR(g.spacing_mm[2], 5.0, 1e-3);
  EXPECT_DOUBLE_EQ(lv.info.gantry_tilt_deg, 0.0);
  EXPECT_FALSE(lv.info.grid_resampled);
  // Unsigned 12-bit storage with intercept -1024: air in the corners near -1000 HU.
  const torch::Tensor corner = lv.volume.voxels.slice(1, 0, 40).slice(2, 0, 40);
  EXPECT_NEAR(corner.median().item<double>(), -1000.0, 30.0);
  EXPECT_LT(lv.volume.voxels.max().item<double>(), 3072.0);
}

TEST(Reader, GantryTiltWithoutTiltTagIsMeasuredFromPositions) {
  const LoadedVolume lv = read_volume(data("edge/dicom2nifti/gantrytilting/001"));
  EXPECT_NEAR(lv.info.gantry_tilt_deg, 14.0, 0.1);
  EXPECT_NEAR(lv.volume.geometry.spacing_mm[2], 5.0 * std::cos(14.0 * M_PI / 180), 0.01);
}

TEST(Reader, CodecSetDecodesToIdenticalPixels) {
  // One MR slice in nine transfer syntaxes (explicit/implicit LE, big endian, RLE, JPEG
  // lossless, JPEG-LS, JPEG 2000 lossless).
  const DicomHeader reference_header = read_dicom_header(data("dicom-codecs-mr/1.dcm"));
  const torch::Tensor reference = read_dicom_pixels(reference_header, -1000.0);
  EXPECT_GT(reference.max().item<float>(), reference.min().item<float>());
  std::set<std::string> syntaxes;
  for (int k = 1; k <= 9; ++k) {
    const DicomHeader h = read_dicom_header(data("dicom-codecs-mr/" + std::to_string(k) + ".dcm"));
    syntaxes.insert(h.transfer_syntax);
    EXPECT_TRUE(torch::equal(read_dicom_pixels(h, -1000.0), reference)) << k << ".dcm " << h.transfer_syntax;
  }
  EXPECT_EQ(syntaxes.size(), 7u);  // 5/6 (JPEG lossless) and 7/8 (JPEG-LS) share UIDs
}

TEST(Reader, PaddingStoredUnsignedForSignedPixelsIsMappedToAir) {
  // GE: PixelPaddingValue written as US while pixels are signed.
  const DicomHeader h = read_dicom_header(data("edge/fo-dicom/GH1308.dcm"));
  ASSERT_TRUE(h.padding_value.has_value());
  EXPECT_DOUBLE_EQ(*h.padding_value, -2000.0);
  EXPECT_NEAR(*h.gantry_tilt_tag_deg, 5.5, 1e-9);
  PixelStats stats;
  const torch::Tensor hu = read_dicom_pixels(h, -1000.0, &stats);
  EXPECT_GT(stats.padding_voxels, 1000);
  EXPECT_EQ((hu == float(-2000 - 1024)).sum().item<int64_t>(), 0);
}

TEST(Reader, CompressedCtSlicesDecodeToHounsfieldUnits) {
  for (const char* name : {"edge/pydicom/J2K_pixelrep_mismatch.dcm", "edge/fo-dicom/IM-0001-0001-0001.dcm",
                           "edge/fo-dicom/D_CLUNIE_CT1_RLE_FRAGS.dcm", "edge/fo-dicom/CT1_J2KI"}) {
    const DicomHeader h = read_dicom_header(data(name));
    const torch::Tensor hu = read_dicom_pixels(h, -1000.0);
    EXPECT_EQ(hu.size(0), h.rows) << name;
    EXPECT_LT(hu.min().item<double>(), -500.0) << name << " has no air";
    EXPECT_GT(hu.max().item<double>(), 100.0) << name << " has no tissue";
  }
}

// --- Each defective input gives its own clear, one-line reason -------------------------------

TEST(Reader, DefectiveInputsFailWithClearReasons) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"dicom-codecs-mr/1.dcm", "modality is MR, not CT"},
      {"edge/pydicom/MR_small_bigendian.dcm", "modality is MR, not CT"},
      {"edge/pydicom/badVR.dcm", "modality is RTDOSE, not CT"},
      {"edge/pydicom/CT_small.dcm", "a single 2D image"},
      {"edge/pydicom-data/eCT_Supplemental.dcm", "enhanced multi-frame CT (2 frames) is not supported"},
      {"edge/fo-dicom/CT-MONO2-16-ankle", "CT stored as Secondary Capture"},
      {"edge/fo-dicom/GH1728.dcm", "CT stored as Secondary Capture"},
      {"edge/dicom2nifti/sliceincrement/001", "missing slices: a gap of 10.00 mm"},
      {"edge/dicom2nifti/sliceincrement/002", "missing slices: a gap of 1.50 mm"},
      {"edge/nibabel/analyze.hdr", "a NIfTI or Analyze .hdr/.img pair is not read: save the scan as one .nii.gz file"},
      {"edge/nibabel/anatomical.nii", "do not look like head CT in Hounsfield units (1st percentile 1203, 99th 12719;"},
      {"edge/nibabel/standard.nii.gz", "do not look like head CT in Hounsfield units (1st percentile 0, 99th 255;"},
  };
  for (const auto& [path, reason] : cases) {
    const std::string error = error_of(data(path));
    EXPECT_NE(error.find(reason), std::string::npos) << path << ": got '" << error << "'";
    EXPECT_EQ(error.find('\n'), std::string::npos) << path;
  }
}

// Values below the CT range (a scanner's fill outside the reconstruction circle) are raised to
// min_hu, counted in the corrections; every other voxel keeps its value, -1024 itself included.
TEST(Reader, ValuesBelowTheCtRangeAreRaisedAndCounted) {
  ScratchDir dir;
  Geometry g;
  g.size = {24, 20, 6};
  g.spacing_mm = {0.5, 0.5, 5.0};
  torch::manual_seed(3);
  torch::Tensor hu = torch::randint(-100, 200, {6, 20, 24}).to(torch::kInt16);
  hu.slice(2, 0, 4).fill_(-1000);  // air
  hu.slice(2, 0, 2).slice(1, 0, 7).fill_(-3024);  // fill outside the circle: 6 x 7 x 2 = 84 voxels
  hu[0][19][23] = -2048;
  hu[1][19][23] = -1024;
  hu[2][19][23] = -1025;
  write_image_file(dir / "ct.nii.gz", hu, g);
  const LoadedVolume v = read_volume(dir / "ct.nii.gz");
  const torch::Tensor expected = hu.to(torch::kFloat32).clamp_min(-1024);
  EXPECT_TRUE(torch::equal(v.volume.voxels, expected));
  EXPECT_EQ(v.info.corrections, (std::vector<std::string>{
                                    "86 voxels below -1024 HU (outside the reconstruction circle) set to -1024 HU"}));
  ReadOptions lower;
  lower.min_hu = -4000;
  const LoadedVolume kept = read_volume(dir / "ct.nii.gz", lower);
  EXPECT_TRUE(torch::equal(kept.volume.voxels, hu.to(torch::kFloat32)));
  EXPECT_TRUE(kept.info.corrections.empty());
}

// The HU check decides as the 1st and 99th percentiles of its sample would: exactly at the
// ranks' edges, with values at the limits passing, and on the strided sample of about a million
// voxels, not the whole volume.
TEST(Reader, HounsfieldCheckDecidesAtThePercentilesOfItsSample) {
  ScratchDir dir;
  const auto verdict = [&](const torch::Tensor& hu) {
    Geometry g;
    g.size = {hu.size(2), hu.size(1), hu.size(0)};
    write_image_file(dir / "v.nii", hu, g);
    return error_of(dir / "v.nii");
  };
  // 1001 voxels, each one sampled: the 1st percentile is the 11th smallest, the 99th the 991st.
  const auto volume = [](int64_t air, int64_t bone, float air_hu, float bone_hu, int64_t n = 1001) {
    torch::Tensor v = torch::full({n}, 40.f);
    v.slice(0, 0, air).fill_(air_hu);
    v.slice(0, n - bone, n).fill_(bone_hu);
    return v.reshape({n / 143, 11, 13});
  };
  const std::string why = "do not look like head CT in Hounsfield units (1st percentile ";
  EXPECT_EQ(verdict(volume(11, 10, -1000, 4100)), "");
  EXPECT_EQ(verdict(volume(11, 11, -500, 4000)), "");  // at the limits: not above them
  EXPECT_NE(verdict(volume(10, 10, -1000, 4100)).find(why + "40, 99th 40;"), std::string::npos);
  EXPECT_NE(verdict(volume(11, 11, -1000, 4100)).find(why + "-1000, 99th 4100;"), std::string::npos);
  EXPECT_NE(verdict(volume(11, 11, -499, 4000)).find(why + "-499, 99th 4000;"), std::string::npos);
  // 1144 voxels: the ranks are 0.01 and 0.99 of 1143 (11 and 1131), not of 1144 (11 and 1132).
  EXPECT_EQ(verdict(volume(12, 12, -1000, 4100, 1144)), "");
  EXPECT_NE(verdict(volume(11, 13, -1000, 4100, 1144)).find(why + "40, 99th 4100;"), std::string::npos);
  // 2,000,000 voxels: every second one is sampled (x even). Air in every odd column is half the
  // volume and none of the sample; in every even column, half of both.
  torch::Tensor columns = torch::full({20, 250, 400}, 40.f);
  columns.slice(2, 1, 400, 2).fill_(-1000);
  EXPECT_NE(verdict(columns).find(why + "40, 99th 40;"), std::string::npos);
  columns.fill_(40).slice(2, 0, 400, 2).fill_(-1000);
  EXPECT_EQ(verdict(columns), "");
}

// A file copied (the same SOPInstanceUID) is one image read once; another image at a position
// already imaged is refused when hemexp chooses, and by the slice stack when the series is named.
TEST(Reader, DuplicateSlicePositions) {
  ScratchDir dir, copies("copies"), source("source");
  for (const char* f : {"01.dcm", "02.dcm", "03.dcm"})
    fs::copy_file(data("ge-head-ct-tilt-mixed-thickness") / f, dir / f);
  fs::copy_file(data("ge-head-ct-tilt-mixed-thickness/02.dcm"), dir / "02-copy.dcm");
  const LoadedVolume once = read_volume(dir.path());
  EXPECT_EQ(once.info.source_slices, 3);
  EXPECT_EQ(once.info.series_choice,
            "chose series 2 (CT, 3 images); 1 file holds an image of it a second time (the same SOPInstanceUID): read once");

  const DicomHeader h = read_dicom_header(dir / "02.dcm");
  fs::copy_file(data("ge-head-ct-tilt-mixed-thickness/02.dcm"), source / "02.dcm");
  test::write_dicom_scan(source.path(), copies.path(), {h.patient_id, h.study_uid, "2.25.50", "", "", "", "", {{{0x0020, 0x000e}, h.series_uid}}});
  fs::remove(dir / "02-copy.dcm");
  fs::copy_file(copies / "02.dcm", dir / "02-again.dcm");  // its own SOPInstanceUID
  EXPECT_EQ(error_of(dir.path()), "4 images at 3 slice positions (positions imaged more than once: a perfusion or dynamic "
                                  "series, or several acquisitions under one series UID)");
  ReadOptions options;
  options.series_uid = h.series_uid;
  EXPECT_NE(error_of(dir.path(), options).find("duplicate slice positions"), std::string::npos) << error_of(dir.path(), options);
}

TEST(Reader, TruncatedPixelData) {
  ScratchDir dir;
  for (const char* f : {"01.dcm", "02.dcm", "03.dcm", "04.dcm"})
    fs::copy_file(data("ge-head-ct-tilt-mixed-thickness") / f, dir / f);
  fs::resize_file(dir / "03.dcm", fs::file_size(dir / "03.dcm") - 10000);
  const std::string error = error_of(dir.path());
  EXPECT_NE(error.find("pixel data is truncated"), std::string::npos) << error;
  EXPECT_NE(error.find("(1 of 4 images: 03.dcm)"), std::string::npos) << error;  // the file to look at
  fs::resize_file(dir / "04.dcm", fs::file_size(dir / "04.dcm") - 10000);
  const std::string two = error_of(dir.path());
  EXPECT_NE(two.find("(2 of 4 images, the first 03.dcm)"), std::string::npos) << two;
}

TEST(Reader, TwoDimensionalAndFourDimensionalImages) {
  ScratchDir dir;
  Geometry g;
  g.size = {8, 6, 1};
  write_image_file(dir / "flat.nii.gz", torch::full({1, 6, 8}, -1000.f), g);
  EXPECT_NE(error_of(dir / "flat.nii.gz").find(": 2D or a single slice"), std::string::npos) << error_of(dir / "flat.nii.gz");

  // A 4D NIfTI-1 (2x2x2 voxels, 3 volumes, int16) written byte by byte.
  std::vector<char> header(352, 0);
  auto put16 = [&](int offset, int16_t v) { std::memcpy(header.data() + offset, &v, 2); };
  auto put32 = [&](int offset, int32_t v) { std::memcpy(header.data() + offset, &v, 4); };
  auto putf = [&](int offset, float v) { std::memcpy(header.data() + offset, &v, 4); };
  put32(0, 348);
  const int16_t dims[8] = {4, 2, 2, 2, 3, 1, 1, 1};
  for (int k = 0; k < 8; ++k) put16(40 + 2 * k, dims[k]);
  put16(70, 4);   // datatype int16
  put16(72, 16);  // bitpix
  for (int k = 0; k < 5; ++k) putf(76 + 4 * k, 1.f);
  putf(108, 352.f);  // vox_offset
  std::memcpy(header.data() + 344, "n+1\0", 4);
  std::ofstream out(dir / "four.nii", std::ios::binary);
  out.write(header.data(), 352);
  const std::vector<int16_t> voxels(24, -1000);
  out.write(reinterpret_cast<const char*>(voxels.data()), 48);
  out.close();
  EXPECT_NE(error_of(dir / "four.nii").find("4D with 3 volumes"), std::string::npos) << error_of(dir / "four.nii");
}

// Two slices through a clot were segmented to nothing and reported "ok, 0 mL"; a one-voxel
// sagittal or coronal slab found no skull and gave 0 mL too. Fewer than 3 voxels along any axis
// is refused, in any orientation; 3 are read.
TEST(Reader, ThinSlabsAreRefusedNotMeasuredAsEmpty) {
  ScratchDir dir;
  torch::manual_seed(5);
  for (const auto& [size, refused] : std::vector<std::pair<std::array<int64_t, 3>, bool>>{
           {{40, 30, 2}, true}, {{1, 30, 20}, true}, {{40, 2, 20}, true}, {{40, 30, 3}, false}, {{3, 30, 20}, false}}) {
    Geometry g;
    g.size = size;
    torch::Tensor hu = torch::randint(-1000, 1500, {size[2], size[1], size[0]}).to(torch::kInt16);
    write_image_file(dir / "slab.nii.gz", hu, g);
    const std::string why = error_of(dir / "slab.nii.gz");
    const std::string shape = std::to_string(size[0]) + " x " + std::to_string(size[1]) + " x " + std::to_string(size[2]);
    if (refused)
      EXPECT_EQ(why, "image is " + shape + ": fewer than 3 voxels along an axis, too thin a slab to measure; a 3D "
                     "head CT volume is expected");
    else
      EXPECT_EQ(why, "") << shape;
  }
}

// A patient's folder named as one case in a study spreadsheet, holding a volume file rather
// than DICOM, failed with "folder holds no DICOM or volume files". Its one CT volume is read (a
// mask beside it is not a CT); two CT volumes are refused, named.
TEST(Reader, AFolderOfOneVolumeFileIsThatScan) {
  ScratchDir dir;
  fs::create_directories(dir / "P002");
  Geometry g;
  g.size = {20, 16, 6};
  torch::manual_seed(2);
  const torch::Tensor hu = torch::randint(-1000, 1500, {6, 16, 20}).to(torch::kInt16);
  write_image_file(dir / "P002/ct.nii.gz", hu, g);
  write_image_file(dir / "P002/mask.nii.gz", (hu > 60).to(torch::kUInt8), g);
  const LoadedVolume v = read_volume(dir / "P002");
  EXPECT_EQ(v.info.path, (dir / "P002").string());  // the case is the folder (expansion and --resume match it)
  EXPECT_EQ(v.info.corrections, std::vector<std::string>{"read from ct.nii.gz, the folder's one CT volume file"});
  EXPECT_TRUE(torch::equal(v.volume.voxels, hu.to(torch::kFloat32)));
  // A DICOM series in a subfolder is the scan, as before (an export beside its converted file).
  fs::create_directories(dir / "P003/study/series");
  fs::copy_file(dir / "P002/ct.nii.gz", dir / "P003/ct.nii.gz");
  for (const char* f : {"01.dcm", "02.dcm", "03.dcm"})
    fs::copy_file(data("ge-head-ct-tilt-mixed-thickness") / f, dir / "P003/study/series" / f);
  EXPECT_EQ(read_volume(dir / "P003").info.format, "dicom");
  write_image_file(dir / "P002/followup.nii.gz", hu, g);
  EXPECT_EQ(error_of(dir / "P002"), "folder holds 2 volume files and no DICOM file (ct.nii.gz, followup.nii.gz): which "
                                    "is the case cannot be told; name each file in the list, one row per scan");
}

TEST(Reader, NonImageFile) {
  ScratchDir dir;
  std::ofstream(dir / "notes.bin") << "not an image";
  EXPECT_NE(error_of(dir / "notes.bin").find("not a recognised image"), std::string::npos);
  fs::create_directories(dir / "empty");
  EXPECT_NE(error_of(dir / "empty").find("folder holds no DICOM or volume files"), std::string::npos) << error_of(dir / "empty");
}

// --- Study folders: the series choice -----------------------------------------------------------

// A folder of one patient's study: the axial soft-tissue CT series with the most images is
// chosen, and the reasons say why each other series was not (a tie says it was a tie).
TEST(Reader, StudyFolderChoosesTheAxialCtSeriesWithMostImages) {
  ScratchDir dir, copies("copies");
  const DicomHeader ge = read_dicom_header(data("ge-head-ct-tilt-mixed-thickness/01.dcm"));
  for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
    fs::copy_file(e.path(), dir / ("ge-" + e.path().filename().string()));
  const auto series = [&](const std::string& name, const std::string& uid, const std::string& kernel) {
    test::ScanTags t{ge.patient_id, ge.study_uid, uid, "20240101", "101500", "", "", {}};
    if (!kernel.empty()) t.more[{0x0018, 0x1210}] = kernel;
    test::write_dicom_scan(data("ge-head-ct-tilt-mixed-thickness"), copies / name, t);
    for (const auto& e : fs::directory_iterator(copies / name))
      fs::copy_file(e.path(), dir / (name + "-" + e.path().filename().string()));
  };
  series("same", "2.25.1", "");        // the same images again: a tie, broken by the UID
  series("bone", "2.25.2", "Hr64");   // a Siemens bone kernel in today's naming
  for (int k = 1; k <= 8; ++k) fs::remove(dir / ("same-" + std::string(k < 10 ? "0" : "") + std::to_string(k) + ".dcm"));
  series("tie", "2.25.3", "");
  fs::copy_file(data("dicom-codecs-mr/1.dcm"), dir / "mr.dcm");
  fs::copy_file(data("edge/fo-dicom/GH1728.dcm"), dir / "sc.dcm");

  const LoadedVolume lv = read_volume(dir.path());
  EXPECT_EQ(lv.info.source_slices, 28);
  EXPECT_EQ(lv.info.series_uid, ge.series_uid);
  EXPECT_NEAR(lv.info.gantry_tilt_deg, 18.5, 0.05);
  const std::string& why = lv.info.series_choice;
  EXPECT_NE(why.find("28 images) as the axial CT series with the most images"), std::string::npos) << why;
  EXPECT_NE(why.find("(CT, 20 images): fewer images"), std::string::npos) << why;
  EXPECT_NE(why.find("(CT, 28 images): as many images and the same series number, and a later series UID"),
            std::string::npos)
      << why;
  EXPECT_NE(why.find("(CT, 28 images): bone or lung kernel Hr64"), std::string::npos) << why;
  EXPECT_NE(why.find("(MR, 1 image): modality is MR, not CT"), std::string::npos) << why;
  EXPECT_NE(why.find("Secondary Capture"), std::string::npos) << why;

  // A lone soft-tissue image (a key image) does not make the bone-kernel head series unusable.
  ScratchDir lone("lone");
  for (const auto& e : fs::directory_iterator(copies / "bone")) fs::copy_file(e.path(), lone / e.path().filename());
  fs::copy_file(data("ge-head-ct-tilt-mixed-thickness/05.dcm"), lone / "key.dcm");
  const LoadedVolume bone = read_volume(lone.path());
  EXPECT_EQ(bone.info.series_uid, "2.25.2");
  EXPECT_NE(bone.info.series_choice.find("(CT, 1 image): too few images for a volume (1)"), std::string::npos)
      << bone.info.series_choice;

  // Two studies of one patient (a baseline and its follow-up) in one folder: not guessed.
  ScratchDir two("two");
  for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
    fs::copy_file(e.path(), two / ("base-" + e.path().filename().string()));
  test::write_dicom_scan(data("ge-head-ct-tilt-mixed-thickness"), copies / "followup",
                         {ge.patient_id, "2.25.9", "2.25.10", "20240102", "093000", "", "", {}});
  for (const auto& e : fs::directory_iterator(copies / "followup")) fs::copy_file(e.path(), two / ("fu-" + e.path().filename().string()));
  const std::string error = error_of(two.path());
  EXPECT_EQ(error.rfind("the folder holds CT series of 2 studies (patient '" + ge.patient_id + "' ", 0), 0u) << error;
  EXPECT_NE(error.find("2024-01-02T09:30:00: series 2 (CT, 28 images)"), std::string::npos) << error;
  EXPECT_NE(error.find("give each study its own folder, or name the series with --series-uid"), std::string::npos) << error;
}

// Two patients' series in one folder are refused, naming both; --series-uid picks one.
TEST(Reader, StudyFolderOfTwoPatientsIsNotGuessed) {
  ScratchDir dir;
  for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
    fs::copy_file(e.path(), dir / ("ge-" + e.path().filename().string()));
  for (const auto& e : fs::directory_iterator(data("philips-head-phantom-5mm")))
    fs::copy_file(e.path(), dir / ("ph-" + e.path().filename().string()));
  fs::copy_file(data("dicom-codecs-mr/1.dcm"), dir / "mr.dcm");
  const std::string error = error_of(dir.path());
  EXPECT_EQ(error.rfind("the folder holds CT series of 2 studies of 2 patients (patient 'PLASTIC' ", 0), 0u) << error;
  const DicomHeader ph = read_dicom_header(data("philips-head-phantom-5mm/I100"));
  const DicomHeader ge = read_dicom_header(data("ge-head-ct-tilt-mixed-thickness/01.dcm"));
  // Each study's series with its UID, for --series-uid.
  EXPECT_NE(error.find("series 201 'STD BRAIN 5MM' (CT, 6 images) UID " + ph.series_uid + "; patient 'QMNx85rKkkg' undated: "
                       "series 2 (CT, 28 images) UID " + ge.series_uid + "): "),
            std::string::npos)
      << error;

  // --series-uid overrides the choice.
  const DicomHeader& philips = ph;
  ReadOptions options;
  options.series_uid = philips.series_uid;
  const LoadedVolume chosen = read_volume(dir.path(), options);
  EXPECT_EQ(chosen.info.source_slices, 6);
  EXPECT_EQ(chosen.info.series_uid, philips.series_uid);
  options.series_uid = "1.2.3.4";
  // A UID that is not there: the folder's series are listed, with their UIDs.
  EXPECT_NE(error_of(dir.path(), options).find("series UID 1.2.3.4 is not in this folder (its series: "), std::string::npos);
  EXPECT_NE(error_of(dir.path(), options).find(ph.series_uid + " series 201 'STD BRAIN 5MM' (CT, 6 images)"), std::string::npos)
      << error_of(dir.path(), options);
}

// What a PACS export puts beside the head CT: a CT angiography (ContrastBolusAgent), a perfusion
// series (each position scanned again), and the head series sent twice into the folder (the same
// SOPInstanceUIDs). The plain head CT is chosen, each of the others says why it was not, and the
// copies count once. A series with slices lost in transfer gives way to the next usable one; a
// folder's only series that is DERIVED is read.
TEST(Reader, StudyFolderChoosesTheNonContrastSeriesAndCountsCopiesOnce) {
  ScratchDir dir, copies("copies");
  const fs::path ge = data("ge-head-ct-tilt-mixed-thickness");
  const DicomHeader first = read_dicom_header(ge / "01.dcm");
  const auto add = [&](const std::string& name, const std::string& uid, std::map<std::pair<uint16_t, uint16_t>, std::string> more,
                       const fs::path& into) {
    test::write_dicom_scan(ge, copies / name, {first.patient_id, first.study_uid, uid, "20240101", "101500", "", "", more});
    for (const auto& e : fs::directory_iterator(copies / name)) fs::copy_file(e.path(), into / (name + "-" + e.path().filename().string()));
  };
  add("head", "2.25.20", {{{0x0020, 0x0011}, "3"}}, dir.path());
  add("again", "2.25.20", {{{0x0020, 0x0011}, "3"}}, dir.path());  // the same images, sent twice
  // A CT angiography of as many images and a lower series number: it would win a tie.
  add("cta", "2.25.21", {{{0x0020, 0x0011}, "2"}, {{0x0018, 0x0010}, "OMNIPAQUE 350"}}, dir.path());
  // Perfusion: one series of two passes over the same positions (own SOPInstanceUIDs).
  add("pass1", "2.25.22", {{{0x0020, 0x0011}, "1"}}, dir.path());
  add("pass2", "2.25.23", {{{0x0020, 0x0011}, "1"}, {{0x0020, 0x000e}, "2.25.22"}}, dir.path());

  const LoadedVolume lv = read_volume(dir.path());
  EXPECT_EQ(lv.info.series_uid, "2.25.20");
  EXPECT_EQ(lv.info.source_slices, 28);
  const std::string& why = lv.info.series_choice;
  EXPECT_EQ(why.rfind("chose series 3 (CT, 28 images) as the axial CT series with the most images; skipped ", 0), 0u) << why;
  EXPECT_NE(why.find("series 2 (CT, 28 images): contrast-enhanced (ContrastBolusAgent 'OMNIPAQUE 350')"), std::string::npos) << why;
  EXPECT_NE(why.find("series 1 (CT, 56 images): 56 images at 28 slice positions (positions imaged more than once: a perfusion"), std::string::npos) << why;
  EXPECT_NE(why.find("; 28 files hold an image of it a second time (the same SOPInstanceUID): read once"), std::string::npos) << why;
  // "No contrast" as sites write it is no agent: a value misread would only rank a series.
  for (const char* none : {"NONE", " no contrast ", "", "C-", "NC", "N", "NOT USED", "NONE USED", "NO IV CONTRAST",
                           "UNENHANCED", "N/A", "w/o contrast", "Non-contrast"})
    EXPECT_FALSE(names_contrast_agent(none)) << none;
  EXPECT_TRUE(names_contrast_agent("Iomeron 400"));
  EXPECT_TRUE(names_contrast_agent("OMNIPAQUE 350"));

  // The contrast series alone is read, and says what it is.
  ScratchDir cta("cta");
  for (const auto& e : fs::directory_iterator(copies / "cta")) fs::copy_file(e.path(), cta / e.path().filename());
  const LoadedVolume enhanced = read_volume(cta.path());
  EXPECT_EQ(enhanced.info.source_slices, 28);
  EXPECT_EQ(enhanced.info.series_choice, "chose series 2 (CT, 28 images): contrast-enhanced (ContrastBolusAgent 'OMNIPAQUE 350')");
  ASSERT_FALSE(enhanced.info.warnings.empty());
  EXPECT_EQ(enhanced.info.warnings.back().rfind("the series is contrast-enhanced (ContrastBolusAgent 'OMNIPAQUE 350')", 0), 0u);

  // Two slices lost from the original series: it cannot be read, and the complete DERIVED
  // reconstruction (ranked after it) is read instead, saying why.
  ScratchDir lost("lost");
  add("derived", "2.25.24", {{{0x0008, 0x0008}, "DERIVED\\SECONDARY\\AXIAL"}}, lost.path());
  add("gappy", "2.25.25", {}, lost.path());
  fs::remove(lost / "gappy-05.dcm");
  fs::remove(lost / "gappy-06.dcm");
  const LoadedVolume next = read_volume(lost.path());
  EXPECT_EQ(next.info.series_uid, "2.25.24");
  EXPECT_EQ(next.info.source_slices, 28);
  EXPECT_EQ(next.info.series_choice.rfind("read series 2 (CT, 28 images), the next usable series: series 2 (CT, 26 images) "
                                          "could not be read: DICOM series has missing slices",
                                          0),
            0u)
      << next.info.series_choice;
  ASSERT_FALSE(next.info.warnings.empty());
  EXPECT_EQ(next.info.warnings.back().rfind("the chosen series could not be read (series 2 (CT, 26 images) could not be read: "
                                            "DICOM series has missing slices", 0),
            0u)
      << next.info.warnings.back();
  // Over --max-voxels, the series is not replaced by a smaller one: the limit is named.
  ReadOptions small;
  small.max_voxels = 1000;
  EXPECT_NE(error_of(lost.path(), small).find("(--max-voxels)"), std::string::npos) << error_of(lost.path(), small);
  EXPECT_EQ(error_of(lost.path(), small).rfind("series 2 (CT, 26 images) could not be read: series of 26 images", 0), 0u) << error_of(lost.path(), small);
  // The DERIVED series alone is read, and says what it is.
  ScratchDir derived("derived");
  for (const auto& e : fs::directory_iterator(copies / "derived")) fs::copy_file(e.path(), derived / e.path().filename());
  const LoadedVolume only = read_volume(derived.path());
  EXPECT_EQ(only.info.source_slices, 28);
  EXPECT_EQ(only.info.series_choice, "chose series 2 (CT, 28 images): derived images (a reconstruction), the folder's only series");
}

// Bone and lung kernels of each vendor are skipped for the soft-tissue series.
TEST(Reader, BoneAndLungKernelsOfEachVendor) {
  const auto bone = [](const std::string& kernel, const std::string& description = "") {
    ScratchDir dir, copies("copies");
    const fs::path ge = data("ge-head-ct-tilt-mixed-thickness");
    const DicomHeader first = read_dicom_header(ge / "01.dcm");
    test::write_dicom_scan(ge, copies / "soft", {first.patient_id, first.study_uid, "2.25.40", "20240101", "101500", "", "",
                                                 {{{0x0018, 0x1210}, "STANDARD"}, {{0x0020, 0x0011}, "5"}}});
    test::write_dicom_scan(ge, copies / "k", {first.patient_id, first.study_uid, "2.25.41", "20240101", "101500", "", "",
                                              {{{0x0018, 0x1210}, kernel}, {{0x0020, 0x0011}, "4"}, {{0x0008, 0x103e}, description}}});
    for (const char* s : {"soft", "k"})
      for (const auto& e : fs::directory_iterator(copies / s)) fs::copy_file(e.path(), dir / (std::string(s) + e.path().filename().string()));
    // The same images: the lower series number (the kernel's) wins unless the kernel is skipped.
    return read_volume(dir.path()).info.series_uid == "2.25.40";
  };
  for (const char* k : {"BONE", "BONEPLUS", "EDGE", "LUNG", "H70h", "Hr64", "I70f", "Bl57", "B70f", "YC", "YD", "D", "L", "FC30"})
    EXPECT_TRUE(bone(k)) << k;
  for (const char* k : {"STANDARD", "SOFT", "Hr38", "H31s", "J40s", "UB", "YB", "FC21"}) EXPECT_FALSE(bone(k)) << k;
  EXPECT_TRUE(bone("", "Head BONE 1.25mm"));         // no kernel: the description says it
  EXPECT_FALSE(bone("STANDARD", "Brain/Bone 5mm"));   // a kernel says it
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A DICOM file cut short anywhere before its pixel data (an interrupted copy) is a failed read
// that says so, never the end of the process: GDCM, as Debian builds it, stops the process with a
// failed assertion on many such files, so hemexp finds them first. Every cut of every real file
// of tests/data's series and codecs (explicit and implicit VR, big endian, sequences) is tried,
// from the preamble on, and cuts inside compressed pixel data.
TEST(Reader, ADicomFileCutShortAnywhereInItsHeaderIsAFailedRead) {
  ScratchDir dir;
  std::vector<fs::path> files{data("ge-head-ct-tilt-mixed-thickness/01.dcm"), data("philips-head-phantom-5mm/I100")};
  for (int k = 1; k <= 9; ++k) files.push_back(data("dicom-codecs-mr/" + std::to_string(k) + ".dcm"));
  int encapsulated_files = 0;
  for (const fs::path& f : files) {
    const std::string bytes = file_bytes(f);
    // The pixel data element: (7FE0,0010) in either byte order, after the meta header.
    size_t pixel = std::min(bytes.find(std::string("\xE0\x7F\x10\x00", 4), 132), bytes.find(std::string("\x7F\xE0\x00\x10", 4), 132));
    ASSERT_NE(pixel, std::string::npos) << f;
    int said_cut = 0, read = 0, tried = 0;
    // Every byte of the meta header and of headers up to 8 kB; beyond, every 131st (the MR
    // codec files' 88 kB of sequences).
    for (size_t n = 1; n < pixel; n += (n < 640 || pixel < 8192) ? 1 : 131) {
      ++tried;
      std::ofstream(dir / "cut.dcm", std::ios::binary) << bytes.substr(0, n);
      try {
        read_dicom_header(dir / "cut.dcm");
        ++read;  // a cut between two elements: a header without pixel data, refused when decoded
      } catch (const IoError& e) {
        const std::string what = e.what();
        if (what.find("cut.dcm: the file ends inside its header (at byte ") == 0) ++said_cut;
        else ADD_FAILURE() << f << " cut at " << n << ": " << what;
      }
    }
    EXPECT_GE(said_cut, int(0.9 * tried)) << f << ": " << read << " of " << tried << " cuts read";
    // Compressed pixel data (fragments of undefined length): cut inside it, said so.
    const bool encapsulated = bytes.compare(pixel + 4, 8, std::string("OB\0\0\xFF\xFF\xFF\xFF", 8)) == 0;
    if (!encapsulated) continue;
    ++encapsulated_files;
    for (size_t n = pixel + 12; n + 1 < bytes.size(); n += (bytes.size() - pixel) / 23) {
      std::ofstream(dir / "cut.dcm", std::ios::binary | std::ios::trunc) << bytes.substr(0, n);
      const auto cut = header_cut_short(dir / "cut.dcm");
      ASSERT_TRUE(cut.has_value()) << f << " cut at " << n;
      EXPECT_EQ(cut->rfind("the file ends inside its compressed pixel data (at byte ", 0), 0u) << *cut;
    }
  }
  EXPECT_GE(encapsulated_files, 4);  // the JPEG, JPEG-LS, JPEG 2000 and RLE codec files
  std::ofstream(dir / "empty.dcm", std::ios::binary);
  EXPECT_EQ(header_cut_short(dir / "empty.dcm"), std::optional<std::string>("an empty file"));
  for (const fs::path& f : files) EXPECT_EQ(header_cut_short(f), std::nullopt) << f;  // whole files are fine
}

// A file of a series folder that cannot be read (empty, cut short) may be one of its slices: an
// end slice leaves no gap to find, so the case fails naming the file instead of measuring a
// shorter head; what the reading learnt (the series chosen, and why) travels with the failure.
TEST(Reader, ASeriesFolderWithAFileThatCannotBeReadFailsNamingIt) {
  const std::string ge_uid = read_dicom_header(data("ge-head-ct-tilt-mixed-thickness/01.dcm")).series_uid;
  const std::string all = file_bytes(data("ge-head-ct-tilt-mixed-thickness/28.dcm"));
  for (const auto& [bytes, reason] : std::vector<std::pair<std::string, std::string>>{
           {"", "28.dcm: an empty file"},
           {all.substr(0, 300), "28.dcm: the file ends inside its header"},
           {all.substr(0, 1000), "28.dcm: the file ends inside its header"}}) {
    ScratchDir dir;
    for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
      fs::copy_file(e.path(), dir / e.path().filename());
    std::ofstream(dir / "28.dcm", std::ios::binary | std::ios::trunc) << bytes;
    try {
      read_volume(dir.path());
      ADD_FAILURE() << reason << ": read";
    } catch (const ReadError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind("1 file of the folder cannot be read and may be slices of the series (" + reason, 0), 0u) << what;
      EXPECT_NE(what.find("): replace or remove it"), std::string::npos) << what;
      EXPECT_EQ(e.info().series_uid, ge_uid);
      EXPECT_EQ(e.info().series_choice, "chose series 2 (CT, 27 images)");
      EXPECT_EQ(e.info().format, "dicom");
    }
  }
}

// A folder whose series lie in subfolders (a PACS or CD export's patient/study/series layout,
// as a list names a patient's folder) is read as the study it holds: its series are chosen
// among as in one folder.
TEST(Reader, APatientFolderOfSeriesFoldersIsReadAsItsStudy) {
  ScratchDir dir;
  fs::create_directories(dir / "PAT9/STUDY1/SER1");
  fs::create_directories(dir / "PAT9/STUDY1/SER2");
  fs::create_directories(dir / "PAT9/.hidden");
  for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
    fs::copy_file(e.path(), dir / "PAT9/STUDY1/SER1" / e.path().filename());
  fs::copy_file(data("dicom-codecs-mr/1.dcm"), dir / "PAT9/STUDY1/SER2/mr.dcm");
  fs::copy_file(data("dicom-codecs-mr/2.dcm"), dir / "PAT9/.hidden/mr.dcm");
  const LoadedVolume lv = read_volume(dir / "PAT9");
  EXPECT_EQ(lv.info.source_slices, 28);
  // --resume sees a change below the folder: its fingerprint covers the files read.
  const std::string before = input_fingerprint(dir / "PAT9");
  std::ofstream(dir / "PAT9/STUDY1/SER2/mr.dcm", std::ios::app) << "x";
  const std::string changed = input_fingerprint(dir / "PAT9");
  EXPECT_NE(changed, before);
  std::ofstream(dir / "PAT9/.hidden/mr.dcm", std::ios::app) << "x";  // not read, not fingerprinted
  EXPECT_EQ(input_fingerprint(dir / "PAT9"), changed);
  EXPECT_NE(lv.info.series_choice.find("(MR, 1 image): modality is MR, not CT"), std::string::npos) << lv.info.series_choice;
  std::ofstream(dir / "PAT9/STUDY1/SER1/28.dcm", std::ios::trunc);  // an empty slice, named by its path
  EXPECT_NE(error_of(dir / "PAT9").find("(STUDY1/SER1/28.dcm: an empty file)"), std::string::npos) << error_of(dir / "PAT9");
}

// --series-uid with a single file: a uid that is not the file's own series says so.
TEST(Reader, SeriesUidOfAnotherSeriesThanTheFilesIsNamedAsSuch) {
  ReadOptions options;
  options.series_uid = "1.2.3.4";
  const std::string error = error_of(data("philips-head-phantom-5mm/I120"), options);
  EXPECT_EQ(error.rfind("--series-uid 1.2.3.4 is not the series of this file (", 0), 0u) << error;
}

TEST(Reader, SingleFileOfASeriesReadsTheWholeSeries) {
  const LoadedVolume lv = read_volume(data("philips-head-phantom-5mm/I120"));
  EXPECT_EQ(lv.info.source_slices, 6);
}

}  // namespace
}  // namespace hemexp
