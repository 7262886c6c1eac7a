// Choosing the series of a study folder.
#include <algorithm>
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

bool is_bone_kernel(const std::string& kernel) {
  // Vendor names for sharp bone reconstructions: BONE/BONEPLUS (GE); Siemens sharpness 60 and
  // up, in the older (H60s, B70f, J70h) and the newer naming (Hr64, Br64, Qr69, Ur77: a second
  // letter before the number); YC (Philips bone filter); FC30+ (Canon/Toshiba bone).
  static const std::regex bone(R"((BONE|LUNG|SHARP|^[HBJQU][A-Z]?[6-9]\d|^YC$|^FC[3-8]\d))");
  return std::regex_search(upper(kernel), bone);
}

struct Candidate {
  std::string uid;
  std::vector<DicomHeader> files;
  std::string excluded;  // why it cannot be the case's series, "" if it can
  bool bone = false;
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

std::string series_problem(const Candidate& c) {
  // The first file that cannot be a CT slice names the series' problem.
  std::map<std::string, int> problems;
  for (const DicomHeader& h : c.files) {
    const std::string p = slice_problem(h);
    if (!p.empty()) ++problems[p];
  }
  if (problems.empty()) {
    const SliceGeometry& g = c.files.front().geometry;
    const Vec3 normal = cross(g.row_direction, g.column_direction);
    if (std::abs(normal[2]) < 0.8 * norm(normal)) return "not axial (a sagittal or coronal reformat)";
    if (upper(c.files.front().image_type).find("DERIVED") != std::string::npos)
      return "derived images (a reformat or reconstruction)";
    return "";
  }
  const auto& first = *problems.begin();
  if (int(c.files.size()) == first.second || c.files.size() == 1) return first.first;
  return first.first + " (" + std::to_string(first.second) + " of " + std::to_string(c.files.size()) +
         " images)";
}

}  // namespace

SeriesChoice choose_series(const std::vector<DicomHeader>& headers, const std::string& wanted_uid) {
  if (headers.empty()) throw IoError("no DICOM images found");
  std::map<std::string, Candidate> by_uid;
  std::vector<std::string> order;
  for (const DicomHeader& h : headers) {
    auto [it, inserted] = by_uid.try_emplace(h.series_uid);
    if (inserted) order.push_back(h.series_uid), it->second.uid = h.series_uid;
    it->second.files.push_back(h);
  }
  SeriesChoice choice;

  if (!wanted_uid.empty()) {
    auto it = by_uid.find(wanted_uid);
    if (it == by_uid.end()) throw IoError("series UID " + wanted_uid + " is not in this folder");
    const std::string problem = series_problem(it->second);
    if (!problem.empty() && problem.find("not axial") == std::string::npos &&
        problem.find("derived") == std::string::npos)
      throw IoError("requested series " + wanted_uid + ": " + problem);
    choice.series_uid = wanted_uid;
    choice.files = it->second.files;
    choice.explanation = "series " + wanted_uid + " requested with --series-uid";
    return choice;
  }

  std::vector<Candidate*> usable;
  for (const std::string& uid : order) {
    Candidate& c = by_uid[uid];
    c.excluded = series_problem(c);
    c.bone = is_bone_kernel(c.files.front().convolution_kernel);
    if (c.excluded.empty()) usable.push_back(&c);
  }
  // Series of more than one patient or study: which one is the case's scan (a baseline and its
  // follow-up, two patients' exports in one folder) is not guessed, whatever their kernels.
  std::map<std::pair<std::string, std::string>, std::vector<const Candidate*>> studies;
  for (const Candidate* c : usable) studies[{c->files.front().patient_id, c->files.front().study_uid}].push_back(c);
  if (studies.size() > 1) {
    std::ostringstream s;
    std::set<std::string> patients;
    for (const auto& [key, list] : studies) patients.insert(key.first);
    s << "the folder holds CT series of " << studies.size() << " studies";
    if (patients.size() > 1) s << " of " << patients.size() << " patients";
    s << " (";
    bool first = true;
    for (const auto& [key, list] : studies) {
      const DicomHeader* stamped = earliest_stamp(list.front()->files);
      s << (first ? "" : "; ") << "patient '" << key.first << "' "
        << (stamped ? stamped->datetime : std::string("undated")) << ": " << describe(*list.front());
      first = false;
    }
    s << "): give each study its own folder, or name the series with --series-uid (hemexp expansion "
         "--pairs-from pairs a patient's studies by date)";
    throw IoError(s.str());
  }
  // A lone image (a key image, a dose sheet saved as CT) is not a soft-tissue series that would
  // make a whole bone-kernel head series unusable.
  const bool soft_tissue_exists = std::any_of(usable.begin(), usable.end(), [](const Candidate* c) {
    return !c->bone && (c->files.size() > 1 || c->files.front().frames > 1);
  });
  if (soft_tissue_exists)
    for (Candidate* c : usable)
      if (c->bone) c->excluded = "bone kernel " + c->files.front().convolution_kernel;
  usable.erase(std::remove_if(usable.begin(), usable.end(),
                              [](const Candidate* c) { return !c->excluded.empty(); }),
               usable.end());

  if (usable.empty()) {
    if (order.size() == 1) throw IoError(by_uid[order.front()].excluded);
    std::ostringstream s;
    s << "no axial CT series among " << order.size() << " series:";
    for (const std::string& uid : order) s << " " << describe(by_uid[uid]) << ": " << by_uid[uid].excluded << ";";
    std::string msg = s.str();
    msg.pop_back();
    throw IoError(msg);
  }
  // Most images wins; ties go to the lower series number, then the UID, for stability.
  std::stable_sort(usable.begin(), usable.end(), [](const Candidate* a, const Candidate* b) {
    if (a->files.size() != b->files.size()) return a->files.size() > b->files.size();
    if (a->files.front().series_number != b->files.front().series_number)
      return a->files.front().series_number < b->files.front().series_number;
    return a->uid < b->uid;
  });
  const Candidate& best = *usable.front();
  choice.series_uid = best.uid;
  choice.files = best.files;
  std::ostringstream why;
  why << "chose " << describe(best);
  if (order.size() > 1) {
    why << " as the axial CT series with the most images; skipped";
    for (const std::string& uid : order) {
      if (uid == best.uid) continue;
      const Candidate& c = by_uid[uid];
      const std::string tie = c.files.front().series_number != best.files.front().series_number
                                  ? "as many images, and a higher series number"
                                  : "as many images and the same series number, and a later series UID";
      why << " " << describe(c) << ": "
          << (!c.excluded.empty() ? c.excluded : c.files.size() < best.files.size() ? "fewer images" : tie) << ";";
    }
  }
  choice.explanation = why.str();
  if (choice.explanation.back() == ';') choice.explanation.pop_back();
  return choice;
}

}  // namespace hemexp
