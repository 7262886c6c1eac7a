// `hemexp prepare`, `eval` and `info` through their option structs, on a small synth cohort.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_helpers.hpp"
#include "hemexp/app/cli.hpp"
#include "hemexp/app/eval_command.hpp"
#include "hemexp/app/info_command.hpp"
#include "hemexp/app/case_result.hpp"
#include "hemexp/app/prepare_command.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kData = HEMEXP_TEST_DATA;

using test::slurp;

class Commands : public ::testing::Test {
 protected:
  // Four small synthetic heads, made once for the suite.
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("hemexp-commands-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    const std::string out = (root_ / "truth").string();
    const char* argv[] = {"hemexp", "synth", "-o", out.c_str(), "--count", "4", "--seed", "11", "--matrix", "64",
                          "--thin-fraction", "0", "--he-fraction", "0.5", "--log-level", "warn"};
    ASSERT_EQ(main_entry(16, argv), kExitOk);
    labels_ = parse_csv(slurp(root_ / "truth/labels.csv")).records();
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static inline fs::path root_;
  static inline std::vector<std::map<std::string, std::string>> labels_;
};

// A segmentation card on a 2 x 2 x 5 mm grid (with `extra` blocks) written to root_/name, and
// prepare's options for the suite's synth cohort into root_/out.
PrepareOptions segmentation_prepare(const fs::path& root, const std::string& name, const json& extra,
                                    const std::string& out) {
  json card = extra;
  card["preprocessing"] = {{"spacing_mm", {2.0, 2.0, 5.0}},
                           {"normalization", {{"type", "ct"}, {"clip_hu", {-100, 200}}, {"mean_hu", 40}, {"std_hu", 50}}}};
  std::ofstream(root / name) << card.dump();
  PrepareOptions o;
  o.synth_dirs = {(root / "truth").string()};
  o.card_path = (root / name).string();
  o.output_dir = (root / out).string();
  return o;
}

// The parity classifier card written to root/name, and prepare's options with it into root/out.
PrepareOptions classifier_prepare(const fs::path& root, const std::string& name, const std::string& out) {
  std::ofstream(root / name) << test::parity_classifier_card(0.0, 1.0, 0.0).dump();
  PrepareOptions o;
  o.card_path = (root / name).string();
  o.output_dir = (root / out).string();
  return o;
}

TEST_F(Commands, PrepareExportsNetworkInputsAndLabels) {
  PrepareOptions o = segmentation_prepare(root_, "card.json", json::object(), "prepared");
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto rows = parse_csv(slurp(root_ / "prepared/cases.csv")).records();
  ASSERT_EQ(rows.size(), labels_.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].at("case_id"), "truth_" + labels_[i].at("case_id"));
    const SafetensorsFile f = read_safetensors(root_ / "prepared" / rows[i].at("file"));
    const torch::Tensor image = f.tensors.at("image"), label = f.tensors.at("label");
    ASSERT_EQ(image.dim(), 4);
    EXPECT_EQ(image.sizes().slice(1), label.sizes());
    const int64_t voxels = label.sum().item<int64_t>();
    EXPECT_EQ(std::to_string(voxels), rows[i].at("foreground_voxels"));
    // The label is the hematoma on the 2 x 2 x 5 mm grid: the same volume, within resampling error.
    const double ml = double(voxels) * 2.0 * 2.0 * 5.0 / 1000.0, truth_ml = std::stod(labels_[i].at("volume_ml"));
    EXPECT_NEAR(ml, truth_ml, 0.2 * truth_ml + 0.1) << rows[i].at("case_id");
    // Inside the label the normalised CT is blood (above 40 HU, brain is below), (HU - 40) / 50.
    const double blood = image[0].masked_select(label.to(torch::kBool)).mean().item<double>();
    EXPECT_GT(blood, 0.0);
    EXPECT_LT(blood, 1.2);
    EXPECT_EQ(json::parse(f.metadata.at("preprocessing"))["spacing_mm"], json({2.0, 2.0, 5.0}));
  }
  o.card_path = (root_ / "truth/labels.csv").string();  // not a card
  EXPECT_EQ(run_prepare(o), kExitUsage);
}

