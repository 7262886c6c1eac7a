#include "hemexp/app/case_pipeline.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <set>
#include <limits>
#include <vector>

#include "hemexp/core/error.hpp"
#include "hemexp/core/intracranial.hpp"
#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/qc.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;

std::map<std::string, nlohmann::json> CasePipeline::models() const {
  std::map<std::string, nlohmann::json> m;
  if (segmenter) m["segmentation"] = segmenter->file().provenance_json();
  if (classifier) m["classification"] = classifier->file().provenance_json();
  return m;
}

ReadCase read_case(const CaseInput& c, const CasePipeline& pipeline, spdlog::logger& log) {
  const auto t0 = Clock::now();
  if (!c.problem.empty()) throw IoError(c.problem);
  ReadCase r{read_volume(c.path, pipeline.read), 0.0};
  r.seconds = seconds_since(t0);
  const LoadedVolume& loaded = r.loaded;
  log.info("{}: read {} ({}), {}", c.id, c.path.string(), loaded.info.format, loaded.volume.geometry.describe());
  if (!loaded.info.series_choice.empty()) log.info("{}: {}", c.id, loaded.info.series_choice);
  for (const std::string& corr : loaded.info.corrections) log.info("{}: corrected: {}", c.id, corr);
  for (const std::string& w : loaded.info.warnings) log.warn("{}: {}", c.id, w);
  return r;
}

ExpansionRisk expansion_risk(const Classifier& classifier, const CaseAnalysis& a, const HematomaMeasurements& h,
                             const NcctMarkers& markers, double ivh_volume_ml) {
  const ClassifierRecipe& recipe = classifier.recipe();
  ExpansionRisk he;
  he.threshold = recipe.threshold;
  he.calibrated = recipe.calibrated();
  he.model = classifier.file().provenance_json();
  // Never a number made up from an empty or tiny ROI: the classifier was not trained on them.
  if (h.voxels == 0) {
    he.reason = "no hematoma found";
    return he;
  }
  if (h.volume_ml < recipe.min_volume_ml) {
    he.reason = "hematoma " + format_number(h.volume_ml, 2) + " mL is below the classifier's minimum of " +
                format_number(recipe.min_volume_ml, 2) + " mL";
    return he;
  }
  const ExpansionScore s = classifier.score(a.canonical.volume, a.canonical_mask,
                                            recipe.feature_vector(markers, h, ivh_volume_ml));
  if (!std::isfinite(s.logit) || !std::isfinite(s.probability)) {  // never a risk category without a number
    he.reason = "the classifier gave no finite output (NaN or infinite) for this case";
    return he;
  }
  he.probability = s.probability;
  he.logit = s.logit;
  he.risk = s.risk;
  he.roi_mask_fraction_inside = s.roi.mask_fraction_inside;
  if (!s.signs.empty()) {
    he.signs = nlohmann::json::object();
    for (const auto& [name, p] : s.signs) he.signs[name] = p;
  }
  return he;
}

