// ITK image files (NIfTI, MHA, NRRD, PNG). All ITK template instantiation for plain image
// files lives in this one translation unit.
#include "hemexp/io/image_file.hpp"

#include <itkMultiThreaderBase.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOFactory.h>
#include <itkVersion.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <unistd.h>
#include <mutex>

#include <ATen/Parallel.h>
#include <libdeflate.h>
#include <zlib.h>

#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/nifti_check.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

std::string format_of(const fs::path& path) {
  const std::string name = lower(path.filename().string());
  if (ends_with(name, ".nii") || ends_with(name, ".nii.gz")) return "nifti";
  if (ends_with(name, ".mha") || ends_with(name, ".mhd")) return "mha";
  if (ends_with(name, ".nrrd") || ends_with(name, ".nhdr")) return "nrrd";
  return "";
}

using FloatImage = itk::Image<float, 3>;

template <typename Pixel>
void write_typed(const fs::path& path, const torch::Tensor& voxels, const Geometry& g, bool compress = true) {
  using Image = itk::Image<Pixel, 3>;
  auto image = Image::New();
  typename Image::RegionType region;
  typename Image::SpacingType spacing;
  typename Image::PointType origin;
  typename Image::DirectionType direction;
  for (unsigned a = 0; a < 3; ++a) {
    region.SetSize(a, g.size[a]);
    spacing[a] = g.spacing_mm[a];
    origin[a] = g.origin_mm[a];
    for (unsigned b = 0; b < 3; ++b) direction(a, b) = g.direction[a * 3 + b];
  }
  image->SetRegions(region);
  image->SetSpacing(spacing);
  image->SetOrigin(origin);
  image->SetDirection(direction);
  image->Allocate();
  const torch::Tensor src = voxels.contiguous();
  std::memcpy(image->GetBufferPointer(), src.data_ptr(), sizeof(Pixel) * size_t(g.voxel_count()));
  auto writer = itk::ImageFileWriter<Image>::New();
  writer->SetFileName(path.string());
  writer->SetInput(image);
  writer->SetUseCompression(compress);
  writer->Update();
}

