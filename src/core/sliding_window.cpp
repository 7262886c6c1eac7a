#include "hemexp/core/sliding_window.hpp"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/runtime.hpp"
#include "simd.hpp"

namespace hemexp {

std::vector<int64_t> window_starts(int64_t size, int64_t patch, double overlap) {
  if (size <= patch) return {0};
  const double step = std::max(1.0, double(patch) * (1.0 - overlap));
  const int64_t n = int64_t(std::ceil(double(size - patch) / step)) + 1;
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < n; ++i)
    starts.push_back(int64_t(std::llround(double(i) * double(size - patch) / double(n - 1))));
  return starts;
}

torch::Tensor gaussian_importance(const std::array<int64_t, 3>& patch_size) {
  torch::Tensor g = torch::ones({1}, torch::kFloat64);
  torch::Tensor map;
  std::vector<torch::Tensor> axes;
  for (int a = 0; a < 3; ++a) {
    const double sigma = double(patch_size[a]) / 8.0, centre = double(patch_size[a] - 1) / 2.0;
    const auto x = torch::arange(patch_size[a], torch::kFloat64);
    axes.push_back(torch::exp(-(x - centre).pow(2) / (2 * sigma * sigma)));
  }
  map = axes[0].view({-1, 1, 1}) * axes[1].view({1, -1, 1}) * axes[2].view({1, 1, -1});
  map = map / map.max();
  const double smallest = map.masked_select(map > 0).min().item<double>();
  return map.clamp_min(smallest).to(torch::kFloat32);
}

namespace {

// [first, last] of the indices along `dim` of (z, y, x) where `content` holds any true value;
// {0, -1} when none.
std::pair<int64_t, int64_t> content_range(const torch::Tensor& content, int64_t dim) {
  std::vector<int64_t> others;
  for (int64_t d = 0; d < 3; ++d)
    if (d != dim) others.push_back(d);
  const torch::Tensor along = content.any(others[1]).any(others[0]).nonzero();
  if (along.numel() == 0) return {0, -1};
  return {along.min().item<int64_t>(), along.max().item<int64_t>()};
}

constexpr int64_t kSoftmaxMaxClasses = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HEMEXP_SOFTMAX_X86 1

// kW voxels: logit of class c at l[c * lplane + i], the accumulator's at o[c * ostep + i]. ATen's
// order: the maximum over the classes, exp of each logit less it (the selective scan's exp,
// simd.hpp), their sum in class order, each exp divided by it, times the weight, added.
template <int kW>
HEMEXP_INLINE void softmax_group(const float* l, int64_t lplane, int64_t classes, const float* g, float* o,
                                 int64_t ostep) {
  using S = simd::Simd<kW>;
  using F = typename S::F;
  F e[kSoftmaxMaxClasses];
  F m = S::load(l);
  for (int64_t c = 1; c < classes; ++c) {
    const F v = S::load(l + c * lplane);
    m = v > m ? v : m;
  }
  F sum = S::splat(0.0f);
  for (int64_t c = 0; c < classes; ++c) {
    e[c] = S::exp(S::load(l + c * lplane) - m);
    sum += e[c];
  }
  const F w = S::load(g);
  for (int64_t c = 0; c < classes; ++c) S::store(o + c * ostep, S::load(o + c * ostep) + (e[c] / sum) * w);
}

// One row of `width` voxels, kW at a time (class c's logits `plane` apart, its accumulator
// `ostride` apart); a last group of fewer than kW voxels through a padded copy.
template <int kW>
HEMEXP_INLINE void softmax_row(const float* l, int64_t plane, int64_t classes, const float* g, float* o, int64_t ostride,
                               int64_t width) {
  int64_t x = 0;
  for (; x + kW <= width; x += kW) softmax_group<kW>(l + x, plane, classes, g + x, o + x, ostride);
  if (x == width) return;
  const int64_t rest = width - x;
  float lt[kSoftmaxMaxClasses * kW] = {}, gt[kW] = {}, ot[kSoftmaxMaxClasses * kW] = {};
  for (int64_t c = 0; c < classes; ++c)
    for (int64_t i = 0; i < rest; ++i) {
      lt[c * kW + i] = l[c * plane + x + i];
      ot[c * kW + i] = o[c * ostride + x + i];
    }
  for (int64_t i = 0; i < rest; ++i) gt[i] = g[x + i];
  softmax_group<kW>(lt, kW, classes, gt, ot, kW);
  for (int64_t c = 0; c < classes; ++c)
    for (int64_t i = 0; i < rest; ++i) o[c * ostride + x + i] = ot[c * kW + i];
}

__attribute__((target("avx512f,avx2,fma"))) void softmax_row_avx512(const float* l, int64_t plane, int64_t classes,
                                                                    const float* g, float* o, int64_t ostride,
                                                                    int64_t width) {
  softmax_row<16>(l, plane, classes, g, o, ostride, width);
}

__attribute__((target("avx2,fma"))) void softmax_row_avx2(const float* l, int64_t plane, int64_t classes,
                                                          const float* g, float* o, int64_t ostride, int64_t width) {
  softmax_row<8>(l, plane, classes, g, o, ostride, width);
}
#endif

}  // namespace

