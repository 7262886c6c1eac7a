#include "hemexp/app/prepare_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>
#include <fstream>
#include <iterator>

#include "hemexp/app/case_result.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/roi.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

CLI::App* setup_prepare(CLI::App& app, PrepareOptions& o) {
  CLI::App* p = app.add_subcommand(
      "prepare",
      "Make network-ready training files: segmentation inputs from synth folders, or expansion-classifier ROIs "
      "from synth folders (true masks) or a run folder (predicted masks) with labels");
  auto* synth = p->add_option("--synth", o.synth_dirs, "Folders written by `hemexp synth`")->check(CLI::ExistingDirectory);
  auto* run = p->add_option("--run", o.run_dir, "Output folder of `hemexp run` (classifier ROIs from its masks)")
                  ->check(CLI::ExistingDirectory);
  // A synth folder's labels are its labels.csv: a file given beside --synth would be ignored.
  p->add_option("--labels", o.labels_csv,
                "With --run: CSV with case_id,he_label (case_id of the run, or the folder holding the scan)")
      ->check(CLI::ExistingFile)
      ->needs(run);
  synth->excludes(run);
  p->add_option("--card", o.card_path,
                "Model card (JSON): its preprocessing block (segmentation) or its roi block (classifier)")
      ->required()
      ->check(CLI::ExistingFile);
  p->add_option("-o,--output", o.output_dir, "Output folder")->required();
  return p;
}

namespace {

// One case to export: its CT, its hematoma mask, and what is known about it.
struct PrepareCase {
  std::string id;
  fs::path ct, mask;
  fs::path labels;          // the synth label map (labels.nii.gz), when there is one
  std::string mask_source;  // "truth" (synth) or "predicted" (run)
  // Intraventricular blood in mL, as the mask's source saw it: the segmenter's "ivh" label (a
  // run), the generator's truth (synth); empty when unknown (a segmenter without that label).
  std::string ivh_volume_ml;
  std::map<std::string, std::string> label;  // the labels.csv row, when there is one
};

std::vector<PrepareCase> synth_cases(const std::vector<std::string>& dirs) {
  std::vector<PrepareCase> cases;
  for (const std::string& dir : dirs) {
    std::map<std::string, std::map<std::string, std::string>> labels;
    if (fs::exists(fs::path(dir) / "labels.csv"))
      for (auto& row : parse_csv(read_text_file(fs::path(dir) / "labels.csv")).records()) labels[row["case_id"]] = row;
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (!fs::exists(e.path() / "ct.nii.gz") || !fs::exists(e.path() / "mask.nii.gz")) continue;
      // With a labels.csv, its rows are the cases (a case folder it does not list is not this synth's).
      if (!labels.empty() && !labels.count(e.path().filename().string())) {
        spdlog::warn("{}: not in {}'s labels.csv (left by another synth into the same folder?): not exported",
                     e.path().string(), dir);
        continue;
      }
      found.push_back(e.path());
    }
    std::sort(found.begin(), found.end());
    for (const fs::path& c : found) {
      PrepareCase pc;
      pc.id = fs::path(dir).lexically_normal().filename().string() + "_" + c.filename().string();
      pc.ct = c / "ct.nii.gz";
      pc.mask = c / "mask.nii.gz";
      if (fs::exists(c / "labels.nii.gz")) pc.labels = c / "labels.nii.gz";
      pc.mask_source = "truth";
      if (const auto it = labels.find(c.filename().string()); it != labels.end()) {
        pc.label = it->second;
        if (const auto v = it->second.find("ivh_volume_ml"); v != it->second.end()) pc.ivh_volume_ml = v->second;
      }
      cases.push_back(pc);
    }
  }
  return cases;
}

// The ok cases of a run's results table, with the labels CSV row of each: by the run's case_id,
// or by the name of the folder that holds the scan (a synth folder's case_id). A labels file
// that cannot mean one thing is refused (std::runtime_error): no he_label column, a value other
// than 0 or 1, an id twice, a label that two cases would share. Labelled cases the run could not
// analyse, and labels that match no case, are counted in warnings.
// The labels.csv columns of hemexp synth that are the generator's truth (he_probability, the
// observable part, each NCCT sign), written to cases.csv for auxiliary targets and checks.
const std::vector<std::string>& generator_truth_columns() {
  static const std::vector<std::string> names{"he_probability", "he_observable_probability", "heterogeneity", "swirl",
                                              "blend", "black_hole", "island", "irregular_margin", "hypodensity", "ivh"};
  return names;
}

