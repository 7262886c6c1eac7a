#include "hemexp/io/inputs.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "hemexp/io/dicom.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

bool is_list_file(const fs::path& p) {
  const std::string ext = lower(p.extension().string());
  return ext == ".txt" || ext == ".csv" || ext == ".lst";
}

struct Found {
  fs::path path;
  fs::path relative;  // names the case
  std::string given_id;  // a list's case_id column
  std::vector<std::pair<std::string, std::string>> extra;  // a list's other columns
  std::string problem;  // why this entry cannot be a case (CaseInput::problem)
};

// What a folder search leaves out (expand_inputs): where to note it, and the run's own output
// folder (canonical; empty: none).
struct LeaveOut {
  std::vector<LeftOut>* left_out = nullptr;
  fs::path output_folder;
  std::set<fs::path> same_named_roots;  // names of folders given to search that more than one has
  void note(const fs::path& path, const std::string& reason) const {
    if (left_out) left_out->push_back({path, reason});
  }
};

// The subfolders in which hemexp writes a case's or a pair's files: `run` and `check` write
// cases/<id>/ (masks, label maps, probability maps, corrected CTs), `expansion` also pairs/<id>/,
// and scripts/slurm_array.sh puts the job array's logs in slurm/ (text only: it would be a
// failed case, "no scan in it", in every shard of a run whose OUTDIR is inside its input).
bool is_outputs_subfolder(const fs::path& name) { return name == "cases" || name == "pairs" || name == "slurm"; }

// Why a folder's output subfolders (is_outputs_subfolder) hold hemexp's outputs, not scans: the folder is
// this run's output folder, or it holds an earlier run's run.json (a shard's run-K-of-N.json)
// that names hemexp as its tool. "" otherwise.
std::string run_folder_reason(const fs::path& canonical, const std::vector<fs::path>& entries, const LeaveOut& leave) {
  if (!leave.output_folder.empty() && canonical == leave.output_folder)
    return "outputs of this run's output folder, not scans";
  for (const fs::path& e : entries) {
    const std::string name = e.filename().string();
    const bool shard = name.rfind("run-", 0) == 0 && name.find("-of-") != std::string::npos;
    if (!ends_with(name, ".json") || !(name == "run.json" || shard)) continue;
    std::error_code ec;
    // A run's record is a few hundred kB at most (argv of a long list); anything else is not one.
    if (!fs::is_regular_file(e, ec) || fs::file_size(e, ec) > (16u << 20) || ec) continue;
    try {
      const nlohmann::json run = nlohmann::json::parse(read_text_file(e));
      if (run.is_object() && run.contains("tool") && run["tool"] == "hemexp")
        return "outputs of an earlier hemexp run (" + name + " beside them), not scans";
    } catch (const std::exception&) {  // not hemexp's, or unreadable: search the folder as usual
    }
  }
  return "";
}