CaseAnalysis segment_case(const Volume& volume, const CasePipeline& pipeline, CaseResult& result, spdlog::logger& log,
                          const torch::Tensor& reuse_mask) {
  const std::string& id = result.case_id;
  CaseAnalysis a;
  // Work happens in the canonical orientation; results go back to the input grid.
  auto t0 = Clock::now();
  a.canonical = to_canonical(volume);
  // A hematoma is only looked for in a head with a brain: a phantom or a non-head series
  // fails here with what was found, rather than yielding a made-up hematoma.
  const IntracranialContent intracranial = intracranial_content(a.canonical.volume);
  result.intracranial = intracranial;
  result.timings_s["brain_check"] = seconds_since(t0);
  t0 = Clock::now();
  if (!intracranial.brain_like)
    throw CoreError("not a head CT with a brain: " + intracranial.describe() + " (a phantom or a non-head series?)");
  if (!intracranial.skull_found) {
    result.qc_flags.push_back("skull_not_found");
    log.warn("{}: {}; the brain check was skipped", id, intracranial.describe());
  }

  if (!pipeline.segmenter) {
    // No segmentation model: the mask is empty, and the case says so.
    a.mask = torch::zeros(tensor_shape(volume.geometry), torch::kUInt8);
    a.canonical_mask = torch::zeros(tensor_shape(a.canonical.volume.geometry), torch::kUInt8);
    result.qc_flags.push_back("no_segmentation_model");
    result.timings_s["segment"] = seconds_since(t0);
    return a;
  }
  const SegmentationRecipe& recipe = pipeline.segmenter->recipe();
  if (reuse_mask.defined()) {
    // The previous run's mask (label map) of this input by this segmentation model (--resume
    // after a classifier change): what the segmenter gave, on the input grid.
    if (recipe.multi_class()) {
      a.labels = reuse_mask.to(torch::kUInt8);
      a.mask = (a.labels == 1).to(torch::kUInt8);
      a.canonical_labels = to_canonical(a.labels, a.canonical.map);
    } else {
      a.mask = reuse_mask.to(torch::kUInt8);
    }
    a.canonical_mask = to_canonical(a.mask, a.canonical.map);
    log.info("{}: the previous run's mask is scored again (only the classification model changed)", id);
  } else {
    const Segmenter& segmenter = *pipeline.segmenter;
    const Segmentation seg = segmenter.segment(a.canonical.volume, pipeline.save_probabilities);
    a.canonical_mask = seg.mask;
    a.mask = from_canonical(seg.mask, a.canonical.map);
    if (recipe.multi_class()) {
      a.canonical_labels = seg.labels;
      a.labels = from_canonical(seg.labels, a.canonical.map);
    }
    if (pipeline.save_probabilities) a.probability = from_canonical(seg.probability, a.canonical.map);
    if (seg.removed_components > 0)
      log.info("{}: removed {} components smaller than {} mL or {}% of the largest", id, seg.removed_components,
               segmenter.recipe().min_component_ml, 100.0 * segmenter.recipe().min_component_fraction);
    result.timings_s["segment"] = seconds_since(t0);
    result.timings_s["segment_network"] = seg.seconds.network;  // of which the sliding-window network
  }
  return a;
}

void measure_case(const Volume& volume, const CaseAnalysis& a, const CasePipeline& pipeline, CaseResult& result,
                  spdlog::logger& log) {
  if (!pipeline.segmenter) return;  // no mask to measure (no_segmentation_model)
  const std::string& id = result.case_id;
  const SegmentationRecipe& recipe = pipeline.segmenter->recipe();
  const auto t0 = Clock::now();
  if (a.labels.defined()) {
    const std::array<int64_t, 256> counts = code_counts(a.labels);
    for (int64_t code = 2; code < int64_t(recipe.labels.size()); ++code) {
      LabelVolume& l = result.labels[recipe.labels[size_t(code)]];
      l.code = int(code);
      l.voxels = counts[size_t(code)];
      l.volume_ml = double(l.voxels) * volume.geometry.voxel_volume_mm3() / 1000.0;
    }
  }
  // On the canonical grid (the input's, permuted and flipped: the same voxels): ABC/2 measures on
  // axial slices whichever way the file stores its axes (on the input grid a sagittal-first file
  // gave -13%, a flipped one -1.7%); every other measurement is the same on either grid.
  const HematomaMeasurements h = measure_hematoma(a.canonical_mask, a.canonical.volume.voxels, a.canonical.volume.geometry);
  result.hematoma = h;
  if (h.touches_border) result.qc_flags.push_back("hematoma_touches_border");
  if (h.components > 1) result.qc_flags.push_back("multiple_components");
  result.markers = measure_markers(a.mask, volume.voxels, volume.geometry);
  result.timings_s["measure"] = seconds_since(t0);
  log.info("{}: hematoma {:.2f} mL (ABC/2 {:.2f} mL), mean {:.1f} HU, {} components", id, h.volume_ml,
           h.abc2_volume_ml, h.mean_hu, h.components);
}

