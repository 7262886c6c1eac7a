// End-to-end tests of `hemexp synth`: byte-identical outputs (seed, --count, --threads),
// labels.csv volumes equal to the mask, follow-up growth vs labels, and insertion into a
// real head CT that never touches bone or air.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "hemexp/app/cli.hpp"
#include "hemexp/app/synth_command.hpp"
#include "hemexp/core/expansion.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/reader.hpp"

namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("hemexp_test_synth_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

int run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), "hemexp");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return hemexp::main_entry(static_cast<int>(argv.size()), argv.data());
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

uint64_t fnv1a(const std::string& bytes, uint64_t h = 1469598103934665603ULL) {
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// Hash of every file under dir (relative names and contents, in sorted order) but synth.json,
// which records the command line.
uint64_t hash_tree(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "synth.json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  uint64_t h = 1469598103934665603ULL;
  for (const auto& f : files) h = fnv1a(read_file(f), fnv1a(fs::relative(f, dir).string(), h));
  return h;
}

std::vector<std::map<std::string, std::string>> read_labels(const fs::path& csv) {
  return hemexp::parse_csv(read_file(csv)).records();
}

double mask_ml(const fs::path& mask_file) {
  const auto img = hemexp::read_image_file(mask_file);
  const int64_t voxels = (img.volume.voxels > 0.5).sum().item<int64_t>();
  return voxels * img.volume.geometry.voxel_volume_mm3() / 1000.0;
}

// Voxels of one code in a label map, in mL.
double label_ml(const hemexp::ImageFileContents& labels, int code) {
  const int64_t voxels = (labels.volume.voxels.round() == code).sum().item<int64_t>();
  return voxels * labels.volume.geometry.voxel_volume_mm3() / 1000.0;
}

// labels.nii.gz against mask.nii.gz: the same grid, label 1 exactly where the mask is, only
// codes 0-3. Returns the label map.
hemexp::ImageFileContents check_label_map(const fs::path& labels_file, const fs::path& mask_file) {
  const auto labels = hemexp::read_image_file(labels_file);
  const auto mask = hemexp::read_image_file(mask_file);
  EXPECT_TRUE(labels.volume.geometry.same_grid(mask.volume.geometry)) << labels_file;
  const torch::Tensor l = labels.volume.voxels.round();
  EXPECT_TRUE(torch::equal(l == 1, mask.volume.voxels > 0.5)) << labels_file;
  EXPECT_EQ(((l < 0) | (l > 3)).sum().item<int64_t>(), 0) << labels_file;
  return labels;
}

}  // namespace

TEST(SynthCommand, ByteIdenticalForSeedCountAndThreads) {
  const fs::path a = temp_dir("a"), b = temp_dir("b"), c = temp_dir("c");
  ASSERT_EQ(run_cli({"synth", "-o", a.string(), "--count", "3", "--seed", "77", "--matrix", "64", "--threads", "1",
                     "--log-level", "warn"}),
            0);
  ASSERT_EQ(run_cli({"synth", "-o", b.string(), "--count", "3", "--seed", "77", "--matrix", "64", "--threads", "2",
                     "--log-level", "warn"}),
            0);
  EXPECT_EQ(hash_tree(a), hash_tree(b));
  // synth.json: equal but for the command line it records.
  auto ja = nlohmann::json::parse(read_file(a / "synth.json")), jb = nlohmann::json::parse(read_file(b / "synth.json"));
  EXPECT_EQ(ja["argv"].back(), "warn");
  EXPECT_NE(ja["argv"], jb["argv"]);
  ja.erase("argv"), jb.erase("argv");
  EXPECT_EQ(ja, jb);
  // --count 5 contains the same first three cases, byte for byte.
  ASSERT_EQ(run_cli({"synth", "-o", c.string(), "--count", "5", "--seed", "77", "--matrix", "64", "--log-level", "warn"}),
            0);
  for (const char* id : {"synth_00000", "synth_00001", "synth_00002"}) {
    EXPECT_EQ(hash_tree(a / id), hash_tree(c / id)) << id;
  }
  const auto la = read_labels(a / "labels.csv"), lc = read_labels(c / "labels.csv");
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lc.size(), 5u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(la[i], lc[i]);
  // Another seed gives other images.
  const fs::path d = temp_dir("d");
  ASSERT_EQ(run_cli({"synth", "-o", d.string(), "--count", "1", "--seed", "78", "--matrix", "64", "--log-level", "warn"}), 0);
  EXPECT_NE(read_file(a / "synth_00000" / "ct.nii.gz"), read_file(d / "synth_00000" / "ct.nii.gz"));
  for (const auto& p : {a, b, c, d}) fs::remove_all(p);
}