// Every folder under root (root included) that directly holds DICOM files is a case, and every
// volume file; a folder without subfolders that yields nothing (empty, or no image in it) is a
// case too, so that it shows up as a failed row rather than silently vanishing (not when what it
// held was left out, nor the run's own output folder). Hidden entries are skipped, and what
// `leave` names is left out (expand_inputs). A symbolic link to a folder already searched (a
// loop, or a second path to the same folder) is a case with a problem, not a second copy of its
// scans. Never throws on an unreadable entry: what cannot be listed is reported as a case of its
// own.
void walk_folder(const fs::path& root, std::vector<Found>& out, const LeaveOut& leave) {
  // Cases are named from the folder's own name down, or from its parent's where another folder
  // searched has the same name (`-i siteA/scans siteB/scans`: siteA_scans_P1, siteB_scans_P1).
  const fs::path from = leave.same_named_roots.count(root.filename()) ? root.parent_path().parent_path() : root.parent_path();
  const fs::path base = from.empty() ? fs::path(".") : from;
  const auto relative = [&](const fs::path& p) { return p.lexically_relative(base); };
  std::error_code ec;
  std::map<fs::path, fs::path> seen;  // canonical folder -> the path it was first found by
  std::vector<fs::path> pending{root};
  seen[fs::weakly_canonical(root, ec)] = root;
  std::map<fs::path, fs::path> canonical_of{{root, fs::weakly_canonical(root, ec)}};
  std::set<fs::path> on_cd;  // folders at or below one that holds a DICOMDIR (a CD or export)
  std::vector<Found> found;
  while (!pending.empty()) {
    const fs::path folder = pending.back();
    pending.pop_back();
    std::vector<fs::path> entries;
    for (fs::directory_iterator it(folder, fs::directory_options::skip_permission_denied, ec), end; !ec && it != end;
         it.increment(ec))
      if (it->path().filename().string()[0] != '.') entries.push_back(it->path());
    if (ec) {
      found.push_back({folder, relative(folder), "", {}, "folder cannot be listed: " + ec.message()});
      continue;
    }
    std::sort(entries.begin(), entries.end());
    const std::string outputs = run_folder_reason(canonical_of[folder], entries, leave);
    if (std::any_of(entries.begin(), entries.end(), [](const fs::path& e) { return upper(e.filename().string()) == "DICOMDIR"; }))
      on_cd.insert(folder);
    bool has_dicom = false, has_subfolder = false, left_out_here = !outputs.empty();
    const size_t before = found.size();
    for (const fs::path& e : entries) {
      std::error_code e_ec;
      const bool link = fs::is_symlink(e, e_ec);
      const fs::file_status st = fs::status(e, e_ec);  // follows links
      if (e_ec) {
        if (link) found.push_back({e, relative(e), "", {}, "symbolic link that cannot be followed (a loop or a missing target)"});
        continue;
      }
      if (fs::is_directory(st)) {
        has_subfolder = true;
        if (!outputs.empty() && is_outputs_subfolder(e.filename())) {
          leave.note(e, outputs);
          continue;
        }
        const fs::path canonical = fs::canonical(e, e_ec);
        if (e_ec) {
          found.push_back({e, relative(e), "", {}, "folder cannot be resolved: " + e_ec.message()});
        } else if (const auto it = seen.find(canonical); it != seen.end()) {
          found.push_back({e, relative(e), "", {}, "symbolic link to a folder already searched (" +
                                                       it->second.string() + "): a loop or a second path to the same scans"});
        } else {
          seen[canonical] = e;
          canonical_of[e] = canonical;
          if (on_cd.count(folder)) on_cd.insert(e);
          pending.push_back(e);
        }
      } else if (fs::is_regular_file(st)) {
        if (is_volume_file(e)) {
          if (const std::string why = codes_not_ct_reason(e); why.empty()) {
            found.push_back({e, relative(e)});
          } else {
            leave.note(e, why);
            left_out_here = true;
          }
        } else if (!has_dicom && !is_list_file(e) && looks_like_dicom(e)) {
          has_dicom = true;
        }
      }
    }
    if (has_dicom) found.push_back({folder, relative(folder)});
    if (!has_dicom && !has_subfolder && !left_out_here && found.size() == before) {
      // On a CD (a DICOMDIR above), folders without scans are its viewer, help and documents.
      // Only a folder of files none of which is named or made like DICOM: an empty one, or one of
      // damaged .dcm files, is still a failed case.
      const bool clutter = on_cd.count(folder) && !entries.empty() &&
                           std::none_of(entries.begin(), entries.end(), [](const fs::path& e) { return has_dicom_extension(e); });
      if (clutter) leave.note(folder, "no scan in it: a folder of a CD or export beside its DICOMDIR (a viewer, documents)");
      else found.push_back({folder, relative(folder)});
    }
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.path < b.path; });
  out.insert(out.end(), found.begin(), found.end());
}

// A folder's path without a trailing separator: `-i cohort/` names its cases as `-i cohort` does
// (the separator made the folder its own parent, and a single scan folder's case "case").
fs::path folder_path(const fs::path& folder) {
  fs::path p = folder.lexically_normal();
  if (p.filename().empty() && p.has_relative_path()) p = p.parent_path();
  return p;
}

// The names a one-column list's header gives its column.
bool is_header_word(const std::string& entry) {
  static const std::set<std::string> words{"path",  "paths", "file",   "files", "filename", "filepath", "scan",
                                           "scans", "image", "images", "input", "inputs",   "ct",       "folder",
                                           "series", "nifti", "dicom",  "volume"};
  return words.count(lower(trim(entry))) > 0;
}

