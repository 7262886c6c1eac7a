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
  EXPECT_EQ(cases[2].extra, (std::vector<std::pair<std::string, std::string>>{{"age", "71"}}));
  EXPECT_TRUE(cases[0].extra.empty());
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

  // A list entry that does not exist is that case's failure, not the cohort's.
  std::ofstream(dir / "broken.txt") << "missing.nii\nother.nii\n";
  const auto broken = expand_inputs({dir / "broken.txt"});
  ASSERT_EQ(broken.size(), 2u);
  EXPECT_EQ(broken[0].id, "missing");
  EXPECT_EQ(broken[0].problem, "list broken.txt names missing.nii, which does not exist");
  EXPECT_EQ(broken[1].problem, "");
  EXPECT_THROW(expand_inputs({dir / "missing-on-the-command-line.nii"}), IoError);  // a usage error

  // Long paths give ids the file system accepts, still distinct.
  const std::string deep(300, 'a');
  const std::string id1 = case_id_from_path(deep + "1.nii.gz"), id2 = case_id_from_path(deep + "2.nii.gz");
  EXPECT_EQ(id1.size(), kMaxCaseIdLength);
  EXPECT_NE(id1, id2);
  EXPECT_EQ(case_id_from_path(".."), "case");
  EXPECT_EQ(case_id_from_path("../../etc/passwd"), "etc_passwd");
}

TEST(Inputs, ListsAsResearchersKeepThem) {
  // path anywhere in the header, the study's own case_id, and its columns carried through.
  ScratchDir dir;
  fs::create_directories(dir / "scans/p1");
  std::ofstream(dir / "scans/a.nii.gz") << "x";
  std::ofstream(dir / "scans/b.nii.gz") << "x";
  for (const char* f : {"01.dcm", "02.dcm"})
    fs::copy_file(test::data("ge-head-ct-tilt-mixed-thickness") / f, dir / "scans/p1" / f);
  std::ofstream(dir / "study.csv") << "centre,Path,case_id,onset_to_ct_h\n"
                                      "Leeds,scans/a.nii.gz,PT-001,2.5\n"
                                      "\"Lyon, FR\",scans/p1,PT-002,\n"
                                      "Leeds,scans/b.nii.gz,,6\n";
  const auto cases = expand_inputs({dir / "study.csv"});
  ASSERT_EQ(cases.size(), 3u);
  EXPECT_EQ(cases[0].id, "PT-001");
  EXPECT_EQ(cases[0].extra,
            (std::vector<std::pair<std::string, std::string>>{{"centre", "Leeds"}, {"onset_to_ct_h", "2.5"}}));
  EXPECT_EQ(cases[1].id, "PT-002");  // a folder given with an id is that one case
  EXPECT_EQ(cases[1].path, dir / "scans/p1");
  EXPECT_EQ(cases[1].extra[0].second, "Lyon, FR");
  EXPECT_EQ(cases[2].id, "b");  // no id given: derived as usual
  EXPECT_EQ(cases[2].extra[1].second, "6");

  std::ofstream(dir / "dup.csv") << "path,case_id\nscans/a.nii.gz,X\nscans/b.nii.gz,X\n";
  EXPECT_THROW(expand_inputs({dir / "dup.csv"}), IoError);
  std::ofstream(dir / "unsafe.csv") << "path,case_id\nscans/a.nii.gz,../x\n";
  try {
    expand_inputs({dir / "unsafe.csv"});
    ADD_FAILURE() << "an unsafe case_id was taken";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("row 2: case_id '../x' may hold only"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hemexp
