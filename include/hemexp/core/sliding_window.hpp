#pragma once

#include <array>
#include <functional>
#include <vector>

#include <torch/types.h>

namespace hemexp {

struct SlidingWindowOptions {
  std::array<int64_t, 3> patch_size{64, 64, 64};  // (z, y, x)
  double overlap = 0.5;                            // fraction of a patch shared by neighbours
  bool mirror = false;                             // test-time augmentation: average of 8 flips
  float pad_value = 0.f;                           // for images smaller than a patch
  torch::Device device = torch::kCPU;              // where patches are evaluated
  // Windows per pass: stacked into one forward pass (a batch), or, with concurrent_windows, sent
  // through the network at the same time, one window per thread. The segmenter's choice is the
  // thread count on the CPU, concurrently, and 8 stacked on a GPU. Stacked results agree with one
  // window at a time to float rounding.
  int64_t windows_per_pass = 1;
  // On the CPU: the windows of a pass go through the network one per thread, each on its thread
  // alone (every ATen, oneDNN and OpenBLAS call inside at::parallel_for runs single-threaded),
  // and are then added in window order. Each window's logits are those of a one-thread run, so
  // the probabilities are the same bits on any thread count (test
  // SlidingWindow.ConcurrentWindowsGiveOneThreadBits). The network must be safe to call from
  // several threads at once (a LibTorch module at inference is). Ignored off the CPU.
  bool concurrent_windows = false;
  // Tile only the bounding box of the voxels that differ from pad_value (in any channel, by more
  // than 1e-4); outside it class 0 has probability 1. A window there would see nothing but the pad
  // value (a CT clipped below at air/fat level: the air around the head), so what changes is where
  // the windows fall, and how many there are: about half as many for a head in a 25 cm field of view.
  bool crop_to_content = false;
};

// logits (1, K, pz, py, px) of one patch (1, C, pz, py, px) on the options' device.
using PatchNetwork = std::function<torch::Tensor(const torch::Tensor&)>;

// Window start positions along one axis: evenly spaced, first at 0, last at size - patch,
// neighbours at most patch * (1 - overlap) apart. One window at 0 when size <= patch.
std::vector<int64_t> window_starts(int64_t size, int64_t patch, double overlap);

// nnU-Net's Gaussian importance weights (sigma = patch / 8), maximum 1, no zeros.
torch::Tensor gaussian_importance(const std::array<int64_t, 3>& patch_size);

// out += softmax(logits over its first dimension) * weight, in one pass: logits (K, z, y, x) and
// weight (z, y, x) float32 CPU, out (K, z, y, x) float32 CPU with x adjacent and no element
// twice (a window of the accumulator), K at most 16; gradients off; an x86 CPU with AVX2 and FMA
// (`applicable` says so; the sliding window falls back to ATen's softmax and addcmul_). The
// sliding window's step on the CPU without mirroring. ATen's order (maximum over the classes,
// exp of each logit less it, their sum in class order, each exp divided by it, times the weight,
// added), with the selective scan's exp (about 1 ulp; 0 below -87.3, as expf's subnormals are
// to float precision): each value within a few ulp of softmax + addcmul_, not always the same
// bits. Throws CoreError where it does not apply.
void softmax_accumulate(const torch::Tensor& logits, const torch::Tensor& weight, torch::Tensor& out);
bool softmax_accumulate_applicable(const torch::Tensor& logits, const torch::Tensor& weight, const torch::Tensor& out);

// Softmax probabilities (K, z, y, x) on the CPU for an image (C, z, y, x): every window is
// evaluated, weighted by the Gaussian, and the weighted average is returned. The image goes to
// the options' device once and the accumulators live there: one transfer in and one out per
// image, whatever the device. Memory (on the device): the image, one (K, z, y, x) accumulator
// and one (z, y, x) weight map, plus windows_per_pass patches (and, with concurrent_windows,
// one network's working memory per window of a pass).
torch::Tensor sliding_window_probabilities(const PatchNetwork& network, const torch::Tensor& image,
                                           int64_t num_classes, const SlidingWindowOptions& options);

}  // namespace hemexp
