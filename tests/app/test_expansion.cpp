// `hemexp expansion`: pairs files, pairing by patient and date, the measured change of a pair,
// labels, and the command end to end (DICOM study folders; synthetic pairs with known growth).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dicom_maker.hpp"
#include "test_helpers.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/app/expansion_command.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/expansion.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kData = HEMEXP_TEST_DATA;
using test::slurp;

class Expansion : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("hemexp-expansion-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

std::vector<std::map<std::string, std::string>> read_csv(const fs::path& p) { return parse_csv(slurp(p)).records(); }

TEST_F(Expansion, ReadPairsResolvesPathsAndCarriesExtraColumns) {
  std::ofstream(root_ / "pairs.csv") << "pair_id,baseline,followup,hours_between,site\n"
                                        "a,p1/ct.nii.gz,/data/p1/fu.nii.gz,23.5,Leeds\n"
                                        ",,,,\n"
                                        "b,p2/ct.nii.gz,p2/fu.nii.gz,,\"Lyon, FR\"\n";
  const std::vector<ScanPair> pairs = read_pairs(root_ / "pairs.csv");
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].pair_id, "a");
  EXPECT_EQ(pairs[0].baseline, root_ / "p1/ct.nii.gz");
  EXPECT_EQ(pairs[0].followup, fs::path("/data/p1/fu.nii.gz"));
  EXPECT_DOUBLE_EQ(*pairs[0].hours_between, 23.5);
  EXPECT_FALSE(pairs[1].hours_between.has_value());
  ASSERT_EQ(pairs[1].extra.size(), 1u);
  EXPECT_EQ(pairs[1].extra[0], std::make_pair(std::string("site"), std::string("Lyon, FR")));

  const auto fails_with = [&](const std::string& text, const std::string& reason) {
    std::ofstream(root_ / "bad.csv") << text;
    try {
      read_pairs(root_ / "bad.csv");
      ADD_FAILURE() << "no error for: " << text;
    } catch (const CoreError& e) {
      EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
    }
  };
  fails_with("pair_id,baseline\na,x\n", "has no followup column");
  fails_with("pair_id,baseline,followup\na,x,y\na,x,z\n", "row 3: pair_id 'a' repeats");
  fails_with("pair_id,baseline,followup\n,x,y\n", "row 2: no pair_id");
  fails_with("pair_id,baseline,followup\na,,y\n", "row 2: no baseline path");
  fails_with("pair_id,baseline,followup,hours_between\na,x,y,one day\n", "hours_between 'one day' is not a number");
  fails_with("pair_id,baseline,followup\na,p/x.nii.gz,./p/x.nii.gz\n", "row 2: baseline and followup are the same scan");
}

StudyScan scan(const std::string& path, const std::string& patient, const std::string& study, const std::string& when,
               int64_t images = 30) {
  StudyScan s;
  s.input = {fs::path(path).filename().string(), path};
  s.patient_id = patient;
  s.study_uid = study;
  s.series_uid = study + ".1";
  s.datetime = when;
  s.images = images;
  if (patient.empty()) s.problem = "no PatientID";
  else if (when.empty()) s.problem = "no usable acquisition, series or study date and time";
  return s;
}

// A pairs file's own columns named like measured ones (a reader's he_label) are kept beside them
// as list_<name>, never in a measured column; the same scan named two ways is one scan.
TEST_F(Expansion, PairsFileColumnsNeverTakeAMeasuredColumnsPlace) {
  fs::create_directories(root_ / "data/s1");
  std::ofstream(root_ / "data/b.nii.gz") << "x";
  std::ofstream(root_ / "data/f.nii.gz") << "x";
  std::ofstream(root_ / "data/pairs.csv") << "pair_id,baseline,followup,he_label,growth_ml,note\nX1,b.nii.gz,f.nii.gz,1,9,reader\n";
  const std::vector<ScanPair> pairs = read_pairs(root_ / "data/pairs.csv");
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].extra, (std::vector<std::pair<std::string, std::string>>{
                                {"list_he_label", "1"}, {"list_growth_ml", "9"}, {"note", "reader"}}));
  CaseResult failed;
  failed.status = "failed";
  failed.error = "gone";
  const auto row = measure_pair(pairs[0], "b", failed, "f", failed).csv_row();
  EXPECT_EQ(row.count("he_label"), 0u);  // blank: nothing was measured
  EXPECT_EQ(row.at("list_he_label"), "1");
  for (const std::string& twice : {"X2,b.nii.gz," + (root_ / "data/b.nii.gz").string(), std::string("X3,s1/,s1")}) {
    std::ofstream(root_ / "data/same.csv", std::ios::trunc) << "pair_id,baseline,followup\n" << twice << "\n";
    try {
      read_pairs(root_ / "data/same.csv");
      ADD_FAILURE() << twice;
    } catch (const CoreError& e) {
      EXPECT_NE(std::string(e.what()).find("baseline and followup are the same scan"), std::string::npos) << e.what();
    }
  }
}