std::vector<PrepareCase> run_cases_with_labels(const fs::path& run, const fs::path& labels_csv) {
  std::map<std::string, std::map<std::string, std::string>> labels;
  if (!labels_csv.empty()) {
    const CsvTable table = parse_csv(read_text_file(labels_csv));
    for (const char* column : {"case_id", "he_label"})
      if (std::find(table.header.begin(), table.header.end(), column) == table.header.end())
        throw std::runtime_error(labels_csv.string() + " has no " + column + " column");
    size_t n = 1;
    for (auto& row : table.records()) {
      ++n;
      const std::string id = trim(row["case_id"]), label = trim(row["he_label"]);
      if (id.empty() || label.empty()) continue;  // not labelled (as recalibrate_classifier.py skips it)
      if (label != "0" && label != "1")
        throw std::runtime_error(labels_csv.string() + " row " + std::to_string(n) + " (" + id + "): he_label '" + label +
                                 "' is not 0 or 1");
      if (!labels.emplace(id, row).second)
        throw std::runtime_error(labels_csv.string() + ": case_id '" + id + "' is labelled twice");
    }
    // A researcher's own columns named like the generator's truth (a radiologist's "swirl"
    // reading) are not its truth: only a hemexp synth labels.csv (synth.json beside it) is.
    if (!fs::exists(labels_csv.parent_path() / "synth.json")) {
      std::vector<std::string> ignored;
      for (const std::string& name : generator_truth_columns())
        if (std::find(table.header.begin(), table.header.end(), name) != table.header.end()) ignored.push_back(name);
      for (auto& [id, row] : labels)
        for (const std::string& name : ignored) row.erase(name);
      if (!ignored.empty())
        spdlog::warn("{}: columns {} are not taken as the generator's truth (no synth.json beside the file: not a hemexp "
                     "synth labels.csv); cases.csv leaves their true_ columns blank",
                     labels_csv.string(), join(ignored, ", "));
    }
  }
  std::vector<fs::path> dirs;
  if (const std::optional<std::vector<std::string>> listed = listed_case_ids(run)) {
    for (const std::string& id : *listed) dirs.push_back(run / "cases" / id);
  } else if (fs::exists(run / "cases")) {
    spdlog::warn("{} has no results table (a run stopped early?): every case folder in it is read", run.string());
    for (const auto& e : fs::directory_iterator(run / "cases")) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
  }
  std::vector<PrepareCase> cases;
  int unlabelled = 0, not_analysed = 0;
  std::map<std::string, std::string> used;  // label id -> the case it was given to
  std::set<std::string> case_ids;  // a label keyed by a case's own id is that case's only
  for (const fs::path& d : dirs) case_ids.insert(d.filename().string());
  const std::vector<fs::path> working = run_working_folders(run);
  for (const fs::path& d : dirs) {
    const std::optional<CaseResult> r = CaseResult::read(d / CaseFiles::kResult);
    const fs::path input = r ? run_input_path(working, r->input_path) : fs::path();
    auto it = !r ? labels.end() : labels.find(r->case_id);
    if (r && it == labels.end() && !case_ids.count(scan_folder_name(input))) it = labels.find(scan_folder_name(input));
    if (it != labels.end()) {
      if (const auto [u, fresh] = used.emplace(it->first, r->case_id); !fresh)
        throw std::runtime_error(labels_csv.string() + ": the label of '" + it->first + "' would go to two cases (" +
                                 u->second + " and " + r->case_id + "): label by the run's case_id");
    }
    if (!r || r->status != "ok" || !fs::exists(d / CaseFiles::kMask)) {
      if (it != labels.end()) ++not_analysed;
      continue;
    }
    PrepareCase pc;
    pc.id = r->case_id;
    pc.ct = input;
    pc.mask = d / CaseFiles::kMask;
    pc.mask_source = "predicted";
    // the segmenter's, never the labels CSV's (a synth labels.csv has the true one)
    if (const auto ivh = r->labels.find("ivh"); ivh != r->labels.end())
      pc.ivh_volume_ml = format_number(ivh->second.volume_ml, 4);
    if (it != labels.end()) pc.label = it->second;
    else if (!labels.empty()) {
      ++unlabelled;
      continue;
    }
    cases.push_back(pc);
  }
  if (unlabelled) spdlog::warn("{} ok cases of {} have no row in {}: left out", unlabelled, run.string(), labels_csv.string());
  if (not_analysed)
    spdlog::warn("{} labelled cases failed in the run (or have no mask): left out; rerun them with --resume", not_analysed);
  if (const size_t unmatched = labels.size() - used.size(); !labels.empty() && unmatched > 0)
    spdlog::warn("{} of the {} labels in {} match no case of {}", unmatched, labels.size(), labels_csv.string(), run.string());
  return cases;
}

struct Loaded {
  LoadedVolume ct;
  torch::Tensor mask;  // on the CT's grid: the parenchymal hematoma
  torch::Tensor labels;  // the label map on the same grid, when asked for
};