// The NIfTI-1 header (and extension flag: the vox_offset bytes before the voxels) that ITK writes
// for an image of type Pixel on grid g: ITK writes a 2 x 2 x 2 image on the same grid (spacing,
// origin, direction) uncompressed next to `near`, and its size fields are set to g's. Empty where
// that is not what ITK wrote (a change of ITK): the caller then lets ITK write the whole file.
template <typename Pixel>
std::string itk_nifti_header(const fs::path& near, const Geometry& g) {
  Geometry small = g;
  small.size = {2, 2, 2};
  const fs::path tmp = temporary_path_for(near.parent_path() / "header.nii");
  std::string bytes;
  try {
    write_typed<Pixel>(tmp, torch::zeros({2, 2, 2}, c10::CppTypeToScalarType<Pixel>::value), small, false);
    bytes = read_text_file(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  std::error_code ec;
  fs::remove(tmp, ec);
  constexpr size_t kHeader = 348, kDim = 40, kVoxOffset = 108;
  int32_t header_size = 0;
  int16_t dim[4] = {0, 0, 0, 0};
  float vox_offset = 0;
  if (bytes.size() < kHeader) return {};
  std::memcpy(&header_size, bytes.data(), 4);
  std::memcpy(dim, bytes.data() + kDim, sizeof dim);
  std::memcpy(&vox_offset, bytes.data() + kVoxOffset, 4);
  const size_t offset = size_t(vox_offset);
  if (header_size != int32_t(kHeader) || dim[0] != 3 || dim[1] != 2 || dim[2] != 2 || dim[3] != 2 ||
      float(offset) != vox_offset || offset < kHeader || bytes.size() != offset + 8 * sizeof(Pixel))
    return {};
  bytes.resize(offset);
  for (size_t d = 0; d < 3; ++d) {
    const int16_t n = int16_t(g.size[d]);
    std::memcpy(bytes.data() + kDim + 2 * (d + 1), &n, 2);
  }
  return bytes;
}

// A .nii.gz file of ITK's header (itk_nifti_header) and the voxels, deflated here at zlib level 1
// (run-length matches only for uint8 label maps, mostly runs of zeros: level 6's size at level
// 1's speed); ITK deflates at level 6 whatever it is asked (docs/PERFORMANCE.md). Every write
// and the close are checked: a full disk is an IoError, not a cut file. False where the header
// is not ITK's usual one (the caller lets ITK write the file).
template <typename Pixel>
bool write_nifti_gz(const fs::path& tmp, const torch::Tensor& voxels, const Geometry& g, const NiftiPlacement* placement) {
  for (const int64_t n : g.size)
    if (n < 2 || n > 32767) return false;  // what a 2 x 2 x 2 header with its sizes set cannot say
  std::string header = itk_nifti_header<Pixel>(tmp, g);
  if (header.empty()) return false;
  if (placement) {  // the scan's own placement, in NIfTI-1's fields (nifti1.h offsets)
    const auto put = [&header](size_t at, auto v) { std::memcpy(header.data() + at, &v, sizeof v); };
    for (size_t i = 0; i < 8; ++i) put(76 + 4 * i, float(placement->pixdim[i]));
    header[123] = char(placement->xyzt_units);
    put(252, int16_t(placement->qform_code));
    put(254, int16_t(placement->sform_code));
    for (size_t i = 0; i < 6; ++i) put(256 + 4 * i, float(placement->quatern[i]));
    for (size_t i = 0; i < 12; ++i) put(280 + 4 * i, float(placement->srow[i]));
  }
  const torch::Tensor src = voxels.contiguous();
  if constexpr (std::is_same_v<Pixel, float>) {  // what the reader's check refuses (check_nifti_file)
    const float* p = src.data_ptr<float>();
    bool finite = true;
    for (int64_t i = 0, n = src.numel(); i < n; ++i) finite &= std::isfinite(p[i]);
    if (!finite) throw IoError("the voxels hold NaN or infinite values");
  }
  errno = 0;
  gzFile f = gzopen(tmp.c_str(), std::is_same_v<Pixel, uint8_t> ? "wb1R" : "wb1");
  if (!f) throw IoError(std::string("cannot create the file: ") + (errno ? std::strerror(errno) : "zlib error"));
  gzbuffer(f, 1 << 20);
  const auto put = [&](const char* p, size_t n) {
    while (n > 0) {
      const unsigned k = unsigned(std::min<size_t>(n, size_t(1) << 30));
      if (gzwrite(f, p, k) != int(k)) {
        int code = 0;
        const char* text = gzerror(f, &code);
        const std::string why = code == Z_ERRNO ? std::strerror(errno) : (text ? text : "zlib error");
        gzclose(f);
        throw IoError("the write failed (disk full?): " + why);
      }
      p += k, n -= k;
    }
  };
  put(header.data(), header.size());
  put(static_cast<const char*>(src.data_ptr()), sizeof(Pixel) * size_t(g.voxel_count()));
  errno = 0;
  if (gzclose(f) != Z_OK)
    throw IoError(std::string("closing the file failed (disk full?): ") + (errno ? std::strerror(errno) : "zlib error"));
  return true;
}

}  // namespace

bool is_volume_file(const fs::path& path) { return !format_of(path).empty(); }

// ITK 5.2 makes its global singletons (the IO factory list, the multi-threader defaults, the
// data objects' release flag) on first use without a lock: first uses from two threads at once
// (synth's workers writing their cases, a case's files written side by side) corrupted the heap
// about once in 60 runs ("double free or corruption", or "Could not create IO object"). Every
// entry to ITK here goes through this first, which makes them once, in turn: a small NIfTI file
// written and read back in the temporary folder, each step of which touches them.
void itk_first_use() {
  static std::once_flag once;
  std::call_once(once, [] {
    (void)itk::MultiThreaderBase::GetGlobalDefaultNumberOfThreads();
    (void)itk::DataObject::GetGlobalReleaseDataFlag();
    (void)itk::ImageIOFactory::CreateImageIO("hemexp.nii.gz", itk::ImageIOFactory::IOFileModeEnum::WriteMode);
    std::error_code ec;
    const fs::path file = fs::temp_directory_path(ec) / ("hemexp-itk-" + std::to_string(::getpid()) + ".nii");
    if (ec) return;
    try {
      using Image = itk::Image<uint8_t, 3>;
      auto image = Image::New();
      Image::RegionType region;
      region.SetSize({2, 2, 2});
      image->SetRegions(region);
      image->Allocate(true);
      auto writer = itk::ImageFileWriter<Image>::New();
      writer->SetFileName(file.string());
      writer->SetInput(image);
      writer->Update();
      auto reader = itk::ImageFileReader<Image>::New();
      reader->SetFileName(file.string());
      reader->Update();
    } catch (const std::exception&) {  // an unwritable temporary folder: the singletons exist by now all the same
    }
    fs::remove(file, ec);
  });
}


std::string itk_reason(const itk::ExceptionObject& e) { return library_reason(e.GetDescription()); }

torch::Tensor read_codes_on_grid(const fs::path& path, const Geometry& grid) {
  const ImageFileContents image = read_image_file(path);
  if (!image.volume.geometry.same_grid(grid, 1e-3)) throw IoError(path.filename().string() + ": its grid is not the CT's");
  return image.volume.voxels.round().clamp(0, 255).to(torch::kUInt8);
}

namespace {

// n values of type T at src (any alignment) as float32 at out, as ITK's reader converts them
// (static_cast); false when a float value is NaN or infinite.
template <typename T>
bool to_float(const char* src, float* out, int64_t n) {
  std::atomic<bool> finite{true};
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    bool ok = true;
    for (int64_t i = begin; i < end; ++i) {
      T v;
      std::memcpy(&v, src + i * int64_t(sizeof(T)), sizeof(T));
      out[i] = static_cast<float>(v);
      if constexpr (std::is_floating_point_v<T>) ok &= std::isfinite(v);
    }
    if (!ok) finite = false;
  });
  return finite;
}

}  // namespace