// A card with more than two labels: the label is synth's label map on the model grid (codes
// 0 background, 1 hematoma, 2 IVH, 3 edema), its hematoma label within resampling error of the
// mask, each label's voxels counted in cases.csv; a synth folder without labels.nii.gz fails.
TEST_F(Commands, PrepareExportsTheLabelMapForAModelWithMoreLabels) {
  const fs::path card = root_ / "card4.json";
  PrepareOptions o = segmentation_prepare(
      root_, "card4.json",
      {{"network", {{"num_classes", 4}}},
       {"labels", {{"0", "background"}, {"1", "hematoma"}, {"2", "ivh"}, {"3", "edema"}}}},
      "prepared4");
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto rows = parse_csv(slurp(root_ / "prepared4/cases.csv")).records();
  ASSERT_EQ(rows.size(), labels_.size());
  double edema_total = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const torch::Tensor label = read_safetensors(root_ / "prepared4" / rows[i].at("file")).tensors.at("label");
    EXPECT_EQ((label > 3).sum().item<int64_t>(), 0);
    const std::map<std::string, std::pair<int, std::string>> counted{
        {"foreground_voxels", {1, "volume_ml"}}, {"label2_voxels", {2, "ivh_volume_ml"}}, {"label3_voxels", {3, "edema_volume_ml"}}};
    for (const auto& [column, code_truth] : counted) {
      const int64_t voxels = (label == code_truth.first).sum().item<int64_t>();
      EXPECT_EQ(rows[i].at(column), std::to_string(voxels)) << column;
      const double ml = double(voxels) * 2.0 * 2.0 * 5.0 / 1000.0, truth_ml = std::stod(labels_[i].at(code_truth.second));
      EXPECT_NEAR(ml, truth_ml, 0.25 * truth_ml + 0.2) << rows[i].at("case_id") << " " << column;
      if (code_truth.first == 3) edema_total += truth_ml;
    }
  }
  EXPECT_GT(edema_total, 1.0) << "the cohort has edema, so the check bites";
  // Codes follow the card's names, not synth's numbers; a name synth does not make is refused.
  json swapped = json::parse(slurp(card));
  swapped["labels"]["2"] = "edema";
  swapped["labels"]["3"] = "ivh";
  std::ofstream(root_ / "card4-swapped.json") << swapped.dump();
  o.card_path = (root_ / "card4-swapped.json").string();
  o.output_dir = (root_ / "prepared4-swapped").string();
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto swapped_rows = parse_csv(slurp(root_ / "prepared4-swapped/cases.csv")).records();
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(swapped_rows[i].at("label2_voxels"), rows[i].at("label3_voxels"));
    EXPECT_EQ(swapped_rows[i].at("label3_voxels"), rows[i].at("label2_voxels"));
  }
  swapped["labels"]["3"] = "subdural";
  std::ofstream(root_ / "card4-subdural.json") << swapped.dump();
  o.card_path = (root_ / "card4-subdural.json").string();
  EXPECT_EQ(run_prepare(o), kExitUsage);
  o.card_path = card.string();
  // The same cases without their label maps: every case fails, and says why.
  fs::create_directories(root_ / "nolabels");
  for (const auto& row : labels_) {
    fs::copy(root_ / "truth" / row.at("case_id"), root_ / "nolabels" / row.at("case_id"));
    fs::remove(root_ / "nolabels" / row.at("case_id") / "labels.nii.gz");
  }
  o.synth_dirs = {(root_ / "nolabels").string()};
  o.output_dir = (root_ / "prepared4-nolabels").string();
  EXPECT_EQ(run_prepare(o), kExitCaseFailed);
}

