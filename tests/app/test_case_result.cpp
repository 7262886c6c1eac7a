// CaseResult: result.json and the results.csv row come from one typed value, and read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "hemexp/app/case_result.hpp"
#include "hemexp/core/error.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

CaseResult full_dicom_result() {
  CaseResult r;
  r.case_id = "p1_ct";
  r.input_path = "/data/p1, \"ct\"";
  InputInfo in;
  in.path = r.input_path;
  in.format = "dicom";
  in.modality = "CT";
  in.series_uid = "1.2.3";
  in.series_description = "HEAD 5mm";
  in.series_choice = "chose 1.2.3 (28 images); skipped a localizer";
  in.source_slices = 28;
  in.geometry.size = {512, 611, 37};
  in.geometry.spacing_mm = {0.45, 0.45, 4.0};
  in.geometry.origin_mm = {-115.2, -130.5, 12.25};
  in.geometry.direction = {1, 0, 0, 0, 0.948, -0.317, 0, 0.317, 0.948};
  in.gantry_tilt_deg = 18.5;
  in.min_slice_spacing_mm = 4.0;
  in.max_slice_spacing_mm = 7.0;
  in.corrections = {"gantry tilt 18.5 deg resampled", "slice spacing 4-7 mm made uniform"};
  in.warnings = {"odd"};
  r.input = in;
  r.qc_flags = {"hematoma_touches_border", "multiple_components"};
  IntracranialContent ic;
  ic.skull_found = true;
  ic.volume_ml = 1432.5;
  ic.median_hu = 31.0;
  ic.brain_fraction = 0.75;
  r.intracranial = ic;
  HematomaMeasurements h;
  h.voxels = 12345;
  h.volume_ml = 24.6789;
  h.abc2_volume_ml = 27.1;
  h.mean_hu = 61.25;
  h.std_hu = 9.5;
  h.p10_hu = 48.0;
  h.p90_hu = 72.5;
  h.components = 2;
  h.surface_area_mm2 = 4200.5;
  h.sphericity = 0.71;
  h.touches_border = true;
  r.hematoma = h;
  NcctMarkers m;
  m.voxels = 12345;
  m.interior_voxels = 9000;
  m.hypodense_fraction = 0.125;
  m.hu_sd = 11.5;
  m.hu_cv = 0.19;
  m.bimodality_coefficient = NcctMarkers::kNaN;  // written as null, read back as NaN
  m.satellite_count = 2;
  m.satellite_volume_ml = 0.75;
  m.island_count = 3;
  m.surface_ratio = 1.31;
  r.markers = m;
  ExpansionRisk he;
  he.probability = 0.23456;
  he.logit = -0.5;
  he.roi_mask_fraction_inside = 1.0;
  he.risk = "intermediate";
  he.threshold = 0.3;
  he.calibrated = true;
  he.model = {{"sha256", "cafe"}};
  he.signs = {{"swirl", 0.75}, {"blend", 0.125}};
  r.he = he;
  r.corrected_ct = CaseFiles::kCorrectedCt;
  r.timings_s = {{"read", 0.5}, {"segment", 3.25}};
  r.models["segmentation"] = {{"path", "m.safetensors"}, {"sha256", "beef"}, {"name", "seg"}, {"research_use_only", true}};
  r.models["classification"] = {{"sha256", "cafe"}};
  r.seconds = 4.567;
  r.hemexp_version = "0.1.0";
  return r;
}

