// Expanding -i arguments into cases with stable, unique, filesystem-safe ids.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/dicom.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"
#include "hemexp/core/model_file.hpp"
#include "dicom_maker.hpp"
#include "test_support.hpp"

namespace hemexp {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;
using test::data;

TEST(Inputs, CaseIdsAreFilesystemSafe) {
  EXPECT_EQ(case_id_from_path("scan 01.nii.gz"), "scan-01");
  EXPECT_EQ(case_id_from_path("cohort/pat#7/ct.NII"), "cohort_pat-7_ct");
  EXPECT_EQ(case_id_from_path(".hidden/x.mha"), "hidden_x");
  EXPECT_EQ(case_id_from_path("éa.nrrd"), "a");  // no id starts with '-' (a formula in a spreadsheet)
  EXPECT_EQ(case_id_from_path("=1+2.nii.gz"), "1-2");
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
  // The very same file twice is one case; the second is left out, named.
  std::vector<LeftOut> twice;
  const auto same_name = expand_inputs({dir / "cohort/p2/ct.nii.gz", dir / "p3/ct.nii.gz", dir / "p3/ct.nii.gz"}, &twice);
  ASSERT_EQ(same_name.size(), 2u);
  EXPECT_EQ(same_name[0].id, "p2_ct");
  EXPECT_EQ(same_name[1].id, "p3_ct");
  ASSERT_EQ(twice.size(), 1u);
  EXPECT_EQ(twice[0].reason, "the same scan as " + (dir / "p3/ct.nii.gz").string() + ", named or found twice");

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

// Names that the safe form makes equal ("Müller" and "Møller") got "M--ller" and "M--ller-2" in
// path order, so a scan added later took the id an earlier one had, and labels keyed by that id
// went to another patient. Each such name now gets a digest of itself; the name that needed no
// change keeps its plain id. The same scan named twice, directly and through a link or a folder
// searched, is one case. A list's first line is a header only when it names a column ("file"),
// not when it is a scan folder that is missing.
TEST(Inputs, IdsStayWithTheirScansAsTheCohortGrowsAndEachScanIsOneCase) {
  ScratchDir dir;
  fs::create_directories(dir / "names/M\xc3\xbcller");
  std::ofstream(dir / "names/M\xc3\xbcller/ct.nii.gz") << "x";
  const auto alone = expand_inputs({dir / "names"});
  ASSERT_EQ(alone.size(), 1u);
  EXPECT_EQ(alone[0].id, "names_M--ller_ct");  // no clash: the plain safe form
  for (const char* other : {"M\xc3\xb8ller", "M--ller"}) {
    fs::create_directories(dir / "names" / other);
    std::ofstream(dir / "names" / other / "ct.nii.gz") << "x";
  }
  const auto grown = expand_inputs({dir / "names"});
  ASSERT_EQ(grown.size(), 3u);
  std::map<std::string, std::string> id_of;
  for (const CaseInput& c : grown) id_of[c.path.parent_path().filename().string()] = c.id;
  EXPECT_EQ(id_of["M--ller"], "names_M--ller_ct");  // its own name: kept
  EXPECT_EQ(id_of["M\xc3\xbcller"], "names_M--ller_ct-" + sha256_hex("names/M\xc3\xbcller/ct.nii.gz").substr(0, 8));
  EXPECT_EQ(id_of["M\xc3\xb8ller"], "names_M--ller_ct-" + sha256_hex("names/M\xc3\xb8ller/ct.nii.gz").substr(0, 8));
  EXPECT_NE(id_of["M\xc3\xbcller"], id_of["M\xc3\xb8ller"]);

  // Names that need no change can meet too ("a/b" and "a_b"): both get digests, whichever came first.
  fs::create_directories(dir / "flat");
  std::ofstream(dir / "flat/a_b.nii.gz") << "x";
  EXPECT_EQ(expand_inputs({dir / "flat"})[0].id, "flat_a_b");
  fs::create_directories(dir / "flat/a");
  std::ofstream(dir / "flat/a/b.nii.gz") << "y";
  const auto flat = expand_inputs({dir / "flat"});
  ASSERT_EQ(flat.size(), 2u);
  EXPECT_EQ(flat[0].id, "flat_a_b-" + sha256_hex("flat/a/b.nii.gz").substr(0, 8));
  EXPECT_EQ(flat[1].id, "flat_a_b-" + sha256_hex("flat/a_b.nii.gz").substr(0, 8));
  EXPECT_EQ(unique_case_ids({"x.nii", "x.nii"}), (std::vector<std::string>{"x", "x-2"}));  // the same name twice
  // Two searched folders of one name (two sites' exports): named from their parents, in any
  // order (scans_P1 and scans_P1-2 before, in argument order).
  for (const char* site : {"siteA", "siteB"}) {
    fs::create_directories(dir / site / "scans");
    std::ofstream(dir / site / "scans/P1.nii.gz") << site;
  }
  for (const bool swapped : {false, true}) {
    const auto sites = expand_inputs(swapped ? std::vector<fs::path>{dir / "siteB/scans", dir / "siteA/scans/"}
                                             : std::vector<fs::path>{dir / "siteA/scans", dir / "siteB/scans"});
    ASSERT_EQ(sites.size(), 2u);
    std::map<std::string, std::string> site_of;
    for (const CaseInput& c : sites) site_of[c.id] = c.path.parent_path().parent_path().filename().string();
    EXPECT_EQ(site_of, (std::map<std::string, std::string>{{"siteA_scans_P1", "siteA"}, {"siteB_scans_P1", "siteB"}}));
  }
  EXPECT_EQ(expand_inputs({dir / "siteA/scans"})[0].id, "scans_P1");  // alone: as before
  // Files of one name in a list, whose nearest folders are alike too: named with as many
  // folders as tell them apart, in either order of the list (P001_ct and P001_ct-2 before).
  for (const char* site : {"siteA", "siteB"}) {
    fs::create_directories(dir / site / "P001");
    std::ofstream(dir / site / "P001/ct.nii.gz") << site;
  }
  for (const bool swapped : {false, true}) {
    std::ofstream(dir / "sites.txt") << (swapped ? "siteB/P001/ct.nii.gz\nsiteA/P001/ct.nii.gz\n"
                                                 : "siteA/P001/ct.nii.gz\nsiteB/P001/ct.nii.gz\n");
    std::map<std::string, std::string> site_of;
    for (const CaseInput& c : expand_inputs({dir / "sites.txt"}))
      site_of[c.id] = c.path.parent_path().parent_path().filename().string();
    EXPECT_EQ(site_of, (std::map<std::string, std::string>{{"siteA_P001_ct", "siteA"}, {"siteB_P001_ct", "siteB"}}));
  }

  fs::create_symlink(dir / "names/M--ller/ct.nii.gz", dir / "names/link.nii.gz");
  std::vector<LeftOut> left_out;
  const auto linked = expand_inputs({dir / "names/M--ller/ct.nii.gz", dir / "names"}, &left_out);
  ASSERT_EQ(linked.size(), 3u);  // the named file, and the two others found in the folder
  EXPECT_EQ(linked[0].id, "ct");
  ASSERT_EQ(left_out.size(), 2u);  // the file found again in the folder, and through the link
  for (const LeftOut& l : left_out)
    EXPECT_EQ(l.reason, "the same scan as " + (dir / "names/M--ller/ct.nii.gz").string() + ", named or found twice");

  std::ofstream(dir / "first_missing.txt") << "P001\nnames/M--ller/ct.nii.gz\n";
  const auto listed = expand_inputs({dir / "first_missing.txt"});
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].problem, "list first_missing.txt names P001, which does not exist");
  std::ofstream(dir / "headed.txt") << "File\nnames/M--ller/ct.nii.gz\n";
  EXPECT_EQ(expand_inputs({dir / "headed.txt"}).size(), 1u);
  // A spreadsheet column named twice keeps both values.
  std::ofstream(dir / "twice.csv") << "path,notes,notes\nnames/M--ller/ct.nii.gz,first,second\n";
  const auto noted = expand_inputs({dir / "twice.csv"});
  ASSERT_EQ(noted.size(), 1u);
  EXPECT_EQ(noted[0].extra, (std::vector<std::pair<std::string, std::string>>{{"notes", "first"}, {"notes_2", "second"}}));
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

// A folder search takes CT volumes and leaves out, each with its reason, what cannot be one:
// masks and label maps (8-bit codes, by the header: NIfTI of both kinds, nibabel's NaN scaling
// included, and MHA) and the `cases` and `pairs` subfolders of an earlier hemexp run (its
// run.json, or a shard's) and of the run's own output folder; the rest of those folders is
// searched. A scaled
// 8-bit file may be a CT and is kept; a run.json of another tool changes nothing; a folder that
// held only masks, and the run's own output folder, are not failed cases; a mask named directly
// is a case.
TEST(Inputs, ScanFolderNameIsADicomFoldersOwnNameAndAFilesFolder) {
  ScratchDir dir;
  fs::create_directories(dir / "cohort/P001");
  std::ofstream(dir / "cohort/P002.nii.gz") << "x";
  EXPECT_EQ(scan_folder_name(dir / "cohort/P001"), "P001");
  EXPECT_EQ(scan_folder_name((dir / "cohort/P001").string() + "/"), "P001");
  EXPECT_EQ(scan_folder_name(dir / "cohort/P001/ct.nii.gz"), "P001");
  EXPECT_EQ(scan_folder_name(dir / "cohort/P002.nii.gz"), "cohort");
  EXPECT_EQ(scan_folder_name("gone/P003/ct.nii.gz"), "P003");  // a file that is no longer there
}

// A folder named with a trailing separator (as a shell's completion writes it) gives the ids the
// same folder gives without it; an export's DICOMDIR index is not a scan of its folder.
TEST(Inputs, AFoldersCasesDoNotDependOnATrailingSeparatorAndADicomdirIsNoScan) {
  ScratchDir dir;
  for (const char* d : {"cohort/siteB/P001", "cd/DICOM/S1"}) fs::create_directories(dir / d);
  for (const auto& e : fs::directory_iterator(data("ge-head-ct-tilt-mixed-thickness")))
    fs::copy_file(e.path(), dir / "cohort/siteB/P001" / e.path().filename()),
        fs::copy_file(e.path(), dir / "cd/DICOM/S1" / e.path().filename());
  fs::copy_file(data("dicom-codecs-mr/1.dcm"), dir / "cd/DICOMDIR");  // any DICOM file named so
  const auto ids = [&](const std::string& input) {
    std::vector<std::string> out;
    for (const CaseInput& c : expand_inputs({fs::path(input)})) out.push_back(c.id);
    return out;
  };
  const std::string site = (dir / "cohort/siteB").string(), patient = (dir / "cohort/siteB/P001").string();
  EXPECT_EQ(ids(site), std::vector<std::string>{"siteB_P001"});
  EXPECT_EQ(ids(site + "/"), std::vector<std::string>{"siteB_P001"});
  EXPECT_EQ(ids(site + "//"), std::vector<std::string>{"siteB_P001"});
  EXPECT_EQ(ids(patient), std::vector<std::string>{"P001"});
  EXPECT_EQ(ids(patient + "/"), std::vector<std::string>{"P001"});
  EXPECT_EQ(ids((dir / "cd").string()), std::vector<std::string>{"cd_DICOM_S1"});
  EXPECT_FALSE(looks_like_dicom(dir / "cd/DICOMDIR"));
}

// One series in two folders: a second copy (shared images; here a partial resend without the
// first image) is left out, keeping the folder with more images; a series split across folders (a CD writer's folders of so many files)
// fails in both, named, rather than being measured as two half heads; a study spreadsheet's row
// naming the folder above them reads it whole. On a CD, folders without scans (its viewer) are
// left out, not failed cases.
TEST(Inputs, OneSeriesInTwoFoldersIsACopyOrASplitNeverTwoScans) {
  ScratchDir dir;
  const fs::path ge = data("ge-head-ct-tilt-mixed-thickness");
  for (const char* d : {"export/SE2", "export/SE2_resent", "cd/DICOM/00000001", "cd/DICOM/00000002", "cd/VIEWER/bin"})
    fs::create_directories(dir / d);
  const DicomHeader first = read_dicom_header(ge / "01.dcm");
  test::write_dicom_scan(ge, dir / "whole", {first.patient_id, first.study_uid, "2.25.60", "", "", "", "", {}});
  for (const auto& e : fs::directory_iterator(ge)) {
    const std::string name = e.path().filename().string();
    fs::copy_file(e.path(), dir / "export/SE2" / name);
    if (name > "01" && name < "20") fs::copy_file(e.path(), dir / "export/SE2_resent" / name);  // a partial resend
    fs::rename(dir / "whole" / name, dir / (name < "15" ? "cd/DICOM/00000001" : "cd/DICOM/00000002") / name);
  }
  fs::remove(dir / "whole");
  std::ofstream(dir / "cd/VIEWER/bin/viewer.exe") << "MZ";
  fs::copy_file(data("dicom-codecs-mr/1.dcm"), dir / "cd/DICOMDIR");
  std::vector<LeftOut> left_out;
  const std::vector<CaseInput> cases = expand_inputs({dir / "export", dir / "cd"}, &left_out);
  ASSERT_EQ(cases.size(), 3u);
  EXPECT_EQ(cases[0].path, dir / "export/SE2");  // the complete copy
  EXPECT_EQ(cases[0].problem, "");
  EXPECT_EQ(cases[1].path, dir / "cd/DICOM/00000001");
  EXPECT_EQ(cases[2].path, dir / "cd/DICOM/00000002");
  const std::string split = "series 2.25.60 is split between " + (dir / "cd/DICOM/00000001").string() + " and " +
                            (dir / "cd/DICOM/00000002").string() +
                            " (one scan in two folders, each a part of it): put its files in one folder, or name the "
                            "folder above them as one case in a study spreadsheet (path column)";
  EXPECT_EQ(cases[1].problem, split);
  EXPECT_EQ(cases[2].problem, split);
  ASSERT_EQ(left_out.size(), 2u);
  EXPECT_EQ(left_out[0].path, dir / "cd/VIEWER/bin");
  EXPECT_EQ(left_out[0].reason, "no scan in it: a folder of a CD or export beside its DICOMDIR (a viewer, documents)");
  EXPECT_EQ(left_out[1].path, dir / "export/SE2_resent");
  EXPECT_EQ(left_out[1].reason, "a second copy of the series in " + (dir / "export/SE2").string() +
                                    " (images with the same SOPInstanceUIDs)");
  // Two copies with as many images, the first found with a truncated file: the intact one is
  // kept, whichever comes first (the first was kept, and failed).
  fs::create_directories(dir / "copies");
  fs::copy(ge, dir / "copies/A_damaged");
  fs::copy(ge, dir / "copies/B_intact");
  fs::resize_file(dir / "copies/A_damaged/10.dcm", fs::file_size(ge / "10.dcm") - 10000);
  std::vector<LeftOut> copies_left;
  const std::vector<CaseInput> copies = expand_inputs({dir / "copies/A_damaged", dir / "copies/B_intact"}, &copies_left);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].path, dir / "copies/B_intact");
  ASSERT_EQ(copies_left.size(), 1u);
  EXPECT_EQ(copies_left[0].path, dir / "copies/A_damaged");
  // The remedy the message gives: the folder above the parts, as one case, is read whole.
  std::ofstream(dir / "sheet.csv") << "path,case_id\n" << (dir / "cd/DICOM").string() << ",P1\n";
  const std::vector<CaseInput> sheet = expand_inputs({dir / "sheet.csv"});
  ASSERT_EQ(sheet.size(), 1u);
  EXPECT_EQ(sheet[0].problem, "");
  EXPECT_EQ(read_volume(sheet[0].path).info.source_slices, 28);
}

