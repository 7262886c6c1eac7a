// Writing masks back on the input grid: every voxel keeps its physical point (the pattern of
// ITK's orientation-filter tests), through the canonical orientation and a NIfTI file.
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <functional>

#include <sys/resource.h>
#include <sys/stat.h>

#include <thread>

#include <zlib.h>

#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkRGBPixel.h>

#include "hemexp/core/orientation.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/nifti_check.hpp"
#include "hemexp/io/reader.hpp"
#include "test_support.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

Mat3 rotation(double ax, double ay, double az) {
  const Mat3 rx{1, 0, 0, 0, std::cos(ax), -std::sin(ax), 0, std::sin(ax), std::cos(ax)};
  const Mat3 ry{std::cos(ay), 0, std::sin(ay), 0, 1, 0, -std::sin(ay), 0, std::cos(ay)};
  const Mat3 rz{std::cos(az), -std::sin(az), 0, std::sin(az), std::cos(az), 0, 0, 0, 1};
  return mat_mul(rz, mat_mul(ry, rx));
}

struct GridCase {
  std::array<int, 3> perm;
  std::array<int, 3> sign;
  double oblique_rad;
  const char* extension;
};

class MaskOnInputGrid : public ::testing::TestWithParam<GridCase> {};

// A gzip file's contents, through zlib.
std::string inflated(const fs::path& file) {
  gzFile f = gzopen(file.c_str(), "rb");
  EXPECT_NE(f, nullptr);
  std::string out;
  if (!f) return out;
  char buf[65536];
  for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  gzclose(f);
  return out;
}

TEST_P(MaskOnInputGrid, EveryVoxelMapsToTheSamePhysicalPoint) {
  const GridCase gc = GetParam();
  Mat3 p{};
  for (int j = 0; j < 3; ++j) p[gc.perm[j] * 3 + j] = gc.sign[j];
  Geometry input;
  input.size = {23, 17, 11};
  input.spacing_mm = {0.7, 0.45, 3.0};
  input.origin_mm = {-31.5, 12.25, 88.0};
  input.direction = mat_mul(rotation(gc.oblique_rad, -0.5 * gc.oblique_rad, 0.3 * gc.oblique_rad), p);

  // A sphere drawn in canonical space, where the pipeline works.
  const AxisMap map = canonical_axis_map(input);
  const Geometry canonical = to_canonical(input, map);
  const Vec3 centre = input.index_to_point({11.3, 7.9, 5.2});
  const double radius_mm = 9.0;
  torch::Tensor canonical_mask = torch::zeros(tensor_shape(canonical), torch::kUInt8);
  auto cacc = canonical_mask.accessor<uint8_t, 3>();
  for (int64_t z = 0; z < canonical.size[2]; ++z)
    for (int64_t y = 0; y < canonical.size[1]; ++y)
      for (int64_t x = 0; x < canonical.size[0]; ++x)
        if (norm(canonical.index_to_point({double(x), double(y), double(z)}) - centre) <= radius_mm)
          cacc[z][y][x] = 1;

  ScratchDir dir;
  const fs::path file = dir / (std::string("mask") + gc.extension);
  write_image_file(file, from_canonical(canonical_mask, map), input);
  EXPECT_FALSE(fs::exists(dir / (std::string(".tmp-mask") + gc.extension)));

  // Read it back as any viewer would: the file's own grid must be the input's grid ...
  const ImageFileContents back = read_image_file(file);
  EXPECT_TRUE(back.volume.geometry.same_grid(input, 1e-3)) << back.volume.geometry.describe();
  // ... and every voxel is set exactly when its physical point lies in the sphere.
  auto acc = back.volume.voxels.accessor<float, 3>();
  int64_t inside = 0;
  for (int64_t z = 0; z < input.size[2]; ++z)
    for (int64_t y = 0; y < input.size[1]; ++y)
      for (int64_t x = 0; x < input.size[0]; ++x) {
        const double d = norm(back.volume.geometry.index_to_point({double(x), double(y), double(z)}) - centre);
        if (std::abs(d - radius_mm) < 1e-2) continue;  // float precision of the file header
        ASSERT_EQ(acc[z][y][x] == 1.f, d <= radius_mm) << x << "," << y << "," << z;
        inside += d <= radius_mm;
      }
  EXPECT_GT(inside, 100);
}