// Classifier ROIs from the true masks: the cases.csv row carries the case's measured volume and
// markers, and the generator's truth (label, probabilities, each true marker as true_<name>).
TEST_F(Commands, PrepareExportsClassifierRoisWithTheTruth) {
  PrepareOptions o = classifier_prepare(root_, "cls-card.json", "prepared-rois");
  o.synth_dirs = {(root_ / "truth").string()};
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto rows = parse_csv(slurp(root_ / "prepared-rois/cases.csv")).records();
  ASSERT_EQ(rows.size(), labels_.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].at("mask_source"), "truth");
    EXPECT_EQ(rows[i].at("he_label"), labels_[i].at("he_label"));
    EXPECT_EQ(rows[i].at("he_observable_probability"), labels_[i].at("he_observable_probability"));
    for (const char* m : {"heterogeneity", "swirl", "blend", "black_hole", "island", "irregular_margin", "hypodensity", "ivh"})
      EXPECT_EQ(rows[i].at(std::string("true_") + m), labels_[i].at(m)) << m;
    EXPECT_NEAR(std::stod(rows[i].at("volume_ml")), std::stod(labels_[i].at("volume_ml")), 1e-3);
    EXPECT_EQ(rows[i].at("ivh_volume_ml"), labels_[i].at("ivh_volume_ml"));  // true masks: the true IVH
    EXPECT_EQ(read_safetensors(root_ / "prepared-rois" / rows[i].at("file")).tensors.at("roi").sizes().vec(),
              (std::vector<int64_t>{3, 6, 20, 12}));
  }
}

// A second synth into a synth's folder is refused (its cases would be mixed with the first's);
// --overwrite replaces the cases the earlier labels.csv lists and nothing else; prepare --synth
// exports labels.csv's rows only, not a case folder it does not list.
TEST_F(Commands, ASynthFolderHoldsOneSynthsCases) {
  const fs::path dir = root_ / "twice";
  const auto cli = [](const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    return main_entry(int(argv.size()), argv.data());
  };
  const auto synth = [&](const char* seed, bool overwrite, const std::string& background = "") {
    std::vector<std::string> args{"hemexp", "synth", "-o", dir.string(), "--count", "2", "--seed", seed, "--matrix",
                                  "48", "--thin-fraction", "0", "--log-level", "warn"};
    if (overwrite) args.push_back("--overwrite");
    if (!background.empty()) args.insert(args.end(), {"--background", background});
    return cli(args);
  };
  ASSERT_EQ(synth("5", false), kExitOk);
  const std::string first = slurp(dir / "labels.csv");
  EXPECT_EQ(synth("6", false), kExitUsage);
  EXPECT_EQ(slurp(dir / "labels.csv"), first);
  // A background that cannot be used stops --overwrite before anything is removed.
  EXPECT_EQ(synth("6", true, (kData / "philips-head-phantom-5mm").string()), kExitSetup);
  EXPECT_EQ(slurp(dir / "labels.csv"), first);
  EXPECT_TRUE(fs::exists(dir / "synth_00000/ct.nii.gz"));
  fs::create_directories(dir / "mine");
  std::ofstream(dir / "mine/notes.txt") << "kept";
  fs::copy(dir / "synth_00001", dir / "synth_00007");  // a case no labels.csv lists
  ASSERT_EQ(synth("6", true), kExitOk);
  EXPECT_NE(slurp(dir / "labels.csv"), first);
  EXPECT_TRUE(fs::exists(dir / "mine/notes.txt"));
  EXPECT_TRUE(fs::exists(dir / "synth_00007"));
  PrepareOptions o = classifier_prepare(root_, "cls-card-twice.json", "prepared-twice");
  o.synth_dirs = {dir.string()};
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto rows = parse_csv(slurp(root_ / "prepared-twice/cases.csv")).records();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("case_id"), "twice_synth_00000");
  EXPECT_EQ(rows[1].at("case_id"), "twice_synth_00001");
  // A researcher's own labels.csv beside patient folders is not a synth's: nothing is replaced.
  const fs::path own = root_ / "own";
  fs::create_directories(own / "P001");
  std::ofstream(own / "labels.csv") << "case_id,he_label\nP001,1\n";
  EXPECT_EQ(cli({"hemexp", "synth", "-o", own.string(), "--count", "1", "--matrix", "48", "--overwrite", "--log-level", "warn"}),
            kExitUsage);
  EXPECT_TRUE(fs::exists(own / "P001"));
}

