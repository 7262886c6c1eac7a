#include "hemexp/io/nifti_check.hpp"

#include "hemexp/core/geometry.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "hemexp/io/error.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

// Little helpers over the raw header bytes, honouring the header's byte order.
struct Bytes {
  const std::string& b;
  bool swap;
  template <typename T>
  T get(size_t at) const {
    unsigned char raw[sizeof(T)];
    std::memcpy(raw, b.data() + at, sizeof(T));
    if (swap)
      for (size_t i = 0; i < sizeof(T) / 2; ++i) std::swap(raw[i], raw[sizeof(T) - 1 - i]);
    T v;
    std::memcpy(&v, raw, sizeof(T));
    return v;
  }
};

int32_t swapped32(int32_t v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u >> 24) | ((u >> 8) & 0xFF00u) | ((u << 8) & 0xFF0000u) | (u << 24);
  int32_t out;
  std::memcpy(&out, &u, 4);
  return out;
}

std::string number_text(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Scalar NIfTI data types and their bits per voxel; complex and RGB are not CT.
int bits_of(int datatype) {
  switch (datatype) {
    case 2: case 256: return 8;      // uint8, int8
    case 4: case 512: return 16;     // int16, uint16
    case 8: case 16: case 768: return 32;  // int32, float32, uint32
    case 64: case 1024: case 1280: return 64;  // float64, int64, uint64
    default: return 0;
  }
}

}  // namespace

std::array<double, 12> nifti_qform_matrix(const NiftiPlacement& p) {
  const double b = p.quatern[0], c = p.quatern[1], d = p.quatern[2];
  const double a = std::sqrt(std::max(0.0, 1.0 - (b * b + c * c + d * d)));
  const double qfac = p.pixdim[0] < 0 ? -1.0 : 1.0;
  const double r[3][3] = {{a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)},
                          {2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)},
                          {2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b}};
  const double scale[3] = {std::abs(p.pixdim[1]), std::abs(p.pixdim[2]), qfac * std::abs(p.pixdim[3])};
  std::array<double, 12> m{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[size_t(4 * i + j)] = r[i][j] * scale[j];
    m[size_t(4 * i + 3)] = p.quatern[size_t(3 + i)];
  }
  return m;
}

std::array<double, 12> nifti_sform_matrix(const NiftiPlacement& p) { return p.srow; }

double shear_degrees(const std::array<double, 12>& m) {
  const auto col = [&](int j) { return Vec3{m[size_t(j)], m[size_t(4 + j)], m[size_t(8 + j)]}; };
  double worst = 0;
  for (int j = 0; j < 3; ++j) {
    const Vec3 n = cross(col((j + 1) % 3), col((j + 2) % 3)), a = col(j);
    const double denominator = norm(n) * norm(a);
    if (!(denominator > 0)) return 90.0;
    const double cosine = std::min(1.0, std::abs(dot(n, a)) / denominator);
    worst = std::max(worst, std::acos(cosine) * 180.0 / M_PI);
  }
  return worst;
}

