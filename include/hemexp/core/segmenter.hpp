#pragma once

#include <ATen/Parallel.h>

#include "hemexp/core/measurements.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/preprocessing.hpp"
#include "hemexp/core/sliding_window.hpp"
#include "hemexp/core/umamba.hpp"

namespace hemexp {

// Sliding-window windows per forward pass off the CPU (on the CPU: one per thread, at once).
constexpr int64_t kGpuWindowsPerPass = 8;

// How a segmentation model is run, from the card's "inference" and "postprocessing" blocks.
struct SegmentationRecipe {
  Preprocessing preprocessing;
  std::array<int64_t, 3> patch_size{16, 112, 112};  // (z, y, x) at the model spacing
  double overlap = 0.5;
  bool mirror = false;
  double threshold = 0.5;         // on the foreground probability, on the input grid
  double min_component_ml = 0.0;  // smaller 26-connected components are removed
  // Components with fewer voxels than this fraction of the largest one are removed too (the
  // largest is always kept): scattered false positives beside a real hematoma.
  double min_component_fraction = 0.0;
  // Satellites: hematoma components whose nearest voxel lies within this distance (mm) of the
  // largest one stay whatever their size (0: off; the card's postprocessing.keep_satellites_within_mm).
  double keep_satellites_within_mm = 0.0;
  // The card's "labels", names by code: 0 background, 1 the parenchymal hematoma (what the
  // mask, the measurements and the classifier use), then any further tissue (e.g. "ivh",
  // "edema"). A two-class model thresholds the hematoma probability; a model with more classes
  // gives each voxel its most probable class.
  std::vector<std::string> labels{"background", "hematoma"};

  bool multi_class() const { return labels.size() > 2; }
  static SegmentationRecipe from_card(const nlohmann::json& card);
};

// The card's "labels" ({"0": "background", "1": "hematoma", ...}), names by code, checked: codes
// 0 .. K-1 each named once, label 1 the hematoma; background and hematoma when the card has
// none. ModelError otherwise.
std::vector<std::string> segmentation_labels(const nlohmann::json& card);

// The network input for a canonical-orientation CT volume: resampled to the model spacing and
// normalised, shape (1, z, y, x). model_grid receives the grid it lives on.
torch::Tensor prepare_network_input(const Volume& canonical, const Preprocessing& p, Geometry* model_grid);

// Class codes on grid `to` from per-class maps on grid `from`: `foreground` (K - 1, z, y, x)
// holds classes 1 .. K - 1 (probabilities, or one-hot label maps); each is resampled linearly
// and a voxel takes the class with the largest value, background's being 1 minus their sum;
// ties go to the lower code (with two classes: class 1 where its value is above 0.5). The
// output is made in slabs of 8 slices: whatever K, only the uint8 codes and class 1's map
// (first_class, when given) are whole volumes of `to`. With `block` (tensor order z, y, x),
// only that block of `to` is computed (the same values as there on the whole grid); codes and
// class 1's map are 0 outside it.
torch::Tensor class_codes_between_grids(const torch::Tensor& foreground, const Geometry& from, const Geometry& to,
                                        torch::Tensor* first_class = nullptr, const MaskBox* block = nullptr);

// The block of grid `to` outside which no voxel can be foreground once `probabilities`
// (K, z, y, x) on grid `from` are resampled linearly: two classes, class 1 above `threshold`;
// more, any class beating background (class_codes_between_grids). Empty when nothing can.
// Exact, not a heuristic: a linear interpolation is a convex combination of source voxels,
// and every source voxel within 1e-3 of foreground counts.
MaskBox foreground_block(const torch::Tensor& probabilities, double threshold, const Geometry& from, const Geometry& to);

// The training label for that input: a uint8 label map (codes 0 .. num_classes - 1; a mask
// for two classes) on the canonical grid brought onto model_grid the way `run` brings
// probabilities back, mirrored (each class's one-hot map resampled linearly, then
// class_codes_between_grids: a voxel is hematoma when more than half of it is). `hemexp
// prepare` uses it, so training and inference resample alike. Codes at or above num_classes
// count as background.
torch::Tensor prepare_network_label(const torch::Tensor& canonical_labels, const Geometry& canonical,
                                    const Geometry& model_grid, int64_t num_classes = 2);

// Wall seconds of segment()'s steps (benchmarks: bench/bench_segmenter.cpp).
struct SegmentTimings {
  double prepare = 0;   // resampling to the model grid, normalisation
  double network = 0;   // sliding window: every window through the network, weighted sum
  double resample = 0;  // the probabilities back onto the input grid (the block that can hold foreground)
  double cleanup = 0;   // threshold, small components removed
};

struct Segmentation {
  torch::Tensor mask;         // uint8 (z, y, x) on the canonical grid of the input: the parenchymal hematoma
  torch::Tensor labels;       // uint8 codes of the card's labels on the same grid (labels == 1 is mask)
  torch::Tensor probability;  // float32 hematoma (class 1) probability on the same grid (only when asked for)
  int64_t removed_components = 0;
  // Network evaluations of a window (mirrored copies each count): the windows over the box of
  // the head (sliding window's crop_to_content), not over the whole model grid.
  int64_t windows = 0;
  SegmentTimings seconds;
};

// Which 26-connected components of a mask go: those smaller than min_ml, or with fewer voxels
// than min_fraction_of_largest times the largest component (which is always kept when only
// the fraction applies), except those whose nearest voxel lies within keep_within_mm of the
// largest component (satellites of the clot; 0: no exception).
struct ComponentCleanup {
  double min_ml = 0.0;
  double min_fraction_of_largest = 0.0;
  double keep_within_mm = 0.0;
};
// Removes them from a uint8 mask; removed receives how many components went.
torch::Tensor remove_small_components(const torch::Tensor& mask, const Geometry& g, const ComponentCleanup& c,
                                      int64_t* removed = nullptr);

// A segmentation model ready to run: its network (built from the card, weights loaded, on its
// device, in eval mode), its recipe (from the same card) and its provenance. Loaded once per
// run and shared by every case through the const segment(); nothing can change the recipe
// after loading, so it cannot drift from the card it came from.
class Segmenter {
 public:
  // ModelError when the file is not a valid segmentation model.
  static Segmenter load(const std::filesystem::path& path, const torch::Device& device = torch::kCPU);
  explicit Segmenter(ModelFile file, const torch::Device& device = torch::kCPU);