void classify_case(const CaseAnalysis& a, const CasePipeline& pipeline, CaseResult& result, spdlog::logger& log) {
  if (!pipeline.classifier || !result.hematoma || !result.markers) return;  // nothing measured: nothing to score
  const std::string& id = result.case_id;
  const auto t0 = Clock::now();
  const auto ivh = result.labels.find("ivh");
  result.he = expansion_risk(*pipeline.classifier, a, *result.hematoma, *result.markers,
                             ivh != result.labels.end() ? ivh->second.volume_ml
                                                        : std::numeric_limits<double>::quiet_NaN());
  if (result.he->roi_mask_fraction_inside && *result.he->roi_mask_fraction_inside < 0.99)
    result.qc_flags.push_back("hematoma_larger_than_classifier_roi");
  result.timings_s["classify"] = seconds_since(t0);
  if (result.he->probability)
    log.info("{}: expansion probability {:.3f} ({} risk)", id, *result.he->probability, result.he->risk);
  else
    log.info("{}: no expansion probability: {}", id, result.he->reason);
}

namespace {

// The writing of each CaseFiles file of the case, as tasks. Every other file of CaseFiles::outputs()
// that an earlier analysis left (a label map this model does not make, a probability map or QC
// picture not asked for, a corrected CT this grid does not need) is removed here: a case done
// again holds only files of this analysis; a reused mask's probability map is still its own.
std::vector<std::function<void()>> case_output_writes(const fs::path& dir, const LoadedVolume& loaded,
                                                     const CaseAnalysis& a, const CasePipeline& pipeline,
                                                     bool mask_reused) {
  const Geometry& grid = loaded.volume.geometry;
  // A NIfTI scan's own qform and sform go into every file on its grid (viewers differ in which
  // they follow; the two can disagree).
  const NiftiPlacement* placement = loaded.info.nifti_placement ? &*loaded.info.nifti_placement : nullptr;
  std::vector<std::function<void()>> writes;  // in the order they were always written
  std::set<std::string> written;
  const auto add = [&](const char* name, std::function<void()> write) {
    written.insert(name);
    writes.push_back(std::move(write));
  };
  add(CaseFiles::kMask, [&dir, &a, &grid, placement] { write_image_file(dir / CaseFiles::kMask, a.mask, grid, placement); });
  if (a.labels.defined())
    add(CaseFiles::kLabels,
        [&dir, &a, &grid, placement] { write_image_file(dir / CaseFiles::kLabels, a.labels, grid, placement); });
  if (a.probability.defined())
    add(CaseFiles::kProbability, [&dir, &a, &grid, placement] {
      write_image_file(dir / CaseFiles::kProbability, a.probability, grid, placement);
    });
  if (pipeline.qc)
    add(CaseFiles::kQc, [&dir, &a] {
      write_png(dir / CaseFiles::kQc,
                qc_mosaic(a.canonical.volume, a.canonical_labels.defined() ? a.canonical_labels : a.canonical_mask));
    });
  if (loaded.info.grid_resampled) {
    // The mask lives on the corrected grid, which no viewer rebuilds from the DICOM files in
    // the same way: ship the corrected CT so that the mask overlays it exactly.
    add(CaseFiles::kCorrectedCt, [&dir, &loaded, &grid] {
      const torch::Tensor hu = loaded.volume.voxels.round().clamp(-32768, 32767).to(torch::kInt16);
      write_image_file(dir / CaseFiles::kCorrectedCt, hu, grid);
    });
  }
  std::error_code gone;  // a file that cannot be removed is not this analysis's failure: its writes say
  for (const std::string& name : CaseFiles::outputs())
    if (!written.count(name) && !(mask_reused && name == CaseFiles::kProbability)) fs::remove(dir / name, gone);
  return writes;
}

}  // namespace

void measure_and_write_case(const fs::path& dir, const LoadedVolume& loaded, const CaseAnalysis& a,
                            const CasePipeline& pipeline, CaseResult& result, spdlog::logger& log) {
  const auto t0 = Clock::now();
  const std::vector<std::function<void()>> writes =
      case_output_writes(dir, loaded, a, pipeline, result.timings_s.count("mask_reused") > 0);
  // The measurements first, so that theirs is the failure reported when both fail; each write
  // notes when it began and finished (its own slots: no task touches `result` but the measurements).
  std::vector<Clock::time_point> began(writes.size(), t0), written(writes.size(), t0);
  std::vector<std::function<void()>> tasks{[&] { measure_case(loaded.volume, a, pipeline, result, log); }};
  for (size_t i = 0; i < writes.size(); ++i)
    tasks.emplace_back([&, i] {
      began[i] = Clock::now();
      writes[i]();
      written[i] = Clock::now();
    });
  run_side_by_side(tasks);
  if (loaded.info.grid_resampled) result.corrected_ct = CaseFiles::kCorrectedCt;
  // From the first file begun to the last one written: on one thread the writing alone, after
  // the measurements; on two, beside them.
  if (!writes.empty())  // always the mask at least
    result.timings_s["write"] = std::chrono::duration<double>(*std::max_element(written.begin(), written.end()) -
                                                              *std::min_element(began.begin(), began.end()))
                                    .count();
}