void expand_one(const fs::path& input, std::vector<Found>& out, const LeaveOut& leave) {
  if (!fs::exists(input)) throw IoError("input " + input.string() + " does not exist");
  if (fs::is_directory(input)) {
    walk_folder(folder_path(input), out, leave);
  } else if (is_list_file(input)) {
    CsvTable table;
    try {
      table = parse_csv(read_text_file(input));
    } catch (const CoreError& e) {
      throw IoError("list " + input.string() + ": " + e.what());
    }
    // A list with a `path` column in its header: that column, an optional case_id, and every
    // other column carried through. Otherwise: the first column of every line.
    const auto column = [&](const std::string& name) {
      for (size_t c = 0; c < table.header.size(); ++c)
        if (lower(trim(table.header[c])) == name) return int(c);
      return -1;
    };
    const int path_col = column("path"), id_col = path_col >= 0 ? column("case_id") : -1;
    // A column named twice ("notes", "notes") keeps both: the second as notes_2 (one name in
    // results.csv held only one of them, the other lost without a word).
    std::vector<std::string> names;
    for (const std::string& h : table.header) {
      std::string name = trim(h);
      for (int k = 2; std::find(names.begin(), names.end(), name) != names.end(); ++k) name = trim(h) + "_" + std::to_string(k);
      names.push_back(name);
    }
    std::vector<std::vector<std::string>> lines;
    if (path_col < 0) lines.push_back(table.header);
    lines.insert(lines.end(), table.rows.begin(), table.rows.end());
    bool first = path_col < 0;
    for (size_t n = 0; n < lines.size(); ++n) {
      const std::vector<std::string>& line = lines[n];
      const size_t at = size_t(std::max(path_col, 0));
      const std::string entry = line.size() > at ? trim(line[at]) : std::string();
      const bool header = first;
      first = false;
      if (entry.empty() || entry[0] == '#') continue;
      fs::path p = fs::path(entry).is_absolute() ? fs::path(entry) : input.parent_path() / entry;
      // A one-column list's header names its column ("file", "scan"), not a file. Only such
      // words: any other first line that is not there is a missing scan (a failed row), not a
      // header to drop silently.
      if (header && !fs::exists(p) && is_header_word(entry)) continue;
      Found f{p, fs::path(entry).filename(), "", {}, ""};
      if (path_col >= 0) {
        for (size_t c = 0; c < table.header.size(); ++c) {
          const std::string value = c < line.size() ? trim(line[c]) : std::string();
          if (int(c) == id_col) f.given_id = value;
          else if (int(c) != path_col) f.extra.emplace_back(names[c], value);
        }
        if (!f.given_id.empty() && case_id_from_path(f.given_id) != f.given_id)
          throw IoError("list " + input.string() + " row " + std::to_string(n + 2) + ": case_id '" + f.given_id +
                        "' may hold only letters, digits, '.', '_' and '-', may not start with '.', '_' or '-', and "
                        "is at most " + std::to_string(kMaxCaseIdLength) + " characters");
      }
      // A missing path is that case's failure, not the cohort's.
      if (!fs::exists(p)) f.problem = "list " + input.filename().string() + " names " + entry + ", which does not exist";
      else if (is_list_file(p)) f.problem = "is a list file; lists inside lists are not followed";
      if (f.problem.empty() && fs::is_directory(p) && f.given_id.empty() && f.extra.empty()) {
        walk_folder(folder_path(p), out, leave);
      } else {
        // A file, a missing path, a list (not followed inside a list), or a folder given with
        // its own id and columns: one case.
        out.push_back(f);
      }
    }
  } else {
    out.push_back({input, input.filename()});
  }
}

}  // namespace

