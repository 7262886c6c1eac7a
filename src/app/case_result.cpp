#include "hemexp/app/case_result.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "hemexp/app/cohort.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"

namespace hemexp {
using json = nlohmann::json;

nlohmann::json geometry_json(const Geometry& g) {
  return {{"size", g.size}, {"spacing_mm", g.spacing_mm}, {"origin", g.origin_mm}, {"direction", g.direction}};
}

Geometry geometry_from_json(const nlohmann::json& j) {
  Geometry g;
  g.size = j.at("size").get<std::array<int64_t, 3>>();
  g.spacing_mm = j.at("spacing_mm").get<Vec3>();
  g.origin_mm = j.at("origin").get<Vec3>();
  g.direction = j.at("direction").get<Mat3>();
  return g;
}

// An input path in JSON: "path" as text, and where the name is not UTF-8 (Latin-1 from an old
// export: written with U+FFFD in "path") its bytes in hex as "path_bytes", read back exactly
// (expansion, prepare, eval and --resume find the file by it).
void put_path(json& j, const std::string& path) {
  j["path"] = path;
  try {
    (void)json(path).dump();
  } catch (const json::type_error&) {  // not UTF-8
    static const char* digits = "0123456789abcdef";
    std::string hex;
    for (unsigned char c : path) hex += digits[c >> 4], hex += digits[c & 15];
    j["path_bytes"] = hex;
  }
}

nlohmann::json input_json(const InputInfo& info) {
  json j = {{"format", info.format}, {"modality", info.modality}};
  put_path(j, info.path);
  // A read that failed before the volume was stacked (ReadError) knows the series, not its grid.
  const bool stacked = info.geometry.voxel_count() > 0;
  if (stacked) j.update(geometry_json(info.geometry));
  if (info.format == "dicom") {
    j["series_uid"] = info.series_uid;
    j["series_description"] = info.series_description;
    j["series_choice"] = info.series_choice;
    if (stacked) j["source_slices"] = info.source_slices;
    j["patient_id"] = info.patient_id;
    j["datetime"] = info.datetime;
  }
  if (stacked) {
    j["gantry_tilt_deg"] = std::round(info.gantry_tilt_deg * 100.0) / 100.0;
    j["slice_spacing_mm"] = {{"min", info.min_slice_spacing_mm}, {"max", info.max_slice_spacing_mm}};
  }
  j["corrections"] = info.corrections;
  j["warnings"] = info.warnings;
  return j;
}

InputInfo input_from_json(const nlohmann::json& j) {
  InputInfo info;
  info.path = input_path_of(j);
  info.format = j.at("format").get<std::string>();
  info.modality = j.at("modality").get<std::string>();
  const bool stacked = j.contains("size");
  if (stacked) info.geometry = geometry_from_json(j);
  if (info.format == "dicom") {
    info.series_uid = j.at("series_uid").get<std::string>();
    info.series_description = j.at("series_description").get<std::string>();
    info.series_choice = j.at("series_choice").get<std::string>();
    if (stacked) info.source_slices = j.at("source_slices").get<int64_t>();
    info.patient_id = j.value("patient_id", "");  // absent from older result.json files
    info.datetime = j.value("datetime", "");
  }
  if (stacked) {
    info.gantry_tilt_deg = j.at("gantry_tilt_deg").get<double>();
    info.min_slice_spacing_mm = j.at("slice_spacing_mm").at("min").get<double>();
    info.max_slice_spacing_mm = j.at("slice_spacing_mm").at("max").get<double>();
  }
  info.corrections = j.at("corrections").get<std::vector<std::string>>();
  info.warnings = j.at("warnings").get<std::vector<std::string>>();
  return info;
}

nlohmann::json ExpansionRisk::to_json() const {
  json j = {{"probability", probability ? json(*probability) : json(nullptr)},
            {"logit", logit ? json(*logit) : json(nullptr)},
            {"risk", risk},
            {"threshold", threshold},
            {"calibrated", calibrated},
            {"model", model}};
  if (!reason.empty()) j["reason"] = reason;
  if (roi_mask_fraction_inside) j["roi_mask_fraction_inside"] = *roi_mask_fraction_inside;
  if (!signs.is_null()) j["signs"] = signs;
  return j;
}

ExpansionRisk ExpansionRisk::from_json(const nlohmann::json& j) {
  ExpansionRisk r;
  if (!j.at("probability").is_null()) r.probability = j.at("probability").get<double>();
  if (!j.at("logit").is_null()) r.logit = j.at("logit").get<double>();
  if (j.contains("roi_mask_fraction_inside")) r.roi_mask_fraction_inside = j.at("roi_mask_fraction_inside").get<double>();
  r.risk = j.at("risk").get<std::string>();
  r.threshold = j.at("threshold").get<double>();
  r.calibrated = j.at("calibrated").get<bool>();
  r.reason = j.value("reason", "");
  r.model = j.at("model");
  if (j.contains("signs")) r.signs = j.at("signs");
  return r;
}

namespace {

IntracranialContent intracranial_from_json(const json& j) {
  IntracranialContent c;
  c.skull_found = j.at("skull_found").get<bool>();
  c.volume_ml = j.at("volume_ml").get<double>();
  c.median_hu = j.at("median_hu").get<double>();
  c.brain_fraction = j.at("brain_fraction").get<double>();
  if (j.contains("centroid_offset_mm")) c.centroid_offset_mm = j.at("centroid_offset_mm").get<Vec3>();
  return c;
}

HematomaMeasurements hematoma_from_json(const json& j) {
  HematomaMeasurements h;
  h.voxels = j.at("voxels").get<int64_t>();
  h.volume_ml = j.at("volume_ml").get<double>();
  h.abc2_volume_ml = j.at("abc2_volume_ml").get<double>();
  h.mean_hu = j.at("mean_hu").get<double>();
  h.std_hu = j.at("std_hu").get<double>();
  h.p10_hu = j.at("p10_hu").get<double>();
  h.p90_hu = j.at("p90_hu").get<double>();
  h.components = j.at("components").get<int64_t>();
  h.surface_area_mm2 = j.at("surface_area_mm2").get<double>();
  h.sphericity = j.at("sphericity").get<double>();
  h.touches_border = j.at("touches_border").get<bool>();
  return h;
}

}  // namespace

std::string input_path_of(const nlohmann::json& j) {
  if (!j.contains("path_bytes")) return j.at("path").get<std::string>();
  const std::string hex = j.at("path_bytes").get<std::string>();
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

nlohmann::json CaseResult::to_json() const {
  json j = {{"case_id", case_id}, {"status", status}};
  if (!error.empty()) j["error"] = error;
  if (input) {
    j["input"] = input_json(*input);
    j["qc_flags"] = qc_flags;
  } else {
    j["input"] = json::object();
    put_path(j["input"], input_path);
  }
  if (intracranial) j["intracranial"] = intracranial->to_json();
  if (hematoma) j["hematoma"] = hematoma->to_json();
  if (!labels.empty()) {
    j["labels"] = json::object();
    for (const auto& [name, l] : labels)
      j["labels"][name] = {{"code", l.code}, {"voxels", l.voxels}, {"volume_ml", l.volume_ml}};
  }
  if (markers) j["markers"] = markers->to_json();
  if (he) j["he"] = he->to_json();
  if (!corrected_ct.empty()) j["corrected_ct"] = corrected_ct;
  j["timings_s"] = timings_s;
  j["models"] = json::object();
  for (const auto& [role, provenance] : models) j["models"][role] = provenance;
  if (!fingerprint.is_null()) j["fingerprint"] = fingerprint;
  j["seconds"] = seconds;
  j["hemexp_version"] = hemexp_version;
  return j;
}

CaseResult CaseResult::from_json(const nlohmann::json& j) {
  try {
    CaseResult r;
    r.case_id = j.at("case_id").get<std::string>();
    r.status = j.at("status").get<std::string>();
    r.error = j.value("error", "");
    r.input_path = input_path_of(j.at("input"));
    if (j.contains("qc_flags")) {
      r.input = input_from_json(j.at("input"));
      r.qc_flags = j.at("qc_flags").get<std::vector<std::string>>();
    }
    if (j.contains("intracranial")) r.intracranial = intracranial_from_json(j.at("intracranial"));
    if (j.contains("hematoma")) r.hematoma = hematoma_from_json(j.at("hematoma"));
    if (j.contains("markers")) r.markers = NcctMarkers::from_json(j.at("markers"));
    if (j.contains("labels"))
      for (const auto& [name, l] : j.at("labels").items())
        r.labels[name] = {l.at("code").get<int>(), l.at("voxels").get<int64_t>(), l.at("volume_ml").get<double>()};
    if (j.contains("he")) r.he = ExpansionRisk::from_json(j.at("he"));
    r.corrected_ct = j.value("corrected_ct", "");
    r.timings_s = j.at("timings_s").get<std::map<std::string, double>>();
    for (const auto& [role, provenance] : j.at("models").items()) r.models[role] = provenance;
    r.fingerprint = j.value("fingerprint", json());
    r.seconds = j.at("seconds").get<double>();
    r.hemexp_version = j.at("hemexp_version").get<std::string>();
    return r;
  } catch (const json::exception& e) {
    throw CoreError(std::string("not a hemexp result.json: ") + e.what());
  }
}

const std::vector<std::string>& CaseResult::csv_columns() {
  static const std::vector<std::string> columns = [] {
    std::vector<std::string> c{"case_id",     "status",          "error",           "input",
                               "format",      "series_uid",      "gantry_tilt_deg", "corrections", "qc_flags",
                               "hematoma_volume_ml", "abc2_volume_ml", "mean_hu", "ivh_volume_ml",
                               "edema_volume_ml", "he_probability", "he_risk"};
    for (const std::string& m : NcctMarkers::names()) c.push_back(m);
    for (const char* n : {"seg_model_sha256", "cls_model_sha256", "seconds"}) c.push_back(n);
    return c;
  }();
  return columns;
}

std::map<std::string, std::string> CaseResult::csv_row() const {
  std::map<std::string, std::string> row{{"case_id", case_id}, {"status", status}, {"error", error},
                                         {"input", input_path}};
  if (input) {
    row["format"] = input->format;
    if (input->format == "dicom") row["series_uid"] = input->series_uid;
    if (input->geometry.voxel_count() > 0)
      row["gantry_tilt_deg"] = format_number(std::round(input->gantry_tilt_deg * 100.0) / 100.0, 2);
    row["corrections"] = join(input->corrections, "; ");
    row["qc_flags"] = join(qc_flags, ";");
  }
  if (hematoma) {
    row["hematoma_volume_ml"] = format_number(hematoma->volume_ml, 3);
    row["abc2_volume_ml"] = format_number(hematoma->abc2_volume_ml, 3);
    if (hematoma->voxels > 0) row["mean_hu"] = format_number(hematoma->mean_hu, 1);
  }
  for (const char* name : {"ivh", "edema"})
    if (const auto it = labels.find(name); it != labels.end())
      row[std::string(name) + "_volume_ml"] = format_number(it->second.volume_ml, 3);
  if (markers)
    for (const auto& [name, value] : markers->csv_fields()) row[name] = value;
  if (he) {
    if (he->probability) row["he_probability"] = format_number(*he->probability, 4);
    row["he_risk"] = he->risk;
  }
  for (const auto& [role, column] : {std::pair<std::string, std::string>{"segmentation", "seg_model_sha256"},
                                     {"classification", "cls_model_sha256"}}) {
    const auto it = models.find(role);
    if (it != models.end()) row[column] = it->second.value("sha256", "");
  }
  row["seconds"] = format_number(seconds, 2);
  return row;
}

void CaseResult::write(const std::filesystem::path& file) const {
  write_text_atomically(file, json_text(to_json()));
}

std::optional<CaseResult> CaseResult::read(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  try {
    return from_json(json::parse(in));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

const std::vector<std::string>& CaseFiles::outputs() {
  static const std::vector<std::string> names{kMask, kLabels, kProbability, kQc, kCorrectedCt};
  return names;
}

void CaseFiles::remove_outputs(const std::filesystem::path& case_dir) {
  std::error_code ec;
  for (const std::string& name : outputs()) std::filesystem::remove(case_dir / name, ec);
}

std::string one_line(const std::string& what) {
  std::string s = what.substr(0, what.find('\n'));
  if (s.size() > 400) s = s.substr(0, 397) + "...";
  return s;
}

std::optional<std::vector<std::string>> listed_case_ids(const std::filesystem::path& run) {
  std::vector<std::filesystem::path> tables;
  if (std::filesystem::exists(run / "results.csv")) tables.push_back(run / "results.csv");
  else
    for (const ShardFile& f : shard_files(run, "results", ".csv")) tables.push_back(f.path);
  if (tables.empty()) return std::nullopt;
  std::vector<std::string> ids;
  std::set<std::string> seen;
  for (const auto& t : tables)
    for (const auto& row : parse_csv(read_text_file(t)).records()) {
      const std::string& id = row.at("case_id");
      if (!seen.insert(id).second)
        throw IoError(t.string() + ": case " + id + " is listed twice (tables of two splits, or an edited table)");
      ids.push_back(id);
    }
  return ids;
}

std::vector<std::filesystem::path> run_working_folders(const std::filesystem::path& run) {
  std::vector<std::filesystem::path> records{run / "run.json"}, folders;
  for (const ShardFile& f : shard_files(run, "run", ".json")) records.push_back(f.path);
  for (const auto& record : records) {
    try {
      const json r = json::parse(read_text_file(record));
      const std::string wd = r.is_object() ? r.value("working_directory", "") : "";
      if (!wd.empty() && std::find(folders.begin(), folders.end(), std::filesystem::path(wd)) == folders.end())
        folders.emplace_back(wd);
    } catch (const std::exception&) {  // absent or not a run record: the next one
    }
  }
  return folders;
}

std::filesystem::path run_input_path(const std::vector<std::filesystem::path>& working_folders, const std::string& input) {
  const std::filesystem::path p(input);
  if (p.is_absolute()) return p;
  std::error_code ec;
  for (const auto& wd : working_folders)
    if (std::filesystem::exists(wd / p, ec)) return wd / p;
  return p;
}

}  // namespace hemexp
