// One DICOM file: header through GDCM (which ITK uses), pixels through itk::GDCMImageIO.
#include <gdcmReader.h>
#include <gdcmStringFilter.h>
#include <gdcmTrace.h>
#include <itkGDCMImageIO.h>
#include <itkImage.h>
#include <itkImageFileReader.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "hemexp/io/dicom.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

std::vector<double> numbers(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, '\\')) {
    try {
      out.push_back(std::stod(trim(item)));
    } catch (...) {
      return {};
    }
  }
  return out;
}

std::optional<double> number(const std::string& s) {
  const auto v = numbers(s);
  if (v.empty()) return std::nullopt;
  return v[0];
}

}  // namespace

bool DicomHeader::is_secondary_capture() const {
  return sop_class_uid.rfind("1.2.840.10008.5.1.4.1.1.7", 0) == 0;
}
bool DicomHeader::is_localizer() const { return upper(image_type).find("LOCALIZER") != std::string::npos; }
bool DicomHeader::is_enhanced_multiframe() const {
  return frames > 1 || sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1";
}

namespace {

// Every element before the pixel data, which is skipped (sought past, not read): its length
// field may claim gigabytes, and GDCM would allocate them before finding the file shorter.
bool read_up_to_pixel_data(gdcm::Reader& reader) {
  const gdcm::Tag pixel_data(0x7fe0, 0x0010);
  return reader.ReadUpToTag(pixel_data, {pixel_data});
}

// Where a DICOM file ends inside an element before its pixel data: a copy or download that was
// cut short. GDCM (as Debian builds it) stops the whole process with a failed assertion on many
// such files instead of reporting them, so they are found here first, by walking the elements'
// lengths (sequences and items included) without interpreting any value. The walk gives up
// (nothing said, GDCM decides) on what it does not know: a deflated data set, an element header
// past the first 16 MiB, an encoding it cannot recognise.
class HeaderWalk {
 public:
  explicit HeaderWalk(const fs::path& path) : in_(path, std::ios::binary) {
    std::error_code ec;
    size_ = fs::file_size(path, ec);
    readable_ = !ec && bool(in_);
  }

  // Whether the cut found is inside the compressed pixel data's fragments.
  bool in_pixel_data() const { return in_pixel_data_; }

  // The byte at which an element runs past the end of the file, if one does.
  std::optional<uint64_t> cut_at() {
    if (!readable_) return std::nullopt;
    uint64_t at = 0;
    bool explicit_vr = true, big = false;
    if (have(132) && std::memcmp(bytes_.data() + 128, "DICM", 4) == 0) {
      at = 132;
      std::string syntax;
      // The file meta information: group 0002, explicit VR little endian.
      while (true) {
        if (at == size_) return at;  // nothing after the meta header
        if (at + 8 > size_) return at;
        if (!have(at + 8)) return std::nullopt;
        if (u16(at, false) != 0x0002) break;
        const uint16_t element = u16(at + 2, false);
        const uint64_t start = at;
        if (const Step s = element_at(at, true, false, false); s != Step::next) return verdict(s, start);
        if (element == 0x0010) syntax = value_text(start, at);
      }
      if (syntax == "1.2.840.10008.1.2") explicit_vr = false;
      else if (syntax == "1.2.840.10008.1.2.2") big = true;
      else if (syntax == "1.2.840.10008.1.2.1.99") return std::nullopt;  // deflated: not walked
    } else {
      // A file cut inside its 128-byte preamble (zeros, as nearly every writer leaves it).
      if (size_ < 132 && have(size_) &&
          std::all_of(bytes_.begin(), bytes_.begin() + std::ptrdiff_t(std::min<uint64_t>(size_, 128)),
                      [](char c) { return c == 0; }))
        return size_;
      if (!have(8)) return std::nullopt;
      explicit_vr = is_vr(4);  // no meta header: the data set tells its own encoding
    }
    while (true) {
      if (at == size_) return std::nullopt;
      const uint64_t start = at;
      const Step s = element_at(at, explicit_vr, big, true);
      if (s == Step::pixel_data) return std::nullopt;
      if (s != Step::next) return verdict(s, start);
    }
  }

