// Choosing the series of a study folder.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "hemexp/io/dicom.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace {

// Fewer images than this cannot make a volume (the reader refuses under 3 voxels on any axis): a
// key image or a dose sheet stored as CT is not a candidate, and does not make a folder look
// like two studies.
constexpr size_t kMinSeriesImages = 3;

bool is_bone_kernel(const DicomHeader& h) {
  // Vendor names for sharp bone and lung reconstructions: BONE/BONEPLUS/EDGE/LUNG (GE);
  // Siemens sharpness 60 and up, in the older (H60s, B70f, J70h, I70f) and the newer naming
  // (Hr64, Br64, Qr69, Ur77: a second letter before the number), and Siemens lung kernels (Bl57:
  // second letter l); Philips D, E, L, YC to YF; Canon/Toshiba FC30 and up.
  static const std::regex bone(
      R"((BONE|LUNG|SHARP|EDGE|^[HBJQUI][A-Z]?[6-9]\d|^[BHIJQU]L\d\d|^(D|E|L|YC|YD|YE|YF)$|^FC[3-8]\d))");
  // Without a kernel, a series described as bone or lung ("BONE 1.25mm"); a kernel, when there
  // is one, says it ("Brain/Bone 5mm" of kernel STANDARD is soft tissue).
  static const std::regex described(R"(\b(BONE|LUNG)\b)");
  if (trim(h.convolution_kernel).empty()) return std::regex_search(upper(h.series_description), described);
  return std::regex_search(upper(h.convolution_kernel), bone);
}

struct Candidate {
  std::string uid;
  std::vector<DicomHeader> files;
  std::set<std::string> images;  // SOPInstanceUIDs of `files`
  int copies = 0;        // files holding an image already in `files` (same SOPInstanceUID)
  std::string excluded;  // why it cannot be the case's series, "" if it can
  bool overridable = false;  // excluded for a reason --series-uid overrides (not axial)
  bool bone = false, derived = false;
  std::string contrast;  // the ContrastBolusAgent that names an agent, "" for a plain series
};

std::string describe(const Candidate& c) {
  const DicomHeader& h = c.files.front();
  std::ostringstream s;
  s << "series " << h.series_number;
  if (!h.series_description.empty()) s << " '" << h.series_description << "'";
  s << " (" << (h.modality.empty() ? "?" : h.modality) << ", " << c.files.size()
    << (c.files.size() == 1 ? " image" : " images") << ")";
  return s.str();
}

// Why no file of the series can be a CT slice (the first problem met), "" when they all can.
// When only some files have it, the message names one (the first by name) to look at.
std::string slices_problem(const Candidate& c) {
  std::map<std::string, std::pair<int, std::string>> problems;  // problem -> files, first file name
  for (const DicomHeader& h : c.files) {
    const std::string p = slice_problem(h);
    if (p.empty()) continue;
    auto& [count, name] = problems[p];
    const std::string file = h.path.filename().string();
    if (count++ == 0 || file < name) name = file;
  }
  if (problems.empty()) return "";
  const auto& [problem, where] = *problems.begin();
  if (int(c.files.size()) == where.first || c.files.size() == 1) return problem;
  return problem + " (" + std::to_string(where.first) + " of " + std::to_string(c.files.size()) + " images" +
         (where.first == 1 ? ": " : ", the first ") + where.second + ")";
}

// Why the series is not chosen when hemexp chooses (--series-uid still reads it), "" if it can be.
std::string choice_problem(const Candidate& c, bool& overridable) {
  overridable = false;
  if (std::string p = slices_problem(c); !p.empty()) return p;
  if (c.files.size() < kMinSeriesImages)
    return "too few images for a volume (" + std::to_string(c.files.size()) + ")";
  std::set<std::array<long long, 3>> positions;  // to 0.01 mm
  for (const DicomHeader& h : c.files)
    positions.insert({std::llround(h.geometry.position_mm[0] * 100), std::llround(h.geometry.position_mm[1] * 100),
                      std::llround(h.geometry.position_mm[2] * 100)});
  if (positions.size() < c.files.size())
    return std::to_string(c.files.size()) + " images at " + std::to_string(positions.size()) +
           " slice positions (positions imaged more than once: a perfusion or dynamic series, or several "
           "acquisitions under one series UID)";
  const SliceGeometry& g = c.files.front().geometry;
  const Vec3 normal = cross(g.row_direction, g.column_direction);
  if (std::abs(normal[2]) < 0.8 * norm(normal)) {
    overridable = true;
    const double degrees = std::acos(std::min(1.0, std::abs(normal[2]) / norm(normal))) * 180.0 / M_PI;
    return "not axial: its slices are " + format_number(degrees, 0) +
           " degrees from axial (a sagittal, coronal or oblique reformat)";
  }
  return "";
}