TEST_F(Expansion, StudyScansArePairedByPatientAndDateAndNothingIsGuessed) {
  const std::vector<StudyScan> scans{
      scan("/s/p1/day2", "P1", "1.1", "2024-01-02T09:00:00"),
      scan("/s/p1/day1", "P1", "1.2", "2024-01-01T08:30:00"),
      scan("/s/p1/day1-thin", "P1", "1.2", "2024-01-01T08:30:00", 200),  // same study, more images
      scan("/s/p1/day4", "P1", "1.3", "2024-01-04T08:30:00"),
      scan("/s/p2/only", "P2", "2.1", "2024-03-01T10:00:00"),
      scan("/s/p3/a", "P3", "3.1", "2024-03-01T10:00:00"),
      scan("/s/p3/b", "P3", "3.2", ""),
      scan("/s/p4/a", "P4", "4.1", "2024-05-01T10:00:00"),
      scan("/s/p4/b", "P4", "4.2", "2024-05-01T10:00:00"),
      scan("/s/anon", "", "5.1", "2024-05-01T10:00:00"),
      scan("/s/p5/a", "P5", "6.1", "2024-06-01T12:00:00"),
      scan("/s/p5/b", "P5", "6.2", "2024-06-01T12:00:00.000"),  // the same moment, written otherwise
      scan("/s/ab1/a", "A B", "7.1", "2024-07-01T08:00:00"),
      scan("/s/ab1/b", "A B", "7.2", "2024-07-02T08:00:00"),
      scan("/s/ab2/a", "A-B", "8.1", "2024-07-01T09:00:00"),
      scan("/s/ab2/b", "A-B", "8.2", "2024-07-03T09:00:00"),
  };
  const StudyPairing p = pair_study_scans(scans);
  ASSERT_EQ(p.pairs.size(), 4u);
  // A patient id the file-name-safe form changes gets a digest of the id as written: "A B" and
  // "A-B" keep apart, and neither id depends on the other being there.
  EXPECT_EQ(p.pairs[2].pair_id, "A-B-" + sha256_hex("A B").substr(0, 8) + "_fu1");
  EXPECT_EQ(p.pairs[3].pair_id, "A-B_fu1");  // a safe id stays as it is, whoever else is there
  EXPECT_EQ(p.pairs[3].baseline, fs::path("/s/ab2/a"));
  for (const ScanPair& pair : p.pairs) EXPECT_EQ(pair.hours_source, "dicom");
  EXPECT_EQ(p.pairs[0].pair_id, "P1_fu1");
  EXPECT_EQ(p.pairs[0].baseline, fs::path("/s/p1/day1-thin"));
  EXPECT_EQ(p.pairs[0].followup, fs::path("/s/p1/day2"));
  EXPECT_DOUBLE_EQ(*p.pairs[0].hours_between, 24.5);
  EXPECT_EQ(p.pairs[1].pair_id, "P1_fu2");
  EXPECT_EQ(p.pairs[1].followup, fs::path("/s/p1/day4"));
  EXPECT_DOUBLE_EQ(*p.pairs[1].hours_between, 72.0);
  EXPECT_EQ(p.pairs[1].extra[0], std::make_pair(std::string("patient_id"), std::string("P1")));
  const std::string problems = [&] {
    std::string all;
    for (const std::string& s : p.problems) all += s + "\n";
    return all;
  }();
  EXPECT_EQ(p.problems.size(), 6u) << problems;
  for (const std::string& expected :
       {"/s/anon: no PatientID", "/s/p1/day1 is another series of the study of /s/p1/day1-thin",
        "patient P2: one scan only (/s/p2/only)", "patient P3: /s/p3/b has no usable acquisition",
        "patient P4: two studies at the same date and time", "patient P5: two studies at the same date and time"})
    EXPECT_NE(problems.find(expected), std::string::npos) << expected << "\n" << problems;
  // pairs.csv reads back as the same pairs.
  std::ofstream(root_ / "pairs.csv") << pairs_csv_text(p.pairs);
  const std::vector<ScanPair> back = read_pairs(root_ / "pairs.csv");
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[1].baseline, p.pairs[1].baseline);
  EXPECT_DOUBLE_EQ(*back[1].hours_between, 72.0);
  EXPECT_EQ(back[1].extra, p.pairs[1].extra);
}