TEST(SynthCommand, LabelsMatchMasksAndFollowupGrowth) {
  const fs::path out = temp_dir("followup");
  ASSERT_EQ(run_cli({"synth", "-o", out.string(), "--count", "4", "--seed", "5", "--matrix", "80", "--followup",
                     "--he-fraction", "0.5", "--log-level", "warn"}),
            0);
  const auto rows = read_labels(out / "labels.csv");
  ASSERT_EQ(rows.size(), 4u);
  const auto& columns = hemexp::synth_label_columns();
  double edema_total = 0.0;
  for (const auto& row : rows) {
    const fs::path case_dir = out / row.at("case_id");
    // The label map: volumes of labels.csv are its voxel counts exactly (4 decimals written).
    const auto labels = check_label_map(case_dir / "labels.nii.gz", case_dir / "mask.nii.gz");
    check_label_map(case_dir / "followup_labels.nii.gz", case_dir / "followup_mask.nii.gz");
    EXPECT_NEAR(std::stod(row.at("volume_ml")), label_ml(labels, 1), 1e-4);
    EXPECT_NEAR(std::stod(row.at("ivh_volume_ml")), label_ml(labels, 2), 1e-4);
    EXPECT_NEAR(std::stod(row.at("edema_volume_ml")), label_ml(labels, 3), 1e-4);
    EXPECT_EQ(row.at("ivh") == "1", label_ml(labels, 2) > 0.0) << row.at("case_id");
    edema_total += label_ml(labels, 3);
    for (const auto& col : columns) EXPECT_TRUE(row.count(col)) << col;
    const fs::path dir = out / row.at("case_id");
    ASSERT_TRUE(fs::exists(dir / "ct.nii.gz"));
    const auto ct = hemexp::read_image_file(dir / "ct.nii.gz");
    const auto mask = hemexp::read_image_file(dir / "mask.nii.gz");
    EXPECT_TRUE(ct.volume.geometry.same_grid(mask.volume.geometry));
    const double v0 = mask_ml(dir / "mask.nii.gz"), v1 = mask_ml(dir / "followup_mask.nii.gz");
    EXPECT_NEAR(std::stod(row.at("volume_ml")), v0, 1e-4);
    EXPECT_NEAR(std::stod(row.at("followup_volume_ml")), v1, 1e-4);
    EXPECT_NEAR(std::stod(row.at("growth_ml")), v1 - v0, 2e-4);
    EXPECT_EQ(row.at("he_label") == "1", hemexp::is_expansion(v0, v1)) << row.at("case_id");
    const double p = std::stod(row.at("he_probability"));
    EXPECT_GT(p, 0.0);
    EXPECT_LT(p, 1.0);
  }
  EXPECT_GT(edema_total, 0.0);
  fs::remove_all(out);
}