 private:
  enum class Step { next, pixel_data, item_end, cut, unknown };
  static constexpr uint32_t kUndefined = 0xFFFFFFFFu;

  std::optional<uint64_t> verdict(Step s, uint64_t) const {
    return s == Step::cut ? std::optional<uint64_t>(cut_) : std::nullopt;
  }
  uint32_t byte(uint64_t i) const { return uint32_t(static_cast<unsigned char>(bytes_[size_t(i)])); }
  uint16_t u16(uint64_t at, bool big) const {
    return uint16_t(big ? (byte(at) << 8 | byte(at + 1)) : (byte(at) | byte(at + 1) << 8));
  }
  uint32_t u32(uint64_t at, bool big) const {
    return big ? (byte(at) << 24 | byte(at + 1) << 16 | byte(at + 2) << 8 | byte(at + 3))
               : (byte(at) | byte(at + 1) << 8 | byte(at + 2) << 16 | byte(at + 3) << 24);
  }
  bool is_vr(uint64_t at) {
    return have(at + 2) && std::isupper(int(byte(at))) && std::isupper(int(byte(at + 1)));
  }
  bool is_known_vr(uint64_t at) {
    static const std::set<std::string> kVrs{"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                                            "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ",
                                            "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"};
    return is_vr(at) && kVrs.count(bytes_.substr(size_t(at), 2)) > 0;
  }
  std::string value_text(uint64_t element_start, uint64_t next) {
    const uint64_t from = element_start + 8;  // meta elements are short-form UI
    if (!have(next) || from > next) return "";
    std::string v = bytes_.substr(size_t(from), size_t(next - from));
    while (!v.empty() && (v.back() == '\0' || v.back() == ' ')) v.pop_back();
    return v;
  }
  // Whether the first `end` bytes are read, reading more (16 kB at least, doubling, at most the
  // first 16 MiB) when they are not: a slice's header is a few kB of a half-megabyte file.
  bool have(uint64_t end) {
    const uint64_t limit = std::min<uint64_t>(size_, 16u << 20);
    if (end <= bytes_.size()) return true;
    if (end > limit || !in_) return false;
    const uint64_t target = std::min(limit, std::max<uint64_t>({end, 2 * uint64_t(bytes_.size()), 16u << 10}));
    const size_t had = bytes_.size();
    bytes_.resize(size_t(target));
    in_.clear();
    in_.seekg(std::streamoff(had));
    in_.read(bytes_.data() + had, std::streamsize(target - had));
    bytes_.resize(had + size_t(std::max<std::streamsize>(in_.gcount(), 0)));
    return end <= bytes_.size();
  }

  Step cut(uint64_t at) {
    cut_ = at;
    return Step::cut;
  }

  // The item or delimiter header at `at`, (FFFE,tag) and a 32-bit length, `at` moved past it;
  // cut or unknown when there is none.
  Step item_header(uint64_t& at, bool big, uint16_t& tag, uint32_t& length) {
    if (at + 8 > size_) return cut(at);
    if (!have(at + 8)) return Step::unknown;
    if (u16(at, big) != 0xFFFE) return Step::unknown;
    tag = u16(at + 2, big);
    length = u32(at + 4, big);
    at += 8;
    return Step::next;
  }