TEST_F(Expansion, HoursBetweenStamps) {
  EXPECT_DOUBLE_EQ(*hours_between("2024-02-28T22:00:00", "2024-03-01T01:30:00"), 27.5);  // leap day
  EXPECT_DOUBLE_EQ(*hours_between("2024-01-01T10:00:00", "2024-01-01T09:00:00"), -1.0);
  EXPECT_NEAR(*hours_between("2024-01-01T10:00:00.5", "2024-01-01T10:00:01"), 0.5 / 3600.0, 1e-12);
  EXPECT_FALSE(hours_between("", "2024-01-01T10:00:00").has_value());
  EXPECT_FALSE(hours_between("2024-01-01 10:00:00", "2024-01-01T10:00:00").has_value());
}

CaseResult scan_result(double volume_ml, int64_t voxels) {
  CaseResult r;
  r.input = InputInfo{};
  r.input->format = "dicom";
  r.input->geometry.size = {512, 512, 30};
  r.input->geometry.spacing_mm = {0.45, 0.45, 5.0};
  r.input->patient_id = "P1";
  r.intracranial = IntracranialContent{};
  r.intracranial->skull_found = true;
  r.intracranial->volume_ml = 1400;
  r.hematoma = HematomaMeasurements{};
  r.hematoma->volume_ml = volume_ml;
  r.hematoma->voxels = voxels;
  return r;
}