// Best first: non-contrast before contrast-enhanced (a value misread as an agent never fails a
// case: it only ranks), ORIGINAL before DERIVED, then most images, then the lower series number
// and UID.
bool better(const Candidate* a, const Candidate* b) {
  if (a->contrast.empty() != b->contrast.empty()) return a->contrast.empty();
  if (a->derived != b->derived) return !a->derived;
  if (a->files.size() != b->files.size()) return a->files.size() > b->files.size();
  if (a->files.front().series_number != b->files.front().series_number)
    return a->files.front().series_number < b->files.front().series_number;
  return a->uid < b->uid;
}

// Why `c` came after `best` in the ranking (better()).
std::string ranked_after(const Candidate& c, const Candidate& best) {
  if (!c.contrast.empty() && best.contrast.empty())
    return "contrast-enhanced (ContrastBolusAgent '" + c.contrast +
           "'), after a non-contrast series: hemexp reads non-contrast CT, where blood is the bright tissue";
  if (c.derived && !best.derived) return "derived images (a reformat or reconstruction), after an original series";
  if (c.files.size() < best.files.size()) return "fewer images";
  return c.files.front().series_number != best.files.front().series_number
             ? "as many images, and a higher series number"
             : "as many images and the same series number, and a later series UID";
}

std::string copies_note(const Candidate& c) {
  return c.copies == 0 ? ""
                       : "; " + std::to_string(c.copies) + (c.copies == 1 ? " file holds" : " files hold") +
                             " an image of it a second time (the same SOPInstanceUID): read once";
}

SeriesChoice choice_of(const Candidate& c, const std::string& explanation) {
  SeriesChoice s;
  s.series_uid = c.uid;
  s.files = c.files;
  s.description = describe(c);
  s.explanation = explanation;
  return s;
}

}  // namespace

bool names_contrast_agent(const std::string& value) {
  // Written for "none": empty, N, NC, C-, 0, dashes, NIL, N/A, PLAIN, NATIVE, and anything that
  // starts with NO, NON, NOT, UN(enhanced), WITHOUT or W/O.
  static const std::regex none(R"(^(|N|NC|C-|0|-+|NIL|N/?A|PLAIN|NATIVE?|(NO|NON|NOT|WITHOUT|W/?O)\b.*|UN.*|NONE.*)$)");
  return !std::regex_match(upper(trim(value)), none);
}