// Classifier ROIs from a run's masks: the IVH volume is the segmenter's (its "ivh" label in
// result.json), never the labels CSV's true one; empty for a segmenter without that label.
TEST_F(Commands, PrepareFromARunTakesTheSegmentersIvhVolume) {
  const fs::path run = root_ / "run-for-prepare";
  for (int i = 0; i < 2; ++i) {
    const std::string id = labels_[size_t(i)].at("case_id");
    const fs::path dir = run / "cases" / id;
    fs::create_directories(dir);
    fs::copy_file(root_ / "truth" / id / "mask.nii.gz", dir / "mask.nii.gz", fs::copy_options::overwrite_existing);
    CaseResult r;
    r.case_id = id;
    r.input_path = (root_ / "truth" / id / "ct.nii.gz").string();
    if (i == 0) r.labels["ivh"] = LabelVolume{2, 10, 1.25};
    std::ofstream(dir / "result.json") << r.to_json().dump();
  }
  PrepareOptions o = classifier_prepare(root_, "cls-card-run.json", "prepared-run-rois");
  o.run_dir = run.string();
  o.labels_csv = (root_ / "truth" / "labels.csv").string();
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto rows = parse_csv(slurp(root_ / "prepared-run-rois/cases.csv")).records();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("mask_source"), "predicted");
  EXPECT_EQ(rows[0].at("ivh_volume_ml"), "1.2500");
  EXPECT_EQ(rows[1].at("ivh_volume_ml"), "");
  EXPECT_EQ(rows[0].at("he_label"), labels_[0].at("he_label"));
  ASSERT_TRUE(fs::exists(root_ / "truth/synth.json"));
  EXPECT_EQ(rows[0].at("true_swirl"), labels_[0].at("swirl"));  // a hemexp synth labels.csv: the truth
  EXPECT_EQ(rows[0].at("he_probability"), labels_[0].at("he_probability"));
  // The same columns in a researcher's own file (a radiologist's "swirl" reading) are not.
  fs::copy_file(root_ / "truth/labels.csv", root_ / "clinic-labels.csv", fs::copy_options::overwrite_existing);
  o.labels_csv = (root_ / "clinic-labels.csv").string();
  o.output_dir = (root_ / "prepared-clinic-rois").string();
  ASSERT_EQ(run_prepare(o), kExitOk);
  const auto clinic = parse_csv(slurp(root_ / "prepared-clinic-rois/cases.csv")).records();
  ASSERT_EQ(clinic.size(), 2u);
  EXPECT_EQ(clinic[0].at("he_label"), labels_[0].at("he_label"));
  EXPECT_EQ(clinic[0].at("true_swirl"), "");
  EXPECT_EQ(clinic[0].at("he_probability"), "");
}