  // One element (or item delimiter) at `at`, moving `at` past it.
  Step element_at(uint64_t& at, bool explicit_vr, bool big, bool top, int depth = 0) {
    if (depth > 32) return Step::unknown;
    const uint64_t start = at;
    if (at + 8 > size_) return cut(start);
    if (!have(at + 8)) return Step::unknown;
    const uint16_t group = u16(at, big), element = u16(at + 2, big);
    if (group == 0xFFFE) {
      if (element == 0xE00D && u32(at + 4, big) == 0) {
        at += 8;
        return Step::item_end;
      }
      return Step::unknown;
    }
    uint64_t header = 8;
    uint32_t length = 0;
    bool sequence = false;
    if (explicit_vr) {
      if (!is_vr(at + 4)) return Step::unknown;
      const std::string vr = bytes_.substr(size_t(at + 4), 2);
      static const char* kLong[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"};
      if (std::any_of(std::begin(kLong), std::end(kLong), [&](const char* v) { return vr == v; })) {
        header = 12;
        if (at + 12 > size_) return cut(start);
        if (!have(at + 12)) return Step::unknown;
        length = u32(at + 8, big);
      } else {
        length = u16(at + 6, big);
      }
      // An unknown sequence's items are implicit VR, or explicit in files written before CP-246:
      // which, only reading them tells; not walked.
      if (vr == "UN" && length == kUndefined) return Step::unknown;
      sequence = vr == "SQ";
    } else {
      length = u32(at + 4, big);
      sequence = true;  // only a sequence has an undefined length here (pixel data aside)
    }
    if (top && group == 0x7FE0 && element == 0x0010) {
      if (length != kUndefined) return Step::pixel_data;  // native: its length is checked when decoded
      at += header;
      in_pixel_data_ = true;
      for (int fragments = 0;; ++fragments) {  // encapsulated (JPEG, JPEG 2000, RLE): every fragment within the file
        // A file that ends right after a whole image fragment (the offset table is the first
        // item), without the delimiter: GDCM reads it.
        if (at == size_ && fragments > 1) return Step::pixel_data;
        const uint64_t item = at;
        uint16_t tag = 0;
        uint32_t fragment = 0;
        if (const Step s = item_header(at, big, tag, fragment); s != Step::next) return s;
        if (tag == 0xE0DD) return Step::pixel_data;
        if (tag != 0xE000 || fragment == kUndefined) return Step::unknown;
        if (at + fragment > size_) return cut(item);
        at += fragment;
      }
    }
    // Implicit VR whose bytes read as a VR code: an explicit data set its meta header calls
    // implicit (GDCM reads such files); not walked.
    if (!explicit_vr && is_known_vr(at + 4)) return Step::unknown;
    if (length != kUndefined) {
      if (at + header + length > size_) return cut(start);
      at += header + length;
      return Step::next;
    }
    if (!sequence) return Step::unknown;
    at += header;
    // Items until the sequence delimiter.
    while (true) {
      const uint64_t item = at;
      uint16_t tag = 0;
      uint32_t item_length = 0;
      if (const Step s = item_header(at, big, tag, item_length); s != Step::next) return s;
      if (tag == 0xE0DD) return Step::next;  // sequence delimiter
      if (tag != 0xE000) return Step::unknown;
      if (item_length != kUndefined) {
        if (at + item_length > size_) return cut(item);
        at += item_length;
        continue;
      }
      while (true) {  // the item's elements until its delimiter
        const Step s = element_at(at, explicit_vr, big, false, depth + 1);
        if (s == Step::item_end) break;
        if (s != Step::next) return s;
      }
    }
  }

  std::ifstream in_;
  std::string bytes_;
  uint64_t size_ = 0;
  uint64_t cut_ = 0;
  bool readable_ = false, in_pixel_data_ = false;
};

}  // namespace

bool has_dicom_extension(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  return ext == ".dcm" || ext == ".ima";
}

std::optional<std::string> header_cut_short(const fs::path& path) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return std::nullopt;
  if (size == 0) return "an empty file";
  HeaderWalk walk(path);
  const std::optional<uint64_t> at = walk.cut_at();
  if (!at) return std::nullopt;
  return std::string("the file ends inside its ") + (walk.in_pixel_data() ? "compressed pixel data" : "header") +
         " (at byte " + std::to_string(*at) + " of " + std::to_string(size) + ": a copy or download cut short?)";
}