TEST(CaseResult, JsonRoundTripIsExact) {
  const json j = full_dicom_result().to_json();
  EXPECT_EQ(CaseResult::from_json(j).to_json(), j);
  EXPECT_EQ(j["input"]["gantry_tilt_deg"], 18.5);
  EXPECT_EQ(j["input"]["size"], json({512, 611, 37}));
  EXPECT_EQ(j["hematoma"]["voxels"], 12345);
  EXPECT_EQ(j["he"]["probability"], 0.23456);
  EXPECT_EQ(j["he"]["signs"]["swirl"], 0.75);
  EXPECT_FALSE(j.contains("error"));
  EXPECT_TRUE(j["markers"]["bimodality_coefficient"].is_null());
  EXPECT_EQ(j["markers"]["island_count"], 3);

  // A case that failed before it was analysed keeps its path and what it learnt.
  CaseResult failed;
  failed.case_id = "mr";
  failed.status = "failed";
  failed.error = "modality is MR, not CT";
  failed.input_path = "/data/mr.dcm";
  failed.timings_s = {{"read", 0.01}};
  failed.hemexp_version = "0.1.0";
  const json f = failed.to_json();
  EXPECT_EQ(f["input"], json({{"path", "/data/mr.dcm"}}));
  EXPECT_FALSE(f.contains("qc_flags"));
  EXPECT_EQ(f["models"], json::object());
  EXPECT_EQ(CaseResult::from_json(f).to_json(), f);

  // No probability, with the reason.
  CaseResult none = full_dicom_result();
  none.he->probability.reset();
  none.he->reason = "no hematoma";
  const json n = none.to_json();
  EXPECT_TRUE(n["he"]["probability"].is_null());
  EXPECT_EQ(CaseResult::from_json(n).to_json(), n);
  EXPECT_EQ(none.csv_row().count("he_probability"), 0u);
  // A classifier without a sign layer writes no signs block.
  none.he->signs = nullptr;
  EXPECT_FALSE(none.to_json()["he"].contains("signs"));
}

TEST(CaseResult, CsvRowFromTheTypedValue) {
  const CaseResult r = full_dicom_result();
  auto row = r.csv_row();
  EXPECT_EQ(row.at("case_id"), "p1_ct");
  EXPECT_EQ(row.at("status"), "ok");
  EXPECT_EQ(row.at("input"), "/data/p1, \"ct\"");
  EXPECT_EQ(row.at("format"), "dicom");
  EXPECT_EQ(row.at("series_uid"), "1.2.3");
  EXPECT_EQ(row.at("gantry_tilt_deg"), "18.50");
  EXPECT_EQ(row.at("corrections"), "gantry tilt 18.5 deg resampled; slice spacing 4-7 mm made uniform");
  EXPECT_EQ(row.at("qc_flags"), "hematoma_touches_border;multiple_components");
  EXPECT_EQ(row.at("hematoma_volume_ml"), "24.679");
  EXPECT_EQ(row.at("abc2_volume_ml"), "27.100");
  EXPECT_EQ(row.at("mean_hu"), "61.2");  // 61.25 to one decimal, round half to even
  EXPECT_EQ(row.at("he_probability"), "0.2346");
  EXPECT_EQ(row.at("he_risk"), "intermediate");
  EXPECT_EQ(row.at("seg_model_sha256"), "beef");
  EXPECT_EQ(row.at("cls_model_sha256"), "cafe");
  EXPECT_EQ(row.at("seconds"), "4.57");
  EXPECT_EQ(row.at("hypodense_fraction"), "0.1250");
  EXPECT_EQ(row.at("bimodality_coefficient"), "");  // NaN: not measurable
  EXPECT_EQ(row.at("satellite_count"), "2");
  for (const auto& [column, value] : row)
    EXPECT_NE(std::find(CaseResult::csv_columns().begin(), CaseResult::csv_columns().end(), column),
              CaseResult::csv_columns().end())
        << column << " is not a results.csv column";

  CaseResult nifti = r;
  nifti.input->format = "nifti";
  EXPECT_EQ(nifti.csv_row().count("series_uid"), 0u);  // only DICOM has one
  CaseResult empty = r;
  empty.hematoma->voxels = 0;
  EXPECT_EQ(empty.csv_row().count("mean_hu"), 0u);  // no mean of nothing
}

TEST(CaseResult, FileRoundTripAndUnreadableFiles) {
  const fs::path dir = fs::temp_directory_path() / ("hemexp-case-result-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const CaseResult r = full_dicom_result();
  r.write(dir / "result.json");
  const std::optional<CaseResult> back = CaseResult::read(dir / "result.json");
  ASSERT_TRUE(back);
  EXPECT_EQ(back->to_json(), r.to_json());
  EXPECT_EQ(back->csv_row(), r.csv_row());
  EXPECT_FALSE(CaseResult::read(dir / "missing.json"));
  std::ofstream(dir / "half.json") << r.to_json().dump().substr(0, 100);
  EXPECT_FALSE(CaseResult::read(dir / "half.json"));  // a partial file is not a result
  std::ofstream(dir / "other.json") << R"({"case_id": "x"})";
  EXPECT_FALSE(CaseResult::read(dir / "other.json"));
  EXPECT_THROW(CaseResult::from_json(json::parse(R"({"case_id": "x"})")), CoreError);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hemexp
