#include "hemexp/core/segmenter.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

#include <ATen/Parallel.h>

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

namespace {

// The whole grid of `g` as a block (tensor order z, y, x).
MaskBox whole_block(const Geometry& g) { return MaskBox{{0, 0, 0}, {g.size[2], g.size[1], g.size[0]}}; }

}  // namespace

torch::Tensor class_codes_between_grids(const torch::Tensor& foreground, const Geometry& from, const Geometry& to,
                                        torch::Tensor* first_class, const MaskBox* block) {
  if (foreground.dim() != 4 || foreground.size(0) < 1) throw CoreError("class maps must be (K - 1, z, y, x)");
  for (int a = 0; a < 3; ++a)
    if (std::abs(from.origin_mm[a] - to.origin_mm[a]) > 1e-6)
      throw CoreError("resampling between grids with different origins is not supported");
  const MaskBox b = block ? *block : whole_block(to);
  for (int d = 0; d < 3; ++d)
    if (b.begin[size_t(d)] < 0 || b.size[size_t(d)] < 0 || b.begin[size_t(d)] + b.size[size_t(d)] > to.size[2 - d])
      throw CoreError("class codes: the block lies outside the output grid");
  // The output in slabs of kSlab slices: for each, only the source slices its z interpolation
  // reads are brought to the output's in-plane size (x, then y, then z: the order of
  // resample_between_grids), so only the codes and class 1's map are whole output volumes.
  // Outside `block` the codes are 0 and nothing is computed; inside, every value is the one
  // the whole grid gives (the same slabs, the same positions; a slab's slices outside the block
  // are computed with it but not kept, so that the cleanup and the mask, which work in the
  // block, see every code).
  constexpr int64_t kSlab = 8;
  const int64_t nz = to.size[2], source_slices = foreground.size(1);
  const double step_x = to.spacing_mm[0] / from.spacing_mm[0], step_y = to.spacing_mm[1] / from.spacing_mm[1],
               step_z = to.spacing_mm[2] / from.spacing_mm[2];
  torch::Tensor codes = torch::zeros({nz, to.size[1], to.size[0]}, torch::kUInt8);
  if (first_class) *first_class = torch::zeros({nz, to.size[1], to.size[0]}, torch::kFloat32);
  if (b.empty() || b.size[1] == 0 || b.size[2] == 0) return codes;
  const int64_t z_end = b.begin[0] + b.size[0];
  const auto in_block = [&](const torch::Tensor& t) { return t.narrow(1, b.begin[1], b.size[1]).narrow(2, b.begin[2], b.size[2]); };
  for (int64_t k0 = b.begin[0] / kSlab * kSlab; k0 < z_end; k0 += kSlab) {
    const int64_t n = std::min(kSlab, nz - k0);
    const double first = double(k0) * step_z;
    const int64_t lo = std::clamp<int64_t>(int64_t(std::floor(first)), 0, source_slices - 1);
    const int64_t hi = std::clamp<int64_t>(int64_t(std::floor(first + double(n - 1) * step_z)) + 1, 0, source_slices - 1);
    const int64_t keep0 = std::max(k0, b.begin[0]), keep1 = std::min(k0 + n, z_end);  // the block's slices
    torch::Tensor codes_slab = in_block(codes.slice(0, keep0, keep1)), best, sum;
    for (int64_t k = 0; k < foreground.size(0); ++k) {
      const torch::Tensor plane =
          interpolate_axis(interpolate_axis(foreground[k].slice(0, lo, hi + 1), 2, b.size[2], 0.0, step_x, std::nullopt, b.begin[2]),
                           1, b.size[1], 0.0, step_y, std::nullopt, b.begin[1]);
      // Positions before or past the source clamp to its edge slices, as on the whole grid.
      torch::Tensor v = interpolate_axis(plane, 0, n, first - double(lo), step_z);
      if (v.data_ptr() == plane.data_ptr()) v = v.clone();  // interpolate_axis may return its input
      v = v.narrow(0, keep0 - k0, keep1 - keep0);
      if (k == 0) {
        if (first_class) in_block(first_class->slice(0, keep0, keep1)).copy_(v);
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

MaskBox foreground_block(const torch::Tensor& probabilities, double threshold, const Geometry& from, const Geometry& to) {
  if (probabilities.dim() != 4 || probabilities.size(0) < 2) throw CoreError("probabilities must be (K, z, y, x), K >= 2");
  // Linear interpolation makes convex combinations of the 2 x 2 x 2 source voxels around a
  // point: where background beats every class (two classes: the hematoma probability is at most
  // the threshold) at all of them, it does at the point. kMargin keeps float rounding on the
  // safe side: a model voxel within it of a tie counts as foreground.
  constexpr float kMargin = 1e-3f;
  // One pass over the model grid, slices in parallel: a cost of every case that does not grow
  // with the scan (the model grid is the same for a thick- and a thin-slice scan of one head),
  // which ATen's max, sum, negate, add and compare made five passes (docs/PERFORMANCE.md,
  // session 50). The sum is in class order, as ATen's for the shipped 2- and 4-class float
  // maps; any other rounding lies far inside kMargin.
  const torch::Tensor p = probabilities.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t classes = p.size(0), nz = p.size(1), plane = p.size(2) * p.size(3), n = nz * plane;
  torch::Tensor candidate = torch::empty({nz, p.size(2), p.size(3)}, torch::kUInt8);
  const float* src = p.data_ptr<float>();
  uint8_t* is_candidate = candidate.data_ptr<uint8_t>();
  const float above = float(threshold) - kMargin, floor_share = 1.0f - kMargin;
  at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
    const int64_t begin = z0 * plane, end = z1 * plane;
    if (classes == 2) {
      for (int64_t i = begin; i < end; ++i) is_candidate[i] = src[n + i] > above;
      return;
    }
    // Any class beating background: best >= (1 - margin) - (sum of the classes).
    for (int64_t i = begin; i < end; ++i) {
      float best = src[n + i], sum = best;
      for (int64_t k = 2; k < classes; ++k) {
        best = std::max(best, src[k * n + i]);
        sum += src[k * n + i];
      }
      is_candidate[i] = best >= floor_share - sum;
    }
  });
  const MaskBox source = mask_bounding_box(candidate);
  if (source.empty()) return MaskBox{};
  MaskBox out;
  for (int d = 0; d < 3; ++d) {  // tensor dim d is axis 2 - d
    const int a = 2 - d;
    const double step = to.spacing_mm[a] / from.spacing_mm[a];
    const double lo = double(source.begin[size_t(d)]), hi = double(source.begin[size_t(d)] + source.size[size_t(d)] - 1);
    // Output voxel i reads source voxels floor(i step) and the next one: it can be foreground
    // only when floor(i step) lies in [lo - 1, hi]. One more voxel on each side for rounding.
    const int64_t first = std::max<int64_t>(0, int64_t(std::floor((lo - 1.0) / step)) - 1);
    const int64_t end = std::min<int64_t>(to.size[a], int64_t(std::ceil((hi + 1.0) / step)) + 1);
    if (end <= first) return MaskBox{};
    out.begin[size_t(d)] = first;
    out.size[size_t(d)] = end - first;
  }
  return out;
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

void Segmenter::set_precision(const std::string& name) {
  const torch::ScalarType dtype = name == "fp32"   ? torch::kFloat32
                                  : name == "bf16" ? torch::kBFloat16
                                  : name == "fp16" ? torch::kHalf
                                                   : throw CoreError("precision must be fp32, bf16 or fp16, not '" + name + "'");
  if (device_.is_cpu() && dtype == torch::kHalf)
    throw CoreError("precision fp16 needs a CUDA device (on the CPU: bf16 or fp32)");
  try {
    network_->set_convolution_dtype(dtype);  // tries one convolution in it
  } catch (const CoreError& e) {
    throw CoreError("precision " + name + ": " + e.what());
  }
  precision_ = name;
}

Segmentation Segmenter::segment(const Volume& canonical, bool with_probability) const {
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
  // On the CPU the windows of a pass go through the network at once, one per thread, each on its
  // thread alone (faster than each window on every thread, and the same bits whatever the thread
  // count: docs/PERFORMANCE.md, session 45); a GPU takes a stack of windows per forward pass.
  o.windows_per_pass = windows_per_pass();
  o.concurrent_windows = o.windows_per_pass > 1;  // ignored off the CPU
  // Pad with the normalised value of air, what the network saw outside the head in training.
  o.pad_value = float((recipe_.preprocessing.clip_low_hu - recipe_.preprocessing.mean_hu) / recipe_.preprocessing.std_hu);
  // Windows only over the box of the voxels above the clip floor (the head, and whatever else is
  // denser than fat): outside it the network would see nothing but the pad value.
  o.crop_to_content = true;
  UMamba net = network_;  // a handle to the same module (forward is not const in LibTorch)
  const int64_t classes = net->config().num_classes;
  std::atomic<int64_t> windows{0};  // the network may be called from several threads at once
  const torch::Tensor probabilities = sliding_window_probabilities(
      [&net, &windows](const torch::Tensor& patch) {
        windows += patch.size(0);
        return net->forward(patch);
      },
      input, classes, o);
  s.windows = windows.load();
  s.seconds.network = seconds_since(t0);
  t0 = Clock::now();
  const bool multi = recipe_.multi_class();
  const Geometry& grid = canonical.geometry;
  // Only the block of the input grid that can hold foreground is resampled (thin-slice scans:
  // a fraction of the work and memory); the same codes as resampling the whole grid. The
  // probability map, when asked for, is made on the whole grid.
  const MaskBox block = with_probability ? whole_block(grid) : foreground_block(probabilities, recipe_.threshold, model_grid, grid);
  if (multi) {
    s.labels = class_codes_between_grids(probabilities.slice(0, 1), model_grid, grid,
                                         with_probability ? &s.probability : nullptr, &block);
    if (with_probability) s.probability.clamp_(0, 1);
  } else {
    // Only the foreground probability goes back to the input grid (bounded memory).
    s.labels = torch::zeros(tensor_shape(grid), torch::kUInt8);
    if (!block.empty()) {
      const std::array<int64_t, 3> end{block.begin[0] + block.size[0], block.begin[1] + block.size[1],
                                       block.begin[2] + block.size[2]};
      const torch::Tensor p =
          resample_block_between_grids(probabilities[1].contiguous(), model_grid, grid, block.begin, end).clamp_(0, 1);
      block.crop(s.labels).copy_(p > float(recipe_.threshold));
      if (with_probability) s.probability = p;  // the whole grid's
    }
  }
  s.seconds.resample = seconds_since(t0);
  t0 = Clock::now();
  // Nothing outside the block is foreground, so every component lies in it: small ones are
  // removed there (the same codes, without whole-grid passes per label on a thin-slice scan).
  const torch::Tensor in_block = block.empty() ? torch::Tensor() : block.crop(s.labels);
  const Geometry block_grid = block.empty() ? grid : block.crop(grid);
  for (int64_t code = 1; in_block.defined() && code < int64_t(recipe_.labels.size()); ++code) {
    // A two-class label map is the mask itself: no copy per label.
    const torch::Tensor in_label = multi ? (in_block == code).to(torch::kUInt8) : in_block;
    int64_t removed = 0;
    const ComponentCleanup cleanup =
        code == 1 ? ComponentCleanup{recipe_.min_component_ml, recipe_.min_component_fraction, recipe_.keep_satellites_within_mm}
                  : ComponentCleanup{recipe_.min_component_ml, 0.0, 0.0};
    const torch::Tensor kept = remove_small_components(in_label, block_grid, cleanup, &removed);
    if (code == 1) s.removed_components = removed;
    if (!removed) continue;
    if (multi) in_block.masked_fill_((in_label != 0) & (kept == 0), 0);
    else in_block.copy_(kept);
  }
  if (multi) {
    s.mask = torch::zeros_like(s.labels);
    if (in_block.defined()) block.crop(s.mask).copy_(in_block == 1);
  } else {
    s.mask = s.labels;
  }
  s.seconds.cleanup = seconds_since(t0);
  return s;
}

}  // namespace hemexp