TEST_F(Commands, EvalComparesARunWithTheTruth) {
  // A run folder as `hemexp run` writes it: case 0 found exactly, case 1 missed, case 2
  // failed, case 3 never run; the classifier's probabilities are the true ones.
  const fs::path pred = root_ / "pred";
  for (int i = 0; i < 3; ++i) {
    const std::string id = labels_[size_t(i)].at("case_id");
    const fs::path dir = pred / "cases" / ("c" + std::to_string(i));
    fs::create_directories(dir);
    const ImageFileContents truth = read_image_file(root_ / "truth" / id / "mask.nii.gz");
    const torch::Tensor mask = i == 0 ? truth.volume.voxels.to(torch::kUInt8) : torch::zeros_like(truth.volume.voxels).to(torch::kUInt8);
    if (i < 2) write_image_file(dir / "mask.nii.gz", mask, truth.volume.geometry);
    // Case 1 was named by its folder (a study spreadsheet's row), which run reads from its one
    // CT volume file and records as the folder: eval finds it all the same.
    json r = {{"case_id", id}, {"status", i < 2 ? "ok" : "failed"},
              {"input", {{"path", (i == 1 ? root_ / "truth" / id : root_ / "truth" / id / "ct.nii.gz").string()}}}};
    // A four-label model's label map: the truth's for case 0, nothing for case 1.
    const torch::Tensor truth_labels = read_image_file(root_ / "truth" / id / "labels.nii.gz").volume.voxels.to(torch::kUInt8);
    if (i < 2) write_image_file(dir / "labels.nii.gz", i == 0 ? truth_labels : torch::zeros_like(truth_labels), truth.volume.geometry);
    r["labels"] = {{"ivh", {{"code", 2}}}, {"edema", {{"code", 3}}}};
    r["he"] = {{"probability", std::stod(labels_[size_t(i)].at("he_probability"))}};
    std::ofstream(dir / "result.json") << r.dump();
  }
  EvalOptions o;
  o.pred_dir = pred.string();
  o.truth_dir = (root_ / "truth").string();
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_eval(o), kExitOk);
  const std::string printed = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("cases: 4 in truth, 2 evaluated, 1 missing, 1 failed"), std::string::npos) << printed;
  const json report = json::parse(slurp(pred / "eval.json"));
  EXPECT_EQ(report["cases"],
            json({{"total", 4}, {"evaluated", 2}, {"missing", 1}, {"failed", 1}, {"truth_without_label", 0}}));
  EXPECT_DOUBLE_EQ(report["segmentation"]["dice_mean"].get<double>(), 0.5);  // 1 and 0
  EXPECT_DOUBLE_EQ(report["segmentation"]["dice_median"].get<double>(), 0.5);
  EXPECT_EQ(report["segmentation"]["hd95_undefined_cases"], 1);
  EXPECT_NEAR(report["segmentation"]["volume_abs_error_ml_mean"].get<double>(),
              0.5 * std::stod(labels_[1].at("volume_ml")), 1e-4);  // labels.csv has 4 decimals
  EXPECT_EQ(report["expansion"]["cases_with_prediction"], 2);
  EXPECT_EQ(report["per_case"][0]["dice"], 1.0);
  EXPECT_EQ(report["per_case"][3]["status"], "missing");
  // Hematoma Dice by group: the found case and the missed one, each in its size group.
  const json& groups = report["segmentation"]["dice_by_group"];
  const auto cases_in = [&groups](const char* g) { return groups.contains(g) ? groups[g]["cases"].get<int>() : 0; };
  EXPECT_EQ(cases_in("volume_under_5ml") + cases_in("volume_5_to_30ml") + cases_in("volume_30ml_or_more"), 2) << groups;
  EXPECT_EQ(cases_in("with_ivh") + cases_in("without_ivh"), 2) << groups;
  // Edema, which every hematoma here has: Dice 1 for the exact map, 0 for the empty one; the
  // volume error of the empty one is its whole true edema volume.
  const json& edema = report["labels"]["edema"];
  ASSERT_EQ(edema["cases_with_label_in_truth"], 2) << report["labels"];
  EXPECT_DOUBLE_EQ(edema["dice_mean"].get<double>(), 0.5);
  EXPECT_NEAR(edema["volume_abs_error_ml_mean"].get<double>(), 0.5 * std::stod(labels_[1].at("edema_volume_ml")), 1e-4);
  EXPECT_EQ(report["per_case"][0]["edema"]["dice"], 1.0);
  EXPECT_TRUE(report["expansion"].contains("observable_oracle_auc_on_scored_cases"));

  // The run's cases are its results table's: a folder an earlier run left (c3, for the case
  // never run) is not evaluated; a relative input is taken from the run's working folder; an
  // unreadable mask is that case's failure, named, and the rest is evaluated.
  const std::string id3 = labels_[3].at("case_id");
  fs::create_directories(pred / "cases/c3");
  fs::copy_file(root_ / "truth" / id3 / "mask.nii.gz", pred / "cases/c3/mask.nii.gz");
  std::ofstream(pred / "cases/c3/result.json")
      << json({{"case_id", id3}, {"status", "ok"}, {"input", {{"path", (root_ / "truth" / id3 / "ct.nii.gz").string()}}}}).dump();
  std::ofstream(pred / "results.csv") << "case_id,status\nc0,ok\nc1,ok\nc2,failed\n";
  json r0 = json::parse(slurp(pred / "cases/c0/result.json"));
  r0["input"]["path"] = (fs::path("truth") / labels_[0].at("case_id") / "ct.nii.gz").string();
  std::ofstream(pred / "cases/c0/result.json", std::ios::trunc) << r0.dump();
  std::ofstream(pred / "run.json") << json({{"working_directory", root_.string()}}).dump();
  std::ofstream(pred / "cases/c1/mask.nii.gz", std::ios::trunc) << "junk";
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(run_eval(o), kExitOk);
  const std::string again = ::testing::internal::GetCapturedStdout() + ::testing::internal::GetCapturedStderr();
  EXPECT_NE(again.find("cases: 4 in truth, 1 evaluated, 1 missing, 2 failed"), std::string::npos) << again;
  EXPECT_NE(again.find(labels_[1].at("case_id") + ": mask unreadable: "), std::string::npos) << again;
  o.json_path = (root_ / "no-such-folder/eval.json").string();
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(run_eval(o), kExitSetup);  // said, not an abort
  ::testing::internal::GetCapturedStdout();
  std::ofstream(pred / "results.csv", std::ios::app) << "c0,ok\n";  // a case listed twice: refused
  EXPECT_EQ(run_eval(o), kExitUsage);
}

