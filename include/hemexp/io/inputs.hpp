#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace hemexp {

// One case of a run: a volume file, a DICOM file, or a folder of DICOM files.
struct CaseInput {
  std::string id;              // stable, filesystem-safe, unique within the run
  std::filesystem::path path;  // what read_volume() gets
};

// Expands the -i arguments, in order, into cases:
//  - a NIfTI/MHA/NRRD file or a DICOM file: one case;
//  - a .txt/.csv/.lst list: each line's path (first CSV column; '#' comments and a header
//    line without an existing path are skipped), relative to the list's folder;
//  - a folder: every folder at any depth that directly holds DICOM files is one case, and
//    every volume file is one case, in sorted path order.
// Case ids come from the path relative to the folder or list it was found through; clashes
// get a -2, -3 suffix in input order. Throws IoError for a list entry that does not exist.
std::vector<CaseInput> expand_inputs(const std::vector<std::filesystem::path>& inputs);

// A filesystem-safe id from a relative path: separators become '_', other characters
// outside [A-Za-z0-9._-] become '-', volume extensions are dropped.
std::string case_id_from_path(const std::filesystem::path& relative);

}  // namespace hemexp
