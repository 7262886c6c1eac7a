#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hemexp {

// One case of a run: a volume file, a DICOM file, or a folder of DICOM files.
struct CaseInput {
  std::string id;              // stable, filesystem-safe, unique within the run
  std::filesystem::path path;  // what read_volume() gets
  // What the case's result depends on, set by the cohort runner before the case is analysed
  // and recorded in its result.json: {"input": input_fingerprint(path), "models": role ->
  // sha256, "options": the options that change results}. --resume keeps a result only when
  // this is unchanged.
  nlohmann::json fingerprint;
  // A list's own columns for this scan (all but path and case_id), carried into results.csv.
  std::vector<std::pair<std::string, std::string>> extra;
  // Why this case cannot be read, known before reading it (a list entry that does not exist, a
  // symbolic link loop): the case fails with this reason, the rest of the cohort goes on.
  std::string problem;
  // A mask to use instead of segmenting again: set by --resume when the previous result differs
  // from this run only in the classification model (a new classifier scores the same masks; the
  // segmentation, the slow part, is not redone). Empty: segment.
  std::filesystem::path reuse_mask;
};

// A digest of what a case is read from, cheap enough for every case of a cohort: the name,
// size and modification time (ns) of each file (a volume file; or every file directly in the
// DICOM folder, or in the folder of a DICOM file) and a SHA-256 of its first 4 KiB (headers:
// UIDs, dimensions). Throws IoError when the path cannot be listed.
std::string input_fingerprint(const std::filesystem::path& path);

// What a folder search found and left out, with why (expand_inputs).
struct LeftOut {
  std::filesystem::path path;
  std::string reason;
};

// Expands the -i arguments, in order, into cases:
//  - a NIfTI/MHA/NRRD file or a DICOM file: one case;
//  - a .txt/.csv/.lst list: each line's path (first CSV column; '#' comments and a header
//    line without an existing path are skipped), relative to the list's folder. A path that
//    does not exist is a case with a problem (a failed row); a list named in a list is a case
//    that fails when read (lists are not followed inside lists). A CSV whose
//    header has a `path` column takes the path from it, the case id from an optional
//    `case_id` column (as given: filesystem-safe and unique, else IoError), and carries every
//    other column (CaseInput::extra); a folder named there is one case, not searched;
//  - a folder: every folder at any depth that directly holds DICOM files is one case, and
//    every volume file is one case, in sorted path order; a folder without subfolders that
//    holds neither (empty, or only other files) is a case that fails when read, and a
//    symbolic link to a folder already searched is a case with a problem (walk_folder).
//    A folder search leaves out, into `left_out` with the reason: volume files that hold
//    8-bit codes (codes_not_ct_reason: the masks and label maps kept beside their scans, as
//    in a `hemexp synth` folder or an nnU-Net dataset), and the `cases`, `pairs` and `slurm`
//    subfolders (hemexp's masks, maps, corrected CTs and pair pictures; scripts/slurm_array.sh's
//    job logs) of `output_folder` (the run's own) and of any folder holding a run.json (or a
//    shard's run-K-of-N.json) whose tool is hemexp;
//    the rest of such a folder is searched as usual. A folder whose volume files were all left
//    out, and the output folder, are not failed cases. A file named on the command line or in
//    a list is always a case.
// Case ids come from the path relative to the folder or list it was found through; names the
// safe form makes equal get a digest of the name as written (the name that needed no change
// keeps the plain id), and any clash left a -2, -3 suffix in input order. The same scan reached
// twice (by path, link, or folder search) is one case, the others noted in left_out. Throws IoError for a command-line input that does not
// exist, an unreadable list, and a list's case_id that is unsafe or given twice.
std::vector<CaseInput> expand_inputs(const std::vector<std::filesystem::path>& inputs,
                                     std::vector<LeftOut>* left_out = nullptr,
                                     const std::filesystem::path& output_folder = {});

// A filesystem-safe id from a relative path: separators become '_', other characters
// outside [A-Za-z0-9._-] become '-', volume extensions are dropped, leading '.', '_' and '-' too
// (no id is "." or "..", or reads as a spreadsheet formula), and one longer than kMaxCaseIdLength is cut, with a digest of the whole.
constexpr size_t kMaxCaseIdLength = 120;
std::string case_id_from_path(const std::filesystem::path& relative);

// The ids of scans named by these relative paths (case_id_from_path), unique and not in `taken`:
// names that the safe form makes equal each get a digest of the name as written ("M--ller-3f0a9c1e"
// for "Müller" beside "Møller"; "a/b" beside "a_b" both), except one name that needed no change
// among changed ones; the very same name twice gets -2, -3 in order. An id never passes to
// another scan as scans are added.
std::vector<std::string> unique_case_ids(const std::vector<std::filesystem::path>& relatives,
                                         std::set<std::string> taken = {});

// The name of the folder that holds a scan, as labels keyed by patient folder name it: a DICOM
// folder's own name ("P001" for P001/ and P001), a file's folder ("P001" for P001/ct.nii.gz).
std::string scan_folder_name(const std::filesystem::path& input);

// One scan of a study folder, described for pairing a patient's scans by date.
struct StudyScan {
  CaseInput input;             // as expand_inputs finds it
  std::string patient_id;      // DICOM PatientID
  std::string study_uid;       // StudyInstanceUID
  std::string series_uid;      // the series `run` would read (choose_series)
  std::string datetime;        // DicomHeader::datetime of that series (earliest of its files)
  std::string datetime_source;
  int64_t images = 0;
  std::string problem;         // why the scan cannot be paired, "" when it can
  // Another folder of the same study holds the series `run` would choose among the study's
  // series (a PATIENT/STUDY/SERIES export: a bone series beside the soft-tissue one): `problem`
  // says which and why this one is not used.
  bool other_series_of_study = false;
};

// Every case of a folder (expand_inputs, with its `left_out` and `output_folder`) with the
// PatientID, study and date of the series `run` would read from it. A volume file (no
// PatientID, no date) or a folder whose series cannot be chosen gets a problem instead. Where a
// study's series lie in several folders, the series is chosen among all of them as `run` chooses
// within one folder (choose_series), and the other folders are marked other_series_of_study.
std::vector<StudyScan> describe_study_scans(const std::filesystem::path& folder,
                                            std::vector<LeftOut>* left_out = nullptr,
                                            const std::filesystem::path& output_folder = {});

}  // namespace hemexp