INSTANTIATE_TEST_SUITE_P(
    Grids, MaskOnInputGrid,
    ::testing::Values(GridCase{{0, 1, 2}, {1, 1, 1}, 0.0, ".nii.gz"},
                      GridCase{{0, 1, 2}, {-1, -1, 1}, 0.0, ".nii.gz"},   // RAS-stored NIfTI
                      GridCase{{0, 2, 1}, {1, -1, 1}, 0.0, ".nii.gz"},    // coronal acquisition
                      GridCase{{2, 0, 1}, {-1, 1, -1}, 0.2, ".nii.gz"},   // sagittal, oblique
                      GridCase{{0, 1, 2}, {1, 1, 1}, 0.32, ".nii"},       // tilted, uncompressed
                      GridCase{{1, 0, 2}, {1, -1, -1}, 0.1, ".mha"},
                      GridCase{{0, 1, 2}, {1, 1, -1}, 0.05, ".nrrd"}));

// A target that is not a regular file (a named pipe here; /dev/null, /dev/stdout for `--json`)
// is written into as it is: the temporary-then-rename write would replace it with a file (as
// root, /dev/null itself).
TEST(Writer, ATargetThatIsNotARegularFileIsWrittenIntoNotReplaced) {
  test::ScratchDir dir;
  const fs::path fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] {
    std::ifstream in(fifo, std::ios::binary);
    got.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  });
  write_text_atomically(fifo, "report\n");
  reader.join();
  EXPECT_EQ(got, "report\n");
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_THROW(write_text_atomically(dir.path(), "x"), IoError);  // a folder: said, not replaced
  EXPECT_TRUE(fs::is_directory(dir.path()));
  // A user's symbolic link to a file: the file is written, the link stays a link.
  std::ofstream(dir / "real.json") << "old";
  fs::create_symlink(dir / "real.json", dir / "link.json");
  write_text_atomically(dir / "link.json", "new");
  EXPECT_TRUE(fs::is_symlink(dir / "link.json"));
  std::ifstream in(dir / "real.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()), "new");
}

TEST(Writer, VoxelTypesRoundTripExactly) {
  ScratchDir dir;
  Geometry g;
  g.size = {5, 4, 3};
  g.spacing_mm = {0.5, 0.5, 2.0};
  const torch::Tensor hu = torch::arange(-30, 30, torch::kInt16).reshape({3, 4, 5}) * 37;
  write_image_file(dir / "ct.nii.gz", hu, g);
  EXPECT_TRUE(torch::equal(read_image_file(dir / "ct.nii.gz").volume.voxels, hu.to(torch::kFloat32)));
  // Writing the same data twice gives the same bytes (no timestamps in the files).
  write_image_file(dir / "again.nii.gz", hu, g);
  std::ifstream a(dir / "ct.nii.gz", std::ios::binary), b(dir / "again.nii.gz", std::ios::binary);
  const std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
  EXPECT_THROW(write_image_file(dir / "bad.nii.gz", torch::zeros({3, 4, 4}), g), std::exception);
  EXPECT_FALSE(fs::exists(dir / "bad.nii.gz"));
}