bool looks_like_dicom(const fs::path& path) {
  // A DICOMDIR (PS 3.10 names it so) is the index of a CD or export, not an image.
  if (upper(path.filename().string()) == "DICOMDIR") return false;
  std::ifstream in(path, std::ios::binary);
  char buf[132] = {};
  in.read(buf, 132);
  if (in.gcount() == 132 && std::memcmp(buf + 128, "DICM", 4) == 0) return true;
  // Files without preamble or meta header: let GDCM try, but only on plausible candidates.
  const std::string ext = path.extension().string();
  const bool uid_name =
      ext.size() > 1 && std::all_of(ext.begin() + 1, ext.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
  if (!(ext.empty() || uid_name || has_dicom_extension(path))) return false;
  if (header_cut_short(path)) return false;
  gdcm::Reader reader;
  reader.SetFileName(path.c_str());
  return read_up_to_pixel_data(reader) && reader.GetFile().GetDataSet().FindDataElement(gdcm::Tag(0x0008, 0x0016));
}

namespace {

// The header is read by GDCM up to, not including, the pixel data: a length field that
// claims gigabytes must not be allocated before it is checked against the file. The pixel
// data element (tag, optional VR, declared length) is found in the file bytes instead: where a
// native image of the header's size ends the file, else the first element whose length is that
// size or undefined (encapsulated), else the first one at all (a damaged length).
struct PixelDataElement {
  bool found = false;
  int64_t length = -1;    // -1: undefined (encapsulated)
  bool fits_file = true;  // offset + header + length <= file size
};

PixelDataElement find_pixel_data(const fs::path& path, bool big_endian, int64_t expected_bytes) {
  PixelDataElement out;
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (ec) return out;
  std::ifstream in(path, std::ios::binary);
  const auto u8 = [](const std::string& b, size_t i) { return uint32_t(static_cast<unsigned char>(b[i])); };
  // Element header at `at` in `b`: tag, then explicit (OB/OW/UN, 2 reserved bytes, 32-bit
  // length) or implicit (32-bit length) VR.
  const auto element = [&](const std::string& b, size_t at, uint64_t file_at) -> std::optional<PixelDataElement> {
    if (at + 8 > b.size()) return std::nullopt;
    const bool tag = big_endian ? (u8(b, at) == 0x7F && u8(b, at + 1) == 0xE0 && u8(b, at + 2) == 0x00 && u8(b, at + 3) == 0x10)
                                : (u8(b, at) == 0xE0 && u8(b, at + 1) == 0x7F && u8(b, at + 2) == 0x10 && u8(b, at + 3) == 0x00);
    if (!tag) return std::nullopt;
    const bool explicit_vr = b[at + 4] == 'O' || (b[at + 4] == 'U' && b[at + 5] == 'N');
    const size_t header = explicit_vr ? 12 : 8;
    if (at + header > b.size()) return std::nullopt;
    const size_t l = at + header - 4;
    const uint32_t length = big_endian ? (u8(b, l + 3) | u8(b, l + 2) << 8 | u8(b, l + 1) << 16 | u8(b, l) << 24)
                                       : (u8(b, l) | u8(b, l + 1) << 8 | u8(b, l + 2) << 16 | u8(b, l + 3) << 24);
    PixelDataElement e;
    e.found = true;
    e.length = length == 0xFFFFFFFFu ? -1 : int64_t(length);
    e.fits_file = e.length < 0 || file_at + header + uint64_t(e.length) <= file_size;
    return e;
  };
  // Fast path: a native image that ends the file (the usual layout).
  for (const int header : {12, 8}) {
    const int64_t at = int64_t(file_size) - expected_bytes - header;
    if (expected_bytes <= 0 || at < 0) continue;
    std::string b(12, '\0');
    in.clear();
    in.seekg(at);
    in.read(b.data(), 12);
    if (in.gcount() < header) continue;
    if (const auto e = element(b, 0, uint64_t(at)); e && e->length == expected_bytes) return *e;
  }
  in.clear();
  in.seekg(0);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::optional<PixelDataElement> first;
  for (size_t i = 0; i + 8 <= bytes.size(); ++i) {
    const auto e = element(bytes, i, i);
    if (!e) continue;
    if (e->length < 0 || e->length == expected_bytes || e->length == expected_bytes + 1) return *e;
    if (!first) first = e;
  }
  return first ? *first : out;
}

}  // namespace

std::string dicom_datetime(const std::string& date_in, const std::string& time_in) {
  std::string date = trim(date_in), time = trim(time_in);
  if (time.empty() && date.size() > 8) {  // a DT value: date and time in one
    time = date.substr(8);
    date = date.substr(0, 8);
    const size_t offset = time.find_first_of("+-");
    if (offset != std::string::npos) time = time.substr(0, offset);
  }
  auto digits = [](const std::string& s) { return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit); };
  if (date.size() != 8 || !digits(date)) return "";
  const int year = std::stoi(date.substr(0, 4)), month = std::stoi(date.substr(4, 2)), day = std::stoi(date.substr(6, 2));
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (year < 1900 || month < 1 || month > 12 || day < 1 || day > kDays[month - 1]) return "";
  if (month == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) return "";
  // Time: without one the date alone is not enough to order two scans of a day: midnight
  // would be made up, so a missing time makes the stamp unusable.
  time.erase(std::remove(time.begin(), time.end(), ':'), time.end());
  std::string fraction;
  if (const size_t dot = time.find('.'); dot != std::string::npos) {
    fraction = time.substr(dot + 1);
    time = time.substr(0, dot);
    if (!fraction.empty() && !digits(fraction)) return "";
  }
  if (!digits(time) || (time.size() != 2 && time.size() != 4 && time.size() != 6)) return "";
  time.resize(6, '0');
  const int hh = std::stoi(time.substr(0, 2)), mm = std::stoi(time.substr(2, 2)), ss = std::stoi(time.substr(4, 2));
  if (hh > 23 || mm > 59 || ss > 60) return "";
  std::string out = date.substr(0, 4) + "-" + date.substr(4, 2) + "-" + date.substr(6, 2) + "T" + time.substr(0, 2) +
                    ":" + time.substr(2, 2) + ":" + time.substr(4, 2);
  if (!fraction.empty()) out += "." + fraction;
  return out;
}