TEST(SynthCommand, BackgroundInsertionNeverTouchesBoneOrAir) {
  const fs::path background = fs::path(HEMEXP_TEST_DATA) / "ge-head-ct-tilt-mixed-thickness";
  const fs::path out = temp_dir("background");
  ASSERT_EQ(run_cli({"synth", "-o", out.string(), "--count", "2", "--seed", "9", "--background", background.string(),
                     "--log-level", "warn"}),
            0);
  const hemexp::LoadedVolume bg = hemexp::read_volume(background);
  const torch::Tensor bg_hu = bg.volume.voxels.clamp(-1024, 3071).round();
  for (const char* id : {"synth_00000", "synth_00001"}) {
    const auto ct = hemexp::read_image_file(out / id / "ct.nii.gz");
    const auto mask = hemexp::read_image_file(out / id / "mask.nii.gz");
    ASSERT_TRUE(ct.volume.geometry.same_grid(bg.volume.geometry)) << id;
    const torch::Tensor changed = ct.volume.voxels.round() != bg_hu;
    const int64_t n_changed = changed.sum().item<int64_t>();
    EXPECT_GT(n_changed, 100) << id;
    const torch::Tensor before = bg_hu.masked_select(changed);
    EXPECT_GT(before.min().item<float>(), -200.f) << id << ": an air voxel was changed";
    EXPECT_LT(before.max().item<float>(), 300.f) << id << ": a bone voxel was changed";
    const torch::Tensor m = mask.volume.voxels > 0.5;
    ASSERT_GT(m.sum().item<int64_t>(), 0);
    // Mask voxels are changed voxels (a few hypodense marker voxels may round to the old value).
    EXPECT_LT((m & ~changed).sum().item<int64_t>(), m.sum().item<int64_t>() / 20 + 1);
    const double blood = ct.volume.voxels.masked_select(m).median().item<double>();
    EXPECT_GT(blood, 45.0);
    EXPECT_LT(blood, 95.0);
  }
  const auto rows = read_labels(out / "labels.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("background"), background.string());
  // Each clot lies in one hemisphere, the one its `side` names (the falx is a barrier): no mask
  // voxel lies more than 6 mm across the head's middle (the mid-point of the skull's extent in
  // x; patient left is +x), and its centroid is on the named side. The IVH of the truth is 0
  // (never rendered into a real background).
  const torch::Tensor head = bg.volume.voxels > 300;
  for (const auto& row : rows) {
    const auto mask = hemexp::read_image_file(out / row.at("case_id") / "mask.nii.gz");
    const auto x_of = [&](const torch::Tensor& m) {
      std::vector<double> xs;
      const torch::Tensor idx = m.nonzero();  // (z, y, x)
      const auto a = idx.accessor<int64_t, 2>();
      for (int64_t n = 0; n < idx.size(0); n += std::max<int64_t>(1, idx.size(0) / 4000))
        xs.push_back(bg.volume.geometry.index_to_point(hemexp::Vec3{double(a[n][2]), double(a[n][1]), double(a[n][0])})[0]);
      return xs;
    };
    const std::vector<double> skull = x_of(head);
    const double middle = 0.5 * (*std::min_element(skull.begin(), skull.end()) + *std::max_element(skull.begin(), skull.end()));
    const std::vector<double> clot = x_of(mask.volume.voxels > 0.5);
    const double side = row.at("side") == "left" ? 1.0 : -1.0;
    double centroid = 0.0, across = 0.0;
    for (const double x : clot) centroid += x / double(clot.size()), across = std::max(across, -side * (x - middle));
    EXPECT_GT(side * (centroid - middle), 0.0) << row.at("case_id") << " " << row.at("side");
    EXPECT_LT(across, 6.0) << row.at("case_id") << ": " << across << " mm across the middle";
    EXPECT_EQ(row.at("ivh"), "0");
  }
  EXPECT_NEAR(std::stod(rows[0].at("volume_ml")), mask_ml(out / "synth_00000" / "mask.nii.gz"), 1e-4);
  for (size_t r = 0; r < rows.size(); ++r) {
    const fs::path dir = out / rows[r].at("case_id");
    const auto labels = check_label_map(dir / "labels.nii.gz", dir / "mask.nii.gz");
    EXPECT_EQ(label_ml(labels, 2), 0.0);  // insertion never touches the ventricles
    EXPECT_NEAR(std::stod(rows[r].at("edema_volume_ml")), label_ml(labels, 3), 1e-4);
  }
  fs::remove_all(out);
}

TEST(SynthCommand, RejectsBadHeFraction) {
  EXPECT_EQ(run_cli({"synth", "-o", temp_dir("bad").string(), "--he-fraction", "1.5"}), hemexp::kExitUsage);
  EXPECT_EQ(run_cli({"synth", "-o", temp_dir("bad").string(), "--count", "0"}), hemexp::kExitUsage);
}

TEST(SynthCommand, LabelDrawsOneClassFromTheSameModel) {
  const fs::path all = temp_dir("label_all"), he = temp_dir("label_he");
  ASSERT_EQ(run_cli({"synth", "-o", all.string(), "--count", "8", "--seed", "21", "--matrix", "48", "--he-fraction",
                     "0.5", "--thin-fraction", "0", "--log-level", "warn"}),
            0);
  std::vector<std::string> he_ids;
  for (const auto& row : read_labels(all / "labels.csv"))
    if (row.at("he_label") == "1") he_ids.push_back(row.at("case_id"));
  ASSERT_GE(he_ids.size(), 2u) << "seed 21 at 0.5 draws at least two expansions among 8";
  ASSERT_EQ(run_cli({"synth", "-o", he.string(), "--count", "2", "--seed", "21", "--matrix", "48", "--he-fraction",
                     "0.5", "--thin-fraction", "0", "--label", "he", "--log-level", "warn"}),
            0);
  const auto rows = read_labels(he / "labels.csv");
  ASSERT_EQ(rows.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(rows[i].at("case_id"), he_ids[i]);  // the same cases, in index order
    EXPECT_EQ(rows[i].at("he_label"), "1");
    EXPECT_EQ(read_file(he / he_ids[i] / "ct.nii.gz"), read_file(all / he_ids[i] / "ct.nii.gz"));
  }
  EXPECT_EQ(run_cli({"synth", "-o", he.string(), "--label", "maybe"}), 2);
  for (const auto& p : {all, he}) fs::remove_all(p);
}