TEST(Inputs, FolderSearchLeavesOutMasksAndHemexpOutputs) {
  ScratchDir dir;
  Geometry g;
  g.size = {6, 5, 4};
  const torch::Tensor hu = torch::full({4, 5, 6}, 40, torch::kInt16), codes = torch::ones({4, 5, 6}, torch::kUInt8);
  for (const char* d : {"p1", "p2", "labelsTr", "old_run/cases/a", "old_run/pairs/p", "old_run/scans", "shard_run/cases/a", "other_tool",
                        "out/cases/a", "out/slurm", "empty_out"})
    fs::create_directories(dir / "cohort" / d);
  write_image_file(dir / "cohort/p1/ct.nii.gz", hu, g);
  write_image_file(dir / "cohort/p1/mask.nii.gz", codes, g);
  write_image_file(dir / "cohort/p1/labels.mha", codes, g);
  write_image_file(dir / "cohort/p2/ct.nrrd", hu, g);
  // NIfTI-1 header: datatype (int16) at byte 70, scl_slope and scl_inter (float) at 112 and 116.
  const auto patched = [&](const std::string& name, int16_t datatype, float slope, float inter) {
    write_image_file(dir / "cohort/p2" / name, codes, g);
    std::string bytes = read_text_file(dir / "cohort/p2" / name);
    std::memcpy(&bytes[70], &datatype, 2);
    std::memcpy(&bytes[112], &slope, 4);
    std::memcpy(&bytes[116], &inter, 4);
    std::ofstream(dir / "cohort/p2" / name, std::ios::binary) << bytes;
  };
  patched("scaled.nii", 2, 16.0f, -1024.0f);                       // uint8 scaled: may be a CT
  patched("int8.nii", 256, 1.0f, 0.0f);                            // int8 codes
  patched("nan.nii", 2, std::nanf(""), std::nanf(""));             // nibabel's unscaled uint8
  write_image_file(dir / "cohort/labelsTr/p1.nii.gz", codes, g);
  std::ofstream(dir / "cohort/old_run/run.json") << R"({"argv": ["hemexp", "run"], "tool": "hemexp"})";
  write_image_file(dir / "cohort/old_run/cases/a/ct.nii.gz", hu, g);  // a corrected CT it wrote
  write_image_file(dir / "cohort/old_run/scans/ct.nii.gz", hu, g);    // a scan kept beside it
  std::ofstream(dir / "cohort/old_run/pairs/p/expansion.json") << "{}";  // `expansion`: no volume in it
  std::ofstream(dir / "cohort/shard_run/run-2-of-4.json") << R"({"tool": "hemexp"})";
  write_image_file(dir / "cohort/shard_run/cases/a/probability.nii.gz", hu.to(torch::kFloat32), g);
  std::ofstream(dir / "cohort/other_tool/run.json") << R"({"tool": "other"})";
  write_image_file(dir / "cohort/other_tool/ct.nii.gz", hu, g);
  write_image_file(dir / "cohort/out/cases/a/ct.nii.gz", hu, g);  // this run's, when resumed
  std::ofstream(dir / "cohort/out/slurm/shard-1.out") << "log\n";  // scripts/slurm_array.sh's job logs

  const auto ids_of = [](const std::vector<CaseInput>& cases) {
    std::vector<std::string> ids;
    for (const CaseInput& c : cases) ids.push_back(c.id);
    return ids;
  };
  std::vector<LeftOut> left_out;
  EXPECT_EQ(ids_of(expand_inputs({dir / "cohort"}, &left_out, dir / "cohort/out")),
            (std::vector<std::string>{"cohort_empty_out", "cohort_old_run_scans_ct", "cohort_other_tool_ct", "cohort_p1_ct",
                                      "cohort_p2_ct", "cohort_p2_scaled"}));  // empty_out: an empty folder, failed
  const std::string codes_reason = "8-bit codes (a mask or label map): a CT in Hounsfield units needs more than 256 values";
  std::vector<std::pair<std::string, std::string>> got;  // in path order
  for (const LeftOut& l : left_out) got.emplace_back(l.path.lexically_relative(dir.path()).generic_string(), l.reason);
  EXPECT_EQ(got, (std::vector<std::pair<std::string, std::string>>{
                     {"cohort/labelsTr/p1.nii.gz", codes_reason},
                     {"cohort/old_run/cases", "outputs of an earlier hemexp run (run.json beside them), not scans"},
                     {"cohort/old_run/pairs", "outputs of an earlier hemexp run (run.json beside them), not scans"},
                     {"cohort/out/cases", "outputs of this run's output folder, not scans"},
                     {"cohort/out/slurm", "outputs of this run's output folder, not scans"},
                     {"cohort/p1/labels.mha", codes_reason},
                     {"cohort/p1/mask.nii.gz", codes_reason},
                     {"cohort/p2/int8.nii", codes_reason},
                     {"cohort/p2/nan.nii", codes_reason},
                     {"cohort/shard_run/cases", "outputs of an earlier hemexp run (run-2-of-4.json beside them), not scans"}}));
  // An empty output folder (a first run) is not a failed case; any other empty folder is.
  fs::remove_all(dir / "cohort/out");
  fs::create_directories(dir / "cohort/out");
  const std::vector<std::string> first_run = ids_of(expand_inputs({dir / "cohort"}, nullptr, dir / "cohort/out"));
  EXPECT_EQ(std::count(first_run.begin(), first_run.end(), "cohort_out"), 0);
  EXPECT_EQ(std::count(first_run.begin(), first_run.end(), "cohort_empty_out"), 1);
  // Named directly or in a list, a mask is read (and fails there with the reader's reason).
  std::ofstream(dir / "list.txt") << "cohort/p1/labels.mha\n";
  left_out.clear();
  EXPECT_EQ(expand_inputs({dir / "cohort/p1/mask.nii.gz", dir / "list.txt"}, &left_out).size(), 2u);
  EXPECT_TRUE(left_out.empty());
}

}  // namespace
}  // namespace hemexp
