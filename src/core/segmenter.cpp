#include "hemexp/core/segmenter.hpp"

#include "hemexp/core/error.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/runtime.hpp"

namespace hemexp {

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
    }
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(std::string("model card: inference block is incomplete: ") + e.what());
  }
  if (r.overlap < 0 || r.overlap >= 1) throw ModelError("model card: inference.overlap must be in [0, 1)");
  if (r.threshold <= 0 || r.threshold >= 1) throw ModelError("model card: postprocessing.threshold must be in (0, 1)");
  if (r.min_component_fraction < 0 || r.min_component_fraction > 1)
    throw ModelError("model card: postprocessing.min_component_fraction must be in [0, 1]");
  return r;
}

torch::Tensor prepare_network_input(const Volume& canonical, const Preprocessing& p, Geometry* model_grid) {
  const Geometry grid = grid_with_spacing(canonical.geometry, p.spacing_mm);
  if (model_grid) *model_grid = grid;
  const torch::Tensor resampled = resample_between_grids(canonical.voxels.to(torch::kFloat32), canonical.geometry, grid);
  return normalize_ct(resampled, p).unsqueeze(0).contiguous();
}

torch::Tensor prepare_network_label(const torch::Tensor& canonical_mask, const Geometry& canonical,
                                    const Geometry& model_grid) {
  return (resample_between_grids(canonical_mask, canonical, model_grid) > 0.5f).to(torch::kUInt8);
}

torch::Tensor remove_small_components(const torch::Tensor& mask, const Geometry& g, double min_ml,
                                      double min_fraction_of_largest, int64_t* removed) {
  if (removed) *removed = 0;
  if (min_ml <= 0 && min_fraction_of_largest <= 0) return mask;
  const MaskBox box = mask_bounding_box(mask);  // labels only where there is something to label
  if (box.empty()) return mask;
  torch::Tensor labels;
  const int64_t n = connected_components(box.crop(mask), &labels);
  torch::Tensor counts = torch::bincount(labels.reshape({-1}), {}, n + 1).to(torch::kFloat64);
  counts[0] = 0;
  const double largest = counts.max().item<double>();
  const double min_voxels = min_ml * 1000.0 / g.voxel_volume_mm3();
  const torch::Tensor keep = (counts >= min_voxels) & (counts >= min_fraction_of_largest * largest);
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
  // Pad with the normalised value of air, what the network saw outside the head in training.
  o.pad_value = float((recipe_.preprocessing.clip_low_hu - recipe_.preprocessing.mean_hu) / recipe_.preprocessing.std_hu);
  UMamba net = network_;  // a handle to the same module (forward is not const in LibTorch)
  const int64_t classes = net->config().num_classes;
  const torch::Tensor probabilities = sliding_window_probabilities(
      [&net](const torch::Tensor& patch) { return net->forward(patch); }, input, classes, o);
  s.seconds.network = seconds_since(t0);
  t0 = Clock::now();
  // Only the foreground probability goes back to the input grid (bounded memory).
  const torch::Tensor foreground = probabilities[1].contiguous();
  s.probability = resample_between_grids(foreground, model_grid, canonical.geometry).clamp(0, 1);
  s.seconds.resample = seconds_since(t0);
  t0 = Clock::now();
  s.mask = (s.probability > float(recipe_.threshold)).to(torch::kUInt8);
  s.mask = remove_small_components(s.mask, canonical.geometry, recipe_.min_component_ml,
                                   recipe_.min_component_fraction, &s.removed_components);
  s.seconds.cleanup = seconds_since(t0);
  return s;
}

}  // namespace hemexp