Loaded load_case(const PrepareCase& c, bool with_labels = false) {
  Loaded l{read_volume(c.ct), torch::Tensor(), torch::Tensor()};
  l.mask = (read_codes_on_grid(c.mask, l.ct.volume.geometry) > 0).to(torch::kUInt8);
  if (with_labels) {
    if (c.labels.empty())
      throw IoError("the card has more than two classes, and " + c.ct.parent_path().string() +
                    " has no labels.nii.gz (made by an older hemexp synth?)");
    l.labels = read_codes_on_grid(c.labels, l.ct.volume.geometry);
    if (!torch::equal(l.labels == 1, l.mask > 0)) throw IoError("labels.nii.gz label 1 is not mask.nii.gz");
  }
  return l;
}

// The card code of each synth label code (synth::synth_label_names), by the card's label
// names; a synth tissue the card does not name is background. std::runtime_error for a card
// label synth does not make.
torch::Tensor synth_to_card_codes(const std::vector<std::string>& card_labels) {
  const std::vector<std::string>& synth = synth::synth_label_names();
  torch::Tensor lut = torch::zeros({256}, torch::kUInt8);
  for (size_t code = 1; code < card_labels.size(); ++code) {
    const auto it = std::find(synth.begin() + 1, synth.end(), card_labels[code]);
    if (it == synth.end())
      throw std::runtime_error("label " + std::to_string(code) + " '" + card_labels[code] +
                               "' is not one hemexp synth makes (hematoma, ivh, edema)");
    lut[it - synth.begin()] = int64_t(code);
  }
  return lut;
}

// Segmentation training data: the network input and its label, on the model grid. With a
// card of more than two labels the label is the synth label map with the card's codes (by
// name, synth_to_card_codes), otherwise the hematoma mask.
int export_segmentation(const std::vector<PrepareCase>& cases, const Preprocessing& pre,
                        const std::vector<std::string>& card_labels, const fs::path& out) {
  const int64_t num_classes = int64_t(card_labels.size());
  const torch::Tensor lut = num_classes > 2 ? synth_to_card_codes(card_labels) : torch::Tensor();
  std::vector<std::string> columns{"case_id", "file", "source", "foreground_voxels"};
  for (int64_t k = 2; k < num_classes; ++k) columns.push_back("label" + std::to_string(k) + "_voxels");
  std::string csv = csv_line(columns);
  int failed = 0, done = 0;
  for (const PrepareCase& c : cases) {
    try {
      const Loaded l = load_case(c, num_classes > 2);
      const CanonicalVolume canonical = to_canonical(l.ct.volume);
      Geometry model_grid;
      const torch::Tensor image = prepare_network_input(canonical.volume, pre, &model_grid);
      const torch::Tensor codes = num_classes > 2 ? lut.index({l.labels.to(torch::kLong)}) : l.mask;
      const torch::Tensor label = prepare_network_label(to_canonical(codes, canonical.map), canonical.volume.geometry,
                                                        model_grid, num_classes);
      SafetensorsFile file;
      file.tensors["image"] = image;
      file.tensors["label"] = label;
      file.metadata["case_id"] = c.id;
      file.metadata["source"] = c.ct.parent_path().string();
      file.metadata["preprocessing"] = pre.to_json().dump();
      file.metadata["hemexp_version"] = kVersion;
      write_safetensors(out / (c.id + ".safetensors"), file);
      std::map<std::string, std::string> row{{"case_id", c.id},
                                             {"file", c.id + ".safetensors"},
                                             {"source", c.ct.parent_path().string()},
                                             {"foreground_voxels", std::to_string((label == 1).sum().item<int64_t>())}};
      for (int64_t k = 2; k < num_classes; ++k)
        row["label" + std::to_string(k) + "_voxels"] = std::to_string((label == k).sum().item<int64_t>());
      csv += csv_line(columns, row);
      ++done;
      spdlog::info("[{}] {}: {}x{}x{}", done, c.id, image.size(3), image.size(2), image.size(1));
    } catch (const std::exception& e) {
      ++failed;
      spdlog::error("{}: {}", c.ct.string(), e.what());
    }
  }
  write_text_atomically(out / "cases.csv", csv);
  return failed ? kExitCaseFailed : (done ? kExitOk : kExitUsage);
}

