#include "hemexp/app/check_command.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_result.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A tolerance must be a finite number in [low, high]: CLI11's Range lets NaN through (every
// comparison with it is false), and a NaN tolerance would turn its check off.
CLI::Validator finite_in(double low, double high) {
  return CLI::Validator(
      [low, high](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !std::isfinite(v) || v < low || v > high)
          return "must be a number from " + format_number(low, 1) + " to " + format_number(high, 1);
        return "";
      },
      "FLOAT in [" + format_number(low, 1) + " - " + format_number(high, 1) + "]", "finite");
}

}  // namespace

CLI::App* setup_check(CLI::App& app, CheckOptions& o) {
  CLI::App* c = app.add_subcommand("check", "Compare a run with a baseline run (regression check for CI)");
  c->add_option("--baseline", o.baseline, "Baseline run folder (masks compared too) or its results.csv")
      ->required()
      ->check(CLI::ExistingPath);
  c->add_option("run", o.run_dir, "Run folder to check")->required()->check(CLI::ExistingDirectory);
  c->add_option("--volume-ml", o.volume_ml, "Largest allowed change of a hematoma volume (mL)")
      ->check(finite_in(0.0, 1e9))
      ->capture_default_str();
  c->add_option("--probability", o.probability, "Largest allowed change of an expansion probability")
      ->check(finite_in(0.0, 1.0))
      ->capture_default_str();
  c->add_option("--dice", o.dice, "Smallest allowed Dice between a case's two masks")
      ->check(finite_in(0.0, 1.0))
      ->capture_default_str();
  c->add_option("--json", o.json_path, "Also write the drifts as JSON");
  return c;
}