NiftiHeader parse_nifti_header(const std::string& bytes, uint64_t max_voxels) {
  if (bytes.size() < 4) throw IoError("not a NIfTI file: " + std::to_string(bytes.size()) + " bytes, too short for a header");
  int32_t size;
  std::memcpy(&size, bytes.data(), 4);
  NiftiHeader h;
  if (size != 348 && size != 540) {
    h.byte_swapped = true;
    size = swapped32(size);
  }
  if (size != 348 && size != 540)
    throw IoError("not a NIfTI file: its header size field is not 348 (NIfTI-1) or 540 (NIfTI-2)");
  h.version = size == 348 ? 1 : 2;
  if (bytes.size() < size_t(size))
    throw IoError("NIfTI header cut short: " + std::to_string(bytes.size()) + " of " + std::to_string(size) + " bytes");
  const Bytes b{bytes, h.byte_swapped};

  double vox_offset;
  std::array<double, 8> pixdim;
  std::array<int64_t, 8> dim;
  int qform_code, sform_code;
  std::vector<double> transform;  // quaternion, offsets and sform rows, checked when in use
  if (h.version == 1) {
    if (std::memcmp(bytes.data() + 344, "n+1\0", 4) != 0)
      throw IoError(std::memcmp(bytes.data() + 344, "ni1\0", 4) == 0
                        ? "NIfTI header says its voxels are in a separate .img file; a single-file .nii is expected"
                        : "not a NIfTI-1 file: the magic string is not 'n+1'");
    for (int i = 0; i < 8; ++i) dim[i] = b.get<int16_t>(40 + 2 * i);
    h.datatype = b.get<int16_t>(70);
    h.bitpix = b.get<int16_t>(72);
    for (int i = 0; i < 8; ++i) pixdim[i] = b.get<float>(76 + 4 * i);
    vox_offset = b.get<float>(108);
    h.scl_slope = b.get<float>(112);
    h.scl_inter = b.get<float>(116);
    qform_code = b.get<int16_t>(252);
    sform_code = b.get<int16_t>(254);
    h.placement.xyzt_units = int(static_cast<unsigned char>(bytes[123]));
    for (int i = 0; i < 6; ++i) h.placement.quatern[size_t(i)] = b.get<float>(256 + 4 * i);
    for (int i = 0; i < 12; ++i) h.placement.srow[size_t(i)] = b.get<float>(280 + 4 * i);
  } else {
    if (std::memcmp(bytes.data() + 4, "n+2\0", 4) != 0)
      throw IoError("not a single-file NIfTI-2 file: the magic string is not 'n+2'");
    h.datatype = b.get<int16_t>(12);
    h.bitpix = b.get<int16_t>(14);
    for (int i = 0; i < 8; ++i) dim[i] = b.get<int64_t>(16 + 8 * i);
    for (int i = 0; i < 8; ++i) pixdim[i] = b.get<double>(104 + 8 * i);
    const int64_t offset = b.get<int64_t>(168);
    vox_offset = double(offset);
    h.scl_slope = b.get<double>(176);
    h.scl_inter = b.get<double>(184);
    qform_code = b.get<int32_t>(344);
    sform_code = b.get<int32_t>(348);
    h.placement.xyzt_units = b.get<int32_t>(500);
    for (int i = 0; i < 6; ++i) h.placement.quatern[size_t(i)] = b.get<double>(352 + 8 * i);
    for (int i = 0; i < 12; ++i) h.placement.srow[size_t(i)] = b.get<double>(400 + 8 * i);
  }
  h.placement.pixdim = pixdim;
  h.placement.qform_code = qform_code;
  h.placement.sform_code = sform_code;
  if (qform_code > 0) transform.insert(transform.end(), h.placement.quatern.begin(), h.placement.quatern.end());
  if (sform_code > 0) transform.insert(transform.end(), h.placement.srow.begin(), h.placement.srow.end());

  h.ndim = int(dim[0]);
  if (h.ndim < 1 || h.ndim > 7) throw IoError("NIfTI header has " + std::to_string(dim[0]) + " dimensions (1 to 7 expected)");
  h.dim.fill(1);
  h.voxels = 1;
  for (int i = 1; i <= h.ndim; ++i) {
    if (dim[i] < 1) throw IoError("NIfTI header gives dimension " + std::to_string(i) + " a size of " + std::to_string(dim[i]));
    h.dim[size_t(i - 1)] = dim[i];
    // Checked before multiplying: no overflow, and any product above the cap is refused.
    if (uint64_t(dim[i]) > max_voxels || h.voxels > max_voxels / uint64_t(dim[i]))
      h.voxels = max_voxels + 1;
    else
      h.voxels *= uint64_t(dim[i]);
  }
  std::string shape = std::to_string(h.dim[0]);
  for (int i = 1; i < h.ndim; ++i) shape += " x " + std::to_string(h.dim[size_t(i)]);
  if (h.voxels > max_voxels)
    throw IoError("NIfTI header claims " + shape + " voxels, more than the limit of " + std::to_string(max_voxels) +
                  " voxels (--max-voxels)");

  const int bits = bits_of(h.datatype);
  if (bits == 0)
    throw IoError("NIfTI data type " + std::to_string(h.datatype) + " is not a scalar voxel type (complex, RGB or unknown)");
  if (h.bitpix != bits)
    throw IoError("NIfTI header is inconsistent: data type " + std::to_string(h.datatype) + " has " +
                  std::to_string(bits) + " bits per voxel, bitpix says " + std::to_string(h.bitpix));

  if (!std::isfinite(vox_offset) || vox_offset < double(size) || vox_offset > 1e12)
    throw IoError("NIfTI data offset " + number_text(vox_offset) + " is not a valid position after the header");
  h.vox_offset = uint64_t(vox_offset);

  for (int i = 1; i <= std::min(3, h.ndim); ++i) {  // the spacing of the axes in use
    h.pixdim_mm[size_t(i - 1)] = pixdim[i];
    if (!(std::isfinite(pixdim[i]) && pixdim[i] > 0))
      throw IoError("voxel spacing is not a positive finite number (pixdim " + number_text(pixdim[1]) + ", " +
                    number_text(pixdim[2]) + ", " + number_text(pixdim[3]) + ")");
  }
  for (double v : transform)
    if (!std::isfinite(v)) throw IoError("NIfTI orientation (qform or sform) holds a NaN or infinite value");
  if (qform_code <= 0 && sform_code > 0) {
    // The sform alone places the voxels: its axes must span 3D space. (A qform is a rotation
    // by construction.)
    const size_t s0 = transform.size() - 12;
    std::array<std::array<double, 3>, 3> axis{};  // axis[j]: column j of the 3x3 part
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j) axis[size_t(j)][size_t(r)] = transform[s0 + size_t(4 * r + j)];
    for (auto& a : axis) {
      const double n = std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
      if (!(n > 0)) throw IoError("NIfTI sform has an axis of length 0: the voxels have no position");
      for (double& v : a) v /= n;
    }
    const double det = axis[0][0] * (axis[1][1] * axis[2][2] - axis[1][2] * axis[2][1]) -
                       axis[1][0] * (axis[0][1] * axis[2][2] - axis[0][2] * axis[2][1]) +
                       axis[2][0] * (axis[0][1] * axis[1][2] - axis[0][2] * axis[1][1]);
    if (std::abs(det) < 0.5)
      throw IoError("NIfTI sform is singular or nearly so (its axes are far from orthogonal, determinant " +
                    number_text(det) + ")");
  }
  return h;
}