TEST_F(Expansion, APairsGrowthLabelsAndFlags) {
  ScanPair pair{"p", "/b", "/f", std::nullopt, {{"site", "x"}}};
  CaseResult b = scan_result(10.0, 1000), f = scan_result(13.5, 1350);
  b.input->datetime = "2024-01-01T08:00:00";
  f.input->datetime = "2024-01-02T08:30:00";
  b.he = ExpansionRisk{};
  b.he->probability = 0.42;
  b.he->risk = "high";
  PairResult r = measure_pair(pair, "b", b, "f", f);
  EXPECT_EQ(r.status, "ok");
  EXPECT_DOUBLE_EQ(*r.growth_ml, 3.5);
  EXPECT_DOUBLE_EQ(*r.growth_fraction, 0.35);
  EXPECT_DOUBLE_EQ(*r.hours_between, 24.5);
  EXPECT_EQ(r.hours_source, "dicom");
  // +3.5 mL is 35 %: expansion by > 6 mL or > 33 %, and by >= 3 mL, not by >= 12.5 mL.
  EXPECT_EQ(r.labels, (std::map<std::string, bool>{{"he_label", true}, {"he_label_12_5ml", false}, {"he_label_3ml", true}}));
  EXPECT_TRUE(r.qc_flags.empty()) << r.to_json();
  const auto row = r.csv_row();
  EXPECT_EQ(row.at("growth_ml"), "3.500");
  EXPECT_EQ(row.at("growth_fraction"), "0.3500");
  EXPECT_EQ(row.at("he_probability"), "0.4200");
  EXPECT_EQ(row.at("he_risk"), "high");
  EXPECT_EQ(row.at("he_label_12_5ml"), "0");
  EXPECT_EQ(row.at("site"), "x");

  // The boundaries: exactly +6 mL (24 %) is not expansion; +12.5 mL is (>=).
  b.hematoma->volume_ml = 25.0;
  f.hematoma->volume_ml = 31.0;
  EXPECT_FALSE(measure_pair(pair, "b", b, "f", f).labels.at("he_label"));
  b.hematoma->volume_ml = 30.0;
  f.hematoma->volume_ml = 42.5;
  r = measure_pair(pair, "b", b, "f", f);
  EXPECT_TRUE(r.labels.at("he_label"));
  EXPECT_TRUE(r.labels.at("he_label_12_5ml"));

  // Every QC flag.
  pair.hours_between = -2.0;
  b.hematoma->voxels = 0;
  b.hematoma->volume_ml = 0.0;
  b.hematoma->touches_border = true;
  f.hematoma->touches_border = true;
  f.intracranial->volume_ml = 1000;                   // -29 %
  f.intracranial->centroid_offset_mm = {0, 40, 0};    // 40 mm away
  f.input->geometry.spacing_mm = {0.3, 0.3, 1.0};     // 154 mm across instead of 230, 1 mm slices
  f.input->patient_id = "P2";
  r = measure_pair(pair, "b", b, "f", f);
  EXPECT_EQ(r.hours_source, "pairs.csv");
  EXPECT_FALSE(r.growth_fraction.has_value());
  EXPECT_EQ(r.qc_flags, (std::vector<std::string>{"followup_before_baseline", "baseline_without_hematoma",
                                                  "baseline_hematoma_touches_border",
                                                  "followup_hematoma_touches_border", "head_coverage_changed",
                                                  "head_position_changed", "field_of_view_changed",
                                                  "slice_spacing_changed", "different_patients"}));

  // A failed or missing scan: no numbers, the reason.
  CaseResult failed;
  failed.status = "failed";
  failed.error = "not a head CT";
  r = measure_pair(pair, "b", failed, "f", std::nullopt);
  EXPECT_EQ(r.status, "failed");
  EXPECT_EQ(r.error, "baseline failed: not a head CT; followup not analysed yet");
  EXPECT_FALSE(r.growth_ml.has_value());
  EXPECT_TRUE(r.labels.empty());
  EXPECT_EQ(r.csv_row().count("he_label"), 0u);  // a blank cell
  // What the scan that was analysed measured stays in the row.
  b = scan_result(4.5, 450);
  b.he = ExpansionRisk{};
  b.he->probability = 0.3;
  r = measure_pair(pair, "b", b, "f", failed);
  EXPECT_EQ(r.error, "followup failed: not a head CT");
  EXPECT_DOUBLE_EQ(*r.baseline_ml, 4.5);
  EXPECT_DOUBLE_EQ(*r.he_probability, 0.3);
  EXPECT_FALSE(r.followup_ml.has_value());
  EXPECT_FALSE(r.growth_ml.has_value());

  // A follow-up at the baseline's own time is flagged too; before or at it, no label.
  pair.hours_between = 0.0;
  r = measure_pair(pair, "b", b, "f", b);
  EXPECT_EQ(r.qc_flags, std::vector<std::string>{"followup_at_baseline_time"});
  EXPECT_TRUE(r.labels.empty());
  EXPECT_DOUBLE_EQ(*r.growth_ml, 0.0);

  // The grid flags compare the patient's axes, not the file's: the follow-up stored with its axes
  // in another order (z, x, y) is the same grid.
  CaseResult same = scan_result(4.5, 450);
  same.input->geometry.size = {30, 512, 512};
  same.input->geometry.spacing_mm = {5.0, 0.45, 0.45};
  same.input->geometry.direction = {0, 1, 0, 0, 0, 1, 1, 0, 0};  // file axis 0 is z, 1 is x, 2 is y
  pair.hours_between = 24.0;
  EXPECT_TRUE(measure_pair(pair, "b", b, "f", same).qc_flags.empty()) << measure_pair(pair, "b", b, "f", same).to_json();
}

// Growth at exactly a definition's boundary, as volumes made of voxels give it (with rounding
// error either side): > 33 % is strictly above, >= 12.5 mL includes it.
TEST_F(Expansion, BoundariesAreDecidedAsTheRulesSayDespiteRounding) {
  int wrong = 0;
  for (int voxels = 10; voxels <= 5000; voxels += 10) {
    for (const double voxel_ml : {0.001, 0.000439453125, 0.0011, 0.00123}) {
      const double b = voxels * voxel_ml;
      const int thirds = voxels * 33 / 100;
      if (thirds * 100 != voxels * 33) continue;  // exactly 33 % in whole voxels only
      const double f = (voxels + thirds) * voxel_ml;
      if (f - b <= 6.0 && is_expansion(b, f)) ++wrong;  // exactly 33 %: not "> 33 %"
    }
  }
  EXPECT_EQ(wrong, 0);
  const auto& defs = expansion_definitions();
  for (const double voxel_ml : {0.001, 0.0011, 0.00123, 0.000439453125}) {
    const double b = 1000 * voxel_ml;
    const double f3 = b + std::round(3.0 / voxel_ml) * voxel_ml, f125 = b + std::round(12.5 / voxel_ml) * voxel_ml;
    if (std::abs((f3 - b) - 3.0) < 1e-9) EXPECT_TRUE(defs[2].test(b, f3)) << voxel_ml;
    if (std::abs((f125 - b) - 12.5) < 1e-9) EXPECT_TRUE(defs[1].test(b, f125)) << voxel_ml;
  }
  EXPECT_FALSE(is_expansion(3.0, 3.99));
  EXPECT_FALSE(is_expansion(10.0, 13.3));
  EXPECT_TRUE(is_expansion(10.0, 13.31));
}