namespace {

// case_id_from_path, and whether the id is the path's own name (only '/' made '_' and the
// extension dropped) rather than a changed one.
std::pair<std::string, bool> case_id_and_exact(const fs::path& relative) {
  std::string name = relative.generic_string();
  for (const std::string ext : {".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm"}) {
    if (name.size() > ext.size() && lower(name.substr(name.size() - ext.size())) == ext) {
      name.resize(name.size() - ext.size());
      break;
    }
  }
  std::string id;
  bool exact = true;
  for (char c : name) {
    if (c == '/') id += '_';
    else if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') id += c;
    else id += '-', exact = false;
  }
  // Not '.' or '..', nor a hidden name; not '-' either, which a spreadsheet reads as a formula
  // ("-1-2" from "=1+2.nii.gz" shows as -3) and a command line as an option.
  while (!id.empty() && (id.front() == '.' || id.front() == '_' || id.front() == '-')) id.erase(id.begin()), exact = false;
  // A deep path would make a name the file system refuses (255 bytes): shortened, with a
  // digest of the whole so that two long paths stay two ids.
  if (id.size() > kMaxCaseIdLength) {
    id = id.substr(0, kMaxCaseIdLength - 9) + "-" + sha256_hex(id).substr(0, 8);
    exact = false;
  }
  if (id.empty()) return {"case", false};
  return {id, exact};
}

}  // namespace

std::string case_id_from_path(const fs::path& relative) { return case_id_and_exact(relative).first; }

std::vector<std::string> unique_case_ids(const std::vector<fs::path>& relatives, std::set<std::string> taken) {
  std::vector<std::pair<std::string, bool>> safe;
  std::map<std::string, std::set<std::string>> names, exact_names;  // id -> the names it comes from
  for (const fs::path& r : relatives) {
    safe.push_back(case_id_and_exact(r));
    names[safe.back().first].insert(r.generic_string());
    if (safe.back().second) exact_names[safe.back().first].insert(r.generic_string());
  }
  std::vector<std::string> ids;
  for (size_t i = 0; i < relatives.size(); ++i) {
    auto [base, exact] = safe[i];
    // Names that the safe form makes equal: each changed one gets a digest of the name as
    // written, and so do names that need no change but still meet ("a/b" and "a_b", "P1.nii"
    // and "P1.mha"), so that no id passes from one scan to another as the cohort grows.
    if (names[base].size() > 1 && (!exact || exact_names[base].size() > 1)) {
      const std::string digest = "-" + sha256_hex(relatives[i].generic_string()).substr(0, 8);
      base = base.substr(0, std::min(base.size(), kMaxCaseIdLength - digest.size())) + digest;
    }
    std::string id = base;  // the very same name twice (two lists' roots): in input order
    for (int k = 2; taken.count(id); ++k) id = base + "-" + std::to_string(k);
    taken.insert(id);
    ids.push_back(id);
  }
  return ids;
}