// read_image_file's path for most CT files (image_file.hpp says which).
std::optional<torch::Tensor> plain_nifti_gz_voxels(const fs::path& path, const NiftiHeader& h) {
  if (h.version != 1 || h.byte_swapped || h.ndim != 3 || !(h.scl_slope == 0 || h.scl_slope == 1) ||
      h.scl_inter != 0)
    return {};
  bool (*convert)(const char*, float*, int64_t) = nullptr;  // the file's type to float
  int bytes = 0;                                           // per voxel
  switch (h.datatype) {
    case 2: convert = to_float<uint8_t>, bytes = 1; break;
    case 256: convert = to_float<int8_t>, bytes = 1; break;
    case 4: convert = to_float<int16_t>, bytes = 2; break;
    case 512: convert = to_float<uint16_t>, bytes = 2; break;
    case 8: convert = to_float<int32_t>, bytes = 4; break;
    case 768: convert = to_float<uint32_t>, bytes = 4; break;
    case 16: convert = to_float<float>, bytes = 4; break;
    case 64: convert = to_float<double>, bytes = 8; break;
    default: return {};  // 64-bit integers: ITK's
  }
  // What parse_nifti_header guarantees, checked again for a header made any other way: the
  // voxels read below are exactly those the decompressed length holds.
  if (h.bitpix != 8 * bytes || h.dim[0] < 1 || h.dim[1] < 1 || h.dim[2] < 1 ||
      uint64_t(h.dim[0]) * uint64_t(h.dim[1]) * uint64_t(h.dim[2]) != h.voxels)
    return {};
  std::error_code ec;
  const uintmax_t packed_size = fs::file_size(path, ec);
  if (ec || packed_size < 18) return {};  // not even a gzip header and trailer
  const size_t raw_size = size_t(h.data_end());
  // Deflate cannot shrink data more than 1032 times; the trailer's last 4 bytes are the length
  // modulo 2^32. A header that promises more than the stream holds goes to the check's message.
  if (raw_size / 1032 > packed_size) return {};
  std::unique_ptr<char[]> packed(new char[size_t(packed_size)]);
  {
    std::ifstream in(path, std::ios::binary);
    if (!in.read(packed.get(), std::streamsize(packed_size))) return {};
  }
  uint32_t stated = 0;
  std::memcpy(&stated, packed.get() + packed_size - 4, 4);  // little-endian, as on this machine
  if (stated != uint32_t(raw_size)) return {};
  std::unique_ptr<char[]> raw(new char[raw_size]);  // not zeroed: every byte is written
  const std::unique_ptr<libdeflate_decompressor, void (*)(libdeflate_decompressor*)> inflater(
      libdeflate_alloc_decompressor(), libdeflate_free_decompressor);
  if (!inflater) return {};
  size_t read = 0, written = 0;
  const libdeflate_result r = libdeflate_gzip_decompress_ex(inflater.get(), packed.get(), size_t(packed_size),
                                                            raw.get(), raw_size, &read, &written);
  if (r != LIBDEFLATE_SUCCESS || read != packed_size || written != raw_size) return {};
  packed.reset();  // freed before the float copy is made
  torch::Tensor voxels = torch::empty({h.dim[2], h.dim[1], h.dim[0]}, torch::kFloat32);
  if (!convert(raw.get() + h.vox_offset, voxels.data_ptr<float>(), voxels.numel())) return {};
  return voxels;
}