SeriesChoice choose_series(const std::vector<DicomHeader>& headers, const std::string& wanted_uid) {
  if (headers.empty()) throw IoError("no DICOM images found");
  std::map<std::string, Candidate> by_uid;
  std::vector<std::string> order;
  for (const DicomHeader& h : headers) {
    auto [it, inserted] = by_uid.try_emplace(h.series_uid);
    if (inserted) order.push_back(h.series_uid), it->second.uid = h.series_uid;
    // The same image in two files (a series sent twice into one folder) is one image.
    if (!h.sop_instance_uid.empty() && !it->second.images.insert(h.sop_instance_uid).second) {
      ++it->second.copies;
      continue;
    }
    it->second.files.push_back(h);
  }

  if (!wanted_uid.empty()) {
    auto it = by_uid.find(wanted_uid);
    if (it == by_uid.end()) {
      std::string known;
      for (size_t k = 0; k < order.size() && k < 12; ++k)
        known += (k ? "; " : "") + order[k] + " " + describe(by_uid[order[k]]);
      if (order.size() > 12) known += "; ...";
      throw IoError("series UID " + wanted_uid + " is not in this folder (its series: " + known + ")");
    }
    if (const std::string problem = slices_problem(it->second); !problem.empty())
      throw IoError("requested series " + wanted_uid + ": " + problem);
    return choice_of(it->second, "series " + wanted_uid + " requested with --series-uid" + copies_note(it->second));
  }

  std::vector<Candidate*> usable;
  for (const std::string& uid : order) {
    Candidate& c = by_uid[uid];
    c.excluded = choice_problem(c, c.overridable);
    c.bone = is_bone_kernel(c.files.front());
    c.derived = upper(c.files.front().image_type).find("DERIVED") != std::string::npos;
    for (const DicomHeader& h : c.files)
      if (names_contrast_agent(h.contrast_agent)) {
        c.contrast = h.contrast_agent;
        break;
      }
    if (c.excluded.empty()) usable.push_back(&c);
  }
  // Series of more than one patient or study: which one is the case's scan (a baseline and its
  // follow-up, two patients' exports in one folder) is not guessed, whatever their kernels.
  std::map<std::pair<std::string, std::string>, std::vector<const Candidate*>> studies;
  for (const Candidate* c : usable) studies[{c->files.front().patient_id, c->files.front().study_uid}].push_back(c);
  if (studies.size() > 1) {
    struct Study {
      std::string patient, when;
      std::vector<const Candidate*> series;
    };
    std::vector<Study> list;
    std::set<std::string> patients;
    for (const auto& [key, series] : studies) {
      Study s{key.first, "", series};
      for (const Candidate* c : series)
        if (const DicomHeader* stamped = earliest_stamp(c->files); stamped && (s.when.empty() || stamped->datetime < s.when))
          s.when = stamped->datetime;
      patients.insert(key.first);
      list.push_back(std::move(s));
    }
    // By patient, then in time (undated last).
    std::stable_sort(list.begin(), list.end(), [](const Study& a, const Study& b) {
      if (a.patient != b.patient) return a.patient < b.patient;
      return !a.when.empty() && (b.when.empty() || a.when < b.when);
    });
    std::ostringstream s;
    s << "the folder holds CT series of " << studies.size() << " studies";
    if (patients.size() > 1) s << " of " << patients.size() << " patients";
    s << " (";
    for (size_t k = 0; k < list.size(); ++k) {
      s << (k ? "; " : "") << "patient '" << list[k].patient << "' " << (list[k].when.empty() ? "undated" : list[k].when) << ": ";
      for (size_t j = 0; j < list[k].series.size(); ++j)
        s << (j ? ", " : "") << describe(*list[k].series[j]) << " UID " << list[k].series[j]->uid;
    }
    s << "): give each study its own folder, or name the series with --series-uid (hemexp expansion "
         "--pairs-from pairs a patient's studies by date)";
    throw IoError(s.str());
  }
  const bool soft_tissue_exists = std::any_of(usable.begin(), usable.end(), [](const Candidate* c) { return !c->bone; });
  if (soft_tissue_exists)
    for (Candidate* c : usable)
      if (c->bone) c->excluded = "bone or lung kernel" + (c->files.front().convolution_kernel.empty()
                                                              ? std::string(" (described so)")
                                                              : " " + c->files.front().convolution_kernel);
  usable.erase(std::remove_if(usable.begin(), usable.end(),
                              [](const Candidate* c) { return !c->excluded.empty(); }),
               usable.end());

  if (usable.empty()) {
    // What --series-uid overrides (a reformat) says so.
    const std::string hint = "; name a series with --series-uid to read it anyway";
    if (order.size() == 1) {
      const Candidate& only = by_uid[order.front()];
      if (only.overridable) throw IoError(only.excluded + " (" + describe(only) + ", UID " + only.uid + ")" + hint);
      throw IoError(only.excluded);
    }
    std::ostringstream s;
    s << "no axial CT series among " << order.size() << " series:";
    bool overridable = false;
    for (const std::string& uid : order) {
      const Candidate& c = by_uid[uid];
      s << " " << describe(c) << " UID " << uid << ": " << c.excluded << ";";
      overridable = overridable || c.overridable;
    }
    std::string msg = s.str();
    msg.pop_back();
    throw IoError(overridable ? msg + hint : msg);
  }
  std::stable_sort(usable.begin(), usable.end(), better);
  const Candidate& best = *usable.front();
  std::ostringstream why;
  std::map<std::string, std::string> skipped;
  why << "chose " << describe(best);
  if (order.size() > 1) {
    why << " as the axial CT series with the most images";
    if (!best.contrast.empty()) why << " (contrast-enhanced: no non-contrast series)";
    if (best.derived) why << " (derived images: no original series)";
    why << "; skipped";
    for (const std::string& uid : order) {
      if (uid == best.uid) continue;
      const Candidate& c = by_uid[uid];
      skipped[uid] = !c.excluded.empty() ? c.excluded : ranked_after(c, best);
      why << " " << describe(c) << ": " << skipped[uid] << ";";
    }
  } else {
    if (best.derived) why << ": derived images (a reconstruction), the folder's only series";
    if (!best.contrast.empty()) why << (best.derived ? "; " : ": ") << "contrast-enhanced (ContrastBolusAgent '" << best.contrast << "')";
  }
  std::string explanation = why.str();
  if (explanation.back() == ';') explanation.pop_back();
  SeriesChoice choice = choice_of(best, explanation + copies_note(best));
  choice.series_in_folder = order.size();
  choice.skipped = std::move(skipped);
  for (size_t k = 1; k < usable.size(); ++k) {
    const Candidate& next = *usable[k];
    choice.next_best.push_back(choice_of(next, copies_note(next)));  // read_dicom says why it is read
  }
  return choice;
}

}  // namespace hemexp
