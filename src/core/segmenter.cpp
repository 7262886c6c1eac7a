#include "hemexp/core/segmenter.hpp"

#include <algorithm>
#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/runtime.hpp"

namespace hemexp {

std::vector<std::string> segmentation_labels(const nlohmann::json& card) {
  std::vector<std::string> labels{"background", "hematoma"};
  if (!card.contains("labels")) return labels;
  const nlohmann::json& l = card["labels"];
  if (!l.is_object() || l.size() < 2 || l.size() > 255)
    throw ModelError("model card: labels must map the codes 0 .. K-1 (K from 2 to 255) to names");
  labels.assign(l.size(), "");
  for (size_t code = 0; code < l.size(); ++code) {
    const std::string key = std::to_string(code);
    if (!l.contains(key) || !l[key].is_string() || l[key].get<std::string>().empty())
      throw ModelError("model card: labels has no name for code " + key + " (codes must be 0 .. K-1)");
    labels[code] = l[key].get<std::string>();
    for (size_t other = 0; other < code; ++other)
      if (labels[other] == labels[code]) throw ModelError("model card: label name '" + labels[code] + "' is used twice");
  }
  // The mask, the measurements and the classifier's ROI are label 1.
  if (labels[1] != "hematoma") throw ModelError("model card: label 1 must be 'hematoma', not '" + labels[1] + "'");
  return labels;
}

SegmentationRecipe SegmentationRecipe::from_card(const nlohmann::json& card) {
  SegmentationRecipe r;
  if (!card.contains("preprocessing")) throw ModelError("model card: no preprocessing block");
  r.preprocessing = Preprocessing::from_json(card["preprocessing"]);
  try {
    const nlohmann::json& inf = card.at("inference");
    const std::vector<int64_t> patch = card_integers(inf.at("patch_size"), "inference.patch_size");
    if (patch.size() != 3 || patch[0] < 1 || patch[1] < 1 || patch[2] < 1 || patch[0] > 512 || patch[1] > 512 ||
        patch[2] > 512 || patch[0] * patch[1] * patch[2] > (int64_t(1) << 24))
      throw ModelError("model card: inference.patch_size must be 3 positive integers (z, y, x), each at most 512 "
                       "and at most 2^24 voxels in all");
    r.patch_size = {patch[0], patch[1], patch[2]};
    r.overlap = inf.value("overlap", 0.5);
    r.mirror = inf.value("mirror", false);
    if (card.contains("postprocessing")) {
      r.threshold = card["postprocessing"].value("threshold", 0.5);
      r.min_component_ml = card["postprocessing"].value("min_component_ml", 0.0);
      r.min_component_fraction = card["postprocessing"].value("min_component_fraction", 0.0);
      r.keep_satellites_within_mm = card["postprocessing"].value("keep_satellites_within_mm", 0.0);
    }
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(std::string("model card: inference block is incomplete: ") + e.what());
  }
  r.labels = segmentation_labels(card);
  if (r.overlap < 0 || r.overlap >= 1) throw ModelError("model card: inference.overlap must be in [0, 1)");
  if (r.threshold <= 0 || r.threshold >= 1) throw ModelError("model card: postprocessing.threshold must be in (0, 1)");
  if (r.min_component_fraction < 0 || r.min_component_fraction > 1)
    throw ModelError("model card: postprocessing.min_component_fraction must be in [0, 1]");
  if (r.keep_satellites_within_mm < 0 || r.keep_satellites_within_mm > 100)
    throw ModelError("model card: postprocessing.keep_satellites_within_mm must be in [0, 100]");
  return r;
}

torch::Tensor prepare_network_input(const Volume& canonical, const Preprocessing& p, Geometry* model_grid) {
  const Geometry grid = grid_with_spacing(canonical.geometry, p.spacing_mm);
  if (model_grid) *model_grid = grid;
  const torch::Tensor resampled = resample_between_grids(canonical.voxels.to(torch::kFloat32), canonical.geometry, grid);
  return normalize_ct(resampled, p).unsqueeze(0).contiguous();
}

torch::Tensor class_codes_between_grids(const torch::Tensor& foreground, const Geometry& from, const Geometry& to,
                                        torch::Tensor* first_class) {
  if (foreground.dim() != 4 || foreground.size(0) < 1) throw CoreError("class maps must be (K - 1, z, y, x)");
  for (int a = 0; a < 3; ++a)
    if (std::abs(from.origin_mm[a] - to.origin_mm[a]) > 1e-6)
      throw CoreError("resampling between grids with different origins is not supported");
  // The output in slabs of kSlab slices: for each, only the source slices its z interpolation
  // reads are brought to the output's in-plane size (x, then y, then z: the order of
  // resample_between_grids), so only the codes and class 1's map are whole output volumes.
  constexpr int64_t kSlab = 8;
  const int64_t nz = to.size[2], source_slices = foreground.size(1);
  const double step_x = to.spacing_mm[0] / from.spacing_mm[0], step_y = to.spacing_mm[1] / from.spacing_mm[1],
               step_z = to.spacing_mm[2] / from.spacing_mm[2];
  torch::Tensor codes = torch::empty({nz, to.size[1], to.size[0]}, torch::kUInt8);
  if (first_class) *first_class = torch::empty({nz, to.size[1], to.size[0]}, torch::kFloat32);
  for (int64_t k0 = 0; k0 < nz; k0 += kSlab) {
    const int64_t n = std::min(kSlab, nz - k0);
    const double first = double(k0) * step_z;
    const int64_t lo = std::clamp<int64_t>(int64_t(std::floor(first)), 0, source_slices - 1);
    const int64_t hi = std::clamp<int64_t>(int64_t(std::floor(first + double(n - 1) * step_z)) + 1, 0, source_slices - 1);
    torch::Tensor codes_slab = codes.slice(0, k0, k0 + n), best, sum;
    for (int64_t k = 0; k < foreground.size(0); ++k) {
      const torch::Tensor plane = interpolate_axis(
          interpolate_axis(foreground[k].slice(0, lo, hi + 1), 2, to.size[0], 0.0, step_x), 1, to.size[1], 0.0, step_y);
      // Positions before or past the source clamp to its edge slices, as on the whole grid.
      torch::Tensor v = interpolate_axis(plane, 0, n, first - double(lo), step_z);
      if (v.data_ptr() == plane.data_ptr()) v = v.clone();  // interpolate_axis may return its input
      if (k == 0) {
        if (first_class) first_class->slice(0, k0, k0 + n).copy_(v);
        codes_slab.fill_(1);
        best = v;  // replaced, never changed in place
        sum = v.clone();
        continue;
      }
      codes_slab.masked_fill_(v > best, uint8_t(k + 1));  // ties stay with the lower code
      best = torch::maximum(best, v);
      sum.add_(v);
    }
    // Background wins where its share, 1 - sum, is at least the best class's: best >= 1 - sum.
    codes_slab.masked_fill_(best <= sum.neg_().add_(1.0f), 0);
  }
  return codes;
}

torch::Tensor prepare_network_label(const torch::Tensor& canonical_labels, const Geometry& canonical,
                                    const Geometry& model_grid, int64_t num_classes) {
  if (num_classes < 2) throw CoreError("a label map needs at least two classes");
  std::vector<torch::Tensor> one_hot;  // uint8: each class becomes float only while it is resampled
  for (int64_t k = 1; k < num_classes; ++k) one_hot.push_back((canonical_labels == k).to(torch::kUInt8));
  return class_codes_between_grids(torch::stack(one_hot), canonical, model_grid);
}

torch::Tensor remove_small_components(const torch::Tensor& mask, const Geometry& g, const ComponentCleanup& c,
                                      int64_t* removed) {
  if (removed) *removed = 0;
  if (c.min_ml <= 0 && c.min_fraction_of_largest <= 0) return mask;
  const MaskBox box = mask_bounding_box(mask);  // labels only where there is something to label
  if (box.empty()) return mask;
  torch::Tensor labels;
  const int64_t n = connected_components(box.crop(mask), &labels);
  const torch::Tensor flat_labels = labels.reshape({-1}).to(torch::kLong);
  torch::Tensor counts = torch::bincount(flat_labels, {}, n + 1).to(torch::kFloat64);
  counts[0] = 0;
  const int64_t largest = counts.argmax().item<int64_t>();
  const double min_voxels = c.min_ml * 1000.0 / g.voxel_volume_mm3();
  torch::Tensor keep = (counts >= min_voxels) & (counts >= c.min_fraction_of_largest * counts[largest].item<double>());
  if (c.keep_within_mm > 0 && n > 1 && !keep.all().item<bool>()) {
    // Every component lies in the box, so distances from the largest one are exact there.
    const torch::Tensor near_largest =
        squared_distance_map(labels == largest, box.crop(g)).reshape({-1}) <= c.keep_within_mm * c.keep_within_mm;
    keep = keep | (torch::bincount(flat_labels.masked_select(near_largest), {}, n + 1) > 0);
  }
  keep[0] = false;
  if (removed) *removed = n - keep.sum().item<int64_t>();
  torch::Tensor out = torch::zeros_like(mask, torch::kUInt8);
  box.crop(out).copy_(keep.index({labels.to(torch::kLong)}));
  return out;
}

Segmenter Segmenter::load(const std::filesystem::path& path, const torch::Device& device) {
  return Segmenter(ModelFile::read(path, "segmentation"), device);
}

Segmenter::Segmenter(ModelFile file, const torch::Device& device) : file_(std::move(file)), device_(device) {
  const std::string name = file_.path.filename().string();
  if (file_.card.kind != "segmentation")
    throw ModelError("model " + name + ": is a '" + file_.card.kind + "' model, not a segmentation model");
  try {
    recipe_ = SegmentationRecipe::from_card(file_.card.json);
    network_ = UMamba(UMambaConfig::from_json(file_.card.json.at("network")));
    if (network_->config().num_classes != int64_t(recipe_.labels.size()))
      throw ModelError("the network has " + std::to_string(network_->config().num_classes) + " classes, the card's labels " +
                       std::to_string(recipe_.labels.size()));
  } catch (const std::exception& e) {
    throw ModelError("model " + name + ": " + e.what());
  }
  file_.install_weights(*network_, device_);
}

Segmentation Segmenter::segment(const Volume& canonical) const {
  c10::InferenceMode guard;
  Segmentation s;
  auto t0 = Clock::now();
  Geometry model_grid;
  const torch::Tensor input = prepare_network_input(canonical, recipe_.preprocessing, &model_grid);
  s.seconds.prepare = seconds_since(t0);
  t0 = Clock::now();
  SlidingWindowOptions o;
  o.patch_size = recipe_.patch_size;
  o.overlap = recipe_.overlap;
  o.mirror = recipe_.mirror;
  o.device = device_;
  // One window at a time on the CPU (what its masks and timings were measured with); a GPU is
  // kept busy with several.
  o.windows_per_pass = windows_per_pass();
  // Pad with the normalised value of air, what the network saw outside the head in training.
  o.pad_value = float((recipe_.preprocessing.clip_low_hu - recipe_.preprocessing.mean_hu) / recipe_.preprocessing.std_hu);
  UMamba net = network_;  // a handle to the same module (forward is not const in LibTorch)
  const int64_t classes = net->config().num_classes;
  const torch::Tensor probabilities = sliding_window_probabilities(
      [&net](const torch::Tensor& patch) { return net->forward(patch); }, input, classes, o);
  s.seconds.network = seconds_since(t0);
  t0 = Clock::now();
  const bool multi = recipe_.multi_class();
  if (multi) {
    s.labels = class_codes_between_grids(probabilities.slice(0, 1), model_grid, canonical.geometry, &s.probability);
    s.probability.clamp_(0, 1);
  } else {
    // Only the foreground probability goes back to the input grid (bounded memory).
    const torch::Tensor foreground = probabilities[1].contiguous();
    s.probability = resample_between_grids(foreground, model_grid, canonical.geometry).clamp(0, 1);
    s.labels = (s.probability > float(recipe_.threshold)).to(torch::kUInt8);
  }
  s.seconds.resample = seconds_since(t0);
  t0 = Clock::now();
  for (int64_t code = 1; code < int64_t(recipe_.labels.size()); ++code) {
    // A two-class label map is the mask itself: no copy per label.
    const torch::Tensor in_label = multi ? (s.labels == code).to(torch::kUInt8) : s.labels;
    int64_t removed = 0;
    const ComponentCleanup cleanup =
        code == 1 ? ComponentCleanup{recipe_.min_component_ml, recipe_.min_component_fraction, recipe_.keep_satellites_within_mm}
                  : ComponentCleanup{recipe_.min_component_ml, 0.0, 0.0};
    const torch::Tensor kept = remove_small_components(in_label, canonical.geometry, cleanup, &removed);
    if (code == 1) s.removed_components = removed;
    if (!removed) continue;
    if (multi) s.labels.masked_fill_((in_label != 0) & (kept == 0), 0);
    else s.labels = kept;
  }
  s.mask = multi ? (s.labels == 1).to(torch::kUInt8) : s.labels;
  s.seconds.cleanup = seconds_since(t0);
  return s;
}

}  // namespace hemexp