// Nothing counted twice, nothing silently chosen: every truth case scored by one of two
// classifiers (a --resume with another --cls-model) is called at its own classifier's threshold
// and the report says the threshold varies; a label the segmenter finds where the truth has none
// is counted; a run with two cases of one scan, or a truth listing a case twice, is refused.
TEST_F(Commands, EvalCallsEachCaseAtItsOwnThresholdAndRefusesDoubleCounting) {
  const fs::path pred = root_ / "pred-mixed";
  const std::vector<double> probability{0.30, 0.10, 0.20, 0.04}, threshold{0.5, 0.5, 0.05, 0.05};
  int no_ivh = -1;
  for (int i = 0; i < 4; ++i) {
    const std::string id = labels_[size_t(i)].at("case_id");
    const fs::path dir = pred / "cases" / id;
    fs::create_directories(dir);
    fs::copy_file(root_ / "truth" / id / "mask.nii.gz", dir / "mask.nii.gz");
    // Intraventricular blood predicted in the first case whose truth has none: 8 voxels.
    ImageFileContents labels = read_image_file(root_ / "truth" / id / "labels.nii.gz");
    if (no_ivh < 0 && labels_[size_t(i)].at("ivh") == "0") {
      no_ivh = i;
      ASSERT_EQ(torch::count_nonzero(labels.volume.voxels == 2).item<int64_t>(), 0);
      labels.volume.voxels.index_put_({torch::indexing::Slice(0, 2), torch::indexing::Slice(0, 2),
                                       torch::indexing::Slice(0, 2)},
                                      2);
    }
    write_image_file(dir / "labels.nii.gz", labels.volume.voxels.to(torch::kUInt8), labels.volume.geometry);
    json r = {{"case_id", id}, {"status", "ok"}, {"input", {{"path", (root_ / "truth" / id / "ct.nii.gz").string()}}}};
    r["labels"] = {{"ivh", {{"code", 2}}}, {"edema", {{"code", 3}}}};
    r["he"] = {{"probability", probability[size_t(i)]},
               {"threshold", threshold[size_t(i)]},
               {"model", {{"sha256", i < 2 ? "aaaa" : "bbbb"}}}};
    std::ofstream(dir / "result.json") << r.dump();
  }
  ASSERT_GE(no_ivh, 0) << "the suite's cohort has a case without IVH";
  EvalOptions o;
  o.pred_dir = pred.string();
  o.truth_dir = (root_ / "truth").string();
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_eval(o), kExitOk);
  const std::string printed = ::testing::internal::GetCapturedStdout();
  const json report = json::parse(slurp(pred / "eval.json"));
  const json& m = report["expansion"]["model"];
  EXPECT_TRUE(m["threshold"].is_null()) << m;
  EXPECT_EQ(m["threshold_per_case"], true);
  int64_t tp = 0, fp = 0, tn = 0, fn = 0;
  for (size_t i = 0; i < 4; ++i) {
    const bool called = probability[i] >= threshold[i], he = labels_[i].at("he_label") == "1";
    (he ? (called ? tp : fn) : (called ? fp : tn))++;
  }
  EXPECT_EQ(m["tp"], tp);
  EXPECT_EQ(m["fp"], fp);
  EXPECT_EQ(m["tn"], tn);
  EXPECT_EQ(m["fn"], fn);
  EXPECT_EQ(report["expansion"]["classifiers"], json({{"aaaa", 2}, {"bbbb", 2}}));
  EXPECT_NE(printed.find("at threshold of each case's classifier"), std::string::npos) << printed;
  const json& ivh = report["labels"]["ivh"];
  EXPECT_EQ(ivh["false_positive_cases"], 1) << ivh;
  const double voxel_ml = read_image_file(root_ / "truth" / labels_[size_t(no_ivh)].at("case_id") / "mask.nii.gz")
                              .volume.geometry.voxel_volume_mm3() / 1000.0;
  EXPECT_NEAR(ivh["false_positive_ml_max"].get<double>(), 8 * voxel_ml, 1e-9);
  EXPECT_NE(printed.find("predicted in 1 cases without it"), std::string::npos) << printed;

  // A second case of the first scan (the scan named twice in the run): refused, both named.
  const std::string id0 = labels_[0].at("case_id");
  fs::copy(pred / "cases" / id0, pred / "cases" / (id0 + "-2"));
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_eval(o), kExitUsage);
  const std::string twice = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(twice.find("two cases of the scan of truth case '" + id0 + "'"), std::string::npos) << twice;
  fs::remove_all(pred / "cases" / (id0 + "-2"));
  // A truth that lists a case twice: refused, with both rows.
  fs::copy(root_ / "truth", root_ / "truth-twice", fs::copy_options::recursive);
  const std::string table = slurp(root_ / "truth/labels.csv");
  const size_t first_row = table.find('\n') + 1;
  std::ofstream(root_ / "truth-twice/labels.csv", std::ios::app)
      << table.substr(first_row, table.find('\n', first_row) + 1 - first_row);  // case 0's row again
  o.truth_dir = (root_ / "truth-twice").string();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_eval(o), kExitUsage);
  const std::string dup = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(dup.find("case '" + id0 + "' appears twice (rows 2 and 6)"), std::string::npos) << dup;
  // A truth without case 0's row, with a blank observable probability for case 1 (unknown,
  // not an unreadable row: it stopped eval), and with the all-blank row synth writes for a case
  // it could not render (it stopped eval too): case 0's run case is counted as outside the
  // truth, the blank row is counted and left out, and no observable oracle is made up.
  fs::copy(root_ / "truth", root_ / "truth-part", fs::copy_options::recursive);
  const CsvTable full = parse_csv(table);
  std::string part = csv_line(full.header);
  for (size_t i = 1; i < labels_.size(); ++i) {
    std::map<std::string, std::string> row = labels_[i];
    if (i == 1) row["he_observable_probability"] = "";
    part += csv_line(full.header, row);
  }
  part += csv_line(full.header, {{"case_id", "synth_00099"}});
  std::ofstream(root_ / "truth-part/labels.csv", std::ios::trunc) << part;
  for (const auto& row : labels_) {  // the run's cases read truth-part's scans
    const fs::path file = pred / "cases" / row.at("case_id") / "result.json";
    json r = json::parse(slurp(file));
    r["input"]["path"] = (root_ / "truth-part" / row.at("case_id") / "ct.nii.gz").string();
    std::ofstream(file, std::ios::trunc) << r.dump();
  }
  o.truth_dir = (root_ / "truth-part").string();
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(run_eval(o), kExitOk);
  const std::string part_printed = ::testing::internal::GetCapturedStdout();
  const std::string part_said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(part_said.find("1 of the run's cases read scans that are not cases of"), std::string::npos) << part_said;
  EXPECT_NE(part_printed.find("and 1 rows of the truth without a label"), std::string::npos) << part_printed;
  const json part_report = json::parse(slurp(pred / "eval.json"));
  EXPECT_EQ(part_report["cases"]["total"], 3);
  EXPECT_EQ(part_report["cases"]["truth_without_label"], 1);
  EXPECT_TRUE(part_report["expansion"]["observable_oracle_auc"].is_null()) << part_report["expansion"];
}