const DicomHeader* earliest_stamp(const std::vector<DicomHeader>& series) {
  const DicomHeader* first = nullptr;
  for (const DicomHeader& h : series)
    if (!h.datetime.empty() && (!first || h.datetime < first->datetime)) first = &h;
  return first;
}

DicomHeader read_dicom_header(const fs::path& path) {
  if (const auto cut = header_cut_short(path)) throw IoError(path.filename().string() + ": " + *cut);
  // (GDCM is not given such a file: it would end the process.)
  gdcm::Trace::WarningOff();  // problems are reported by hemexp, once, in plain words
  gdcm::Reader reader;
  reader.SetFileName(path.c_str());
  if (!read_up_to_pixel_data(reader))
    throw IoError("not a readable DICOM file (" + path.filename().string() + ")");
  const gdcm::File& file = reader.GetFile();
  const gdcm::DataSet& ds = file.GetDataSet();
  gdcm::StringFilter sf;
  sf.SetFile(file);
  auto get = [&](uint16_t group, uint16_t element) -> std::string {
    const gdcm::Tag tag(group, element);
    if (!ds.FindDataElement(tag) || ds.GetDataElement(tag).IsEmpty()) return "";
    return trim(sf.ToString(tag));
  };

  DicomHeader h;
  h.path = path;
  h.sop_class_uid = get(0x0008, 0x0016);
  if (h.sop_class_uid.empty()) {
    const std::string media = trim(file.GetHeader().GetMediaStorageAsString());
    h.sop_class_uid = media;
  }
  h.modality = upper(get(0x0008, 0x0060));
  h.image_type = get(0x0008, 0x0008);
  h.series_uid = get(0x0020, 0x000e);
  h.series_description = get(0x0008, 0x103e);
  h.patient_id = get(0x0010, 0x0020);
  h.study_uid = get(0x0020, 0x000d);
  h.sop_instance_uid = get(0x0008, 0x0018);
  h.contrast_agent = get(0x0018, 0x0010);
  const std::pair<const char*, std::string> stamps[] = {
      {"AcquisitionDateTime", dicom_datetime(get(0x0008, 0x002a), "")},
      {"AcquisitionDate/Time", dicom_datetime(get(0x0008, 0x0022), get(0x0008, 0x0032))},
      {"SeriesDate/Time", dicom_datetime(get(0x0008, 0x0021), get(0x0008, 0x0031))},
      {"StudyDate/Time", dicom_datetime(get(0x0008, 0x0020), get(0x0008, 0x0030))},
      {"ContentDate/Time", dicom_datetime(get(0x0008, 0x0023), get(0x0008, 0x0033))}};
  for (const auto& [source, value] : stamps)
    if (!value.empty()) {
      h.datetime = value;
      h.datetime_source = source;
      break;
    }
  h.convolution_kernel = get(0x0018, 0x1210);
  h.transfer_syntax = file.GetHeader().GetDataSetTransferSyntax().GetString();
  h.series_number = int64_t(number(get(0x0020, 0x0011)).value_or(0));
  h.instance_number = int64_t(number(get(0x0020, 0x0013)).value_or(0));
  h.rows = int64_t(number(get(0x0028, 0x0010)).value_or(0));
  h.columns = int64_t(number(get(0x0028, 0x0011)).value_or(0));
  h.frames = std::max<int64_t>(1, int64_t(number(get(0x0028, 0x0008)).value_or(1)));
  h.bits_allocated = int(number(get(0x0028, 0x0100)).value_or(16));
  h.pixel_representation = int(number(get(0x0028, 0x0103)).value_or(0));
  h.rescale_slope = number(get(0x0028, 0x1053)).value_or(1.0);
  if (h.rescale_slope == 0) h.rescale_slope = 1.0;
  h.rescale_intercept = number(get(0x0028, 0x1052)).value_or(0.0);
  if (auto pad = number(get(0x0028, 0x0120))) {
    double v = *pad;
    // Padding written as unsigned while the pixels are signed (seen on GE): reinterpret.
    if (h.pixel_representation == 1 && h.bits_allocated == 16 && v > 32767) v -= 65536;
    h.padding_value = v;
  }
  h.gantry_tilt_tag_deg = number(get(0x0018, 0x1120));

  const auto ipp = numbers(get(0x0020, 0x0032));
  const auto iop = numbers(get(0x0020, 0x0037));
  const auto ps = numbers(get(0x0028, 0x0030));
  h.has_position = ipp.size() == 3;
  h.has_orientation = iop.size() == 6;
  h.has_pixel_spacing = ps.size() == 2 && ps[0] > 0 && ps[1] > 0;
  SliceGeometry& g = h.geometry;
  g.rows = h.rows;
  g.columns = h.columns;
  if (h.has_position) g.position_mm = {ipp[0], ipp[1], ipp[2]};
  if (h.has_orientation) {
    g.row_direction = {iop[0], iop[1], iop[2]};
    g.column_direction = {iop[3], iop[4], iop[5]};
  }
  if (h.has_pixel_spacing) g.row_spacing_mm = ps[0], g.column_spacing_mm = ps[1];
  g.thickness_mm = number(get(0x0018, 0x0050)).value_or(0.0);

  const int64_t expected = h.rows * h.columns * h.frames * (h.bits_allocated / 8);
  const bool big_endian = file.GetHeader().GetDataSetTransferSyntax() == gdcm::TransferSyntax::ExplicitVRBigEndian;
  const PixelDataElement pd = find_pixel_data(path, big_endian, expected);
  h.pixel_data_bytes = !pd.found ? -2 : pd.length;
  h.pixel_data_truncated = pd.found && !pd.fits_file;
  return h;
}