// hemexp deflates .nii.gz files itself (ITK's header, zlib level 1): inflated, each is byte for
// byte the .nii that ITK writes for the same image (a .nii target: ITK writes it all), for every
// voxel type, on an oblique grid and a flipped one; nothing else is left in the folder (the
// header's temporary file).
TEST(Writer, DeflatedNiftiIsItksOwnFileByteForByte) {
  // ITK's own file: an uncompressed .nii is written by ITK (write_typed), as before this writer.
  const auto itk_file = [](const fs::path& file, const torch::Tensor& voxels, const Geometry& g) {
    write_image_file(file, voxels, g);
    return read_text_file(file);
  };
  torch::manual_seed(8);
  for (const Mat3& direction : {rotation(0.3, -0.2, 0.1), Mat3{-1, 0, 0, 0, 0, 1, 0, -1, 0}}) {
    ScratchDir dir;
    Geometry g;
    g.size = {37, 29, 13};
    g.spacing_mm = {0.48, 0.52, 2.5};
    g.origin_mm = {-101.25, 87.5, -12.0};
    g.direction = direction;
    const torch::Tensor mask = (torch::rand({13, 29, 37}) < 0.1).to(torch::kUInt8) * 3;
    const torch::Tensor hu = torch::randint(-1024, 3000, {13, 29, 37}).to(torch::kInt16);
    const torch::Tensor p = torch::rand({13, 29, 37});
    write_image_file(dir / "mask.nii.gz", mask, g);
    write_image_file(dir / "ct.nii.gz", hu, g);
    write_image_file(dir / "p.nii.gz", p, g);
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir.path())) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    EXPECT_EQ(files, (std::vector<std::string>{"ct.nii.gz", "mask.nii.gz", "p.nii.gz"}));
    for (const std::string& f : files)  // gzip's XFL byte: 4 = the fastest level (hemexp's), 0 = ITK's level 6
      EXPECT_EQ(read_text_file(dir / f).at(8), '\x04') << f;
    const std::string mask_itk = itk_file(dir / "ref-mask.nii", mask, g);
    EXPECT_EQ(mask_itk.size(), 352u + 13 * 29 * 37);
    EXPECT_EQ(inflated(dir / "mask.nii.gz"), mask_itk);
    EXPECT_EQ(inflated(dir / "ct.nii.gz"), itk_file(dir / "ref-ct.nii", hu, g));
    EXPECT_EQ(inflated(dir / "p.nii.gz"), itk_file(dir / "ref-p.nii", p, g));
  }
}

