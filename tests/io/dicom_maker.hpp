#pragma once
// DICOM scans made in a test: a real series (tests/data) copied with the patient, study,
// series, instance UIDs and dates rewritten through GDCM, as a scanner would write a
// patient's next scan.
#include <gdcmAnonymizer.h>
#include <gdcmReader.h>
#include <gdcmTag.h>
#include <gdcmWriter.h>

#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>

namespace hemexp::test {

struct ScanTags {
  std::string patient_id;
  std::string study_uid, series_uid;  // each file gets series_uid + "." + its index
  std::string study_date, study_time;  // (0008,0020), (0008,0030)
  std::string acquisition_date, acquisition_time;  // (0008,0022), (0008,0032); empty: removed
  std::map<std::pair<uint16_t, uint16_t>, std::string> more;  // any other tag, e.g. the kernel (0018,1210)
};

// Copies every file of `source` into `target` with the tags of `t`.
inline void write_dicom_scan(const std::filesystem::path& source, const std::filesystem::path& target,
                             const ScanTags& t) {
  std::filesystem::create_directories(target);
  int k = 0;
  for (const auto& e : std::filesystem::directory_iterator(source)) {
    gdcm::Reader reader;
    reader.SetFileName(e.path().c_str());
    if (!reader.Read()) throw std::runtime_error("cannot read " + e.path().string());
    gdcm::Anonymizer a;
    a.SetFile(reader.GetFile());
    const std::map<std::pair<uint16_t, uint16_t>, std::string> values{
        {{0x0010, 0x0020}, t.patient_id},       {{0x0020, 0x000d}, t.study_uid},
        {{0x0020, 0x000e}, t.series_uid},       {{0x0008, 0x0018}, t.series_uid + "." + std::to_string(++k)},
        {{0x0008, 0x0020}, t.study_date},       {{0x0008, 0x0030}, t.study_time},
        {{0x0008, 0x0021}, t.study_date},       {{0x0008, 0x0031}, t.study_time},
        {{0x0008, 0x0022}, t.acquisition_date}, {{0x0008, 0x0032}, t.acquisition_time}};
    std::map<std::pair<uint16_t, uint16_t>, std::string> all = values;
    for (const auto& [tag, value] : t.more) all[tag] = value;
    for (const auto& [tag, value] : all) {
      if (value.empty()) a.Remove(gdcm::Tag(tag.first, tag.second));
      else a.Replace(gdcm::Tag(tag.first, tag.second), value.c_str());
    }
    a.Remove(gdcm::Tag(0x0008, 0x002a));  // AcquisitionDateTime
    a.Remove(gdcm::Tag(0x0008, 0x0023));  // ContentDate
    a.Remove(gdcm::Tag(0x0008, 0x0033));
    gdcm::Writer writer;
    writer.SetFile(reader.GetFile());
    writer.SetFileName((target / e.path().filename()).c_str());
    if (!writer.Write()) throw std::runtime_error("cannot write " + (target / e.path().filename()).string());
  }
}

}  // namespace hemexp::test
