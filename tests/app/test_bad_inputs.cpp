// The bad-input corpus (tests/data/bad, scripts/make_bad_inputs.py) in one run with a good
// scan: every bad input is one failed row whose reason names its problem, in one line and in
// hemexp's words; the good scan is unaffected; the run ends with exit code 4.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "test_helpers.hpp"
#include "hemexp/app/run_command.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
const fs::path kData = HEMEXP_TEST_DATA;

TEST(BadInputs, EachIsOneFailedRowWithItsReasonAndTheCohortGoesOn) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-bad-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  fs::copy(kData / "bad", root / "cohort", fs::copy_options::recursive);
  fs::copy(kData / "ge-head-ct-tilt-mixed-thickness", root / "cohort/good-head");
  // What git cannot hold: an empty folder, and a link back to the cohort folder (a loop).
  fs::create_directories(root / "cohort/empty-folder");
  fs::create_directory_symlink(".", root / "cohort/good-head-loop");

  // One thread reads a NIfTI file after checking it; two check its stream beside ITK's read
  // (read_image_file): the same reasons either way. One thread last, as the other tests expect.
  for (const int threads : {2, 1}) {
    SCOPED_TRACE(std::to_string(threads) + " thread(s)");
    const fs::path out = root / ("out-" + std::to_string(threads));
    RunOptions o;
    o.inputs = {(root / "cohort").string(), (root / "cohort/list-missing.txt").string(),
                (root / "cohort/list-self.txt").string()};
    o.output_dir = out.string();
    o.seg_model = "none";  // reading is what is tested; the good scan is checked and described
    o.threads = threads;
    o.progress = false;
    o.log_level = "error";
    ASSERT_EQ(run_cases(o, {"hemexp", "run", "(test)"}), kExitCaseFailed);

    // Input (relative to the cohort folder) -> a part of the reason its row must give.
    const std::map<std::string, std::string> expected = {
        {"truncated.nii.gz", "the compressed file is truncated"},
        {"garbage-inside.nii.gz", "the compressed data is corrupt"},
        {"dims-32767-cubed.nii", "32767 x 32767 x 32767 voxels, more than the limit of 524288000 voxels (--max-voxels)"},
        {"dims-2048x2048x1024.nii.gz", "2048 x 2048 x 1024 voxels, more than the limit"},
        {"offset-beyond-file.nii", "its data offset is wrong: the header puts 2048 bytes of voxels at offset 1000000"},
        {"uncompressed-cut.nii", "file is truncated"},
        {"spacing-zero.nii.gz", "voxel spacing is not a positive finite number (pixdim 1, 0, 5)"},
        {"spacing-negative.nii.gz", "voxel spacing is not a positive finite number (pixdim 1, 1, -5)"},
        {"spacing-nan.nii.gz", "voxel spacing is not a positive finite number (pixdim NaN, 1, 5)"},
        {"spacing-infinite.nii.gz", "voxel spacing is not a positive finite number (pixdim 1, inf, 5)"},
        {"direction-singular.nii.gz", "NIfTI sform is singular or nearly so"},
        // ITK refuses any sform-only file that is not orthonormal ("No orthonormal definition
        // found!"); hemexp names the shear instead (x and y 80 degrees apart: 10 from square).
        {"direction-sheared-80deg.nii.gz", "the NIfTI's only transform (its sform) is sheared by 10.0 degrees"},
        {"voxels-nan.nii.gz", "1 voxels are NaN or infinite"},
        {"voxels-infinite.nii.gz", "21 voxels are NaN or infinite"},
        {"one-slice.nii.gz", "image is 16 x 16 x 1: 2D or a single slice"},
        {"empty.nii.gz", "file is empty (0 bytes)"},
        {"text-named.nii.gz", "not a NIfTI file"},
        {"folder-named.nii.gz", "is a folder named like a volume file"},
        {"dicom-pixeldata-odd-length", "pixel data length 8191 is odd"},
        {"dicom-pixeldata-2GiB", "claims 2147483632 bytes, more than the file holds"},
        {"dicom-rows-0", "image has 0 rows and 64 columns"},
        {"dicom-65535x65535", "65535 x 65535"},
        {"empty-folder", "folder holds no DICOM or volume files"},
        {"good-head-loop", "symbolic link to a folder already searched"},
        {"missing-1.nii.gz", "list list-missing.txt names missing-1.nii.gz, which does not exist"},
        {"no/such/folder", "list list-missing.txt names no/such/folder, which does not exist"},
        {"list-self.txt", "is a list file; lists inside lists are not followed"},
    };
    const CsvTable table = parse_csv(test::slurp(out / "results.csv"));
    std::map<std::string, std::map<std::string, std::string>> by_input;
    for (const auto& row : table.records()) {
      const std::string input = fs::path(row.at("input")).lexically_relative(root / "cohort").generic_string();
      EXPECT_TRUE(by_input.emplace(input, row).second) << input << " has two rows";
    }
    EXPECT_EQ(by_input.size(), expected.size() + 1) << "one row per bad input, and the good scan";
    ASSERT_TRUE(by_input.count("good-head"));
    EXPECT_EQ(by_input["good-head"]["status"], "ok") << by_input["good-head"]["error"];
    EXPECT_EQ(by_input["good-head"]["gantry_tilt_deg"], "18.50");
    for (const auto& [input, reason] : expected) {
      ASSERT_TRUE(by_input.count(input)) << input << " has no row";
      const auto& row = by_input[input];
      EXPECT_EQ(row.at("status"), "failed") << input;
      const std::string& error = row.at("error");
      EXPECT_NE(error.find(reason), std::string::npos) << input << ": '" << error << "'";
      EXPECT_EQ(error.find('\n'), std::string::npos) << input;
      EXPECT_EQ(error.find("ITK ERROR"), std::string::npos) << input << ": '" << error << "'";
      EXPECT_EQ(error.find("(0x"), std::string::npos) << input << ": '" << error << "'";
      // Nothing of a failed case is left but its result.json.
      const fs::path dir = out / "cases" / row.at("case_id");
      EXPECT_TRUE(fs::exists(dir / "result.json")) << input;
      EXPECT_FALSE(fs::exists(dir / "mask.nii.gz")) << input;
    }
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace hemexp

namespace hemexp {
namespace {

// Hostile model files: each refused at load, before any large allocation, with a one-line
// reason; `hemexp run` with one of them exits with code 3 and processes nothing.
TEST(BadModels, EachIsRefusedAtLoadWithItsReasonAndExitCode3) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-bad-models-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path good = test::write_random_segmenter(root / "good.safetensors");
  const std::string bytes = test::slurp(good);
  const SafetensorsFile file = read_safetensors(good);
  const nlohmann::json card = nlohmann::json::parse(file.metadata.at(kModelCardKey));

  std::vector<std::pair<fs::path, std::string>> cases;  // file, a part of its reason
  const auto write_bytes = [&](const std::string& name, const std::string& b, const std::string& reason) {
    std::ofstream(root / name, std::ios::binary) << b;
    cases.emplace_back(root / name, reason);
  };
  const auto write_file = [&](const std::string& name, SafetensorsFile f, const std::string& reason) {
    write_safetensors(root / name, f);
    cases.emplace_back(root / name, reason);
  };
  const auto with_card = [&](const std::string& name, const nlohmann::json& c, const std::string& reason) {
    SafetensorsFile f = file;
    f.metadata[kModelCardKey] = c.dump();
    write_file(name, f, reason);
  };
  write_bytes("truncated.safetensors", bytes.substr(0, bytes.size() / 2), "truncated.safetensors");
  std::string long_header = bytes;
  for (int i = 0; i < 8; ++i) long_header[size_t(i)] = char(0x7f);
  write_bytes("header-length.safetensors", long_header, "header-length.safetensors");
  write_bytes("empty.safetensors", "", "empty.safetensors");
  {
    SafetensorsFile f = file;
    f.metadata[kModelCardKey] = "{\"kind\": \"segmentation\", ";
    write_file("card-not-json.safetensors", f, "model card is not valid JSON");
  }
  nlohmann::json c = card;
  c["kind"] = "classifier";
  with_card("wrong-kind.safetensors", c, "is a 'classifier' model, not a segmentation model");
  c = card;
  c["format_version"] = 99;
  with_card("newer.safetensors", c, "format_version 99 is newer than this hemexp reads");
  c = card;
  c["format_version"] = "one";
  with_card("version-text.safetensors", c, "format_version must be an integer");
  c = card;
  c["format_version"] = 2.2e109;  // found by fuzzing: converted to int, undefined behaviour
  with_card("version-huge-float.safetensors", c, "format_version must be an integer");
  c = card;
  c["network"]["features_per_stage"][0] = 1e300;
  with_card("features-float.safetensors", c, "network.features_per_stage must be an integer");
  c = card;
  c["network"]["features_per_stage"][1] = 1000000;
  with_card("features-1e6.safetensors", c, "network.features_per_stage[1] is 1000000, more than 2048");
  c = card;
  for (auto& f : c["network"]["features_per_stage"]) f = 2048;
  for (auto& k : c["network"]["kernel_sizes"]) k = {15, 15, 15};
  with_card("huge-network.safetensors", c, "million parameters, more than 500 million");
  c = card;
  c["inference"]["patch_size"] = {100000, 100000, 100000};
  with_card("patch-huge.safetensors", c, "inference.patch_size must be");
  c = card;
  c["preprocessing"]["spacing_mm"] = {1e-6, 1e-6, 1e-6};
  with_card("spacing-tiny.safetensors", c, "spacing_mm must be 3 numbers (x, y, z), each 0.05 to 20 mm");
  // Labels: as many as the network's classes, each code 0 .. K-1 named once, 1 the hematoma.
  c = card;
  c["labels"] = {{"0", "background"}, {"1", "hematoma"}, {"2", "ivh"}};
  with_card("labels-three.safetensors", c, "the network has 2 classes, the card's labels 3");
  c["labels"] = {{"0", "background"}, {"2", "hematoma"}};
  with_card("labels-gap.safetensors", c, "labels has no name for code 1");
  c["labels"] = {{"0", "background"}, {"1", "background"}};
  with_card("labels-twice.safetensors", c, "label name 'background' is used twice");
  c["labels"] = {{"0", "background"}, {"1", "ivh"}};
  with_card("labels-not-hematoma.safetensors", c, "label 1 must be 'hematoma', not 'ivh'");
  {
    SafetensorsFile f = file;
    const std::string name = f.tensors.begin()->first;
    f.tensors.erase(f.tensors.begin());
    write_file("missing-tensor.safetensors", f, "missing tensor '" + name + "'");
    f = file;
    f.tensors["surplus.weight"] = torch::zeros({2});
    write_file("extra-tensor.safetensors", f, "unexpected tensor 'surplus.weight'");
    f = file;
    auto& t = f.tensors.begin()->second;
    t = t.to(torch::kInt32);
    write_file("int-tensor.safetensors", f, "is Int, the network expects Float");
  }

  for (const auto& [path, reason] : cases) {
    try {
      Segmenter::load(path);
      ADD_FAILURE() << path.filename() << " was loaded";
    } catch (const std::exception& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(reason), std::string::npos) << path.filename() << ": '" << what << "'";
      EXPECT_EQ(what.find('\n'), std::string::npos) << path.filename() << ": '" << what << "'";
    }
    RunOptions o;
    o.inputs = {(kData / "ge-head-ct-tilt-mixed-thickness").string()};
    o.output_dir = (root / ("out-" + path.stem().string())).string();
    o.seg_model = path.string();
    o.threads = 1;
    o.progress = false;
    o.log_level = "off";
    EXPECT_EQ(run_cases(o, {"hemexp", "run", "(test)"}), kExitSetup) << path.filename();
    EXPECT_FALSE(fs::exists(fs::path(o.output_dir) / "results.csv")) << path.filename();
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace hemexp