NiftiHeader check_nifti_file(const fs::path& path, uint64_t max_voxels, NiftiCheck what) {
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (ec) throw IoError("cannot read the file: " + ec.message());
  if (file_size == 0) throw IoError("file is empty (0 bytes)");
  // gzopen reads plain files as they are: one path for .nii and .nii.gz.
  const std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "rb"), gzclose);
  if (!gz) throw IoError("cannot open the file");
  const auto zlib_problem = [&]() {
    int code = 0;
    const char* text = gzerror(gz.get(), &code);
    if (code == Z_BUF_ERROR) return std::string("the compressed file is truncated (it ends mid-stream)");
    return std::string("the compressed data is corrupt (zlib: ") + (text ? text : "error") + ")";
  };
  std::string head(540, '\0');
  const int got = gzread(gz.get(), head.data(), unsigned(head.size()));
  if (got < 0) throw IoError(zlib_problem());
  head.resize(size_t(got));
  const NiftiHeader h = parse_nifti_header(head, max_voxels);
  if (what == NiftiCheck::kHeader) return h;
  const uint64_t needed = h.data_end();
  // Float voxels are scanned for NaN and infinity: ITK's NIfTI reader silently turns them into
  // zeros, which would then read as water.
  const bool floats = h.datatype == 16 || h.datatype == 64;
  const auto short_file = [&] {
    return IoError("file is truncated or its data offset is wrong: the header puts " +
                  std::to_string(needed - h.vox_offset) + " bytes of voxels at offset " +
                  std::to_string(h.vox_offset) + ", the file has " + std::to_string(file_size) + " bytes");
  };
  if (gzdirect(gz.get()) && !floats) {
    if (file_size < needed) throw short_file();
    return h;
  }
  if (gzdirect(gz.get()) && file_size < needed) throw short_file();
  // The whole stream, to its CRC: a cut or damaged .nii.gz is refused rather than read as zeros.
  const size_t item = size_t(h.bitpix / 8);
  uint64_t non_finite = 0;
  std::string pending;  // bytes of the voxel data not yet a whole voxel
  const auto scan = [&](const char* data, size_t n, uint64_t at) {  // n bytes at stream offset `at`
    if (!floats) return;
    const uint64_t begin = std::max(at, h.vox_offset), end = std::min(at + n, needed);
    if (begin >= end) return;
    pending.append(data + (begin - at), size_t(end - begin));
    size_t i = 0;
    for (; i + item <= pending.size(); i += item) {
      char v[8];
      std::memcpy(v, pending.data() + i, item);
      if (h.byte_swapped) std::reverse(v, v + item);
      double x;
      if (item == 4) {
        float f;
        std::memcpy(&f, v, 4);
        x = f;
      } else {
        std::memcpy(&x, v, 8);
      }
      non_finite += !std::isfinite(x);
    }
    pending.erase(0, i);
  };
  scan(head.data(), head.size(), 0);
  uint64_t total = uint64_t(got);
  std::vector<char> buffer(1 << 20);
  while (true) {
    const int n = gzread(gz.get(), buffer.data(), unsigned(buffer.size()));
    if (n < 0) throw IoError(zlib_problem() + ", after " + std::to_string(total) + " of " + std::to_string(needed) +
                             " bytes");
    if (n == 0) break;
    scan(buffer.data(), size_t(n), total);
    total += uint64_t(n);
  }
  int code = 0;
  gzerror(gz.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END) throw IoError(zlib_problem());
  if (total < needed)
    throw IoError("file is truncated: its header promises " + std::to_string(needed) + " bytes, the decompressed file has " +
                  std::to_string(total));
  if (non_finite > 0) throw IoError(std::to_string(non_finite) + " voxels are NaN or infinite");
  return h;
}

}  // namespace hemexp