std::vector<CaseInput> expand_inputs(const std::vector<fs::path>& inputs, std::vector<LeftOut>* left_out,
                                     const fs::path& output_folder) {
  std::error_code ec;
  LeaveOut leave{left_out, output_folder.empty() ? fs::path() : fs::weakly_canonical(output_folder, ec)};
  std::map<fs::path, int> roots_named;
  for (const fs::path& input : inputs)
    if (fs::is_directory(input, ec)) ++roots_named[folder_path(input).filename()];
  for (const auto& [name, n] : roots_named)
    if (n > 1) leave.same_named_roots.insert(name);
  std::vector<Found> all;
  const size_t left_before = left_out ? left_out->size() : 0;
  for (const fs::path& input : inputs) expand_one(input, all, leave);
  // The same scan reached twice (named twice, through a link, or named and found in a folder
  // searched) is one case: the first; the others are left out, named. A list row with its own
  // id or columns is kept as the researcher wrote it.
  std::vector<Found> found;
  std::map<fs::path, fs::path> first_by_file;
  for (Found& f : all) {
    if (f.problem.empty() && f.given_id.empty() && f.extra.empty()) {
      std::error_code e;
      const fs::path canonical = fs::weakly_canonical(f.path, e);
      if (!e) {
        const auto [it, is_new] = first_by_file.emplace(canonical, f.path);
        if (!is_new) {
          leave.note(f.path, "the same scan as " + it->second.string() + ", named or found twice");
          continue;
        }
      }
    }
    found.push_back(std::move(f));
  }
  // One DICOM series in two folders: a second copy of it (images with the same SOPInstanceUIDs)
  // is left out, the folder with more images kept; parts of one series split across folders (a
  // CD writer's folders of so many files) would be measured as half heads each: both fail,
  // named. Each folder is known by the first DICOM file it holds; two that share a series are
  // compared image by image.
  {
    // A folder's files (not hidden) and the header of the first DICOM file among them.
    struct Folder {
      size_t files = 0;
      std::optional<DicomHeader> first;
    };
    const auto look = [](const fs::path& folder) {
      Folder out;
      std::error_code e;
      std::vector<fs::path> files;
      for (fs::directory_iterator it(folder, e), end; !e && it != end; it.increment(e))
        if (it->path().filename().string()[0] != '.' && it->is_regular_file(e)) files.push_back(it->path());
      std::sort(files.begin(), files.end());
      out.files = files.size();
      for (const fs::path& file : files)
        if (!is_volume_file(file) && !is_list_file(file) && looks_like_dicom(file)) {
          try {
            out.first = read_dicom_header(file);
          } catch (const std::exception&) {  // the reader says what is wrong with it
          }
          break;
        }
      return out;
    };
    std::map<std::string, std::pair<size_t, Folder>> by_series;  // series UID -> index in `found`, its folder
    std::vector<bool> drop(found.size(), false);
    for (size_t i = 0; i < found.size(); ++i) {
      Found& f = found[i];
      std::error_code e;
      if (!f.problem.empty() || !fs::is_directory(f.path, e)) continue;
      Folder here = look(f.path);
      // A folder of one or two files is no scan of its own, whatever it shares (it fails as it is).
      if (!here.first || here.first->series_uid.empty() || here.files < 3) continue;
      const std::string series = here.first->series_uid;
      const auto [it, is_new] = by_series.try_emplace(series, i, here);
      if (is_new) continue;
      auto& [at, there] = it->second;
      // Rare: the two folders' images compared whole. Shared images make a copy (a resend, an
      // export named another way); none shared, parts of one series.
      // The series' images in a folder, and the bytes of their files (a copy with a truncated
      // image holds fewer; other files in the folder do not count).
      struct Images {
        std::set<std::string> uids;
        uintmax_t bytes = 0;
      };
      const auto images = [&series](const fs::path& folder) {
        Images out;
        try {
          for (const DicomHeader& h : read_folder_headers(folder))
            if (h.series_uid == series && !h.sop_instance_uid.empty()) {
              std::error_code size_error;
              const uintmax_t size = fs::file_size(h.path, size_error);
              if (out.uids.insert(h.sop_instance_uid).second && !size_error) out.bytes += size;
            }
        } catch (const std::exception&) {  // the reader says what is wrong with the folder
        }
        return out;
      };
      const Images here_series = images(f.path), there_series = images(found[at].path);
      const std::set<std::string>& here_images = here_series.uids;
      const std::set<std::string>& there_images = there_series.uids;
      const bool shared = std::any_of(here_images.begin(), here_images.end(),
                                      [&](const std::string& u) { return there_images.count(u) > 0; });
      if (shared) {
        // A list row with its own id or columns is kept as the researcher wrote it (as for the
        // same scan named twice).
        const auto own = [](const Found& x) { return !x.given_id.empty() || !x.extra.empty(); };
        if (own(f) || own(found[at])) continue;
        // A copy: the folder with more images is kept (a complete resend after a partial one);
        // with as many, the one with more bytes (a copy with a truncated file loses), then the
        // first found.
        const bool keep_here = here_images.size() > there_images.size() ||
                               (here_images.size() == there_images.size() && here_series.bytes > there_series.bytes);
        const size_t gone = keep_here ? at : i;
        leave.note(found[gone].path, "a second copy of the series in " + found[keep_here ? i : at].path.string() +
                                         " (images with the same SOPInstanceUIDs)");
        drop[gone] = true;
        if (keep_here) at = i, there = std::move(here);
      } else {
        const std::string why = "series " + series + " is split between " + found[at].path.string() + " and " +
                                f.path.string() + " (one scan in two folders, each a part of it): put its files in one "
                                "folder, or name the folder above them as one case in a study spreadsheet (path column)";
        f.problem = why;
        if (found[at].problem.empty()) found[at].problem = why;
      }
    }
    std::vector<Found> kept;
    for (size_t i = 0; i < found.size(); ++i)
      if (!drop[i]) kept.push_back(std::move(found[i]));
    found = std::move(kept);
  }
  if (left_out)  // in path order, as the cases are
    std::stable_sort(left_out->begin() + std::ptrdiff_t(left_before), left_out->end(),
                     [](const LeftOut& a, const LeftOut& b) { return a.path < b.path; });
  // Files given by name (on the command line or in a list) that share a name but are
  // different files, as in `p1/ct.nii.gz p2/ct.nii.gz`, are named with their folder too
  // ("p1_ct", "p2_ct") rather than "ct", "ct-2"; with as many folders as tell them apart
  // (siteA/P001/ct.nii.gz and siteB/P001/ct.nii.gz: "siteA_P001_ct", "siteB_P001_ct"), so that
  // no id depends on the order of the list.
  std::map<std::string, std::set<fs::path>> paths_by_name;
  for (const Found& f : found)
    if (!f.relative.has_parent_path()) paths_by_name[case_id_from_path(f.relative)].insert(f.path.lexically_normal());
  std::vector<CaseInput> cases;
  std::set<std::string> used;
  // Ids a list gives are taken as they are: first, so that no derived id takes one of them.
  for (const Found& f : found)
    if (!f.given_id.empty() && !used.insert(f.given_id).second)
      throw IoError("case_id '" + f.given_id + "' is given to more than one scan");
  // The folders above a path, nearest first.
  const auto folders_above = [](const fs::path& p) {
    std::vector<fs::path> out;
    for (fs::path d = fs::absolute(p).lexically_normal().parent_path(); !d.filename().empty(); d = d.parent_path())
      out.push_back(d.filename());
    return out;
  };
  std::map<std::string, size_t> folders_needed;  // per shared name: how many folders tell its paths apart
  for (const auto& [name, paths] : paths_by_name) {
    if (paths.size() < 2) continue;
    size_t depth = 1;
    for (;; ++depth) {
      std::set<std::vector<fs::path>> seen;
      size_t longest = 0;
      for (const fs::path& p : paths) {
        std::vector<fs::path> above = folders_above(p);
        longest = std::max(longest, above.size());
        above.resize(std::min(above.size(), depth));
        seen.insert(above);
      }
      if (seen.size() == paths.size() || depth >= longest) break;
    }
    folders_needed[name] = depth;
  }
  std::vector<fs::path> relatives;  // of the entries whose id is derived from their path
  for (size_t i = 0; i < found.size(); ++i) {
    const Found& f = found[i];
    if (!f.given_id.empty()) continue;
    fs::path relative = f.relative;
    if (const auto it = folders_needed.find(case_id_from_path(relative)); !relative.has_parent_path() && it != folders_needed.end()) {
      const std::vector<fs::path> above = folders_above(f.path);
      for (size_t d = 0; d < std::min(it->second, above.size()); ++d) relative = above[d] / relative;
    }
    relatives.push_back(relative);
  }
  const std::vector<std::string> ids = unique_case_ids(relatives, used);
  for (size_t i = 0, d = 0; i < found.size(); ++i) {
    const Found& f = found[i];
    cases.push_back({f.given_id.empty() ? ids[d++] : f.given_id, f.path, {}, f.extra, f.problem});
  }
  return cases;
}