std::string slice_problem(const DicomHeader& h) {
  if (h.modality != "CT")
    return "modality is " + (h.modality.empty() ? std::string("missing") : h.modality) + ", not CT";
  if (h.is_secondary_capture()) return "CT stored as Secondary Capture (no reliable geometry)";
  if (h.is_enhanced_multiframe())
    return "enhanced multi-frame CT (" + std::to_string(h.frames) +
           " frames) is not supported; export the series as single-frame images";
  if (h.is_localizer()) return "image is a localizer (scout)";
  if (h.pixel_data_bytes == -2) return "file has no pixel data";
  if (!h.has_position || !h.has_orientation)
    return "image has no position or orientation (ImagePositionPatient/ImageOrientationPatient)";
  if (!h.has_pixel_spacing) return "image has no pixel spacing";
  if (h.rows < 2 || h.columns < 2)
    return "image has " + std::to_string(h.rows) + " rows and " + std::to_string(h.columns) + " columns";
  if (h.bits_allocated != 8 && h.bits_allocated != 16 && h.bits_allocated != 32)
    return "BitsAllocated is " + std::to_string(h.bits_allocated) + " (8, 16 or 32 expected)";
  if (h.pixel_data_bytes > 0 && h.pixel_data_bytes % 2 == 1)
    return "pixel data length " + std::to_string(h.pixel_data_bytes) + " is odd (DICOM lengths are even): the file is damaged";
  if (h.pixel_data_truncated)
    return "pixel data is truncated: its length field claims " + std::to_string(h.pixel_data_bytes) +
           " bytes, more than the file holds";
  if (h.pixel_data_bytes >= 0) {
    const int64_t expected = h.rows * h.columns * h.frames * (h.bits_allocated / 8);
    if (h.pixel_data_bytes < expected)
      return "pixel data is truncated: " + std::to_string(h.pixel_data_bytes) + " bytes, where " +
             std::to_string(h.rows) + " x " + std::to_string(h.columns) + " pixels of " +
             std::to_string(h.bits_allocated) + " bits need " + std::to_string(expected);
  }
  return "";
}