// A .nii.gz file of plain voxels is decompressed by hemexp itself (read_image_file), the same
// file uncompressed is read by ITK: the two give the same grid and the same float values, bit for
// bit, for every scalar type ITK writes, on an oblique grid, and for the real files in
// tests/data/edge. Each of them takes hemexp's path (plain_nifti_gz_voxels gives its voxels,
// the same again). A scaled file (scl_slope 2, scl_inter -1024) is left to ITK, which applies
// the scaling.
TEST(CompressedNifti, ReadsAsItsUncompressedSelfForEveryVoxelType) {
  ScratchDir dir;
  const auto gzip = [](const fs::path& from, const fs::path& to) {
    const std::string bytes = read_text_file(from);
    gzFile f = gzopen(to.c_str(), "wb6");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
    ASSERT_EQ(gzclose(f), Z_OK);
  };
  const auto gunzip = [](const fs::path& from, const fs::path& to) { std::ofstream(to, std::ios::binary) << inflated(from); };
  const auto expect_same = [](const fs::path& gz, const fs::path& plain, const std::string& what, bool plain_values = true) {
    const ImageFileContents a = read_image_file(gz), b = read_image_file(plain);
    const std::optional<torch::Tensor> own = plain_nifti_gz_voxels(gz, check_nifti_file(gz, kDefaultMaxVoxels, NiftiCheck::kHeader));
    EXPECT_EQ(own.has_value(), plain_values) << what << ": " << (plain_values ? "left to ITK" : "not left to ITK");
    if (own) EXPECT_TRUE(torch::equal(*own, b.volume.voxels)) << what;
    EXPECT_EQ(a.volume.geometry.size, b.volume.geometry.size) << what;
    EXPECT_EQ(a.volume.geometry.spacing_mm, b.volume.geometry.spacing_mm) << what;
    EXPECT_EQ(a.volume.geometry.origin_mm, b.volume.geometry.origin_mm) << what;
    EXPECT_EQ(a.volume.geometry.direction, b.volume.geometry.direction) << what;
    EXPECT_TRUE(torch::equal(a.volume.voxels, b.volume.voxels)) << what;
    return b.volume.voxels;
  };
  torch::manual_seed(49);
  const torch::Tensor values = torch::randn({7, 6, 5}, torch::kFloat64) * 3e4;  // (z, y, x)
  const auto write_itk = [&](auto pixel, const std::string& name) {
    using Pixel = decltype(pixel);
    using Image = itk::Image<Pixel, 3>;
    auto image = Image::New();
    typename Image::RegionType region;
    region.SetSize({5, 6, 7});
    image->SetRegions(region);
    image->Allocate();
    const Mat3 d = rotation(0.3, -0.2, 0.1);
    typename Image::DirectionType direction;
    for (unsigned a = 0; a < 3; ++a)
      for (unsigned b = 0; b < 3; ++b) direction(a, b) = d[a * 3 + b];
    image->SetDirection(direction);
    image->SetSpacing(std::array<double, 3>{0.45, 0.5, 3.0}.data());
    image->SetOrigin(std::array<double, 3>{-90.5, 101.25, -40.0}.data());
    const double* v = values.data_ptr<double>();
    Pixel* out = image->GetBufferPointer();
    for (int64_t i = 0; i < values.numel(); ++i) {  // values of the type's range, its edges included
      const double lo = double(std::numeric_limits<Pixel>::lowest()), hi = double(std::numeric_limits<Pixel>::max());
      out[i] = std::is_floating_point_v<Pixel> ? Pixel(v[i] * 1.000000123) : Pixel(std::clamp(std::round(v[i] * 1e5), lo, hi));
    }
    out[1] = std::numeric_limits<Pixel>::lowest();
    out[2] = std::numeric_limits<Pixel>::max();
    auto writer = itk::ImageFileWriter<Image>::New();
    writer->SetFileName((dir / (name + ".nii")).string());
    writer->SetInput(image);
    writer->Update();
    gzip(dir / (name + ".nii"), dir / (name + ".nii.gz"));
    expect_same(dir / (name + ".nii.gz"), dir / (name + ".nii"), name);
  };
  write_itk(uint8_t{}, "uint8");
  write_itk(int8_t{}, "int8");
  write_itk(int16_t{}, "int16");
  write_itk(uint16_t{}, "uint16");
  write_itk(int32_t{}, "int32");
  write_itk(uint32_t{}, "uint32");
  write_itk(float{}, "float32");
  write_itk(double{}, "float64");

  for (const char* edge : {"edge/dicom2nifti/sliceincrement/002_ground_truth.nii.gz",
                           "edge/dicom2nifti/sliceincrement/002_ground_truth_reoriented.nii.gz",
                           "edge/nibabel/standard.nii.gz"}) {
    gunzip(test::data(edge), dir / "edge.nii");
    expect_same(test::data(edge), dir / "edge.nii", edge);
  }

  std::string scaled = read_text_file(dir / "int16.nii");
  const float slope = 2.0f, inter = -1024.0f;
  std::memcpy(&scaled[112], &slope, 4);
  std::memcpy(&scaled[116], &inter, 4);
  std::ofstream(dir / "scaled.nii", std::ios::binary) << scaled;
  gzip(dir / "scaled.nii", dir / "scaled.nii.gz");
  const torch::Tensor raw = read_image_file(dir / "int16.nii").volume.voxels;
  EXPECT_TRUE(torch::equal(expect_same(dir / "scaled.nii.gz", dir / "scaled.nii", "scaled", false), raw * 2 - 1024));

  // A header that puts the voxels 100 GB into a small file: the check's message, nothing
  // allocated for what the stream cannot hold.
  std::string far = read_text_file(dir / "int16.nii");
  const float offset = 1e11f;
  std::memcpy(&far[108], &offset, 4);
  std::ofstream(dir / "far.nii", std::ios::binary) << far;
  gzip(dir / "far.nii", dir / "far.nii.gz");
  try {
    read_image_file(dir / "far.nii.gz");
    ADD_FAILURE() << "read";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("file is truncated"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(plain_nifti_gz_voxels(dir / "far.nii.gz", check_nifti_file(dir / "far.nii.gz", kDefaultMaxVoxels, NiftiCheck::kHeader)));
}

// A write that runs out of room (a file size limit, as a full disk): an IoError that names the
// file and says why, and nothing left in the folder, neither the file nor a temporary (the
// header's included). In a child process: the limit is the process's.
TEST(Writer, AFailedNiftiWriteNamesTheFileAndLeavesNothing) {
  ScratchDir dir;
  Geometry g;
  g.size = {256, 256, 40};
  torch::manual_seed(10);
  const torch::Tensor noise = torch::randint(-1024, 3000, {40, 256, 256}).to(torch::kInt16);  // does not deflate much
  const torch::Tensor nan = torch::full({40, 256, 256}, std::nanf(""));
  const auto child = [&] {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{200000, 200000};
    setrlimit(RLIMIT_FSIZE, &limit);
    int failures = 0;
    for (const auto& [name, voxels] : {std::pair{"ct.nii.gz", noise}, std::pair{"p.nii.gz", nan}}) {
      try {
        write_image_file(dir / name, voxels, g);
      } catch (const IoError& e) {
        const std::string why = e.what();
        const bool named = why.find("writing " + (dir / name).string()) != std::string::npos;
        const bool reason = why.find(std::string(name) == "ct.nii.gz" ? "File too large" : "NaN") != std::string::npos;
        if (named && reason) ++failures;
        else std::fprintf(stderr, "unexpected message: %s\n", why.c_str());
      }
    }
    std::exit(failures == 2 && fs::is_empty(dir.path()) ? 0 : 1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
}

// A NIfTI scan whose header fields are edited in place (an uncompressed .nii of ITK's writing).
void edit_header(const fs::path& file, const std::function<void(std::string&)>& edit) {
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  edit(bytes);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}
template <typename T>
void put(std::string& bytes, size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof v);
}

// Viewers differ in which of a NIfTI's transforms they follow (ITK, and ITK-SNAP, the qform when
// the sform's code is not 1; nibabel, FSL, SPM, MRIcroGL the sform whenever its code is set). A
// scan whose sform mirrors its qform (sform code 2, as registration tools write) had its mask
// written with ITK's choice in both fields: mirrored left-right in every sform viewer. The mask
// now carries the scan's own pixdim, units, qform, sform and codes, so every viewer places it
// as it places the scan; the disagreement is a warning. The same for a header without any
// orientation (codes 0: the mask has none either), and a sform-only sheared file is refused
// with its shear named.
TEST(Writer, AMaskCarriesItsNiftiScansOwnQformAndSform) {
  ScratchDir dir;
  Geometry g;
  g.size = {12, 10, 6};
  g.spacing_mm = {0.75, 0.75, 5.0};
  g.origin_mm = {-4.0, 7.0, -20.0};
  torch::manual_seed(11);
  const torch::Tensor hu = torch::randint(-1000, 1500, {6, 10, 12}).to(torch::kInt16);
  const torch::Tensor mask = (torch::rand({6, 10, 12}) > 0.7).to(torch::kUInt8);
  constexpr size_t kQformCode = 252, kSformCode = 254, kSrow = 280;
  const auto placement_of = [](const fs::path& f) { return check_nifti_file(f, 1u << 20, NiftiCheck::kHeader).placement; };
  const auto same = [](const NiftiPlacement& a, const NiftiPlacement& b) {
    return a.qform_code == b.qform_code && a.sform_code == b.sform_code && a.quatern == b.quatern && a.srow == b.srow &&
           a.pixdim == b.pixdim && a.xyzt_units == b.xyzt_units;
  };
  struct Variant {
    const char* name;
    std::function<void(std::string&)> edit;
    const char* warning;  // a part of the one warning expected, or "" for none
  };
  const std::vector<Variant> variants = {
      {"as_written", [](std::string&) {}, ""},
      {"sform_mirrored_code_2",
       [&](std::string& b) {
         float x0, x3;
         std::memcpy(&x0, b.data() + kSrow, 4);
         std::memcpy(&x3, b.data() + kSrow + 12, 4);
         put(b, kSrow, -x0);                                   // i runs the other way ...
         put(b, kSrow + 12, x3 + x0 * float(g.size[0] - 1));  // ... from the other end
         put(b, kSformCode, int16_t(2));
       },
       "the NIfTI's qform and sform disagree (they place the volume's corners up to 8.2 mm apart): measured on "
       "the qform's grid"},
      {"no_orientation",
       [&](std::string& b) {
         put(b, kQformCode, int16_t(0));
         put(b, kSformCode, int16_t(0));
       },
       "the NIfTI header gives no orientation (qform and sform codes 0)"},
  };
  for (const Variant& v : variants) {
    const fs::path scan = dir / (std::string(v.name) + ".nii");
    write_image_file(scan, hu, g);
    edit_header(scan, v.edit);
    const LoadedVolume loaded = read_volume(scan);
    ASSERT_TRUE(loaded.info.nifti_placement.has_value()) << v.name;
    if (*v.warning) {
      ASSERT_EQ(loaded.info.warnings.size(), 1u) << v.name;
      EXPECT_NE(loaded.info.warnings[0].find(v.warning), std::string::npos) << loaded.info.warnings[0];
    } else {
      EXPECT_TRUE(loaded.info.warnings.empty()) << v.name;
    }
    const fs::path written = dir / (std::string(v.name) + "_mask.nii.gz");
    write_image_file(written, mask, loaded.volume.geometry, &*loaded.info.nifti_placement);
    EXPECT_TRUE(same(placement_of(written), placement_of(scan))) << v.name;
    EXPECT_TRUE(torch::equal(read_codes_on_grid(written, loaded.volume.geometry), mask)) << v.name;  // ITK: the same grid
  }
  const NiftiPlacement mirrored = placement_of(dir / "sform_mirrored_code_2.nii");
  EXPECT_EQ(mirrored.sform_code, 2);
  EXPECT_NEAR(nifti_sform_matrix(mirrored)[0], 0.75, 1e-6);  // RAS: +x along i, where the qform has -x
  EXPECT_NEAR(nifti_qform_matrix(mirrored)[0], -0.75, 1e-6);

  // A sform that holds a 15 degree gantry tilt, and no qform: ITK's "no orthonormal definition".
  const fs::path sheared = dir / "sheared.nii";
  write_image_file(sheared, hu, g);
  edit_header(sheared, [&](std::string& b) {
    put(b, kQformCode, int16_t(0));
    put(b, kSformCode, int16_t(1));
    put(b, kSrow + 16 + 8, float(5.0 * std::tan(15.0 * M_PI / 180)));  // srow_y[2]: y moves with k
  });
  try {
    read_volume(sheared);
    ADD_FAILURE() << "a sheared sform-only file was read";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("the NIfTI's only transform (its sform) is sheared by 15.0 degrees"),
              std::string::npos)
        << e.what();
  }
}

// write_png encodes PNG itself (zlib, Sub filter): ITK's reader (libpng) gives back every
// pixel, RGB and grey, on odd sizes, one pixel wide and with runs a filter could get wrong.
TEST(Writer, PngPicturesDecodeToTheirPixelsExactly) {
  ScratchDir dir;
  torch::manual_seed(7);
  torch::Tensor rgb = torch::randint(0, 256, {37, 53, 3}, torch::kUInt8);
  rgb.slice(0, 10, 20).fill_(255);  // flat rows
  rgb.slice(1, 0, 5).fill_(0);
  const torch::Tensor grey = torch::randint(0, 256, {9, 1}, torch::kUInt8);
  write_png(dir / "rgb.png", rgb);
  write_png(dir / "grey.png", grey);

  using Rgb = itk::Image<itk::RGBPixel<uint8_t>, 2>;
  auto rgb_reader = itk::ImageFileReader<Rgb>::New();
  rgb_reader->SetFileName((dir / "rgb.png").string());
  rgb_reader->Update();
  const Rgb* back = rgb_reader->GetOutput();
  ASSERT_EQ(back->GetLargestPossibleRegion().GetSize()[0], 53u);
  ASSERT_EQ(back->GetLargestPossibleRegion().GetSize()[1], 37u);
  int64_t differ = 0;
  for (int64_t y = 0; y < 37; ++y)
    for (int64_t x = 0; x < 53; ++x)
      for (int c = 0; c < 3; ++c)
        differ += back->GetPixel({{x, y}})[unsigned(c)] != rgb[y][x][c].item<uint8_t>();
  EXPECT_EQ(differ, 0);

  using Grey = itk::Image<uint8_t, 2>;
  auto grey_reader = itk::ImageFileReader<Grey>::New();
  grey_reader->SetFileName((dir / "grey.png").string());
  grey_reader->Update();
  ASSERT_EQ(grey_reader->GetOutput()->GetLargestPossibleRegion().GetSize()[0], 1u);
  ASSERT_EQ(grey_reader->GetOutput()->GetLargestPossibleRegion().GetSize()[1], 9u);
  for (int64_t y = 0; y < 9; ++y) EXPECT_EQ(grey_reader->GetOutput()->GetPixel({{0, y}}), grey[y][0].item<uint8_t>());

  // A picture of another shape, or none: refused.
  EXPECT_THROW(write_png(dir / "bad.png", torch::zeros({4, 4, 2}, torch::kUInt8)), IoError);
  EXPECT_THROW(write_png(dir / "empty.png", torch::zeros({0, 4}, torch::kUInt8)), IoError);
}

TEST(Writer, CorrectedDicomGridRoundTripsThroughNifti) {
  // The GE series' corrected grid is oblique (18.5 deg); a mask written on it reads back on it.
  ScratchDir dir;
  const LoadedVolume lv = read_volume(test::data("ge-head-ct-tilt-mixed-thickness"));
  torch::Tensor mask = (lv.volume.voxels > 1000).to(torch::kUInt8);
  write_image_file(dir / "mask.nii.gz", mask, lv.volume.geometry);
  const ImageFileContents back = read_image_file(dir / "mask.nii.gz");
  EXPECT_TRUE(back.volume.geometry.same_grid(lv.volume.geometry, 1e-3));
  EXPECT_TRUE(torch::equal(back.volume.voxels.to(torch::kUInt8), mask));
}

TEST(Writer, TemporariesOfAKilledWriteAreRemovedByName) {
  // What a SIGKILL mid-write leaves: ".tmp-<pid>-<n>-<name>". Removed all, or only those of the
  // named files (another shard may be writing its own next to them).
  ScratchDir dir;
  for (const char* f : {".tmp-11-0-results.csv", ".tmp-12-3-results-1-of-2.csv", ".tmp-11-1-run.json", "results.csv",
                        "tmp-11-0-results.csv", ".tmp-x"})
    std::ofstream(dir / f) << "x";
  remove_temporaries(dir.path(), {"results.csv", "run.json"});
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path())) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{".tmp-12-3-results-1-of-2.csv", ".tmp-x", "results.csv",
                                            "tmp-11-0-results.csv"}));
  remove_temporaries(dir.path());
  left.clear();
  for (const auto& e : fs::directory_iterator(dir.path())) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"results.csv", "tmp-11-0-results.csv"}));
  write_text_atomically(dir / "results.csv", "y");
  EXPECT_EQ(read_text_file(dir / "results.csv"), "y");
}

}  // namespace
}  // namespace hemexp