bool softmax_accumulate_applicable(const torch::Tensor& logits, const torch::Tensor& weight, const torch::Tensor& out) {
#ifdef HEMEXP_SOFTMAX_X86
  const auto plain = [](const torch::Tensor& t) { return t.defined() && t.is_cpu() && t.scalar_type() == torch::kFloat32; };
  if (!simd::cpu_has_avx2_fma() || torch::GradMode::is_enabled()) return false;
  if (!plain(logits) || !plain(weight) || !plain(out) || logits.dim() != 4 || weight.dim() != 3 || out.dim() != 4)
    return false;
  if (logits.size(0) < 1 || logits.size(0) > kSoftmaxMaxClasses || out.sizes() != logits.sizes()) return false;
  if (weight.sizes() != logits.sizes().slice(1) || out.stride(3) != 1) return false;
  // No element reached twice: what ATen's in-place ops refuse (has_internal_overlap says Yes), and
  // any stride of 0 along a dimension of more than one (an expanded tensor).
  for (int64_t d = 0; d < 4; ++d)
    if (out.size(d) > 1 && out.stride(d) == 0) return false;
  return at::has_internal_overlap(out) != at::MemOverlap::Yes;
#else
  (void)logits, (void)weight, (void)out;
  return false;
#endif
}

void softmax_accumulate(const torch::Tensor& logits, const torch::Tensor& weight, torch::Tensor& out) {
  if (!softmax_accumulate_applicable(logits, weight, out))
    throw CoreError("softmax_accumulate: needs float32 CPU logits (K <= 16, z, y, x), a (z, y, x) weight and a (K, z, y, "
                    "x) output with x adjacent and no overlap, gradients off, a CPU with AVX2 and FMA");
  const torch::Tensor l = logits.contiguous(), g = weight.contiguous();
  const int64_t classes = l.size(0), depth = l.size(1), height = l.size(2), width = l.size(3);
  const float* lp = l.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t plane = depth * height * width;
#ifdef HEMEXP_SOFTMAX_X86
  const bool avx512 = simd::cpu_has_avx512f();
#endif
  at::parallel_for(0, depth * height, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t z = r / height, y = r % height;
      float* row = op + z * out.stride(1) + y * out.stride(2);
#ifdef HEMEXP_SOFTMAX_X86
      if (avx512)
        softmax_row_avx512(lp + r * width, plane, classes, gp + r * width, row, out.stride(0), width);
      else
        softmax_row_avx2(lp + r * width, plane, classes, gp + r * width, row, out.stride(0), width);
#else
      (void)row;
#endif
    }
  });
}