namespace {

// ITK's reader for the file with its header read (dimensions, component type), no voxels;
// nullptr when no ITK reader takes the file. Throws itk::ExceptionObject for a bad header.
itk::ImageIOBase::Pointer image_information(const fs::path& path) {
  itk_first_use();
  itk::ImageIOBase::Pointer io =
      itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::ImageIOFactory::IOFileModeEnum::ReadMode);
  if (!io) return nullptr;
  io->SetFileName(path.string());
  io->ReadImageInformation();
  return io;
}

// The volume through ITK, checked for what a CT volume must be (one component, 3D, within
// max_voxels, a direction matrix that spans space). With own_voxels (plain_nifti_gz_voxels) ITK
// reads the header only, and the volume holds them.
ImageFileContents read_with_itk(const fs::path& path, const std::string& format, uint64_t max_voxels,
                                const torch::Tensor& own_voxels = {}) {
  try {
    itk::ImageIOBase::Pointer io = image_information(path);
    if (!io) throw IoError("file is not a readable " + format + " image");
    const unsigned dims = io->GetNumberOfDimensions();
    if (io->GetNumberOfComponents() != 1)
      throw IoError("image has " + std::to_string(io->GetNumberOfComponents()) +
                    " components per voxel; a CT volume has one");
    uint64_t voxels = 1;
    for (unsigned d = 0; d < dims; ++d) {
      const uint64_t n = io->GetDimensions(d);
      voxels = (n == 0 || voxels > max_voxels / n) ? max_voxels + 1 : voxels * n;
    }
    if (voxels > max_voxels)
      throw IoError("image header claims more than the limit of " + std::to_string(max_voxels) + " voxels (--max-voxels)");
    if (dims > 3) {
      size_t extra = 1;
      for (unsigned d = 3; d < dims; ++d) extra *= io->GetDimensions(d);
      if (extra > 1)
        throw IoError("image is " + std::to_string(dims) + "D with " + std::to_string(extra) +
                      " volumes; a single 3D volume is expected");
    }
    if (dims < 3 || io->GetDimensions(2) < 2) {
      std::string shape = std::to_string(io->GetDimensions(0));
      for (unsigned d = 1; d < dims; ++d) shape += " x " + std::to_string(io->GetDimensions(d));
      throw IoError("image is " + shape + ": 2D or a single slice; a 3D volume is expected");
    }

    auto reader = itk::ImageFileReader<FloatImage>::New();
    reader->SetFileName(path.string());
    reader->SetImageIO(io);
    if (own_voxels.defined()) reader->UpdateOutputInformation();  // the grid, not the voxels
    else reader->Update();
    FloatImage::Pointer image = reader->GetOutput();

    ImageFileContents out;
    out.format = format;
    Geometry& g = out.volume.geometry;
    const auto size = image->GetLargestPossibleRegion().GetSize();
    for (unsigned a = 0; a < 3; ++a) {
      g.size[a] = int64_t(size[a]);
      g.spacing_mm[a] = image->GetSpacing()[a];
      g.origin_mm[a] = image->GetOrigin()[a];
      for (unsigned b = 0; b < 3; ++b) g.direction[a * 3 + b] = image->GetDirection()(a, b);
    }
    for (unsigned a = 0; a < 3; ++a)
      if (!(std::isfinite(g.spacing_mm[a]) && g.spacing_mm[a] > 0))
        throw IoError("voxel spacing is not a positive finite number (" + g.describe() + ")");
    if (!std::all_of(g.direction.begin(), g.direction.end(), [](double v) { return std::isfinite(v); }) ||
        !std::all_of(g.origin_mm.begin(), g.origin_mm.end(), [](double v) { return std::isfinite(v); }))
      throw IoError("origin or direction matrix holds a NaN or infinite value");
    const Vec3 c0 = column(g.direction, 0), c1 = column(g.direction, 1), c2 = column(g.direction, 2);
    const double det = norm(c0) > 0 && norm(c1) > 0 && norm(c2) > 0
                           ? mat_det(from_columns(normalized(c0), normalized(c1), normalized(c2)))
                           : 0.0;
    if (!(std::abs(det) >= 0.5))
      throw IoError("direction matrix is singular or nearly so (determinant " + format_number(det, 3) +
                    "): the axes do not span 3D space");
    if (own_voxels.defined()) {
      if (own_voxels.sizes() != c10::IntArrayRef(tensor_shape(g)))
        throw IoError("ITK reads the header as " + g.describe() + ", hemexp's own reading does not agree");
      out.volume.voxels = own_voxels;
      return out;
    }
    // The tensor takes ITK's buffer rather than a copy of it (a 512 x 512 x 300 scan: 315 MB
    // less to copy and to hold twice); the image lives as long as the tensor's storage.
    float* buffer = image->GetBufferPointer();
    out.volume.voxels = torch::from_blob(
        buffer, tensor_shape(g), [image](void*) mutable { image = nullptr; }, torch::kFloat32);
    return out;
  } catch (const itk::ExceptionObject& e) {
    throw IoError("cannot read the " + format + " file: " + itk_reason(e));
  }
}

