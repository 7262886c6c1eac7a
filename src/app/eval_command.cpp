#include "hemexp/app/eval_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <iterator>
#include <optional>

#include <nlohmann/json.hpp>

#include "hemexp/app/case_result.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

CLI::App* setup_eval(CLI::App& app, EvalOptions& o) {
  CLI::App* e = app.add_subcommand("eval", "Compare a run's masks and risks with a synth folder's truth");
  e->add_option("--pred", o.pred_dir, "Output folder of `hemexp run`")->required()->check(CLI::ExistingDirectory);
  e->add_option("--truth", o.truth_dir, "Folder written by `hemexp synth`")->required()->check(CLI::ExistingDirectory);
  e->add_option("--json", o.json_path, "Where to write the report (default: PRED/eval.json)");
  return e;
}

int run_eval(const EvalOptions& o) {
  const fs::path truth(o.truth_dir), pred(o.pred_dir);
  if (!fs::exists(truth / "labels.csv")) {
    spdlog::error("{} has no labels.csv (not a synth folder)", o.truth_dir);
    return kExitUsage;
  }
  std::vector<std::map<std::string, std::string>> truth_rows;
  try {
    truth_rows = parse_csv(read_text_file(truth / "labels.csv")).records();
  } catch (const std::exception& e) {
    spdlog::error("{}: {}", (truth / "labels.csv").string(), e.what());
    return kExitUsage;
  }
  // A case listed twice in the truth would count twice in every number.
  std::map<std::string, size_t> first_row;  // truth case id -> its row
  for (size_t n = 0; n < truth_rows.size(); ++n) {
    const std::string id = truth_rows[n].count("case_id") ? truth_rows[n].at("case_id") : "";
    if (const auto [it, added] = first_row.emplace(id, n); !added) {
      spdlog::error("{}: case '{}' appears twice (rows {} and {}): each case once", (truth / "labels.csv").string(), id,
                    it->second + 2, n + 2);
      return kExitUsage;
    }
  }
  // A case hemexp synth could not render keeps its row with every field blank but its id: no
  // truth to compare with (no scan, no mask). Counted and left out, not an error.
  const auto unrendered = [](const std::map<std::string, std::string>& row) {
    const auto blank = [&row](const char* c) { return !row.count(c) || row.at(c).empty(); };
    return blank("he_label") && blank("he_probability");
  };
  std::set<std::string> unrendered_ids;
  for (const auto& row : truth_rows)
    if (unrendered(row)) unrendered_ids.insert(row.count("case_id") ? row.at("case_id") : "");
  // Predicted cases by the truth case they read: <truth>/<case_id>/ct.nii.gz.
  std::map<std::string, fs::path> pred_case_dirs;
  std::map<std::string, json> pred_results;
  // The run's cases are those of its results table: case folders an earlier run left in OUTDIR
  // (an --overwrite of fewer scans) are not evaluated.
  std::vector<fs::path> case_dirs;
  std::optional<std::vector<std::string>> listed;
  try {
    listed = listed_case_ids(pred);
  } catch (const std::exception& e) {
    spdlog::error("{}: {}", pred.string(), e.what());
    return kExitUsage;
  }
  if (listed) {
    for (const std::string& id : *listed) case_dirs.push_back(pred / "cases" / id);
  } else if (fs::exists(pred / "cases")) {
    spdlog::warn("{} has no results table (a run stopped early?): every case folder in it is evaluated", pred.string());
    for (const auto& e : fs::directory_iterator(pred / "cases")) case_dirs.push_back(e.path());
  }
  const std::vector<fs::path> working = run_working_folders(pred);
  int outside_truth = 0;  // the run's cases that read no scan of TRUTH
  for (const fs::path& dir : case_dirs) {
      std::ifstream in(dir / "result.json");
      if (!in) continue;
      try {
        const json r = json::parse(in);
        const fs::path input = fs::weakly_canonical(run_input_path(working, input_path_of(r.at("input"))));
        std::error_code ec;
        // TRUTH/<id>/ct.nii.gz, or the case folder TRUTH/<id> itself (a study spreadsheet names
        // it; it is read from its one volume file).
        const bool folder = !ec && fs::is_directory(input, ec) && fs::equivalent(input.parent_path(), truth, ec);
        if (folder || (input.filename() == "ct.nii.gz" && fs::equivalent(input.parent_path().parent_path(), truth, ec))) {
          const std::string id = (folder ? input : input.parent_path()).filename().string();
          // Two of the run's cases on one scan (named twice, or an id given twice in a list):
          // which one to score is not eval's to choose.
          if (const auto [it, added] = pred_case_dirs.emplace(id, dir); !added) {
            spdlog::error("{} has two cases of the scan of truth case '{}' ({} and {}): evaluate a run with each scan once",
                          pred.string(), id, it->second.filename().string(), dir.filename().string());
            return kExitUsage;
          }
          pred_results[id] = r;
          // A case folder of TRUTH that labels.csv does not list, or lists with no truth.
          if (!first_row.count(id) || unrendered_ids.count(id)) ++outside_truth;
        } else {
          ++outside_truth;
        }
      } catch (const std::exception&) {
      }
    }
  if (outside_truth > 0)
    spdlog::warn("{} of the run's cases read scans that are not cases of {} (labels.csv): not evaluated", outside_truth,
                 truth.string());

  std::vector<double> dice, iou, hd95, volume_error, he_scores, oracle_scores, observable_scores;
  // The oracles on the cases the model scored, so that the model's AUC is compared on its own
  // cases (missing and failed cases change the set).
  std::vector<double> oracle_scored, observable_scored;
  // Hematoma Dice by group (true volume; intraventricular blood in the truth or not), and the
  // further labels of a multi-class model against the synth label map.
  std::map<std::string, std::vector<double>> dice_by_group;
  struct LabelScores {
    std::vector<double> dice, dice_1ml, volume_error;
    int truth_cases = 0;
    int false_positive_cases = 0;  // predicted where the truth has none of it
    double false_positive_ml_max = 0;
  };
  std::map<std::string, LabelScores> label_scores;
  std::vector<int> he_labels, oracle_labels;
  std::vector<double> thresholds;           // each scored case's own (its classifier's)
  std::map<std::string, int> cls_models;    // classifier sha256 -> scored cases
  int no_probability = 0;
  json cases = json::array();
  int missing = 0, failed = 0, hd_undefined = 0;
  for (size_t n = 0; n < truth_rows.size(); ++n) {
    const auto& row = truth_rows[n];
    const std::string id = row.count("case_id") ? row.at("case_id") : "";
    if (unrendered_ids.count(id)) continue;  // ids are unique (checked above)
    int label = 0;
    double oracle = 0, observable = std::nan("");
    try {
      label = std::stoi(row.at("he_label"));
      oracle = std::stod(row.at("he_probability"));
      // A blank observable probability is unknown (NaN), not an unreadable row.
      if (row.count("he_observable_probability") && !row.at("he_observable_probability").empty())
        observable = std::stod(row.at("he_observable_probability"));
      if (label != 0 && label != 1) throw std::invalid_argument("he_label");
    } catch (const std::exception&) {
      spdlog::error("{} row {} ({}): he_label must be 0 or 1 and he_probability a number", (truth / "labels.csv").string(),
                    n + 2, id);
      return kExitUsage;
    }
    oracle_scores.push_back(oracle);
    oracle_labels.push_back(label);
    if (row.count("he_observable_probability")) observable_scores.push_back(observable);
    json c = {{"case_id", id}, {"he_label", label}};
    const auto it = pred_case_dirs.find(id);
    if (it == pred_case_dirs.end()) {
      ++missing;
      c["status"] = "missing";
      cases.push_back(c);
      continue;
    }
    const json& r = pred_results[id];
    if (r.value("status", "") != "ok") {
      ++failed;
      c["status"] = "failed";
      cases.push_back(c);
      continue;
    }
    ImageFileContents t, p;
    try {  // one unreadable mask is that case's failure, named, not the end of the evaluation
      t = read_image_file(truth / id / "mask.nii.gz");
      p = read_image_file(it->second / "mask.nii.gz");
    } catch (const std::exception& e) {
      ++failed;
      c["status"] = "mask unreadable: " + one_line(e.what());
      spdlog::warn("{}: mask unreadable: {}", id, one_line(e.what()));
      cases.push_back(c);
      continue;
    }
    if (!p.volume.geometry.same_grid(t.volume.geometry, 1e-3)) {
      ++failed;
      c["status"] = "grid differs from the truth";
      cases.push_back(c);
      continue;
    }
    const SegmentationMetrics m = compare_masks(p.volume.voxels, t.volume.voxels, t.volume.geometry);
    dice.push_back(m.dice);
    iou.push_back(m.iou);
    volume_error.push_back(m.volume_abs_error_ml);
    if (std::isfinite(m.hd95_mm)) hd95.push_back(m.hd95_mm);
    else ++hd_undefined;
    c.update({{"status", "ok"}, {"dice", m.dice}, {"iou", m.iou}, {"hd95_mm", json_number(m.hd95_mm)},
              {"true_volume_ml", m.true_volume_ml}, {"predicted_volume_ml", m.predicted_volume_ml},
              {"volume_abs_error_ml", m.volume_abs_error_ml}});
    dice_by_group[m.true_volume_ml < 5 ? "volume_under_5ml" : m.true_volume_ml < 30 ? "volume_5_to_30ml" : "volume_30ml_or_more"]
        .push_back(m.dice);
    if (row.count("ivh")) dice_by_group[row.at("ivh") == "1" ? "with_ivh" : "without_ivh"].push_back(m.dice);
    // Further labels, by name: the run's codes from its result.json, the truth's from hemexp
    // synth (synth_label_names: intraventricular blood, edema).
    if (r.contains("labels") && fs::exists(truth / id / "labels.nii.gz") &&
        fs::exists(it->second / "labels.nii.gz")) {
      const torch::Tensor tl = read_codes_on_grid(truth / id / "labels.nii.gz", t.volume.geometry);
      const torch::Tensor pl = read_codes_on_grid(it->second / "labels.nii.gz", t.volume.geometry);
      const double ml = t.volume.geometry.voxel_volume_mm3() / 1000.0;
      const std::vector<std::string>& synth_names = synth::synth_label_names();
      for (int truth_code = synth::kLabelIvh; truth_code < int(synth_names.size()); ++truth_code) {
        const std::string& name = synth_names[size_t(truth_code)];
        if (!r["labels"].contains(name)) continue;
        const int pred_code = r["labels"][name].at("code").get<int>();
        const torch::Tensor pm = pl == pred_code, tm = tl == truth_code;
        const double np = double(torch::count_nonzero(pm).item<int64_t>()), nt = double(torch::count_nonzero(tm).item<int64_t>());
        const double inter = double(torch::count_nonzero(pm & tm).item<int64_t>());
        LabelScores& s = label_scores[name];
        s.volume_error.push_back(std::abs(np - nt) * ml);
        json lc = {{"true_volume_ml", nt * ml}, {"predicted_volume_ml", np * ml}};
        if (nt > 0) {
          const double d = 2 * inter / (np + nt);
          ++s.truth_cases;
          s.dice.push_back(d);
          if (nt * ml >= 1.0) s.dice_1ml.push_back(d);
          lc["dice"] = d;
        } else if (np > 0) {
          ++s.false_positive_cases;
          s.false_positive_ml_max = std::max(s.false_positive_ml_max, np * ml);
        }
        c[name] = lc;
      }
    }
    if (r.contains("he") && r["he"].contains("probability")) {
      if (r["he"]["probability"].is_number()) {
        he_scores.push_back(r["he"]["probability"].get<double>());
        he_labels.push_back(label);
        oracle_scored.push_back(oracle);
        observable_scored.push_back(observable);
        c["he_probability"] = r["he"]["probability"];
        thresholds.push_back(r["he"].contains("threshold") && r["he"]["threshold"].is_number()
                                 ? r["he"]["threshold"].get<double>()
                                 : std::nan(""));
        ++cls_models[r["he"].contains("model") && r["he"]["model"].is_object() ? r["he"]["model"].value("sha256", "") : ""];
      } else {
        ++no_probability;  // no hematoma, or one below the classifier's minimum: reported, not guessed
        c["he_probability"] = nullptr;
      }
    }
    cases.push_back(c);
  }

  // Only when the truth gives every scored case a number (an older synth folder has no column).
  const bool observable_known = std::all_of(observable_scored.begin(), observable_scored.end(),
                                            [](double v) { return std::isfinite(v); });
  const double observable_on_scored = observable_known ? roc_auc(observable_scored, he_labels) : std::nan("");
  json report = {
      {"pred", o.pred_dir},
      {"truth", o.truth_dir},
      {"cases",
       {{"total", cases.size()}, {"evaluated", dice.size()}, {"missing", missing}, {"failed", failed},
        {"truth_without_label", unrendered_ids.size()}}},
      {"segmentation",
       {{"dice_mean", json_number(mean(dice))},
        {"dice_median", json_number(median(dice))},
        {"iou_mean", json_number(mean(iou))},
        {"iou_median", json_number(median(iou))},
        {"hd95_mm_mean", json_number(mean(hd95))},
        {"hd95_mm_median", json_number(median(hd95))},
        {"hd95_undefined_cases", hd_undefined},
        {"volume_abs_error_ml_mean", json_number(mean(volume_error))},
        {"volume_abs_error_ml_median", json_number(median(volume_error))},
        {"dice_by_group", json::object()}}},
      {"labels", json::object()},
      {"expansion",
       {{"oracle_auc", json_number(roc_auc(oracle_scores, oracle_labels))},
        {"observable_oracle_auc", json_number(observable_scores.size() == oracle_labels.size() &&
                                                       std::all_of(observable_scores.begin(), observable_scores.end(),
                                                                   [](double v) { return std::isfinite(v); })
                                                   ? roc_auc(observable_scores, oracle_labels)
                                                   : std::nan(""))},
        {"prevalence", json_number(mean(std::vector<double>(oracle_labels.begin(), oracle_labels.end())))},
        {"cases_with_prediction", he_scores.size()},
        {"oracle_auc_on_scored_cases", json_number(roc_auc(oracle_scored, he_labels))},
        {"observable_oracle_auc_on_scored_cases", json_number(observable_on_scored)},
        {"model_auc_to_observable_oracle", json_number(roc_auc(he_scores, he_labels) / observable_on_scored)},
        {"cases_without_probability", no_probability},
        {"model", classification_report(he_scores, he_labels, thresholds)}}},
      {"per_case", cases}};
  for (const auto& [group, d] : dice_by_group)
    report["segmentation"]["dice_by_group"][group] = {
        {"cases", d.size()}, {"dice_mean", json_number(mean(d))}, {"dice_median", json_number(median(d))},
        {"dice_min", json_number(d.empty() ? std::nan("") : *std::min_element(d.begin(), d.end()))}};
  for (const auto& [name, s] : label_scores)
    report["labels"][name] = {{"cases_with_label_in_truth", s.truth_cases},
                              {"dice_mean", json_number(mean(s.dice))},
                              {"dice_median", json_number(median(s.dice))},
                              {"cases_with_at_least_1ml", s.dice_1ml.size()},
                              {"dice_mean_at_least_1ml", json_number(mean(s.dice_1ml))},
                              {"volume_abs_error_ml_mean", json_number(mean(s.volume_error))},
                              {"volume_abs_error_ml_median", json_number(median(s.volume_error))},
                              {"false_positive_cases", s.false_positive_cases},
                              {"false_positive_ml_max", s.false_positive_ml_max}};
  if (cls_models.size() > 1) {
    report["expansion"]["classifiers"] = cls_models;
    spdlog::warn("the run's probabilities come from {} classifiers (a --resume with another --cls-model?): each case is "
                 "called at its own classifier's threshold, and the AUC and calibration pool them",
                 cls_models.size());
  }
  const fs::path json_path = o.json_path.empty() ? pred / "eval.json" : fs::path(o.json_path);
  try {
    write_text_atomically(json_path, json_text(report));
  } catch (const std::exception& e) {
    spdlog::error("{}", one_line(e.what()));
    return kExitSetup;
  }

  const auto f = [](double v, int d) { return std::isfinite(v) ? format_number(v, d) : std::string("n/a"); };
  std::printf("cases: %zu in truth, %zu evaluated, %d missing, %d failed\n", cases.size(), dice.size(), missing, failed);
  if (!unrendered_ids.empty())
    std::printf("      and %zu rows of the truth without a label (cases synth could not render): left out\n",
                unrendered_ids.size());
  std::printf("Dice  mean %s  median %s\n", f(mean(dice), 4).c_str(), f(median(dice), 4).c_str());
  std::printf("IoU   mean %s  median %s\n", f(mean(iou), 4).c_str(), f(median(iou), 4).c_str());
  std::printf("HD95  mean %s mm  median %s mm  (%d cases undefined: one mask empty)\n", f(mean(hd95), 2).c_str(),
              f(median(hd95), 2).c_str(), hd_undefined);
  std::printf("volume |error|  mean %s mL  median %s mL\n", f(mean(volume_error), 3).c_str(),
              f(median(volume_error), 3).c_str());
  for (const auto& [group, d] : dice_by_group)
    std::printf("  Dice %-20s %3zu cases: mean %s  median %s\n", group.c_str(), d.size(), f(mean(d), 4).c_str(),
                f(median(d), 4).c_str());
  for (const auto& [name, s] : label_scores)
    std::printf("%s: Dice mean %s median %s over %d cases with it (mean %s over %zu with >= 1 mL); "
                "volume |error| median %s mean %s mL over all %zu; predicted in %d cases without it (largest %s mL)\n",
                name.c_str(), f(mean(s.dice), 4).c_str(), f(median(s.dice), 4).c_str(), s.truth_cases,
                f(mean(s.dice_1ml), 4).c_str(), s.dice_1ml.size(), f(median(s.volume_error), 3).c_str(),
                f(mean(s.volume_error), 3).c_str(), s.volume_error.size(), s.false_positive_cases,
                f(s.false_positive_ml_max, 2).c_str());
  std::printf("HE: oracle AUC %s (true probabilities), %s (observable part), prevalence %s, over every truth case\n",
              f(roc_auc(oracle_scores, oracle_labels), 3).c_str(),
              f(report["expansion"]["observable_oracle_auc"].is_number()
                    ? report["expansion"]["observable_oracle_auc"].get<double>()
                    : std::nan(""),
                3)
                  .c_str(),
              f(mean(std::vector<double>(oracle_labels.begin(), oracle_labels.end())), 3).c_str());
  if (he_scores.empty()) {
    std::printf("HE model: n/a (no classifier probabilities)\n");
  } else {
    const json& m = report["expansion"]["model"];
    const auto g = [&m, &f](const char* k, int d) { return m[k].is_number() ? f(m[k].get<double>(), d) : std::string("n/a"); };
    std::printf("HE model over %zu cases (%d without a probability): AUC %s (95%% CI %s-%s), Brier %s, ECE %s, "
                "calibration slope %s intercept %s\n",
                he_scores.size(), no_probability, g("auc", 3).c_str(), g("auc_ci95_low", 3).c_str(),
                g("auc_ci95_high", 3).c_str(), g("brier", 4).c_str(), g("ece", 4).c_str(),
                m["auc"].is_number() && !m["calibration_slope"].is_number()
                    ? "n/a (no finite fit: logit(p) separates the classes, or is the same for all)"
                    : g("calibration_slope", 2).c_str(),
                g("calibration_intercept", 2).c_str());
    const json& x = report["expansion"];
    const auto h = [&x, &f](const char* k) { return x[k].is_number() ? f(x[k].get<double>(), 3) : std::string("n/a"); };
    std::printf("  on the same %zu cases: oracle AUC %s, observable %s; the model's AUC is %s x the observable oracle\n",
                he_scores.size(), h("oracle_auc_on_scored_cases").c_str(), h("observable_oracle_auc_on_scored_cases").c_str(),
                h("model_auc_to_observable_oracle").c_str());
    std::printf("  at threshold %s: accuracy %s, sensitivity %s, specificity %s, PPV %s, NPV %s\n",
                m.contains("threshold_per_case") ? "of each case's classifier" : g("threshold", 3).c_str(), g("accuracy", 3).c_str(), g("sensitivity", 3).c_str(),
                g("specificity", 3).c_str(), g("ppv", 3).c_str(), g("npv", 3).c_str());
  }
  std::printf("report: %s\n", json_path.c_str());
  return dice.empty() ? kExitCaseFailed : kExitOk;
}

}  // namespace hemexp