TEST_F(Expansion, LabelsTakeTheFollowupClosestTo24Hours) {
  const auto pr = [](const std::string& id, const std::string& base, std::optional<double> hours, double growth) {
    PairResult r;
    r.pair_id = id;
    r.baseline_case_id = base;
    r.hours_between = hours;
    r.growth_ml = growth;
    r.labels = {{"he_label", growth > 6}, {"he_label_12_5ml", growth >= 12.5}, {"he_label_3ml", growth >= 3}};
    return r;
  };
  std::vector<PairResult> pairs{pr("a6h", "a", 6.0, 1.0), pr("a26h", "a", 26.0, 7.0), pr("a72h", "a", 72.0, 13.0),
                                pr("b1", "b", std::nullopt, 3.0), pr("b2", "b", std::nullopt, 20.0)};
  pairs.push_back(pr("c", "c", 24.0, 50.0));
  pairs.back().status = "failed";
  // A follow-up before its baseline (or at its time) is never a label, however near 24 h.
  pairs.push_back(pr("d-reversed", "d", -20.0, 7.0));
  pairs.push_back(pr("d72h", "d", 72.0, 1.0));
  pairs.push_back(pr("e-same-time", "e", 0.0, 9.0));
  EXPECT_EQ(labels_csv_text(pairs),
            "case_id,pair_id,followup_hours,growth_ml,he_label,he_label_12_5ml,he_label_3ml\n"
            "a,a26h,26.00,7.000,1,0,1\n"
            "b,b1,,3.000,0,0,1\n"
            "d,d72h,72.00,1.000,0,0,0\n");
}