// The 3 x 4 matrix (voxel index to RAS mm) of the grid ITK read (LPS).
std::array<double, 12> ras_matrix(const Geometry& g) {
  std::array<double, 12> m{};
  for (size_t i = 0; i < 3; ++i) {
    const double sign = i < 2 ? -1.0 : 1.0;
    for (size_t j = 0; j < 3; ++j) m[4 * i + j] = sign * g.direction[i * 3 + j] * g.spacing_mm[j];
    m[4 * i + 3] = sign * g.origin_mm[i];
  }
  return m;
}

// The farthest apart two matrices put any of the grid's 8 corner voxels, in mm.
double corner_distance(const std::array<double, 12>& a, const std::array<double, 12>& b, const Geometry& g) {
  double worst = 0;
  for (int corner = 0; corner < 8; ++corner) {
    const double ijk[3] = {corner & 1 ? double(g.size[0] - 1) : 0.0, corner & 2 ? double(g.size[1] - 1) : 0.0,
                           corner & 4 ? double(g.size[2] - 1) : 0.0};
    double d2 = 0;
    for (size_t i = 0; i < 3; ++i) {
      double d = a[4 * i + 3] - b[4 * i + 3];
      for (size_t j = 0; j < 3; ++j) d += (a[4 * i + j] - b[4 * i + j]) * ijk[j];
      d2 += d * d;
    }
    worst = std::max(worst, std::sqrt(d2));
  }
  return worst;
}

