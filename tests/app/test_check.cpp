// `hemexp check`: a run against a baseline, drift beyond tolerance found and named.
#include <gtest/gtest.h>
#include <unistd.h>

#include "test_helpers.hpp"
#include "hemexp/app/check_command.hpp"
#include "hemexp/app/case_result.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using test::slurp;

struct Case {
  std::string id, status, volume, probability;
  int mask_voxels;  // -1: no mask
};

void write_run(const fs::path& dir, const std::vector<Case>& cases) {
  const std::vector<std::string>& columns = CaseResult::csv_columns();
  std::string csv = csv_line(columns);
  Geometry g;
  g.size = {8, 8, 4};
  for (const Case& c : cases) {
    csv += csv_line(columns, {{"case_id", c.id}, {"status", c.status}, {"hematoma_volume_ml", c.volume},
                              {"he_probability", c.probability}, {"seconds", "1.00"}});
    if (c.mask_voxels < 0) continue;
    fs::create_directories(dir / "cases" / c.id);
    torch::Tensor m = torch::zeros({4, 8, 8}, torch::kUInt8);
    m.view({-1}).slice(0, 0, c.mask_voxels).fill_(1);
    write_image_file(dir / "cases" / c.id / "mask.nii.gz", m, g);
  }
  write_text_atomically(dir / "results.csv", csv);
}

TEST(Check, FindsEveryDriftBeyondTolerance) {
  const fs::path root = fs::temp_directory_path() / ("hemexp-check-" + std::to_string(::getpid()));
  fs::remove_all(root);
  write_run(root / "base", {{"a", "ok", "10.000", "0.2000", 100}, {"b", "ok", "0.000", "", 0},
                            {"c", "failed", "", "", -1}, {"d", "ok", "5.000", "0.1000", 50}});
  CheckOptions o;
  o.baseline = (root / "base").string();
  // The same (a kept case counts as ok; volume and probability within tolerance): no drift.
  write_run(root / "same", {{"a", "skipped", "10.050", "0.2100", 100}, {"b", "ok", "0.000", "", 0},
                            {"c", "failed", "", "", -1}, {"d", "ok", "5.000", "0.1000", 50}});
  o.run_dir = (root / "same").string();
  EXPECT_TRUE(find_drift(o).empty());
  EXPECT_EQ(run_check(o), kExitOk);
  // Every kind of drift.
  write_run(root / "drift", {{"a", "ok", "10.200", "0.2100", 90}, {"b", "ok", "0.000", "0.0500", 0},
                             {"c", "ok", "1.000", "", 3}, {"e", "ok", "1.000", "", 1}});
  o.run_dir = (root / "drift").string();
  std::vector<std::string> found;
  for (const Drift& d : find_drift(o)) found.push_back(d.case_id + " " + d.check + " " + d.baseline + " -> " + d.run);
  EXPECT_EQ(found, (std::vector<std::string>{"a hematoma_volume_ml 10.000 -> 10.200", "a mask dice 1 -> 0.9474",
                                             "b he_probability (blank) -> 0.0500", "c status failed -> ok",
                                             "c hematoma_volume_ml (blank) -> 1.000", "c mask missing -> present",
                                             "d case present -> missing", "e case absent -> extra"}));
  EXPECT_EQ(run_check(o), kExitDrift);
  // Looser tolerances let the numbers through; the rest stays drift.
  o.volume_ml = 0.5;
  o.dice = 0.9;
  EXPECT_EQ(find_drift(o).size(), 6u);
  // A results.csv as the baseline: no masks compared.
  o.baseline = (root / "base/results.csv").string();
  EXPECT_EQ(find_drift(o).size(), 5u);
  // A NaN (a damaged model's output) is drift, never within tolerance; an unreadable mask is
  // that case's drift, named; a case listed twice is refused (exit 2).
  o.baseline = (root / "base").string();
  write_run(root / "nan", {{"a", "ok", "nan", "-nan", 100}, {"b", "ok", "0.000", "", 0},
                           {"c", "failed", "", "", -1}, {"d", "ok", "5.000", "0.1000", 50}});
  std::ofstream(root / "nan/cases/d/mask.nii.gz", std::ios::trunc) << "junk";
  o.run_dir = (root / "nan").string();
  found.clear();
  for (const Drift& d : find_drift(o)) found.push_back(d.case_id + " " + d.check + " " + d.baseline + " -> " + d.run);
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0], "a hematoma_volume_ml 10.000 -> nan");
  EXPECT_EQ(found[1], "a he_probability 0.2000 -> -nan");
  EXPECT_EQ(found[2].rfind("d mask readable -> ", 0), 0u) << found[2];
  write_text_atomically(root / "nan/results.csv", slurp(root / "base/results.csv") +
                                                      csv_line(CaseResult::csv_columns(), {{"case_id", "a"}, {"status", "ok"}}));
  EXPECT_EQ(run_check(o), kExitUsage);
  // A baseline that is no results table (empty, text, another CSV) cannot be read: a usage error,
  // not every case "absent" (drift, as it was).
  o.run_dir = (root / "same").string();
  for (const std::string& text : {std::string(""), std::string("garbage\n"), std::string("id,volume\na,1\n")}) {
    write_text_atomically(root / "broken.csv", text);
    o.baseline = (root / "broken.csv").string();
    EXPECT_EQ(run_check(o), kExitUsage) << "baseline '" << text << "'";
  }
  // A mask moved 20 mm: the drift says what differs (the origin), not the same text twice.
  write_run(root / "moved", {{"a", "ok", "10.000", "0.2000", 100}});
  {
    ImageFileContents m = read_image_file(root / "moved/cases/a/mask.nii.gz");
    m.volume.geometry.origin_mm[0] += 20;
    write_image_file(root / "moved/cases/a/mask.nii.gz", m.volume.voxels, m.volume.geometry);
  }
  o.baseline = (root / "base").string();
  o.run_dir = (root / "moved").string();
  std::string grid;
  for (const Drift& d : find_drift(o))
    if (d.check == "mask grid") grid = d.baseline + " -> " + d.run;
  EXPECT_NE(grid.find("origin 0,0,0, axes 1,0,0,0,1,0,0,0,1 -> 8x8x4 voxels of 1x1x1 mm, origin 20,0,0"), std::string::npos)
      << grid;
  fs::remove_all(root);
}

}  // namespace
}  // namespace hemexp