torch::Tensor read_dicom_pixels(const DicomHeader& h, double air_hu, PixelStats* stats) {
  itk_first_use();
  using Image = itk::Image<float, 3>;
  try {
    auto io = itk::GDCMImageIO::New();
    auto reader = itk::ImageFileReader<Image>::New();
    reader->SetImageIO(io);
    reader->SetFileName(h.path.string());
    reader->Update();
    Image::Pointer image = reader->GetOutput();
    const auto size = image->GetLargestPossibleRegion().GetSize();
    if (int64_t(size[0]) != h.columns || int64_t(size[1]) != h.rows || size[2] != 1)
      throw IoError("decoded image size differs from the header");
    torch::Tensor hu = torch::empty({h.rows, h.columns}, torch::kFloat32);
    std::memcpy(hu.data_ptr<float>(), image->GetBufferPointer(), sizeof(float) * size_t(hu.numel()));
    // GDCMImageIO has applied slope/intercept; padding is compared in the same units.
    if (h.padding_value) {
      const double pad_hu = *h.padding_value * h.rescale_slope + h.rescale_intercept;
      const torch::Tensor is_pad = (hu - float(pad_hu)).abs() < float(0.5 * std::abs(h.rescale_slope));
      if (stats) stats->padding_voxels += is_pad.sum().item<int64_t>();
      hu.masked_fill_(is_pad, float(air_hu));
    }
    return hu;
  } catch (const itk::ExceptionObject& e) {
    throw IoError("cannot decode pixel data of " + h.path.filename().string() + " (" +
                  h.transfer_syntax + "): " + library_reason(e.GetDescription()));
  }
}

std::vector<fs::path> folders_below(const fs::path& folder) {
  std::vector<fs::path> folders;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(folder, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end; it.increment(ec)) {
    std::error_code entry_ec;  // a dangling link is skipped, not the end of the search
    if (!it->is_directory(entry_ec) || entry_ec) continue;
    if (it->path().filename().string()[0] == '.' || it.depth() >= 3) it.disable_recursion_pending();
    if (it->path().filename().string()[0] != '.') folders.push_back(it->path());
  }
  std::sort(folders.begin(), folders.end());
  return folders;
}

std::vector<DicomHeader> read_folder_headers(const fs::path& folder, std::vector<std::string>* unreadable) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file() && entry.path().filename().string()[0] != '.') files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<DicomHeader> out;
  for (const fs::path& f : files) {
    if (!looks_like_dicom(f)) {
      // A file named as a DICOM file that is not one (empty, cut short) may be a lost slice.
      if (unreadable && has_dicom_extension(f) && upper(f.filename().string()) != "DICOMDIR") {
        const auto cut = header_cut_short(f);
        unreadable->push_back(f.filename().string() + ": " + (cut ? *cut : "not a readable DICOM file"));
      }
      continue;
    }
    try {
      out.push_back(read_dicom_header(f));
    } catch (const IoError& e) {
      const std::string what = e.what(), name = f.filename().string();
      if (unreadable) unreadable->push_back(what.find(name) != std::string::npos ? what : name + ": " + what);
    }
  }
  return out;
}

}  // namespace hemexp
