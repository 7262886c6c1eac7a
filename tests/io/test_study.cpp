// What pairing a patient's scans needs from DICOM: dates and times, PatientID, one scan per
// folder as `run` reads it.
#include <gtest/gtest.h>

#include <fstream>

#include "dicom_maker.hpp"
#include "test_support.hpp"
#include "hemexp/io/dicom.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;

TEST(DicomDatetime, DatesAndTimesAsScannersWriteThem) {
  EXPECT_EQ(dicom_datetime("20240131", "142501"), "2024-01-31T14:25:01");
  EXPECT_EQ(dicom_datetime("20240131", "142501.123456"), "2024-01-31T14:25:01.123456");
  EXPECT_EQ(dicom_datetime("20240131", "1425"), "2024-01-31T14:25:00");
  EXPECT_EQ(dicom_datetime("20240131", "14"), "2024-01-31T14:00:00");
  EXPECT_EQ(dicom_datetime("20240131", "14:25:01"), "2024-01-31T14:25:01");  // old ACR-NEMA style
  EXPECT_EQ(dicom_datetime(" 20240131 ", " 142501 "), "2024-01-31T14:25:01");
  EXPECT_EQ(dicom_datetime("20240229093000.5+0100", ""), "2024-02-29T09:30:00.5");  // DT, offset ignored
  // Nothing is made up: no time, no date, impossible dates and times give no stamp.
  EXPECT_EQ(dicom_datetime("20240131", ""), "");
  EXPECT_EQ(dicom_datetime("", "142501"), "");
  EXPECT_EQ(dicom_datetime("20230229", "120000"), "");  // not a leap year
  EXPECT_EQ(dicom_datetime("20241301", "120000"), "");
  EXPECT_EQ(dicom_datetime("20240131", "250000"), "");
  EXPECT_EQ(dicom_datetime("2024-01-31", "120000"), "");
  EXPECT_EQ(dicom_datetime("20240131", "12a000"), "");
  EXPECT_EQ(dicom_datetime("18000101", "120000"), "");
}

TEST(StudyScans, PatientStudyAndDateOfEachFolder) {
  test::ScratchDir dir;
  const fs::path source = test::data("philips-head-phantom-5mm");
  test::write_dicom_scan(source, dir / "p1/a", {"P1", "1.2.3.1", "1.2.3.1.1", "20240101", "080000", "20240101", "081502"});
  // No acquisition date: the study's is used.
  test::write_dicom_scan(source, dir / "p1/b", {"P1", "1.2.3.2", "1.2.3.2.1", "20240102", "090000", "", ""});
  test::write_dicom_scan(source, dir / "p2/a", {"", "1.2.3.3", "1.2.3.3.1", "20240101", "080000", "", ""});
  test::write_dicom_scan(source, dir / "p3/a", {"P3", "1.2.3.4", "1.2.3.4.1", "", "", "", ""});
  std::ofstream(dir / "p4.nii.gz") << "not read: a volume file has no PatientID";
  const std::vector<StudyScan> scans = describe_study_scans(dir.path());
  ASSERT_EQ(scans.size(), 5u);
  EXPECT_EQ(scans[0].input.path, dir / "p1/a");
  EXPECT_EQ(scans[0].patient_id, "P1");
  EXPECT_EQ(scans[0].study_uid, "1.2.3.1");
  EXPECT_EQ(scans[0].series_uid, "1.2.3.1.1");
  EXPECT_EQ(scans[0].datetime, "2024-01-01T08:15:02");
  EXPECT_EQ(scans[0].datetime_source, "AcquisitionDate/Time");
  EXPECT_EQ(scans[0].images, 6);
  EXPECT_EQ(scans[0].problem, "");
  EXPECT_EQ(scans[1].datetime, "2024-01-02T09:00:00");
  EXPECT_EQ(scans[1].datetime_source, "SeriesDate/Time");
  EXPECT_EQ(scans[2].problem, "no PatientID");
  EXPECT_EQ(scans[3].patient_id, "P3");
  EXPECT_EQ(scans[3].problem, "no usable acquisition, series or study date and time");
  EXPECT_EQ(scans[4].input.path, dir / "p4.nii.gz");
  EXPECT_NE(scans[4].problem.find("not DICOM"), std::string::npos);
  // Reading the scan records the same patient and stamp (result.json keeps them).
  const LoadedVolume v = read_volume(dir / "p1/a");
  EXPECT_EQ(v.info.patient_id, "P1");
  EXPECT_EQ(v.info.datetime, "2024-01-01T08:15:02");
}

// A PATIENT/STUDY/SERIES export gives each series its own folder: the study's scan is chosen
// among its folders as `run` chooses within one (the soft-tissue series over a bone series of as
// many or more images), and the others say why they are not used.
TEST(StudyScans, AStudysSeriesInSeveralFoldersAreChosenAmongAsInOne) {
  test::ScratchDir dir;
  const fs::path source = test::data("philips-head-phantom-5mm");
  test::write_dicom_scan(source, dir / "P1/ST1/SE2", {"P1", "1.2.3.1", "1.2.3.1.2", "20240101", "080000", "", "",
                                                      {{{0x0018, 0x1210}, "UB"}, {{0x0020, 0x0011}, "2"}}});
  test::write_dicom_scan(source, dir / "P1/ST1/SE1", {"P1", "1.2.3.1", "1.2.3.1.1", "20240101", "080000", "", "",
                                                      {{{0x0018, 0x1210}, "YC"}, {{0x0020, 0x0011}, "1"}}});
  const std::vector<StudyScan> scans = describe_study_scans(dir.path());
  ASSERT_EQ(scans.size(), 2u);
  EXPECT_EQ(scans[0].input.path, dir / "P1/ST1/SE1");  // path order; the bone series
  EXPECT_TRUE(scans[0].other_series_of_study);
  EXPECT_EQ(scans[0].problem, (dir / "P1/ST1/SE1").string() + " is another series of the study of " +
                                  (dir / "P1/ST1/SE2").string() + " (bone or lung kernel YC): not used");
  EXPECT_FALSE(scans[1].other_series_of_study);
  EXPECT_EQ(scans[1].problem, "");
}

}  // namespace
}  // namespace hemexp
