#include "hemexp/app/expansion_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <set>

#include "hemexp/app/cli.hpp"
#include "hemexp/app/run_command.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/expansion.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/qc.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/reader.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

CLI::App* setup_expansion(CLI::App& app, ExpansionOptions& o) {
  CLI::App* e = app.add_subcommand(
      "expansion", "Measured hematoma expansion between baseline and follow-up scans (and labels to train on)");
  auto* pairs = e->add_option("--pairs", o.pairs_csv, "CSV with pair_id,baseline,followup[,hours_between,...]")
                    ->check(CLI::ExistingFile);
  auto* from = e->add_option("--pairs-from", o.pairs_from,
                             "Study folder: pair each patient's DICOM scans by PatientID and date (writes pairs.csv)")
                   ->check(CLI::ExistingDirectory);
  pairs->excludes(from);  // one of the two is required: run_expansion says so
  add_run_options(e, o.run);
  return e;
}

namespace {

std::optional<double> parse_double(const std::string& text) {
  const std::string t = trim(text);
  if (t.empty()) return std::nullopt;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(t, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != t.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

// Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS[.F]" (as UTC: only differences are used).
std::optional<double> epoch_seconds(const std::string& stamp) {
  if (stamp.size() < 19 || stamp[4] != '-' || stamp[7] != '-' || stamp[10] != 'T' || stamp[13] != ':' ||
      stamp[16] != ':')
    return std::nullopt;
  std::tm tm{};
  try {
    tm.tm_year = std::stoi(stamp.substr(0, 4)) - 1900;
    tm.tm_mon = std::stoi(stamp.substr(5, 2)) - 1;
    tm.tm_mday = std::stoi(stamp.substr(8, 2));
    tm.tm_hour = std::stoi(stamp.substr(11, 2));
    tm.tm_min = std::stoi(stamp.substr(14, 2));
    tm.tm_sec = std::stoi(stamp.substr(17, 2));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  double fraction = 0.0;
  if (stamp.size() > 19) {
    const std::optional<double> f = parse_double("0" + stamp.substr(19));
    if (stamp[19] != '.' || !f) return std::nullopt;
    fraction = *f;
  }
  return double(timegm(&tm)) + fraction;
}

// One scan however it is named: relative or absolute, with a trailing separator or not, through
// a symbolic link or not.
std::string scan_key(const fs::path& p) {
  std::error_code ec;
  fs::path k = fs::weakly_canonical(fs::absolute(p), ec);
  if (ec) k = fs::absolute(p).lexically_normal();
  if (k.filename().empty() && k.has_relative_path()) k = k.parent_path();
  return k.string();
}

json optional_number(const std::optional<double>& v) { return v ? json_number(*v) : json(nullptr); }
std::string optional_text(const std::optional<double>& v, int decimals) {
  return v && std::isfinite(*v) ? format_number(*v, decimals) : std::string();
}

}  // namespace

std::optional<double> hours_between(const std::string& from, const std::string& to) {
  const std::optional<double> a = epoch_seconds(from), b = epoch_seconds(to);
  if (!a || !b) return std::nullopt;
  return (*b - *a) / 3600.0;
}

std::vector<ScanPair> read_pairs(const fs::path& csv) {
  const CsvTable table = parse_csv(read_text_file(csv));
  for (const char* required : {"pair_id", "baseline", "followup"})
    if (std::find(table.header.begin(), table.header.end(), required) == table.header.end())
      throw CoreError(csv.string() + " has no " + required + " column (needs pair_id, baseline, followup)");
  const fs::path folder = csv.parent_path();
  std::vector<ScanPair> pairs;
  std::set<std::string> ids;
  for (size_t k = 0; k < table.rows.size(); ++k) {
    const std::vector<std::string>& fields = table.rows[k];
    if (std::all_of(fields.begin(), fields.end(), [](const std::string& f) { return trim(f).empty(); })) continue;
    const std::string where = csv.filename().string() + " row " + std::to_string(k + 2);
    ScanPair p;
    for (size_t c = 0; c < table.header.size(); ++c) {
      const std::string& column = table.header[c];
      const std::string value = c < fields.size() ? trim(fields[c]) : std::string();
      if (column == "pair_id") {
        p.pair_id = value;
      } else if (column == "baseline" || column == "followup") {
        if (value.empty()) throw CoreError(where + ": no " + column + " path");
        const fs::path path = fs::path(value).is_absolute() ? fs::path(value) : folder / value;
        (column == "baseline" ? p.baseline : p.followup) = path.lexically_normal();
      } else if (column == "hours_between") {
        if (!value.empty()) {
          p.hours_between = parse_double(value);
          if (!p.hours_between) throw CoreError(where + ": hours_between '" + value + "' is not a number");
        }
      } else {
        // A column of the researcher's named like one hemexp measures (he_label: a reader's
        // label) is kept beside it, never in its place: list_<name>, as `run` does.
        const auto& measured = PairResult::csv_columns();
        const bool clash = std::find(measured.begin(), measured.end(), column) != measured.end();
        p.extra.emplace_back(clash ? "list_" + column : column, value);
      }
    }
    if (p.pair_id.empty()) throw CoreError(where + ": no pair_id");
    if (scan_key(p.baseline) == scan_key(p.followup)) throw CoreError(where + ": baseline and followup are the same scan");
    // The pair's folder is named after its id: ids must differ as folder names too.
    if (!ids.insert(case_id_from_path(p.pair_id)).second)
      throw CoreError(where + ": pair_id '" + p.pair_id + "' repeats an earlier one");
    pairs.push_back(std::move(p));
  }
  return pairs;
}

StudyPairing pair_study_scans(const std::vector<StudyScan>& scans) {
  StudyPairing out;
  std::map<std::string, std::vector<const StudyScan*>> by_patient;
  std::vector<std::string> patients;  // in order of first appearance
  for (const StudyScan& s : scans) {
    if (s.other_series_of_study) {
      out.problems.push_back("patient " + s.patient_id + ": " + s.problem);
      continue;
    }
    if (s.patient_id.empty() || (!s.problem.empty() && s.datetime.empty() && s.series_uid.empty())) {
      out.problems.push_back(s.input.path.string() + ": " + (s.problem.empty() ? "no PatientID" : s.problem));
      continue;
    }
    if (!by_patient.count(s.patient_id)) patients.push_back(s.patient_id);
    by_patient[s.patient_id].push_back(&s);
  }
  for (const std::string& patient : patients) {
    std::vector<const StudyScan*> list = by_patient[patient];
    // A scan without a usable date leaves the order of the patient's scans unknown.
    const auto undated = std::find_if(list.begin(), list.end(), [](const StudyScan* s) { return s->datetime.empty(); });
    if (undated != list.end()) {
      out.problems.push_back("patient " + patient + ": " + (*undated)->input.path.string() + " has " +
                             ((*undated)->problem.empty() ? "no usable date" : (*undated)->problem) +
                             "; none of the patient's " + std::to_string(list.size()) + " scans paired");
      continue;
    }
    // One scan per study (describe_study_scans chose among a study's folders as `run` chooses
    // within one; for scans described otherwise, the one with the most images).
    std::map<std::string, const StudyScan*> by_study;
    std::vector<const StudyScan*> kept;
    for (const StudyScan* s : list) {
      const std::string key = s->study_uid.empty() ? s->input.path.string() : s->study_uid;
      auto it = by_study.find(key);
      if (it == by_study.end()) {
        by_study[key] = s;
        continue;
      }
      const StudyScan* keep = s->images > it->second->images ? s : it->second;
      const StudyScan* drop = keep == s ? it->second : s;
      out.problems.push_back("patient " + patient + ": " + drop->input.path.string() + " is another series of the study of " +
                             keep->input.path.string() + (drop->images < keep->images ? " (fewer images)" : " (as many images, later in path order)") +
                             ": not used");
      it->second = keep;
    }
    for (const auto& [key, s] : by_study) kept.push_back(s);
    std::sort(kept.begin(), kept.end(), [](const StudyScan* a, const StudyScan* b) {
      const std::optional<double> h = hours_between(a->datetime, b->datetime);
      return h && *h != 0.0 ? *h > 0.0 : a->input.path < b->input.path;
    });
    if (kept.size() < 2) {
      out.problems.push_back("patient " + patient + ": one scan only (" + kept.front()->input.path.string() +
                             "), no follow-up to pair with");
      continue;
    }
    bool tie = false;  // by time, not text: 12:00:00 and 12:00:00.000 are one moment
    for (size_t k = 1; k < kept.size(); ++k) {
      const std::optional<double> h = hours_between(kept[k - 1]->datetime, kept[k]->datetime);
      tie = tie || !h || *h == 0.0;
    }
    if (tie) {
      out.problems.push_back("patient " + patient + ": two studies at the same date and time; which is the baseline "
                             "is not guessed, none paired");
      continue;
    }
    // A patient id that the file-name-safe form changes ("A B", "Müller") gets a digest of the id
    // as written, so that no two patients share a pair id ("A B" and "A-B", "Müller" and
    // "Möller") and none changes as the cohort grows.
    std::string name = case_id_from_path(patient);
    if (name != patient) name += "-" + sha256_hex(patient).substr(0, 8);
    for (size_t k = 1; k < kept.size(); ++k) {
      ScanPair p;
      p.pair_id = case_id_from_path(name + "_fu" + std::to_string(k));
      p.hours_source = "dicom";
      p.baseline = kept.front()->input.path;
      p.followup = kept[k]->input.path;
      p.hours_between = hours_between(kept.front()->datetime, kept[k]->datetime);
      p.extra = {{"patient_id", patient},
                 {"baseline_datetime", kept.front()->datetime},
                 {"followup_datetime", kept[k]->datetime}};
      out.pairs.push_back(std::move(p));
    }
  }
  return out;
}

namespace {

// `columns`, then the pairs' extra columns not among them, in order of first appearance.
std::vector<std::string> with_extra_columns(std::vector<std::string> columns, const std::vector<ScanPair>& pairs) {
  for (const ScanPair& p : pairs)
    for (const auto& [k, v] : p.extra)
      if (std::find(columns.begin(), columns.end(), k) == columns.end()) columns.push_back(k);
  return columns;
}

}  // namespace

std::string pairs_csv_text(const std::vector<ScanPair>& pairs) {
  const std::vector<std::string> columns = with_extra_columns({"pair_id", "baseline", "followup", "hours_between"}, pairs);
  std::string text = csv_line(columns);
  for (const ScanPair& p : pairs) {
    std::map<std::string, std::string> row{{"pair_id", p.pair_id},
                                           {"baseline", fs::absolute(p.baseline).lexically_normal().string()},
                                           {"followup", fs::absolute(p.followup).lexically_normal().string()},
                                           {"hours_between", optional_text(p.hours_between, 3)}};
    for (const auto& [k, v] : p.extra) row[k] = v;
    text += csv_line(columns, row);
  }
  return text;
}

// ---- one pair ----------------------------------------------------------------------------

const std::vector<std::string>& PairResult::csv_columns() {
  static const std::vector<std::string> columns = [] {
    std::vector<std::string> c{"pair_id",          "status",          "error",         "baseline_case_id",
                               "followup_case_id", "hours_between",   "hours_source",  "baseline_volume_ml",
                               "followup_volume_ml", "growth_ml",     "growth_fraction"};
    for (const ExpansionDefinition& d : expansion_definitions()) c.push_back(d.column);
    for (const char* n : {"he_probability", "he_risk", "qc_flags", "baseline", "followup"}) c.push_back(n);
    return c;
  }();
  return columns;
}

std::map<std::string, std::string> PairResult::csv_row() const {
  std::map<std::string, std::string> r{{"pair_id", pair_id},
                                       {"status", status},
                                       {"error", error},
                                       {"baseline_case_id", baseline_case_id},
                                       {"followup_case_id", followup_case_id},
                                       {"hours_between", optional_text(hours_between, 2)},
                                       {"hours_source", hours_source},
                                       {"baseline_volume_ml", optional_text(baseline_ml, 3)},
                                       {"followup_volume_ml", optional_text(followup_ml, 3)},
                                       {"growth_ml", optional_text(growth_ml, 3)},
                                       {"growth_fraction", optional_text(growth_fraction, 4)},
                                       {"he_probability", optional_text(he_probability, 4)},
                                       {"he_risk", he_risk},
                                       {"qc_flags", join(qc_flags, ";")},
                                       {"baseline", baseline_path},
                                       {"followup", followup_path}};
  for (const auto& [column, value] : labels) r[column] = value ? "1" : "0";
  for (const auto& [k, v] : extra) r.emplace(k, v);  // never overrides a measured column
  return r;
}

json PairResult::to_json() const {
  json j = {{"pair_id", pair_id},
            {"status", status},
            {"baseline", {{"case_id", baseline_case_id}, {"path", baseline_path}, {"volume_ml", optional_number(baseline_ml)}}},
            {"followup", {{"case_id", followup_case_id}, {"path", followup_path}, {"volume_ml", optional_number(followup_ml)}}},
            {"hours_between", optional_number(hours_between)},
            {"hours_source", hours_source},
            {"growth_ml", optional_number(growth_ml)},
            {"growth_fraction", optional_number(growth_fraction)},
            {"he_probability", optional_number(he_probability)},
            {"he_risk", he_risk},
            {"qc_flags", qc_flags}};
  if (!error.empty()) j["error"] = error;
  json defs = json::array();
  for (const ExpansionDefinition& d : expansion_definitions()) {
    const auto it = labels.find(d.column);
    defs.push_back({{"column", d.column}, {"rule", d.rule}, {"expansion", it == labels.end() ? json(nullptr) : json(it->second)}});
  }
  j["expansion"] = defs;
  json x = json::object();
  for (const auto& [k, v] : extra) x[k] = v;
  j["extra"] = x;
  return j;
}

PairResult measure_pair(const ScanPair& pair, const std::string& baseline_id, const std::optional<CaseResult>& baseline,
                        const std::string& followup_id, const std::optional<CaseResult>& followup,
                        const PairQcLimits& limits) {
  PairResult r;
  r.pair_id = pair.pair_id;
  r.baseline_case_id = baseline_id;
  r.followup_case_id = followup_id;
  r.baseline_path = pair.baseline.string();
  r.followup_path = pair.followup.string();
  r.extra = pair.extra;
  if (pair.hours_between) {
    r.hours_between = pair.hours_between;
    r.hours_source = pair.hours_source;
  } else if (baseline && followup && baseline->input && followup->input) {
    r.hours_between = hours_between(baseline->input->datetime, followup->input->datetime);
    if (r.hours_between) r.hours_source = "dicom";
  }
  if (r.hours_between && *r.hours_between < 0) r.qc_flags.push_back("followup_before_baseline");
  if (r.hours_between && *r.hours_between == 0) r.qc_flags.push_back("followup_at_baseline_time");

  std::vector<std::string> problems;
  for (const auto& [role, res] : {std::pair<const char*, const std::optional<CaseResult>*>{"baseline", &baseline},
                                  {"followup", &followup}}) {
    if (!*res) {
      if (r.status == "ok") r.status = "pending";
      problems.push_back(std::string(role) + " not analysed yet");
    } else if ((*res)->status == "failed") {
      r.status = "failed";
      problems.push_back(std::string(role) + " failed: " + (*res)->error);
    } else if (!(*res)->hematoma) {
      r.status = "failed";
      problems.push_back(std::string(role) + " has no hematoma measurement (no segmentation model?)");
    }
  }
  if (!problems.empty()) {
    r.error = join(problems, "; ");
    // What one scan's analysis did measure stays in the row.
    if (baseline && baseline->status == "ok" && baseline->hematoma) {
      r.baseline_ml = baseline->hematoma->volume_ml;
      if (baseline->he) r.he_probability = baseline->he->probability, r.he_risk = baseline->he->risk;
    }
    if (followup && followup->status == "ok" && followup->hematoma) r.followup_ml = followup->hematoma->volume_ml;
    return r;
  }
  const CaseResult& b = *baseline;
  const CaseResult& f = *followup;
  r.baseline_ml = b.hematoma->volume_ml;
  r.followup_ml = f.hematoma->volume_ml;
  r.growth_ml = *r.followup_ml - *r.baseline_ml;
  if (b.hematoma->voxels > 0) r.growth_fraction = *r.growth_ml / *r.baseline_ml;
  // A follow-up before (or at) its baseline's time measures no growth over time: no label.
  if (!r.hours_between || *r.hours_between > 0)
    for (const ExpansionDefinition& d : expansion_definitions()) r.labels[d.column] = d.test(*r.baseline_ml, *r.followup_ml);
  if (b.he) {
    r.he_probability = b.he->probability;
    r.he_risk = b.he->risk;
  }

  if (b.hematoma->voxels == 0) r.qc_flags.push_back("baseline_without_hematoma");
  if (b.hematoma->touches_border) r.qc_flags.push_back("baseline_hematoma_touches_border");
  if (f.hematoma->touches_border) r.qc_flags.push_back("followup_hematoma_touches_border");
  if (b.intracranial && f.intracranial && b.intracranial->skull_found && f.intracranial->skull_found) {
    const double vb = b.intracranial->volume_ml, vf = f.intracranial->volume_ml;
    if (std::abs(vf - vb) > limits.intracranial_change * std::max(vb, vf)) r.qc_flags.push_back("head_coverage_changed");
    double shift2 = 0;
    for (size_t a = 0; a < 3; ++a) {
      const double d = f.intracranial->centroid_offset_mm[a] - b.intracranial->centroid_offset_mm[a];
      shift2 += d * d;
    }
    if (std::sqrt(shift2) > limits.head_shift_mm) r.qc_flags.push_back("head_position_changed");
  }
  if (b.input && f.input) {
    // In the patient's axes (left-right, front-back, head-foot), whatever order each file
    // stores its axes in.
    const Geometry gb = to_canonical(b.input->geometry, canonical_axis_map(b.input->geometry));
    const Geometry gf = to_canonical(f.input->geometry, canonical_axis_map(f.input->geometry));
    const auto ratio = [](double x, double y) { return std::max(x, y) / std::max(1e-9, std::min(x, y)); };
    bool fov = false;
    for (size_t a = 0; a < 2; ++a)
      fov = fov || ratio(double(gb.size[a]) * gb.spacing_mm[a], double(gf.size[a]) * gf.spacing_mm[a]) >
                       limits.field_of_view_ratio;
    if (fov) r.qc_flags.push_back("field_of_view_changed");
    if (ratio(gb.spacing_mm[2], gf.spacing_mm[2]) > limits.slice_spacing_ratio) r.qc_flags.push_back("slice_spacing_changed");
    if (!b.input->patient_id.empty() && !f.input->patient_id.empty() && b.input->patient_id != f.input->patient_id)
      r.qc_flags.push_back("different_patients");
  }
  return r;
}

std::vector<const PairResult*> label_pairs(const std::vector<PairResult>& pairs) {
  std::map<std::string, const PairResult*> chosen;
  std::vector<std::string> order;
  const auto distance = [](const PairResult* p) {
    return p->hours_between ? std::abs(*p->hours_between - 24.0) : std::numeric_limits<double>::infinity();
  };
  for (const PairResult& p : pairs) {
    // A follow-up before (or at) its baseline measures no growth in time: not a label.
    if (p.status != "ok" || (p.hours_between && *p.hours_between <= 0)) continue;
    auto it = chosen.find(p.baseline_case_id);
    if (it == chosen.end()) {
      chosen[p.baseline_case_id] = &p;
      order.push_back(p.baseline_case_id);
    } else if (distance(&p) < distance(it->second)) {
      it->second = &p;
    }
  }
  std::vector<const PairResult*> out;
  for (const std::string& id : order) out.push_back(chosen[id]);
  return out;
}

std::string labels_csv_text(const std::vector<PairResult>& pairs) {
  std::vector<std::string> columns{"case_id", "pair_id", "followup_hours", "growth_ml"};
  for (const ExpansionDefinition& d : expansion_definitions()) columns.push_back(d.column);
  std::string text = csv_line(columns);
  for (const PairResult* chosen : label_pairs(pairs)) {
    const PairResult& p = *chosen;
    std::map<std::string, std::string> row{{"case_id", p.baseline_case_id},
                                           {"pair_id", p.pair_id},
                                           {"followup_hours", optional_text(p.hours_between, 2)},
                                           {"growth_ml", optional_text(p.growth_ml, 3)}};
    for (const auto& [column, value] : p.labels) row[column] = value ? "1" : "0";
    text += csv_line(columns, row);
  }
  return text;
}

// ---- the command -------------------------------------------------------------------------

namespace {

// The scans of the pairs, each once (a baseline with several follow-ups is analysed once),
// named by their path below the folder all of them share.
struct PairScans {
  std::vector<CaseInput> cases;
  std::map<std::string, std::string> id_of;  // normalized absolute path -> case id
};


PairScans pair_scans(const std::vector<ScanPair>& pairs) {
  std::vector<fs::path> paths;
  std::set<std::string> seen;
  for (const ScanPair& p : pairs)
    for (const fs::path& s : {p.baseline, p.followup})
      if (seen.insert(scan_key(s)).second) paths.push_back(fs::absolute(s).lexically_normal());
  fs::path common = paths.front().parent_path();
  for (const fs::path& p : paths)
    while (!common.empty() && common != common.root_path() &&
           std::mismatch(common.begin(), common.end(), p.begin(), p.end()).first != common.end())
      common = common.parent_path();
  PairScans out;
  std::vector<fs::path> relatives;
  for (const fs::path& p : paths) relatives.push_back(p.lexically_relative(common));
  const std::vector<std::string> ids = unique_case_ids(relatives);  // the rule of `run`'s ids
  for (size_t i = 0; i < paths.size(); ++i) {
    const fs::path& p = paths[i];
    const std::string& id = ids[i];
    CaseInput c;
    c.id = id;
    c.path = p;
    out.cases.push_back(std::move(c));
    out.id_of[scan_key(p)] = id;
  }
  return out;
}

// A finished scan's result, when it belongs to this input (nullopt: not analysed).
std::optional<CaseResult> scan_result(const fs::path& out, const CaseInput& c) {
  std::optional<CaseResult> r = CaseResult::read(out / "cases" / c.id / CaseFiles::kResult);
  if (r && r->input_path != c.path.string()) return std::nullopt;
  return r;
}

// Baseline and follow-up through the hematoma, each with its mask, from the scans and the
// masks their analysis wrote.
void write_pair_picture(const fs::path& png, const fs::path& out, const PairResult& p, const ReadOptions& read) {
  const auto canonical_with_mask = [&](const std::string& path, const std::string& id) {
    const LoadedVolume loaded = read_volume(path, read);
    CanonicalVolume c = to_canonical(loaded.volume);
    const ImageFileContents mask = read_image_file(out / "cases" / id / CaseFiles::kMask);
    if (mask.volume.voxels.sizes() != loaded.volume.voxels.sizes())
      throw CoreError("the mask of " + id + " does not match its scan");
    return std::make_pair(c.volume, to_canonical(mask.volume.voxels.to(torch::kUInt8), c.map));
  };
  const auto [bv, bm] = canonical_with_mask(p.baseline_path, p.baseline_case_id);
  const auto [fv, fm] = canonical_with_mask(p.followup_path, p.followup_case_id);
  write_png(png, qc_pair(bv, bm, fv, fm));
}

json expansion_summary(const std::vector<PairResult>& results, bool classifier, double threshold) {
  std::map<std::string, int> counts{{"ok", 0}, {"failed", 0}, {"pending", 0}};
  std::vector<double> growth, hours;
  for (const PairResult& p : results) {
    ++counts[p.status];
    if (p.growth_ml) growth.push_back(*p.growth_ml);
    if (p.hours_between) hours.push_back(*p.hours_between);
  }
  json s = {{"pairs", results.size()},
            {"ok", counts["ok"]},
            {"failed", counts["failed"]},
            {"pending", counts["pending"]},
            {"growth_ml",
             growth.empty() ? json(nullptr)
                            : json{{"median", median(growth)},
                                   {"p25", percentile(growth, 0.25)},
                                   {"p75", percentile(growth, 0.75)}}},
            {"hours_between_median", hours.empty() ? json(nullptr) : json(median(hours))}};
  json defs = json::array();
  for (const ExpansionDefinition& d : expansion_definitions()) {
    std::vector<double> p;
    std::vector<int> y;
    int positives = 0, n = 0;
    for (const PairResult& r : results) {
      const auto it = r.labels.find(d.column);
      if (it == r.labels.end()) continue;
      ++n;
      positives += it->second ? 1 : 0;
    }
    // The classifier is judged once per baseline, on its labels.csv pair: a patient with 6 h
    // and 24 h follow-ups does not count twice, nor a follow-up before its baseline.
    for (const PairResult* r : label_pairs(results))
      if (const auto it = r->labels.find(d.column); it != r->labels.end() && r->he_probability) {
        p.push_back(*r->he_probability);
        y.push_back(it->second ? 1 : 0);
      }
    json j = {{"column", d.column}, {"rule", d.rule}, {"pairs", n}, {"expansions", positives},
              {"rate", n > 0 ? json(double(positives) / n) : json(nullptr)}};
    // The classifier's predictions for the baselines against the measured expansion.
    if (classifier) j["classifier"] = classification_report(p, y, threshold);
    defs.push_back(j);
  }
  s["definitions"] = defs;
  return s;
}

void print_summary(const json& s) {
  std::printf("pairs: %d ok, %d failed, %d pending (of %d)\n", s["ok"].get<int>(), s["failed"].get<int>(),
              s["pending"].get<int>(), s["pairs"].get<int>());
  if (!s["growth_ml"].is_null())
    std::printf("growth: median %.2f mL (IQR %.2f to %.2f)\n", s["growth_ml"]["median"].get<double>(),
                s["growth_ml"]["p25"].get<double>(), s["growth_ml"]["p75"].get<double>());
  for (const json& d : s["definitions"]) {
    std::printf("%-16s %-48s %d of %d pairs", d["column"].get<std::string>().c_str(),
                d["rule"].get<std::string>().c_str(), d["expansions"].get<int>(), d["pairs"].get<int>());
    if (d.contains("classifier") && !d["classifier"].is_null()) {
      const json& c = d["classifier"];
      const auto g = [&](const char* k) { return c[k].is_null() ? std::string("n/a") : format_number(c[k].get<double>(), 3); };
      std::printf("; classifier AUC %s (95%% CI %s to %s), Brier %s, ECE %s, n %d", g("auc").c_str(),
                  g("auc_ci95_low").c_str(), g("auc_ci95_high").c_str(), g("brier").c_str(), g("ece").c_str(),
                  c["n"].get<int>());
    }
    std::printf("\n");
  }
}

}  // namespace

int run_expansion(const ExpansionOptions& o, const std::vector<std::string>& argv) {
  const StopSignals signals;  // from the start: a signal while models load or inputs are searched stops cleanly
  const fs::path out(o.run.output_dir);
  if (o.pairs_csv.empty() == o.pairs_from.empty()) {
    spdlog::error("expansion needs --pairs PAIRS.csv or --pairs-from STUDY_FOLDER");
    return kExitUsage;
  }
  // The models first, as in `run`: a missing or broken one is exit 3 before a study folder's
  // headers are read or OUTDIR is made.
  RunSetup setup;
  if (const int code = setup_run_pipeline(o.run, setup); code != kExitOk) return code;
  std::vector<ScanPair> pairs;
  StudyPairing pairing;
  std::vector<LeftOut> left_out;  // masks and hemexp outputs in the study folder: logged, in run.json
  try {
    if (!o.pairs_from.empty()) {
      pairing = pair_study_scans(describe_study_scans(o.pairs_from, &left_out, out));
      pairs = pairing.pairs;
    } else {
      pairs = read_pairs(o.pairs_csv);
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }
  if (pairs.empty()) {
    for (const std::string& problem : pairing.problems) spdlog::warn("not paired: {}", problem);
    spdlog::error("no pairs to measure in {}{}", o.pairs_from.empty() ? o.pairs_csv : o.pairs_from,
                  left_out.empty() ? "" : fmt::format(" ({} files or folders left out: masks, label maps, hemexp outputs)",
                                                      left_out.size()));
    return kExitUsage;
  }

  const PairScans scans = pair_scans(pairs);
  CohortOptions cohort_opts = cohort_options(o.run);
  cohort_opts.cases = scans.cases;
  cohort_opts.left_out = std::move(left_out);
  CohortRunner cohort(cohort_opts, argv);
  if (const int code = cohort.prepare(); code != kExitOk) return code;
  spdlog::logger& log = cohort.open_log();
  log_run_setup(log, o.run, setup, cohort);
  if (o.run.overwrite) {  // an interrupted run must not leave the replaced run's pair tables
    std::error_code ec;
    for (const char* table : {"expansion.csv", "labels.csv", "expansion_summary.json"}) fs::remove(out / table, ec);
    if (o.pairs_from.empty()) fs::remove(out / "pairs.csv", ec);  // an earlier --pairs-from run's pairing
    fs::remove_all(out / "pairs", ec);
  }
  log.info("{} pairs over {} scans", pairs.size(), scans.cases.size());
  if (!o.pairs_from.empty()) {
    write_text_atomically(out / "pairs.csv", pairs_csv_text(pairs));
    log.info("pairing written to {}: check it, edit it, and rerun with --pairs to change it", (out / "pairs.csv").string());
    for (const std::string& problem : pairing.problems) log.warn("not paired: {}", problem);
  }
  const CasePipeline& pipeline = setup.pipeline;
  json run_info = setup.run_info;
  run_info["pairs"] = {{"count", pairs.size()}, {"source", o.pairs_from.empty() ? o.pairs_csv : o.pairs_from}};
  const int code = run_pipeline(cohort, pipeline, run_info);
  if (code == kExitInterrupted) return code;  // the pair tables wait for --resume
  if (o.run.shard_count > 1) {
    log.info("scans of shard {}/{} done; when every shard has finished, the same command without --shard and with "
             "--resume writes the pair tables (expansion.csv, labels.csv)",
             o.run.shard_index, o.run.shard_count);
    return code;
  }

  remove_temporaries(out, {"pairs.csv", "expansion.csv", "labels.csv", "expansion_summary.json"});
  std::map<std::string, std::optional<CaseResult>> results;
  for (const CaseInput& c : scans.cases) results[c.id] = scan_result(out, c);
  std::error_code ec;
  std::vector<PairResult> measured;
  for (const ScanPair& p : pairs) {
    const std::string bid = scans.id_of.at(scan_key(p.baseline)), fid = scans.id_of.at(scan_key(p.followup));
    PairResult r = measure_pair(p, bid, results[bid], fid, results[fid]);
    const fs::path dir = out / "pairs" / case_id_from_path(p.pair_id);
    fs::create_directories(dir);
    fs::remove(dir / "qc.png", ec);  // never a picture of an earlier attempt
    remove_temporaries(dir);
    if (r.status == "ok" && o.run.qc) {
      try {
        write_pair_picture(dir / "qc.png", out, r, pipeline.read);
      } catch (const std::exception& e) {
        r.qc_flags.push_back("qc_picture_failed");
        log.warn("pair {}: no QC picture: {}", p.pair_id, one_line(e.what()));
      }
    }
    write_text_atomically(dir / "expansion.json", json_text(r.to_json()));
    if (r.status == "ok")
      log.info("pair {}: {:.2f} -> {:.2f} mL ({:+.2f} mL){}{}", p.pair_id, *r.baseline_ml, *r.followup_ml, *r.growth_ml,
               r.labels.count("he_label") && r.labels.at("he_label") ? ", expansion" : "", r.qc_flags.empty() ? "" : " [" + join(r.qc_flags, ", ") + "]");
    else
      log.warn("pair {}: {}: {}", p.pair_id, r.status, r.error);
    measured.push_back(std::move(r));
  }

  const std::vector<std::string> columns = with_extra_columns(PairResult::csv_columns(), pairs);
  std::string csv = csv_line(columns);
  for (const PairResult& r : measured) csv += csv_line(columns, r.csv_row());
  write_text_atomically(out / "expansion.csv", csv);
  write_text_atomically(out / "labels.csv", labels_csv_text(measured));
  const bool classifier = pipeline.classifier.has_value();
  json summary = expansion_summary(measured, classifier,
                                   classifier ? pipeline.classifier->recipe().threshold : std::nan(""));
  summary["not_paired"] = pairing.problems;
  if (classifier) summary["classifier"] = pipeline.classifier->file().provenance_json();
  write_text_atomically(out / "expansion_summary.json", json_text(summary));
  print_summary(summary);
  // Counted over the pairs as well as the scans (0 < 4 < 8: the worse of the two): every scan
  // read but no pair measured (no segmenter, say) is "nothing worked", not a partial success.
  if (code != kExitOk && code != kExitCaseFailed) return code;
  const auto pairs_ok = std::count_if(measured.begin(), measured.end(), [](const PairResult& r) { return r.status == "ok"; });
  return std::max(code, outcome_exit_code(pairs_ok, static_cast<int64_t>(measured.size()) - pairs_ok));
}

}  // namespace hemexp