// What a NIfTI header's placement leaves uncertain, against the grid ITK read from it.
std::vector<std::string> placement_warnings(const NiftiPlacement& p, const Geometry& g) {
  std::vector<std::string> out;
  if (p.qform_code <= 0 && p.sform_code <= 0) {
    out.push_back("the NIfTI header gives no orientation (qform and sform codes 0): left and right and the position "
                  "in space are unknown; measured on the voxel grid as ITK places it, and the mask's header has no "
                  "orientation either, as the scan's");
  } else if (p.qform_code > 0 && p.sform_code > 0) {
    const std::array<double, 12> q = nifti_qform_matrix(p), s = nifti_sform_matrix(p), itk = ras_matrix(g);
    if (const double apart = corner_distance(q, s, g); apart > 0.5) {
      const std::string used = corner_distance(itk, q, g) <= corner_distance(itk, s, g) ? "qform" : "sform";
      const double shear = shear_degrees(s);
      out.push_back("the NIfTI's qform and sform disagree (they place the volume's corners up to " +
                    format_number(apart, 1) + " mm apart" +
                    (shear > 0.5 ? "; the sform is sheared by " + format_number(shear, 1) + " degrees, an uncorrected gantry tilt?" : "") +
                    "): measured on the " + used + "'s grid, as ITK reads the file, while nibabel, FSL and SPM follow the "
                    "sform; the mask's header keeps both, so a viewer overlays it where it shows the scan: check which "
                    "transform is right");
    }
  }
  return out;
}

}  // namespace

std::string codes_not_ct_reason(const fs::path& path) {
  const std::string format = format_of(path);
  bool eight_bit = false;
  try {
    if (format == "nifti") {
      // Any size (only the type matters here; --max-voxels is the reader's to apply).
      const NiftiHeader h = check_nifti_file(path, std::numeric_limits<uint64_t>::max() / 2, NiftiCheck::kHeader);
      // A slope that is 0 or not finite means no scaling (the NIfTI standard; nibabel writes NaN
      // into unscaled files, and ITK reads them unscaled); an intercept that is not finite, 0.
      const double slope = h.scl_slope, inter = std::isfinite(h.scl_inter) ? h.scl_inter : 0.0;
      const bool unscaled = !std::isfinite(slope) || slope == 0 || (slope == 1 && inter == 0);
      eight_bit = (h.datatype == 2 || h.datatype == 256) && unscaled;  // DT_UINT8, DT_INT8
    } else if (!format.empty()) {
      itk::ImageIOBase::Pointer io = image_information(path);
      if (!io) return "";
      const auto type = io->GetComponentType();
      eight_bit = io->GetNumberOfComponents() == 1 &&
                  (type == itk::IOComponentEnum::UCHAR || type == itk::IOComponentEnum::CHAR);
    }
  } catch (const std::exception&) {  // IoError, itk::ExceptionObject: the reader will say why
    return "";
  }
  return eight_bit ? "8-bit codes (a mask or label map): a CT in Hounsfield units needs more than 256 values" : "";
}

