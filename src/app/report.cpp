#include "hemexp/app/report.hpp"

#include <cmath>
#include <sstream>

namespace hemexp {

nlohmann::json geometry_json(const Geometry& g) {
  return {{"size", g.size},
          {"spacing_mm", g.spacing_mm},
          {"origin", g.origin_mm},
          {"direction", g.direction}};
}

nlohmann::json input_json(const InputInfo& info) {
  nlohmann::json j = {{"path", info.path}, {"format", info.format}, {"modality", info.modality}};
  const nlohmann::json grid = geometry_json(info.geometry);
  for (auto it = grid.begin(); it != grid.end(); ++it) j[it.key()] = it.value();
  if (info.format == "dicom") {
    j["series_uid"] = info.series_uid;
    j["series_description"] = info.series_description;
    j["series_choice"] = info.series_choice;
    j["source_slices"] = info.source_slices;
  }
  j["gantry_tilt_deg"] = std::round(info.gantry_tilt_deg * 100.0) / 100.0;
  j["slice_spacing_mm"] = {{"min", info.min_slice_spacing_mm}, {"max", info.max_slice_spacing_mm}};
  j["corrections"] = info.corrections;
  j["warnings"] = info.warnings;
  return j;
}

const std::vector<std::string>& results_columns() {
  static const std::vector<std::string> columns{
      "case_id",          "status",           "error",         "input",
      "format",           "series_uid",       "gantry_tilt_deg", "corrections",
      "hematoma_volume_ml", "abc2_volume_ml", "mean_hu",       "he_probability",
      "he_risk",          "seg_model_sha256", "cls_model_sha256", "seconds"};
  return columns;
}

std::string csv_escape(const std::string& field) {
  std::string clean;
  for (char c : field) clean += (c == '\n' || c == '\r') ? ' ' : c;
  if (clean.find_first_of(",\"") == std::string::npos) return clean;
  std::string out = "\"";
  for (char c : clean) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_line(const std::vector<std::string>& columns, const std::map<std::string, std::string>& row) {
  std::string line;
  for (size_t i = 0; i < columns.size(); ++i) {
    if (i) line += ',';
    const auto it = row.find(columns[i]);
    if (it != row.end()) line += csv_escape(it->second);
  }
  return line + "\n";
}

std::string format_number(double value, int decimals) {
  std::ostringstream s;
  s.imbue(std::locale::classic());
  s.setf(std::ios::fixed);
  s.precision(decimals);
  s << value;
  return s.str();
}

}  // namespace hemexp