TEST_F(Expansion, PairsFromADicomStudyFolder) {
  // Two patients with two dates each, one patient with a single scan, one scan without date.
  const fs::path src = kData / "philips-head-phantom-5mm", study = root_ / "study";
  test::write_dicom_scan(src, study / "anna/ct1", {"ANNA", "9.1", "9.1.1", "20240101", "0800", "20240101", "081500"});
  test::write_dicom_scan(src, study / "anna/ct2", {"ANNA", "9.2", "9.2.1", "20240102", "0900", "20240102", "090000"});
  test::write_dicom_scan(src, study / "bob/x", {"BOB", "9.4", "9.4.1", "20240305", "2300", "20240305", "230000"});
  test::write_dicom_scan(src, study / "bob/y", {"BOB", "9.3", "9.3.1", "20240305", "1100", "20240305", "110000"});
  test::write_dicom_scan(src, study / "carl/ct", {"CARL", "9.5", "9.5.1", "20240101", "0800", "", ""});
  test::write_dicom_scan(src, study / "dora/a", {"DORA", "9.6", "9.6.1", "20240101", "0800", "", ""});
  test::write_dicom_scan(src, study / "dora/b", {"DORA", "9.7", "9.7.1", "", "", "", ""});
  Geometry small;  // a mask kept beside a scan: left out, and said so
  small.size = {5, 4, 3};
  write_image_file(study / "anna/mask.nii.gz", torch::zeros({3, 4, 5}, torch::kUInt8), small);
  const std::string out = (root_ / "out").string();
  const char* argv[] = {"hemexp", "expansion", "--pairs-from", study.c_str(), "-o", out.c_str(), "--seg-model",
                        "none", "--threads", "1", "--no-progress", "--log-level", "error"};
  // The scans are a phantom: they fail the brain check, so the pairs fail, and the run says so
  // (every scan failed: nothing worked).
  EXPECT_EQ(main_entry(13, argv), kExitAllFailed);
  const auto pairs = read_csv(root_ / "out/pairs.csv");
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].at("pair_id"), "ANNA_fu1");
  EXPECT_EQ(pairs[0].at("baseline"), (study / "anna/ct1").string());
  EXPECT_EQ(pairs[0].at("followup"), (study / "anna/ct2").string());
  EXPECT_EQ(pairs[0].at("hours_between"), "24.750");
  EXPECT_EQ(pairs[0].at("baseline_datetime"), "2024-01-01T08:15:00");
  EXPECT_EQ(pairs[1].at("pair_id"), "BOB_fu1");
  EXPECT_EQ(pairs[1].at("baseline"), (study / "bob/y").string());  // earlier, though later by name
  EXPECT_EQ(pairs[1].at("hours_between"), "12.000");
  const json summary = json::parse(slurp(root_ / "out/expansion_summary.json"));
  ASSERT_EQ(summary["not_paired"].size(), 2u) << summary;
  EXPECT_NE(summary["not_paired"][0].get<std::string>().find("patient CARL: one scan only"), std::string::npos);
  EXPECT_NE(summary["not_paired"][1].get<std::string>().find("patient DORA"), std::string::npos);
  EXPECT_EQ(summary["failed"], 2);
  EXPECT_EQ(json::parse(slurp(root_ / "out/run.json"))["left_out"],
            json::array({{{"reason", "8-bit codes (a mask or label map): a CT in Hounsfield units needs more than 256 values"},
                          {"count", 1},
                          {"paths", {(study / "anna/mask.nii.gz").string()}}}}));
  EXPECT_NE(slurp(root_ / "out/hemexp.log").find("left out " + (study / "anna/mask.nii.gz").string()), std::string::npos);
  const auto rows = read_csv(root_ / "out/expansion.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("status"), "failed");
  EXPECT_NE(rows[0].at("error").find("baseline failed: not a head CT"), std::string::npos) << rows[0].at("error");
  EXPECT_EQ(rows[0].at("hours_between"), "24.75");
  EXPECT_EQ(rows[0].at("patient_id"), "ANNA");
  // Four scans analysed once each, in the run's own tables.
  EXPECT_EQ(read_csv(root_ / "out/results.csv").size(), 4u);
  EXPECT_EQ(slurp(root_ / "out/labels.csv"), "case_id,pair_id,followup_hours,growth_ml,he_label,he_label_12_5ml,he_label_3ml\n");

  // Neither or both of --pairs / --pairs-from is a usage error.
  const char* none[] = {"hemexp", "expansion", "-o", out.c_str()};
  EXPECT_EQ(main_entry(4, none), kExitUsage);
  const std::string pairs_csv = (root_ / "out/pairs.csv").string();
  const char* both[] = {"hemexp", "expansion", "--pairs", pairs_csv.c_str(), "--pairs-from", study.c_str(), "-o", out.c_str()};
  EXPECT_EQ(main_entry(8, both), kExitUsage);
  // A model that is not a model is a setup error before any header is read or OUTDIR made.
  const std::string out2 = (root_ / "out2").string(), not_a_model = pairs_csv;
  const char* bad_model[] = {"hemexp", "expansion", "--pairs-from", study.c_str(), "-o", out2.c_str(),
                             "--seg-model", not_a_model.c_str()};
  EXPECT_EQ(main_entry(8, bad_model), kExitSetup);
  EXPECT_FALSE(fs::exists(out2));
}