ImageFileContents read_image_file(const fs::path& path, uint64_t max_voxels) {
  itk_first_use();
  const std::string format = format_of(path);
  if (format.empty()) throw IoError("not a NIfTI, MHA or NRRD file");
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw IoError("is a folder named like a volume file");
  if (fs::file_size(path, ec) == 0 && !ec) throw IoError("file is empty (0 bytes)");
  if (format != "nifti") return read_with_itk(path, format, max_voxels);
  // The header first: an impossible one is refused before ITK allocates anything. A .nii.gz file
  // of plain voxels is then decompressed once, whole, and checked on the way (most CT files).
  // Otherwise the rest of the check (the whole stream to its CRC, float voxels finite)
  // decompresses the file a second time, beside ITK's own read with two or more threads
  // (--threads), in turn with one; its failure is the one named (a damaged stream), and ITK's
  // result is used only once it has passed.
  const NiftiHeader header = check_nifti_file(path, max_voxels, NiftiCheck::kHeader);
  if (header.version == 2)  // ITK 5.2 reads NIfTI-1 only
    throw IoError("NIfTI-2 files are not read (ITK 5.2 reads NIfTI-1): save the scan as NIfTI-1 (.nii.gz)");
  ImageFileContents out;
  try {
    if (std::optional<torch::Tensor> voxels;
        ends_with(lower(path.filename().string()), ".gz") && (voxels = plain_nifti_gz_voxels(path, header)))
      out = read_with_itk(path, format, max_voxels, *voxels);
    else
      run_side_by_side({[&] { check_nifti_file(path, max_voxels); }, [&] { out = read_with_itk(path, format, max_voxels); }});
  } catch (const IoError&) {
    // ITK refuses a sform it cannot make a rotation of when there is no qform: say what it is.
    const NiftiPlacement& p = header.placement;
    if (p.qform_code <= 0 && p.sform_code > 0) {
      const std::array<double, 12> m = nifti_sform_matrix(p);
      if (const double shear = shear_degrees(m); shear > 0.01)
        throw IoError("the NIfTI's only transform (its sform) is sheared by " + format_number(shear, 1) +
                      " degrees (an uncorrected gantry tilt?), which is not a grid hemexp can read: resample it onto an "
                      "orthogonal grid, or give hemexp the DICOM series (it corrects the tilt)");
      std::array<double, 3> sizes{};
      bool differ = false;
      for (size_t j = 0; j < 3; ++j) {
        sizes[j] = std::sqrt(m[j] * m[j] + m[4 + j] * m[4 + j] + m[8 + j] * m[8 + j]);
        differ |= std::abs(sizes[j] - std::abs(p.pixdim[j + 1])) > 1e-3 * std::abs(p.pixdim[j + 1]);
      }
      if (differ)
        throw IoError("the NIfTI's only transform (its sform) gives voxels of " + format_number(sizes[0], 3) + " x " +
                      format_number(sizes[1], 3) + " x " + format_number(sizes[2], 3) + " mm where its pixdim says " +
                      format_number(p.pixdim[1], 3) + " x " + format_number(p.pixdim[2], 3) + " x " +
                      format_number(p.pixdim[3], 3) + " mm, which ITK cannot read: fix the header (which voxel size is "
                      "right?)");
    }
    throw;
  }
  out.placement = header.placement;
  out.warnings = placement_warnings(header.placement, out.volume.geometry);
  return out;
}

void write_image_file(const fs::path& path, const torch::Tensor& voxels, const Geometry& g,
                      const NiftiPlacement* placement) {
  itk_first_use();
  check_matches(g, voxels, ("writing " + path.string()).c_str());
  const bool nifti = format_of(path) == "nifti", gz = ends_with(lower(path.filename().string()), ".gz");
  try {
    write_atomically(path, [&](const fs::path& tmp) {
      const auto write = [&](auto pixel) {
        using Pixel = decltype(pixel);
        if (nifti && gz) {
          try {
            if (write_nifti_gz<Pixel>(tmp, voxels, g, placement)) return;
          } catch (const IoError& e) {
            throw IoError("writing " + path.string() + ": " + e.what());
          }
        }
        write_typed<Pixel>(tmp, voxels, g);
        // ITK does not check every write (nor closing the file): a full disk could leave a cut
        // file under the final name. A NIfTI file ITK wrote is read back through its checksum.
        if (nifti) {
          try {
            check_nifti_file(tmp, uint64_t(g.voxel_count()));
          } catch (const IoError& e) {
            throw IoError("writing " + path.string() + ": the written file does not read back (disk full?): " + e.what());
          }
        }
      };
      switch (voxels.scalar_type()) {
        case torch::kUInt8: write(uint8_t{}); break;
        case torch::kInt16: write(int16_t{}); break;
        case torch::kFloat32: write(float{}); break;
        default: throw IoError("writing " + path.string() + ": unsupported voxel type");
      }
    });
  } catch (const itk::ExceptionObject& e) {
    throw IoError("writing " + path.string() + ": " + itk_reason(e));
  }
}