namespace {

std::map<std::string, std::map<std::string, std::string>> rows_by_case(const fs::path& csv) {
  std::map<std::string, std::map<std::string, std::string>> rows;
  const CsvTable table = parse_csv(read_text_file(csv));
  // An empty file, or text that is not a results table, is not "every case gone": it cannot be read.
  if (std::find(table.header.begin(), table.header.end(), "case_id") == table.header.end())
    throw IoError(csv.string() + ": not a results table (no case_id column" +
                  (table.header.empty() ? std::string(": the file is empty)") : ")"));
  for (auto& row : table.records()) {
    const std::string id = row["case_id"];
    if (!rows.emplace(id, row).second) throw IoError(csv.string() + ": case_id '" + id + "' is listed twice");
  }
  return rows;
}

// A number as results.csv writes it; nullopt for anything else (text, nan, inf).
std::optional<double> finite_number(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string value(const std::map<std::string, std::string>& row, const std::string& key) {
  const auto it = row.find(key);
  return it == row.end() ? std::string() : it->second;
}

// A numeric column within tolerance; blank on both sides is equal, blank on one side is not.
void compare_number(const std::string& id, const std::string& column, const std::string& a, const std::string& b,
                    double tolerance, int decimals, std::vector<Drift>& out) {
  if (a.empty() && b.empty()) return;
  const std::string tol = "|change| <= " + format_number(tolerance, decimals);
  if (a.empty() || b.empty()) {
    out.push_back({id, column, a.empty() ? "(blank)" : a, b.empty() ? "(blank)" : b, tol});
    return;
  }
  const std::optional<double> x = finite_number(a), y = finite_number(b);
  if (!x || !y) {  // not a number on a side (nan, text): drift, unless both sides say the same
    if (a != b) out.push_back({id, column, a, b, tol + ", both numbers"});
    return;
  }
  if (std::abs(*x - *y) > tolerance) out.push_back({id, column, a, b, tol});
}

}  // namespace

std::vector<Drift> find_drift(const CheckOptions& o) {
  const fs::path base = o.baseline, run = o.run_dir;
  const bool base_is_folder = fs::is_directory(base);
  const auto baseline = rows_by_case(base_is_folder ? base / "results.csv" : base);
  const auto current = rows_by_case(run / "results.csv");
  std::vector<Drift> drift;
  for (const auto& [id, b] : baseline) {
    const auto it = current.find(id);
    if (it == current.end()) {
      drift.push_back({id, "case", "present", "missing", "every baseline case"});
      continue;
    }
    const auto& r = it->second;
    // A case kept by --resume counts as ok.
    const auto status = [](const std::string& s) { return s == "skipped" ? std::string("ok") : s; };
    if (status(value(b, "status")) != status(value(r, "status")))
      drift.push_back({id, "status", value(b, "status"), value(r, "status"), "equal"});
    if (value(b, "error") != value(r, "error")) drift.push_back({id, "error", value(b, "error"), value(r, "error"), "equal"});
    compare_number(id, "hematoma_volume_ml", value(b, "hematoma_volume_ml"), value(r, "hematoma_volume_ml"), o.volume_ml,
                   3, drift);
    compare_number(id, "he_probability", value(b, "he_probability"), value(r, "he_probability"), o.probability, 4, drift);
    if (!base_is_folder) continue;
    const fs::path mb = base / "cases" / id / CaseFiles::kMask, mr = run / "cases" / id / CaseFiles::kMask;
    if (fs::exists(mb) != fs::exists(mr)) {
      drift.push_back({id, "mask", fs::exists(mb) ? "present" : "missing", fs::exists(mr) ? "present" : "missing", "both or neither"});
    } else if (fs::exists(mb)) {
      ImageFileContents a, c;
      try {  // an unreadable mask is this case's drift, not the end of the check
        a = read_image_file(mb);
        c = read_image_file(mr);
      } catch (const std::exception& e) {
        drift.push_back({id, "mask", "readable", one_line(e.what()), "both readable"});
        continue;
      }
      if (!a.volume.geometry.same_grid(c.volume.geometry, 1e-4)) {
        // Size and spacing, and where they are alike, what differs: the origin or the axes.
        const auto where = [](const Geometry& g) {
          std::ostringstream s;
          s << g.describe() << ", origin " << g.origin_mm[0] << "," << g.origin_mm[1] << "," << g.origin_mm[2];
          for (size_t i = 0; i < 9; ++i) s << (i == 0 ? ", axes " : ",") << std::round(g.direction[i] * 1e4) / 1e4;
          return s.str();
        };
        const bool alike = a.volume.geometry.describe() == c.volume.geometry.describe();
        drift.push_back({id, "mask grid", alike ? where(a.volume.geometry) : a.volume.geometry.describe(),
                         alike ? where(c.volume.geometry) : c.volume.geometry.describe(), "the same grid"});
      } else {
        const double dice = compare_masks(c.volume.voxels > 0, a.volume.voxels > 0, a.volume.geometry).dice;
        if (dice < o.dice)
          drift.push_back({id, "mask dice", "1", format_number(dice, 4), ">= " + format_number(o.dice, 4)});
      }
    }
  }
  for (const auto& [id, r] : current)
    if (!baseline.count(id)) drift.push_back({id, "case", "absent", "extra", "no case beyond the baseline"});
  return drift;
}

int run_check(const CheckOptions& o) {
  std::vector<Drift> drift;
  try {
    drift = find_drift(o);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }
  json j = json::array();
  if (drift.empty()) {
    std::printf("no drift: %s matches %s within volume %.3f mL, probability %.4f, Dice %.4f\n", o.run_dir.c_str(),
                o.baseline.c_str(), o.volume_ml, o.probability, o.dice);
  } else {
    std::printf("%-24s %-20s %-24s %-24s %s\n", "case_id", "check", "baseline", "run", "tolerance");
    for (const Drift& d : drift) {
      std::printf("%-24s %-20s %-24s %-24s %s\n", d.case_id.c_str(), d.check.c_str(), d.baseline.c_str(), d.run.c_str(),
                  d.tolerance.c_str());
      j.push_back({{"case_id", d.case_id}, {"check", d.check}, {"baseline", d.baseline}, {"run", d.run}, {"tolerance", d.tolerance}});
    }
    std::printf("DRIFT: %zu difference(s) beyond tolerance\n", drift.size());
  }
  if (!o.json_path.empty()) {
    try {
      write_text_atomically(o.json_path, json_text(j));
    } catch (const std::exception& e) {
      spdlog::error("{}", one_line(e.what()));
      return kExitSetup;
    }
  }
  return drift.empty() ? kExitOk : kExitDrift;
}

}  // namespace hemexp