// Classifier training data, made by the code `run` scores with: the ROI of build_roi on the
// canonical CT and mask, and the markers and volume of measure_markers / measure_hematoma on
// the input grid.
int export_rois(const std::vector<PrepareCase>& cases, const RoiRecipe& recipe, const fs::path& out) {
  const std::vector<std::string> marker_columns = NcctMarkers::names();
  std::vector<std::string> columns{"case_id", "file", "source", "mask_source", "he_label", "volume_ml",
                                   "mask_fraction_inside", "mean_hu", "ivh_volume_ml"};
  columns.insert(columns.end(), marker_columns.begin(), marker_columns.end());
  // The generator's truth, when the labels have it (synth cohorts): labels.csv column -> this
  // CSV's column. The probabilities, and each true NCCT marker (0/1) as true_<marker>, for
  // auxiliary training targets and for checking the measured markers.
  std::vector<std::pair<std::string, std::string>> truth;
  for (const std::string& name : generator_truth_columns())
    truth.emplace_back(name, name.rfind("he_", 0) == 0 ? name : "true_" + name);
  for (const auto& [label, column] : truth) columns.push_back(column);
  std::string csv = csv_line(columns);
  int failed = 0, done = 0, empty = 0;
  for (const PrepareCase& c : cases) {
    try {
      const Loaded l = load_case(c);
      const HematomaMeasurements h = measure_hematoma(l.mask, l.ct.volume.voxels, l.ct.volume.geometry);
      if (h.voxels == 0) {
        ++empty;
        spdlog::warn("{}: no hematoma in its {} mask: no ROI", c.id, c.mask_source);
        continue;
      }
      const NcctMarkers m = measure_markers(l.mask, l.ct.volume.voxels, l.ct.volume.geometry);
      const CanonicalVolume canonical = to_canonical(l.ct.volume);
      const Roi roi = build_roi(canonical.volume, to_canonical(l.mask, canonical.map), recipe);
      SafetensorsFile file;
      file.tensors["roi"] = roi.image.contiguous();
      file.metadata["case_id"] = c.id;
      file.metadata["source"] = c.ct.string();
      file.metadata["mask_source"] = c.mask_source;
      file.metadata["roi_recipe"] = recipe.to_json().dump();
      file.metadata["hemexp_version"] = kVersion;
      write_safetensors(out / (c.id + ".safetensors"), file);
      std::map<std::string, std::string> row = m.csv_fields();
      row["case_id"] = c.id;
      row["file"] = c.id + ".safetensors";
      row["source"] = c.ct.string();
      row["mask_source"] = c.mask_source;
      row["volume_ml"] = format_number(h.volume_ml, 4);
      row["mean_hu"] = format_number(h.mean_hu, 2);
      row["ivh_volume_ml"] = c.ivh_volume_ml;
      row["mask_fraction_inside"] = format_number(roi.mask_fraction_inside, 4);
      if (const auto it = c.label.find("he_label"); it != c.label.end()) row["he_label"] = it->second;
      for (const auto& [label, column] : truth)
        if (const auto it = c.label.find(label); it != c.label.end()) row[column] = it->second;
      csv += csv_line(columns, row);
      ++done;
      if (done % 25 == 0) spdlog::info("[{}/{}] {}", done, cases.size(), c.id);
    } catch (const std::exception& e) {
      ++failed;
      spdlog::error("{}: {}", c.ct.string(), e.what());
    }
  }
  write_text_atomically(out / "cases.csv", csv);
  spdlog::info("{} ROIs written, {} cases without hematoma, {} failed", done, empty, failed);
  return failed ? kExitCaseFailed : (done ? kExitOk : kExitUsage);
}

}  // namespace

int run_prepare(const PrepareOptions& o) {
  json card;
  try {
    std::ifstream in(o.card_path);
    card = json::parse(in);
  } catch (const std::exception& e) {
    spdlog::error("card {}: {}", o.card_path, e.what());
    return kExitUsage;
  }
  const bool classifier = card.contains("roi");
  if (o.synth_dirs.empty() && o.run_dir.empty()) {
    spdlog::error("prepare needs --synth folders or a --run folder");
    return kExitUsage;
  }
  if (!o.run_dir.empty() && !classifier) {
    spdlog::error("--run makes classifier ROIs: the card needs a roi block");
    return kExitUsage;
  }
  const fs::path out(o.output_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  try {
    const std::vector<PrepareCase> cases =
        o.run_dir.empty() ? synth_cases(o.synth_dirs) : run_cases_with_labels(o.run_dir, o.labels_csv);
    if (classifier) return export_rois(cases, RoiRecipe::from_json(card.at("roi")), out);
    // The card's labels, checked as `run` checks them, against the network's class count.
    const std::vector<std::string> labels = segmentation_labels(card);
    if (card.contains("network") && card["network"].value("num_classes", int64_t(labels.size())) != int64_t(labels.size()))
      throw std::runtime_error("network.num_classes is not the number of labels");
    return export_segmentation(cases, Preprocessing::from_json(card.at("preprocessing")), labels, out);
  } catch (const std::exception& e) {
    spdlog::error("{}", one_line(e.what()));  // the card's, the labels', or a write's: the message says which
    return kExitUsage;
  }
}

}  // namespace hemexp