namespace {

void put_u32(std::string& s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s.push_back(char((v >> shift) & 0xff));
}

// A PNG chunk appended to `png`: length, type, data, CRC-32 of type and data.
void put_chunk(std::string& png, const char* type, const std::string& data) {
  const size_t start = png.size() + 4;
  put_u32(png, uint32_t(data.size()));
  png.append(type, 4);
  png += data;
  put_u32(png, uint32_t(crc32_z(0, reinterpret_cast<const Bytef*>(png.data() + start), png.size() - start)));
}

}  // namespace

// PNG written here rather than through ITK: ITK 5.2's PNG writer corrupts the heap when a write
// fails (a full disk) with compression set, and its default (zlib level 6, every row filter
// tried) took 59 ms for a 768 x 1024 QC picture. Here: the Sub filter on every row (each byte
// less the same channel of the pixel to its left), zlib level 1 (8 ms, docs/PERFORMANCE.md), and
// the file written as any other (write_text_atomically: a full disk is named as such).
void write_png(const fs::path& path, const torch::Tensor& pixels) {
  const torch::Tensor src = pixels.to(torch::kUInt8).contiguous();
  if (!(src.dim() == 2 || (src.dim() == 3 && src.size(2) == 3)) || src.size(0) < 1 || src.size(1) < 1)
    throw IoError("writing " + path.string() + ": not a grey (H, W) or RGB (H, W, 3) picture");
  // One IDAT chunk holds at most 2^31 - 1 bytes: far more than a QC picture (2.4 MB).
  if (double(src.size(0)) * (double(src.size(1)) * double(src.dim() == 3 ? 3 : 1) + 1) >= 2147483647.0)
    throw IoError("writing " + path.string() + ": the picture is too large for one PNG chunk");
  const int64_t height = src.size(0), width = src.size(1), channels = src.dim() == 3 ? 3 : 1, stride = width * channels;
  const uint8_t* p = src.data_ptr<uint8_t>();
  std::string raw(size_t(height * (stride + 1)), '\0');
  for (int64_t y = 0; y < height; ++y) {
    char* row = &raw[size_t(y * (stride + 1))];
    const uint8_t* in = p + y * stride;
    row[0] = 1;  // Sub
    for (int64_t i = 0; i < stride; ++i) row[1 + i] = char(uint8_t(in[i] - (i >= channels ? in[i - channels] : 0)));
  }
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::string packed(size_t(packed_size), '\0');
  if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size, reinterpret_cast<const Bytef*>(raw.data()),
                uLong(raw.size()), 1) != Z_OK)
    throw IoError("writing " + path.string() + ": zlib could not compress the picture");
  packed.resize(size_t(packed_size));
  if (packed.size() > 0x7fffffffu) throw IoError("writing " + path.string() + ": the picture is too large for one PNG chunk");
  std::string header;  // IHDR: width, height, 8 bits, grey (0) or RGB (2), deflate, adaptive filters, no interlace
  put_u32(header, uint32_t(width));
  put_u32(header, uint32_t(height));
  header += {char(8), char(channels == 3 ? 2 : 0), char(0), char(0), char(0)};
  std::string png("\x89PNG\r\n\x1a\n", 8);
  put_chunk(png, "IHDR", header);
  put_chunk(png, "IDAT", packed);
  put_chunk(png, "IEND", "");
  write_text_atomically(path, png);
}

void set_itk_threads(int threads) { itk::MultiThreaderBase::SetGlobalDefaultNumberOfThreads(std::max(1, threads)); }

std::string itk_version() { return itk::Version::GetITKVersion(); }

}  // namespace hemexp