  // prepare, sliding window (softmax), probabilities resampled back onto the canonical grid,
  // threshold (two classes) or most probable class (more), small components removed: of the
  // hematoma with the card's min_component_ml and min_component_fraction, of any other label
  // with min_component_ml alone (both lateral ventricles may hold blood). Only the block of the
  // grid that can hold foreground is resampled (foreground_block; the same labels as the whole
  // grid), unless with_probability asks for the hematoma probability on the whole grid.
  Segmentation segment(const Volume& canonical, bool with_probability = false) const;

  const SegmentationRecipe& recipe() const { return recipe_; }
  const UMamba& network() const { return network_; }
  const torch::Device& device() const { return device_; }
  // Windows per pass of the sliding window: on the CPU one per thread (at::get_num_threads()),
  // each through the network on its thread alone (SlidingWindowOptions::concurrent_windows: the
  // same bits on any thread count); elsewhere kGpuWindowsPerPass stacked into one forward pass
  // (agrees to float rounding); unless set (benchmarks and the parity check; on the CPU, 1 runs
  // each window on all threads, one after another).
  int64_t windows_per_pass() const {
    return windows_per_pass_ > 0 ? windows_per_pass_ : device_.is_cpu() ? int64_t(at::get_num_threads()) : kGpuWindowsPerPass;
  }
  void set_windows_per_pass(int64_t n) { windows_per_pass_ = n; }
  // The precision of the network's convolutions (UMambaImpl::set_convolution_dtype): "fp32"
  // (the default: what the card's validation measured), "bf16" (CPU with oneDNN's bfloat16
  // support, or CUDA) or "fp16" (CUDA only); the Mamba layers and the scan stay float32.
  // CoreError for another name or one this device cannot run.
  void set_precision(const std::string& name);
  const std::string& precision() const { return precision_; }
  // Path, sha256 and card of the file (its tensors live in the network, not here).
  const ModelFile& file() const { return file_; }

 private:
  ModelFile file_;
  SegmentationRecipe recipe_;
  UMamba network_{nullptr};
  torch::Device device_;
  int64_t windows_per_pass_ = 0;  // 0: by device
  std::string precision_ = "fp32";
};

}  // namespace hemexp