CaseResult process_case(const CaseInput& c, const fs::path& dir, const CasePipeline& pipeline, spdlog::logger& log,
                        std::future<ReadCase>* read_ahead) {
  const auto t_case = Clock::now();
  CaseResult result;
  result.case_id = c.id;
  result.input_path = c.path.string();
  try {
    fs::create_directories(dir);
    remove_temporaries(dir);  // what a killed earlier attempt was writing
    ReadCase read;
    if (read_ahead) {
      const auto t_wait = Clock::now();
      read_ahead->wait();
      result.timings_s["read_wait"] = seconds_since(t_wait);
      read = read_ahead->get();  // rethrows the reading's exception
    } else {
      read = read_case(c, pipeline, log);
    }
    result.timings_s["read"] = read.seconds;
    const LoadedVolume& loaded = read.loaded;
    result.input = loaded.info;  // kept when the analysis fails: what was read, and from where
    torch::Tensor reuse_mask;
    if (!c.reuse_mask.empty()) {
      const auto t_mask = Clock::now();
      try {
        // A multi-class segmenter's label map is kept beside the mask, and it is what is reused.
        const bool labels = pipeline.segmenter && pipeline.segmenter->recipe().multi_class();
        const fs::path file = labels ? c.reuse_mask.parent_path() / CaseFiles::kLabels : c.reuse_mask;
        reuse_mask = read_codes_on_grid(file, loaded.volume.geometry);
        if (!labels) reuse_mask = (reuse_mask > 0).to(torch::kUInt8);
        if (labels && reuse_mask.max().item<int64_t>() >= int64_t(pipeline.segmenter->recipe().labels.size()))
          throw IoError("its label codes are not the model's");
        result.timings_s["mask_reused"] = seconds_since(t_mask);  // reading it; segment_case skips segment
      } catch (const std::exception& e) {
        log.warn("{}: the previous mask (or label map) beside {} cannot be used ({}): segmenting again", c.id,
                 c.reuse_mask.string(), one_line(e.what()));
      }
    }
    const CaseAnalysis analysis = segment_case(loaded.volume, pipeline, result, log, reuse_mask);
    measure_and_write_case(dir, loaded, analysis, pipeline, result, log);
    classify_case(analysis, pipeline, result, log);
  } catch (const std::exception& e) {
    result.status = "failed";
    result.error = one_line(e.what());
    if (const auto* read = dynamic_cast<const ReadError*>(&e)) {  // what the reading had learnt
      result.input = read->info();
      if (!read->info().series_choice.empty()) log.info("{}: {}", c.id, read->info().series_choice);
    }
    result.corrected_ct.clear();
    CaseFiles::remove_outputs(dir);  // never leave outputs of this or an earlier attempt
    log.error("{}: failed: {} ({})", c.id, result.error, c.path.string());
  }
  result.models = pipeline.models();
  result.fingerprint = c.fingerprint;
  result.seconds = seconds_since(t_case);
  result.hemexp_version = kVersion;
  try {
    result.write(dir / CaseFiles::kResult);
  } catch (const std::exception& e) {
    // Without its result.json a case is not done: its mask and pictures go too (--resume
    // analyses it again), and the row says why.
    result.status = "failed";
    result.error = one_line(std::string("writing result.json: ") + e.what());
    result.corrected_ct.clear();
    CaseFiles::remove_outputs(dir);
    log.error("{}: failed: {} ({})", c.id, result.error, c.path.string());
  }
  return result;
}

}  // namespace hemexp