std::string scan_folder_name(const fs::path& input) {
  const fs::path p = folder_path(input);  // "P001/"
  std::error_code ec;
  return (fs::is_directory(p, ec) ? p : p.parent_path()).filename().string();
}

std::vector<StudyScan> describe_study_scans(const fs::path& folder, std::vector<LeftOut>* left_out,
                                            const fs::path& output_folder) {
  std::vector<StudyScan> scans;
  for (const CaseInput& c : expand_inputs({folder}, left_out, output_folder)) {
    StudyScan s;
    s.input = c;
    if (!c.problem.empty()) {
      s.problem = c.problem;  // a split series, a list row that does not exist, ...
    } else if (!fs::is_directory(c.path)) {
      s.problem = "not DICOM: no PatientID or acquisition date to pair it by";
    } else {
      try {
        const SeriesChoice choice = choose_series(read_folder_headers(c.path), "");
        const DicomHeader& first = choice.files.front();
        s.patient_id = first.patient_id;
        s.study_uid = first.study_uid;
        s.series_uid = choice.series_uid;
        s.images = int64_t(choice.files.size());
        if (const DicomHeader* stamped = earliest_stamp(choice.files)) {
          s.datetime = stamped->datetime;
          s.datetime_source = stamped->datetime_source;
        }
        if (s.patient_id.empty()) s.problem = "no PatientID";
        else if (s.datetime.empty()) s.problem = "no usable acquisition, series or study date and time";
      } catch (const std::exception& e) {
        s.problem = e.what();
        // A flat folder of several studies: --pairs-from pairs studies that have their own folders.
        const std::string advice = " (hemexp expansion --pairs-from pairs a patient's studies by date)";
        if (const size_t at = s.problem.find(advice); at != std::string::npos)
          s.problem.replace(at, advice.size(), "; --pairs-from pairs a patient's studies when each is in its own folder");
      }
    }
    scans.push_back(std::move(s));
  }
  // A study whose series lie in several folders: one choice among all of them, as in one folder.
  std::map<std::pair<std::string, std::string>, std::vector<StudyScan*>> studies;
  for (StudyScan& s : scans)
    if (s.problem.empty() && !s.study_uid.empty()) studies[{s.patient_id, s.study_uid}].push_back(&s);
  for (auto& [key, group] : studies) {
    if (group.size() < 2) continue;
    std::vector<DicomHeader> headers;
    SeriesChoice choice;
    try {
      for (const StudyScan* s : group)
        for (DicomHeader& h : read_folder_headers(s->input.path))
          if (h.study_uid == key.second) headers.push_back(std::move(h));
      choice = choose_series(headers, "");
    } catch (const std::exception&) {
      continue;  // each folder's own choice stands (pair_study_scans keeps the larger)
    }
    const StudyScan* kept = nullptr;
    for (const StudyScan* s : group)
      if (s->series_uid == choice.series_uid) {
        kept = s;
        break;
      }
    if (!kept) continue;
    for (StudyScan* s : group) {
      if (s == kept) continue;
      const auto why = choice.skipped.find(s->series_uid);
      s->other_series_of_study = true;
      s->problem = s->input.path.string() + " is another series of the study of " + kept->input.path.string() + " (" +
                   (s->series_uid == kept->series_uid ? "the same series: a part or a copy of it"
                    : why != choice.skipped.end() ? why->second
                                                  : "not chosen") +
                   "): not used";
    }
  }
  return scans;
}