// A labels file for `prepare --run` that cannot mean one thing is refused: no he_label column,
// a value other than 0 or 1, an id labelled twice.
TEST_F(Commands, PrepareFromARunRefusesLabelsThatCannotMeanOneThing) {
  PrepareOptions o = classifier_prepare(root_, "cls-card-labels.json", "prepared-labels");
  const std::string id = labels_[0].at("case_id");
  const fs::path run = root_ / "run-labels";
  fs::create_directories(run / "cases" / id);
  fs::copy_file(root_ / "truth" / id / "mask.nii.gz", run / "cases" / id / "mask.nii.gz");
  CaseResult r;
  r.case_id = id;
  r.input_path = (root_ / "truth" / id / "ct.nii.gz").string();
  std::ofstream(run / "cases" / id / "result.json") << r.to_json().dump();
  o.run_dir = run.string();
  for (const std::string& labels : {"case_id,label\n" + id + ",1\n", "case_id,he_label\n" + id + ",2\n",
                                    "case_id,he_label\n" + id + ",1\n" + id + ",0\n"}) {
    std::ofstream(root_ / "labels-bad.csv", std::ios::trunc) << labels;
    o.labels_csv = (root_ / "labels-bad.csv").string();
    EXPECT_EQ(run_prepare(o), kExitUsage) << labels;
  }
  std::ofstream(root_ / "labels-bad.csv", std::ios::trunc) << "case_id,he_label\n" << id << ",1\nnobody,0\n";
  EXPECT_EQ(run_prepare(o), kExitOk);  // a label that matches no case is warned about, not refused
  // With --synth the labels are the folder's labels.csv: a file given beside it was ignored
  // without a word; it is refused on the command line.
  const std::string truth = (root_ / "truth").string(), labels = (root_ / "labels-bad.csv").string(),
                    card_file = o.card_path, out = (root_ / "prepared-synth-labels").string();
  const char* argv[] = {"hemexp", "prepare", "--synth", truth.c_str(), "--labels", labels.c_str(),
                        "--card", card_file.c_str(), "-o", out.c_str()};
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(main_entry(10, argv), kExitUsage);
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("--labels requires --run"), std::string::npos) << said;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Commands, InfoDescribesAModelAndRejectsOtherFiles) {
  InfoOptions o;
  o.model_path = (kData / "parity/umambaenc.safetensors").string();
  ::testing::internal::CaptureStdout();
  const int code = run_info(o);
  const std::string printed = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(code, kExitOk);
  EXPECT_NE(printed.find("recipe:      incomplete, `hemexp run` cannot use this file: model card: no preprocessing block"),
            std::string::npos) << printed;
  o.model_path = (root_ / "model.safetensors").string();
  SafetensorsFile f = read_safetensors(kData / "parity/umambaenc.safetensors");
  json card = json::parse(f.metadata.at("hemexp_model_card"));
  card["name"] = "info-test";
  card["preprocessing"] = {{"spacing_mm", {1.0, 1.0, 5.0}},
                           {"normalization", {{"type", "ct"}, {"clip_hu", {-100, 200}}, {"mean_hu", 40}, {"std_hu", 50}}}};
  card["inference"] = {{"patch_size", {8, 32, 32}}};
  f.metadata["hemexp_model_card"] = card.dump();
  write_safetensors(o.model_path, f);
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_info(o), kExitOk);
  const std::string info = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(info.find("name:        info-test"), std::string::npos) << info;
  EXPECT_NE(info.find("kind:        segmentation (card format 1)"), std::string::npos) << info;
  EXPECT_NE(info.find("sha256:      " + sha256_file(o.model_path)), std::string::npos) << info;
  EXPECT_NE(info.find("recipe:      ok"), std::string::npos) << info;
  EXPECT_NE(info.find("Research use only"), std::string::npos);
  EXPECT_NE(info.find("hemexp's models are trained on synthetic"), std::string::npos) << info;
  // A model trained on a researcher's labelled scans is not said to be synthetic.
  card["trained_on"] = "training: 25 labelled cases (labels from a labels file, ROIs from hemexp's predicted masks)";
  f.metadata["hemexp_model_card"] = card.dump();
  write_safetensors(o.model_path, f);
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_info(o), kExitOk);
  const std::string own = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(own.find("trained on synthetic"), std::string::npos) << own;
  EXPECT_NE(own.find("Research use only, not for clinical decisions. This model was trained on labelled scans"),
            std::string::npos)
      << own;
  // A classifier whose sign layer reads the features and their pairwise products says so.
  const json cls = test::with_parity_sign_layer(test::parity_classifier_card(0.0, 1.0, 0.0), "vit_signs_quad");
  o.model_path = test::write_parity_classifier(root_ / "quad.safetensors", cls, "vit_signs_quad").string();
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_info(o), kExitOk);
  const std::string quad = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(quad.find("; a sign layer reads from them and their pairwise products the probabilities of 3 signs "
                      "(swirl, blend, black_hole), which the head reads with mean_hu log_volume_ml"),
            std::string::npos)
      << quad;
  o.model_path = (kData / "edge/nibabel/standard.nii.gz").string();
  EXPECT_EQ(run_info(o), kExitSetup);
}

}  // namespace
}  // namespace hemexp