TEST_F(Expansion, MeasuredGrowthOfSyntheticPairsMatchesTheTruth) {
  // Synthetic pairs with known growth, segmented by the shipped model: the measured growth and
  // the expansion labels against the generator's.
  const fs::path model = test::shipped_model("hemexp-seg.safetensors");
  ASSERT_TRUE(fs::exists(model)) << model;
  const std::string truth = (root_ / "truth").string();
  const char* synth[] = {"hemexp", "synth", "-o", truth.c_str(), "--count", "2", "--seed", "8", "--matrix", "256",
                         "--thin-fraction", "0", "--he-fraction", "0.5", "--followup", "--log-level", "warn"};
  ASSERT_EQ(main_entry(17, synth), kExitOk);
  std::string pairs = "pair_id,baseline,followup,hours_between\n";
  const auto truth_rows = read_csv(root_ / "truth/labels.csv");
  for (const auto& row : truth_rows)
    pairs += row.at("case_id") + "," + row.at("case_id") + "/ct.nii.gz," + row.at("case_id") + "/followup_ct.nii.gz,24\n";
  std::ofstream(root_ / "truth/pairs.csv") << pairs;
  const std::string pairs_csv = (root_ / "truth/pairs.csv").string(), out = (root_ / "out").string();
  const char* argv[] = {"hemexp", "expansion", "--pairs", pairs_csv.c_str(), "-o", out.c_str(), "--seg-model",
                        model.c_str(), "--cls-model", "none", "--threads", "2", "--no-progress", "--log-level", "error"};
  ASSERT_EQ(main_entry(15, argv), kExitOk);
  const auto rows = read_csv(root_ / "out/expansion.csv");
  ASSERT_EQ(rows.size(), truth_rows.size());
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto& r = rows[k];
    const auto& t = truth_rows[k];
    EXPECT_EQ(r.at("status"), "ok") << r.at("error");
    EXPECT_EQ(r.at("baseline_case_id"), t.at("case_id") + "_ct");
    EXPECT_EQ(r.at("followup_case_id"), t.at("case_id") + "_followup_ct");
    const double growth = std::stod(r.at("growth_ml")), true_growth = std::stod(t.at("growth_ml"));
    // The tolerance of the target (1.5 mL median error), per pair, plus 5 % of the
    // follow-up volume for the large ones.
    EXPECT_NEAR(growth, true_growth, 1.5 + 0.05 * std::stod(t.at("followup_volume_ml"))) << t.at("case_id");
    EXPECT_EQ(r.at("he_label"), t.at("he_label")) << t.at("case_id");
    EXPECT_TRUE(fs::exists(root_ / "out/pairs" / r.at("pair_id") / "qc.png"));
    const json j = json::parse(slurp(root_ / "out/pairs" / r.at("pair_id") / "expansion.json"));
    EXPECT_EQ(format_number(j["growth_ml"].get<double>(), 3), r.at("growth_ml"));
  }
  const auto labels = read_csv(root_ / "out/labels.csv");
  ASSERT_EQ(labels.size(), truth_rows.size());
  EXPECT_EQ(labels[0].at("case_id"), truth_rows[0].at("case_id") + "_ct");
  EXPECT_EQ(labels[0].at("he_label"), truth_rows[0].at("he_label"));

  // A pair whose follow-up is 20 h before its baseline (the same scans, swapped: resumed, nothing
  // analysed again): measured and flagged, no label, never in labels.csv, and the run goes on.
  const std::string id0 = truth_rows[0].at("case_id");
  std::ofstream(root_ / "truth/pairs.csv", std::ios::app)
      << "reversed," << id0 << "/followup_ct.nii.gz," << id0 << "/ct.nii.gz,-20\n";
  const char* resume[] = {"hemexp", "expansion", "--pairs", pairs_csv.c_str(), "-o", out.c_str(), "--seg-model",
                          model.c_str(), "--cls-model", "none", "--threads", "2", "--no-progress", "--log-level", "error",
                          "--resume"};
  ASSERT_EQ(main_entry(16, resume), kExitOk);
  const auto again = read_csv(root_ / "out/expansion.csv");
  ASSERT_EQ(again.size(), truth_rows.size() + 1);
  EXPECT_EQ(again.back().at("status"), "ok");
  EXPECT_EQ(again.back().at("he_label"), "");
  EXPECT_NE(again.back().at("qc_flags").find("followup_before_baseline"), std::string::npos);
  EXPECT_EQ(std::stod(again.back().at("growth_ml")), -std::stod(rows[0].at("growth_ml")));
  EXPECT_EQ(read_csv(root_ / "out/labels.csv").size(), truth_rows.size());

  // Without a segmenter every scan is read but no pair can be measured: nothing worked (exit 8),
  // not a partial success (it was exit 4).
  const std::string out_none = (root_ / "out-none").string();
  const char* none[] = {"hemexp", "expansion", "--pairs", pairs_csv.c_str(), "-o", out_none.c_str(), "--seg-model",
                        "none", "--cls-model", "none", "--threads", "2", "--no-progress", "--log-level", "error"};
  EXPECT_EQ(main_entry(15, none), kExitAllFailed);
  for (const auto& r : read_csv(root_ / "out-none/expansion.csv")) EXPECT_EQ(r.at("status"), "failed") << r.at("pair_id");
}

}  // namespace
}  // namespace hemexp