std::string input_fingerprint(const fs::path& path) {
  std::vector<fs::path> files;
  fs::path base;  // files are recorded by their path below it
  std::error_code ec;
  if (fs::is_directory(path, ec) || (!is_volume_file(path) && looks_like_dicom(path))) {
    // A DICOM file stands for its series, read from the files beside it.
    const fs::path folder = fs::is_directory(path, ec) ? path : path.parent_path();
    for (const auto& e : fs::directory_iterator(folder, ec))
      if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
    if (ec) throw IoError("cannot list " + folder.string() + ": " + ec.message());
    // A folder with no DICOM file of its own is read through its series folders (reader): those
    // too (a DICOMDIR, a README or Thumbs.db at the top change nothing of what is read).
    const bool own_dicom = std::any_of(files.begin(), files.end(), [](const fs::path& f) {
      return has_dicom_extension(f) || looks_like_dicom(f);
    });
    if (!own_dicom && fs::is_directory(path, ec))
      for (const fs::path& below : folders_below(folder))
        for (const auto& e : fs::directory_iterator(below, ec))
          if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
    base = folder;
  } else {
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  std::string record;
  std::vector<char> head(4096);
  for (const fs::path& f : files) {
    const auto size = fs::file_size(f, ec);
    const auto time = fs::last_write_time(f, ec);
    if (ec) throw IoError("cannot read " + f.string() + ": " + ec.message());
    std::ifstream in(f, std::ios::binary);
    in.read(head.data(), std::streamsize(head.size()));
    record += (base.empty() ? f.filename() : f.lexically_relative(base)).generic_string() + '\0' + std::to_string(size) + '\0' +
              std::to_string(time.time_since_epoch().count()) + '\0' +
              sha256_hex(std::string(head.data(), size_t(in.gcount()))) + '\n';
  }
  return sha256_hex(record);
}

}  // namespace hemexp