torch::Tensor sliding_window_probabilities(const PatchNetwork& network, const torch::Tensor& image,
                                           int64_t num_classes, const SlidingWindowOptions& o) {
  if (image.dim() != 4) throw CoreError("sliding window: image must be (C, z, y, x)");
  if (o.overlap < 0 || o.overlap >= 1) throw CoreError("sliding window: overlap must be in [0, 1)");
  if (o.crop_to_content) {
    const torch::Tensor content = ((image - o.pad_value).abs() > 1e-4f).any(0);
    std::array<std::pair<int64_t, int64_t>, 3> box;
    bool whole = true;
    for (int64_t d = 0; d < 3; ++d) {
      box[size_t(d)] = content_range(content, d);
      whole = whole && box[size_t(d)].first == 0 && box[size_t(d)].second == image.size(d + 1) - 1;
    }
    if (!whole) {
      torch::Tensor out = torch::zeros({num_classes, image.size(1), image.size(2), image.size(3)}, torch::kFloat32);
      out[0].fill_(1.0f);
      if (box[0].second < box[0].first) return out;  // nothing but the pad value: no window at all
      SlidingWindowOptions inner = o;
      inner.crop_to_content = false;
      const auto crop = [&box](const torch::Tensor& t) {
        return t.slice(1, box[0].first, box[0].second + 1)
            .slice(2, box[1].first, box[1].second + 1)
            .slice(3, box[2].first, box[2].second + 1);
      };
      crop(out).copy_(sliding_window_probabilities(network, crop(image), num_classes, inner));
      return out;
    }
  }
  // Pad up to one patch where the image is smaller, crop back at the end.
  std::array<int64_t, 3> size{image.size(1), image.size(2), image.size(3)}, padded{};
  std::vector<int64_t> pad;  // constant_pad_nd order: last dim first
  for (int a = 2; a >= 0; --a) {
    padded[a] = std::max(size[a], o.patch_size[a]);
    pad.push_back(0);
    pad.push_back(padded[a] - size[a]);
  }
  if (o.windows_per_pass < 1) throw CoreError("sliding window: windows_per_pass must be at least 1");
  // One transfer in: the image goes to the device once; the accumulators live there.
  const torch::Tensor input = torch::constant_pad_nd(image.to(o.device, torch::kFloat32), pad, o.pad_value);
  const torch::Tensor weight_patch = gaussian_importance(o.patch_size).to(o.device);
  const auto on_device = torch::TensorOptions().dtype(torch::kFloat32).device(o.device);
  torch::Tensor probabilities = torch::zeros({num_classes, padded[0], padded[1], padded[2]}, on_device);
  torch::Tensor weights = torch::zeros({padded[0], padded[1], padded[2]}, on_device);

  std::vector<std::vector<int64_t>> flips{{}};
  if (o.mirror) flips = {{}, {2}, {3}, {4}, {2, 3}, {2, 4}, {3, 4}, {2, 3, 4}};

  std::vector<std::array<int64_t, 3>> starts;
  for (int64_t z : window_starts(padded[0], o.patch_size[0], o.overlap))
    for (int64_t y : window_starts(padded[1], o.patch_size[1], o.overlap))
      for (int64_t x : window_starts(padded[2], o.patch_size[2], o.overlap)) starts.push_back({z, y, x});
  const auto window = [&o](const torch::Tensor& t, const std::array<int64_t, 3>& at, int64_t first_dim) {
    return t.slice(first_dim, at[0], at[0] + o.patch_size[0])
        .slice(first_dim + 1, at[1], at[1] + o.patch_size[1])
        .slice(first_dim + 2, at[2], at[2] + o.patch_size[2]);
  };
  // Without mirroring the logits are kept and each window's softmax is taken as it is added
  // (in one pass where softmax_accumulate applies); with it, the flips' probabilities are summed.
  const bool single = flips.size() == 1;
  const auto evaluate = [&](const torch::Tensor& batch) {
    torch::Tensor sum;
    for (const auto& dims : flips) {
      const torch::Tensor in = dims.empty() ? batch : batch.flip(dims);
      torch::Tensor p = network(in).to(torch::kFloat32);
      if (!single) p = torch::softmax(p, 1);
      if (!dims.empty()) p = p.flip(dims);
      sum = sum.defined() ? sum + p : p;
    }
    if (sum.size(1) != num_classes) throw CoreError("sliding window: the network gives a different class count");
    if (sum.size(0) != batch.size(0)) throw CoreError("sliding window: the network gives a different batch size");
    return sum;
  };
  const bool concurrent = o.concurrent_windows && o.device.is_cpu();
  for (size_t first = 0; first < starts.size(); first += size_t(o.windows_per_pass)) {
    const size_t last = std::min(starts.size(), first + size_t(o.windows_per_pass));
    // Each window's (1, K, z, y, x) result.
    std::vector<torch::Tensor> results(last - first);
    if (concurrent) {
      // One window per thread: inside at::parallel_for every ATen, oneDNN and OpenBLAS call of
      // the network runs on its thread alone, and each worker is told it has one thread
      // (OneThreadScope: the libraries choose their algorithm by that count), so each window gets
      // the bits of a one-thread run whatever the thread count. A lone window still goes through
      // the parallel region (with an idle second slot) so that it too runs on one thread. The
      // workers take the caller's thread-local state (inference mode, grad mode).
      const int64_t n = int64_t(last - first);
      const at::ThreadLocalState state;
      at::parallel_for(0, std::max<int64_t>(n, 2), 1, [&](int64_t begin, int64_t end) {
        const at::ThreadLocalStateGuard guard(state);
        const OneThreadScope one_thread;
        for (int64_t i = begin; i < std::min(end, n); ++i)
          results[size_t(i)] = evaluate(window(input, starts[first + size_t(i)], 1).unsqueeze(0));
      });
    } else {
      std::vector<torch::Tensor> patches;
      for (size_t w = first; w < last; ++w) patches.push_back(window(input, starts[w], 1));
      const torch::Tensor sum = evaluate(patches.size() == 1 ? patches[0].unsqueeze(0) : torch::stack(patches));
      for (size_t w = first; w < last; ++w) results[w - first] = sum.slice(0, int64_t(w - first), int64_t(w - first) + 1);
    }
    for (size_t w = first; w < last; ++w) {
      // One pass into the accumulator, without the two temporaries of `+= p * weight` (the same
      // values on the CPU, checked equal; on CUDA an FMA may round the last bit differently).
      const torch::Tensor item = results[w - first][0];
      torch::Tensor target = window(probabilities, starts[w], 1);
      if (single && softmax_accumulate_applicable(item, weight_patch, target))
        softmax_accumulate(item, weight_patch, target);
      else
        target.addcmul_(single ? torch::softmax(item, 0) : item / float(flips.size()), weight_patch);
      window(weights, starts[w], 0) += weight_patch;
    }
  }
  probabilities /= weights.unsqueeze(0);
  // One transfer out.
  return probabilities.slice(1, 0, size[0]).slice(2, 0, size[1]).slice(3, 0, size[2]).contiguous().to(torch::kCPU);
}

}  // namespace hemexp
