// ITK image files (NIfTI, MHA, NRRD, PNG). All ITK template instantiation for plain image
// files lives in this one translation unit.
#include "hemexp/io/image_file.hpp"

#include <itkMultiThreaderBase.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOFactory.h>
#include <itkRGBPixel.h>
#include <itkVersion.h>

#include <algorithm>
#include <cstring>

#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
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
void write_typed(const fs::path& path, const torch::Tensor& voxels, const Geometry& g) {
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
  writer->SetUseCompression(true);
  writer->Update();
}

}  // namespace

bool is_volume_file(const fs::path& path) { return !format_of(path).empty(); }

ImageFileContents read_image_file(const fs::path& path) {
  const std::string format = format_of(path);
  if (format.empty()) throw IoError("not a NIfTI, MHA or NRRD file");
  try {
    itk::ImageIOBase::Pointer io =
        itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::ImageIOFactory::IOFileModeEnum::ReadMode);
    if (!io) throw IoError("file is not a readable image");
    io->SetFileName(path.string());
    io->ReadImageInformation();
    const unsigned dims = io->GetNumberOfDimensions();
    if (io->GetNumberOfComponents() != 1)
      throw IoError("image has " + std::to_string(io->GetNumberOfComponents()) +
                    " components per voxel; a CT volume has one");
    if (dims > 3) {
      size_t extra = 1;
      for (unsigned d = 3; d < dims; ++d) extra *= io->GetDimensions(d);
      if (extra > 1)
        throw IoError("image is " + std::to_string(dims) + "D with " + std::to_string(extra) +
                      " volumes; a single 3D volume is expected");
    }
    if (dims < 3 || io->GetDimensions(2) < 2)
      throw IoError("image is 2D; a 3D volume is expected");

    auto reader = itk::ImageFileReader<FloatImage>::New();
    reader->SetFileName(path.string());
    reader->SetImageIO(io);
    reader->Update();
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
    out.volume.voxels = torch::empty(tensor_shape(g), torch::kFloat32);
    std::memcpy(out.volume.voxels.data_ptr<float>(), image->GetBufferPointer(),
                sizeof(float) * size_t(g.voxel_count()));
    return out;
  } catch (const itk::ExceptionObject& e) {
    throw IoError(std::string("ITK cannot read the file: ") + e.GetDescription());
  }
}

void write_image_file(const fs::path& path, const torch::Tensor& voxels, const Geometry& g) {
  check_matches(g, voxels, ("writing " + path.string()).c_str());
  try {
    write_atomically(path, [&](const fs::path& tmp) {
      switch (voxels.scalar_type()) {
        case torch::kUInt8: write_typed<uint8_t>(tmp, voxels, g); break;
        case torch::kInt16: write_typed<int16_t>(tmp, voxels, g); break;
        case torch::kFloat32: write_typed<float>(tmp, voxels, g); break;
        default: throw IoError("writing " + path.string() + ": unsupported voxel type");
      }
    });
  } catch (const itk::ExceptionObject& e) {
    throw IoError("writing " + path.string() + ": " + e.GetDescription());
  }
}

void write_png(const fs::path& path, const torch::Tensor& pixels) {
  const torch::Tensor src = pixels.to(torch::kUInt8).contiguous();
  const bool rgb = src.dim() == 3;
  try {
    write_atomically(path, [&](const fs::path& tmp) {
      auto fill = [&](auto image) {
        using Image = typename decltype(image)::ObjectType;
        typename Image::RegionType region;
        region.SetSize(0, src.size(1));
        region.SetSize(1, src.size(0));
        image->SetRegions(region);
        image->Allocate();
        std::memcpy(image->GetBufferPointer(), src.data_ptr(), size_t(src.numel()));
        auto writer = itk::ImageFileWriter<Image>::New();
        writer->SetFileName(tmp.string());
        writer->SetInput(image);
        writer->Update();
      };
      if (rgb) fill(itk::Image<itk::RGBPixel<uint8_t>, 2>::New());
      else fill(itk::Image<uint8_t, 2>::New());
    });
  } catch (const itk::ExceptionObject& e) {
    throw IoError("writing " + path.string() + ": " + e.GetDescription());
  }
}

void set_itk_threads(int threads) { itk::MultiThreaderBase::SetGlobalDefaultNumberOfThreads(std::max(1, threads)); }

std::string itk_version() { return itk::Version::GetITKVersion(); }

}  // namespace hemexp
