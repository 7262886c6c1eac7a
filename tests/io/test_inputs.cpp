// Expanding -i arguments into cases with stable, unique, filesystem-safe ids.
#include <fstream>

#include "hemexp/io/error.hpp"
#include "hemexp/io/inputs.hpp"
#include "test_support.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

TEST(Inputs, CaseIdsAreFilesystemSafe) {
  EXPECT_EQ(case_id_from_path("scan 01.nii.gz"), "scan-01");
  EXPECT_EQ(case_id_from_path("cohort/pat#7/ct.NII"), "cohort_pat-7_ct");
  EXPECT_EQ(case_id_from_path(".hidden/x.mha"), "hidden_x");
  EXPECT_EQ(case_id_from_path("éa.nrrd"), "--a");
}

TEST(Inputs, CohortFolderListAndClashes) {
  ScratchDir dir;
  fs::create_directories(dir / "cohort/p1/series");
  fs::create_directories(dir / "cohort/p2");
  fs::create_directories(dir / "cohort/.cache");
  std::ofstream(dir / "cohort/p2/ct.nii.gz") << "x";
  std::ofstream(dir / "cohort/p2/notes.txt") << "x";
  std::ofstream(dir / "cohort/.cache/skip.nii") << "x";
  for (const char* f : {"01.dcm", "02.dcm"})
    fs::copy_file(test::data("ge-head-ct-tilt-mixed-thickness") / f, dir / "cohort/p1/series" / f);
  std::ofstream(dir / "other.nii") << "x";
  std::ofstream(dir / "list.csv") << "path,age\n# a comment\nother.nii,71\ncohort/p2/ct.nii.gz,64\n";

  const auto cases = expand_inputs({dir / "cohort", dir / "list.csv", dir / "other.nii"});
  ASSERT_EQ(cases.size(), 5u);
  EXPECT_EQ(cases[0].id, "cohort_p1_series");
  EXPECT_EQ(cases[0].path, dir / "cohort/p1/series");
  EXPECT_EQ(cases[1].id, "cohort_p2_ct");
  EXPECT_EQ(cases[2].id, "other");
  EXPECT_EQ(cases[3].id, "ct");
  EXPECT_EQ(cases[4].id, "other-2");  // same name again: unique suffix, in input order
  EXPECT_EQ(cases[4].path, dir / "other.nii");

  // Different files with the same name (one folder per patient): named with their folder.
  fs::create_directories(dir / "p3");
  std::ofstream(dir / "p3/ct.nii.gz") << "x";
  const auto same_name = expand_inputs({dir / "cohort/p2/ct.nii.gz", dir / "p3/ct.nii.gz", dir / "p3/ct.nii.gz"});
  ASSERT_EQ(same_name.size(), 3u);
  EXPECT_EQ(same_name[0].id, "p2_ct");
  EXPECT_EQ(same_name[1].id, "p3_ct");
  EXPECT_EQ(same_name[2].id, "p3_ct-2");  // the very same file twice: suffix

  std::ofstream(dir / "broken.txt") << "missing.nii\n";
  EXPECT_THROW(expand_inputs({dir / "broken.txt"}), IoError);
}

}  // namespace
}  // namespace hemexp
