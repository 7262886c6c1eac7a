// Preprocessing (resampling between grids, CT normalisation) and sliding-window inference.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>
#include <ATen/Parallel.h>


#include "hemexp/core/error.hpp"
#include "hemexp/core/preprocessing.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/sliding_window.hpp"
#include "test_helpers.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

TEST(SlidingWindow, StartsCoverTheImageWithTheRequestedOverlap) {
  EXPECT_EQ(window_starts(100, 40, 0.5), (std::vector<int64_t>{0, 20, 40, 60}));
  EXPECT_EQ(window_starts(101, 40, 0.5), (std::vector<int64_t>{0, 15, 31, 46, 61}));
  EXPECT_EQ(window_starts(40, 40, 0.5), (std::vector<int64_t>{0}));
  EXPECT_EQ(window_starts(30, 40, 0.5), (std::vector<int64_t>{0}));
  EXPECT_EQ(window_starts(100, 40, 0.0), (std::vector<int64_t>{0, 30, 60}));
  EXPECT_EQ(window_starts(165, 96, 0.5), (std::vector<int64_t>{0, 35, 69}));  // 34.5 rounds up (and in Python)
}

TEST(SlidingWindow, GaussianImportance) {
  const torch::Tensor g = gaussian_importance({9, 16, 16});
  EXPECT_EQ(g.sizes(), (c10::IntArrayRef{9, 16, 16}));
  EXPECT_FLOAT_EQ(g.max().item<float>(), g[4][7][7].item<float>());
  EXPECT_GT(g.min().item<float>(), 0.f);
  EXPECT_TRUE(torch::allclose(g, g.flip({0, 1, 2})));  // symmetric
}

// A voxel-wise "network": logits (0, 3 * value) at every voxel. Whatever the windows,
// overlaps and flips, the result must equal the voxel-wise softmax.
torch::Tensor voxelwise(const torch::Tensor& patch) {
  return torch::cat({torch::zeros_like(patch), 3 * patch}, 1);
}

TEST(SlidingWindow, ReproducesAVoxelwiseNetworkExactly) {
  torch::manual_seed(3);
  for (const bool mirror : {false, true})
    for (const auto& shape : {std::vector<int64_t>{1, 13, 37, 29}, std::vector<int64_t>{1, 5, 9, 7}}) {
      const torch::Tensor image = torch::randn(shape);
      SlidingWindowOptions o;
      o.patch_size = {8, 16, 16};
      o.overlap = 0.5;
      o.mirror = mirror;
      const torch::Tensor p = sliding_window_probabilities(voxelwise, image, 2, o);
      const torch::Tensor expected = torch::softmax(voxelwise(image.unsqueeze(0)), 1)[0];
      EXPECT_EQ(p.sizes(), expected.sizes());
      EXPECT_LT((p - expected).abs().max().item<double>(), 1e-5) << "mirror " << mirror;
    }
}

// The CPU's one-pass softmax and accumulation (softmax_accumulate) against ATen's softmax and
// addcmul_: one class (probability 1), two, four and sixteen; rows of 21 voxels (a full group and
// a partial one), of 96 and of 3; logits spread over +-200 (differences far beyond where exp
// underflows); logits that are a strided view; an accumulator whose depth and rows are swapped in
// memory. Into zeros, each value within 4 ulp of ATen's (an exp wrong by more than its rounding
// at any magnitude shows); into a window of a larger accumulator, nothing outside it changes.
// The next test skips on a CPU without AVX2 and FMA (the sliding window then uses ATen's softmax
// and addcmul_). The gate must follow the CPU: on an x86 CPU with both, the one-pass kernel applies.
TEST(SlidingWindow, SoftmaxAccumulateAppliesExactlyWhereTheCpuHasAvx2AndFma) {
  c10::InferenceMode guard;
  torch::Tensor out = torch::zeros({2, 1, 1, 16});
  const bool applies = softmax_accumulate_applicable(torch::zeros({2, 1, 1, 16}), torch::ones({1, 1, 16}), out);
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // as the kernel is compiled
  EXPECT_EQ(applies, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
#else
  EXPECT_FALSE(applies);
#endif
}

TEST(SlidingWindow, SoftmaxAccumulateIsSoftmaxThenAddcmul) {
  {
    c10::InferenceMode guard;
    torch::Tensor probe = torch::zeros({2, 1, 1, 16});
    if (!softmax_accumulate_applicable(torch::zeros({2, 1, 1, 16}), torch::ones({1, 1, 16}), probe))
      GTEST_SKIP() << "softmax_accumulate needs an x86 CPU with AVX2 and FMA (the sliding window uses ATen's softmax)";
  }
  torch::manual_seed(21);
  struct Case {
    std::vector<int64_t> logits;
    double scale;
  };
  for (const Case& c : {Case{{1, 3, 5, 21}, 3.0}, Case{{2, 3, 5, 21}, 3.0}, Case{{4, 16, 12, 96}, 6.0},
                        Case{{16, 2, 3, 40}, 10.0}, Case{{4, 2, 2, 3}, 200.0}, Case{{2, 1, 1, 17}, 40.0}}) {
    const int64_t k = c.logits[0], d = c.logits[1], h = c.logits[2], w = c.logits[3];
    const torch::Tensor logits = (c.scale * torch::randn({k, d, h, w + 3})).slice(3, 1, 1 + w);  // a strided view
    const torch::Tensor weight = torch::rand({d, h, w}) + 0.1;
    const torch::Tensor expected = torch::softmax(logits, 0) * weight;
    // Into zeros, the accumulator's depth and rows swapped in memory.
    torch::Tensor swapped = torch::zeros({k, h, d, w}).permute({0, 2, 1, 3});
    EXPECT_FALSE(softmax_accumulate_applicable(logits, weight, swapped));  // gradients on
    c10::InferenceMode guard;
    ASSERT_TRUE(softmax_accumulate_applicable(logits, weight, swapped));
    softmax_accumulate(logits, weight, swapped);
    const torch::Tensor error = (swapped - expected).abs() - (4 * 6e-8 * expected.abs() + 1e-37);
    EXPECT_LE(error.max().item<double>(), 0.0) << c.logits;
    // Into a window of a larger accumulator: the window gets expected, the rest stays.
    const torch::Tensor start = torch::rand({k, d + 3, h + 4, w + 5});
    const auto window = [&](torch::Tensor t) { return t.slice(1, 2, 2 + d).slice(2, 1, 1 + h).slice(3, 3, 3 + w); };
    torch::Tensor got = start.clone(), target = window(got);
    softmax_accumulate(logits, weight, target);
    EXPECT_LE((target - (window(start) + expected)).abs().max().item<double>(), 1e-6);
    window(got).copy_(window(start));
    EXPECT_TRUE(torch::equal(got, start)) << "changed outside the window";
  }
  c10::InferenceMode guard;
  // Two classes whose logits differ by ln 3: probabilities 3/4 and 1/4.
  const torch::Tensor logits = torch::stack({torch::full({1, 2, 18}, std::log(3.0f)), torch::zeros({1, 2, 18})});
  torch::Tensor out = torch::zeros({2, 1, 2, 18});
  softmax_accumulate(logits, torch::ones({1, 2, 18}), out);
  EXPECT_LE((out[0] - 0.75).abs().max().item<double>(), 1e-7);
  EXPECT_LE((out[1] - 0.25).abs().max().item<double>(), 1e-7);
  torch::Tensor many = torch::zeros({17, 1, 2, 3}), wide = torch::zeros({2, 1, 2, 6});
  EXPECT_FALSE(softmax_accumulate_applicable(torch::zeros({17, 1, 2, 3}), torch::ones({1, 2, 3}), many));
  torch::Tensor strided = wide.slice(3, 0, 6, 2), overlapping = torch::zeros({2, 1, 1, 3}).expand({2, 1, 2, 3});
  EXPECT_THROW(softmax_accumulate(torch::zeros({2, 1, 2, 3}), torch::ones({1, 2, 3}), strided), CoreError);
  EXPECT_THROW(softmax_accumulate(torch::zeros({2, 1, 2, 3}), torch::ones({1, 2, 3}), overlapping), CoreError);
  torch::Tensor doubles = torch::zeros({2, 1, 2, 3}, torch::kFloat64);
  EXPECT_THROW(softmax_accumulate(torch::zeros({2, 1, 2, 3}, torch::kFloat64), torch::ones({1, 2, 3}), doubles), CoreError);
}

// Windows stacked into one forward pass (what a GPU does), or sent through the network at once,
// one per thread (the CPU), give what one window at a time gives: a network whose output depends
// on each window as a whole (its mean) sees every window once, in its place, whatever the pass,
// with and without mirroring and a last pass left short.
TEST(SlidingWindow, WindowsPerPassDoNotChangeTheResult) {
  const auto per_window = [](const torch::Tensor& patch) {
    const torch::Tensor centred = patch - patch.mean({1, 2, 3, 4}, true);
    return torch::cat({torch::zeros_like(patch), 2 * centred, -centred}, 1);
  };
  torch::manual_seed(4);
  const torch::Tensor image = torch::randn({1, 13, 37, 29});
  for (const bool mirror : {false, true}) {
    SlidingWindowOptions o;
    o.patch_size = {8, 16, 16};
    o.mirror = mirror;
    const torch::Tensor one = sliding_window_probabilities(per_window, image, 3, o);
    for (const bool concurrent : {false, true})
      for (const int64_t n : {2, 3, 100}) {  // 3 x 3 x 3 = 27 windows: 13 + 1, 9, 1 pass
        o.windows_per_pass = n;
        o.concurrent_windows = concurrent;
        const torch::Tensor batched = sliding_window_probabilities(per_window, image, 3, o);
        ASSERT_EQ(batched.sizes(), one.sizes());
        EXPECT_LT((batched - one).abs().max().item<double>(), 1e-6)
            << n << " windows per pass, mirror " << mirror << ", concurrent " << concurrent;
      }
  }
  SlidingWindowOptions o;
  o.windows_per_pass = 0;
  EXPECT_THROW(sliding_window_probabilities(per_window, image, 3, o), CoreError);
}

// The CPU's way (the segmenter's default there): the windows of a pass go through the shipped
// network at once, one per thread, each on its thread alone. The probabilities are the same bits
// as one window at a time on one thread, on 2 and 3 threads, with more windows a pass than
// threads and a lone window in the last pass, and with mirroring; the network really is called from
// two threads at once, inside the caller's inference mode. (One window at a time on two threads,
// each window's convolutions split between them, agrees to float rounding only.)
TEST(SlidingWindow, ConcurrentWindowsGiveOneThreadBits) {
  const Segmenter seg = Segmenter::load(test::shipped_model("hemexp-seg-labels.safetensors"));
  UMamba net = seg.network();
  std::mutex mutex;
  std::set<int> threads_seen;
  bool inference_everywhere = true;
  const auto network = [&](const torch::Tensor& patch) {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      threads_seen.insert(at::get_thread_num());
      inference_everywhere = inference_everywhere && c10::InferenceMode::is_enabled();
    }
    return net->forward(patch);
  };
  torch::manual_seed(12);
  const torch::Tensor image = torch::randn({1, 20, 96, 150});  // 2 x 1 x 3 = 6 windows of 16 x 96 x 96
  SlidingWindowOptions o;
  o.patch_size = seg.recipe().patch_size;
  o.overlap = seg.recipe().overlap;
  c10::InferenceMode guard;
  const test::ThreadCount threads_now(1);
  const torch::Tensor reference = sliding_window_probabilities(network, image, 4, o);
  o.concurrent_windows = true;
  for (const auto& [threads, per_pass] : std::vector<std::pair<int, int64_t>>{{2, 2}, {3, 3}, {2, 5}}) {
    threads_now.set(threads);
    threads_seen.clear();
    o.windows_per_pass = per_pass;  // 5: passes of 5 and 1
    EXPECT_TRUE(torch::equal(sliding_window_probabilities(network, image, 4, o), reference))
        << threads << " threads, " << per_pass << " windows a pass";
    EXPECT_EQ(threads_seen.size(), size_t(threads)) << threads << " threads";
  }
  EXPECT_TRUE(inference_everywhere);
  // Mirroring (8 flips a window), two windows.
  const torch::Tensor two = image.slice(1, 0, 16).slice(3, 0, 120);
  o.mirror = true;
  threads_now.set(1);
  o.windows_per_pass = 1;
  const torch::Tensor mirrored = sliding_window_probabilities(network, two, 4, o);
  threads_now.set(2);
  o.windows_per_pass = 2;
  EXPECT_TRUE(torch::equal(sliding_window_probabilities(network, two, 4, o), mirrored));
  // One window at a time on two threads: to float rounding.
  o.mirror = false;
  o.windows_per_pass = 1;
  o.concurrent_windows = false;
  EXPECT_LT((sliding_window_probabilities(network, image, 4, o) - reference).abs().max().item<double>(), 1e-4);
}

// What a network computes may depend on the thread count it is told, not only on how many
// threads run it: ATen sends an unstrided 1 x 1 x 1 convolution of one sample over more than
// 20480 input rows to oneDNN when it has more than one thread and to its own matrix product on
// one, which round differently (this is what the shipped model's skip convolutions take on a CPU
// without AVX-512). Each concurrent window is told one thread, as in a one-thread run.
TEST(SlidingWindow, ConcurrentWindowsAreToldOneThread) {
  torch::manual_seed(13);
  const torch::Tensor weight = torch::randn({4, 32, 1, 1, 1}), spread = torch::randn({1, 32, 1, 1, 1});
  std::atomic<int> told_more{0};
  const auto network = [&](const torch::Tensor& patch) {
    if (at::get_num_threads() != 1) ++told_more;
    return torch::conv3d(patch * spread, weight);  // 1 x 32 x 16 x 48 rows of 48
  };
  const torch::Tensor image = torch::randn({1, 16, 48, 80});  // 3 windows of 16 x 48 x 48: passes of 2 and 1
  SlidingWindowOptions o;
  o.patch_size = {16, 48, 48};
  c10::InferenceMode guard;
  const test::ThreadCount threads_now(1);
  const torch::Tensor reference = sliding_window_probabilities(network, image, 4, o);
  threads_now.set(2);
  o.concurrent_windows = true;
  o.windows_per_pass = 2;
  EXPECT_TRUE(torch::equal(sliding_window_probabilities(network, image, 4, o), reference));
  EXPECT_EQ(told_more.load(), 0);
  EXPECT_EQ(at::get_num_threads(), 2);  // the caller's count is left as it was
}

// Cropping to the content: windows only over the box of voxels that differ from the pad value;
// inside it a voxel-wise network gives what it gives on the whole image, outside it the
// background has probability 1, and there are fewer windows.
TEST(SlidingWindow, CropToContentTilesOnlyTheContentBox) {
  torch::manual_seed(5);
  const float pad = -3.5f;
  torch::Tensor image = torch::full({1, 20, 70, 60}, pad);
  image.slice(1, 3, 17).slice(2, 10, 41).slice(3, 22, 55).copy_(torch::randn({1, 14, 31, 33}));
  int64_t windows = 0;
  const auto counting = [&windows](const torch::Tensor& patch) {
    windows += patch.size(0);
    return voxelwise(patch);
  };
  SlidingWindowOptions o;
  o.patch_size = {8, 16, 16};
  o.pad_value = pad;
  const torch::Tensor whole = sliding_window_probabilities(counting, image, 2, o);
  EXPECT_EQ(windows, 4 * 8 * 7);  // starts along z, y, x: 4, 8, 7
  windows = 0;
  o.crop_to_content = true;
  const torch::Tensor cropped = sliding_window_probabilities(counting, image, 2, o);
  EXPECT_EQ(windows, 3 * 3 * 4);  // over 14 x 31 x 33 voxels
  ASSERT_EQ(cropped.sizes(), whole.sizes());
  const auto box = [](const torch::Tensor& t) { return t.slice(1, 3, 17).slice(2, 10, 41).slice(3, 22, 55); };
  EXPECT_LT((box(cropped) - box(whole)).abs().max().item<double>(), 1e-5);
  torch::Tensor outside = torch::ones({20, 70, 60}, torch::kBool);
  outside.slice(0, 3, 17).slice(1, 10, 41).slice(2, 22, 55).fill_(false);
  EXPECT_TRUE(torch::all(cropped[0].masked_select(outside) == 1.0f).item<bool>());
  EXPECT_TRUE(torch::all(cropped[1].masked_select(outside) == 0.0f).item<bool>());
  // A content box smaller than a patch is padded like a small image; nothing but the pad value: no window.
  torch::Tensor small = torch::full({1, 20, 70, 60}, pad);
  small.slice(1, 5, 9).slice(2, 30, 35).slice(3, 40, 44).fill_(1.0f);
  windows = 0;
  const torch::Tensor p = sliding_window_probabilities(counting, small, 2, o);
  EXPECT_EQ(windows, 1);
  EXPECT_NEAR(p[1][6][32][41].item<double>(), 1 / (1 + std::exp(-3.0)), 1e-6);
  windows = 0;
  const torch::Tensor none = sliding_window_probabilities(counting, torch::full({1, 20, 70, 60}, pad), 2, o);
  EXPECT_EQ(windows, 0);
  EXPECT_TRUE(torch::all(none[0] == 1.0f).item<bool>());
}

TEST(SlidingWindow, MirroringAveragesFlippedPredictions) {
  // A network that sees only its patch's first x column: not flip-invariant, so mirroring
  // must change the result, and averaging 8 flips gives probabilities inside (0, 1).
  const auto edge = [](const torch::Tensor& patch) {
    const torch::Tensor first = patch.select(4, 0).unsqueeze(4).expand_as(patch);
    return torch::cat({torch::zeros_like(patch), 4 * first}, 1);
  };
  const torch::Tensor image = torch::linspace(-1, 1, 16).view({1, 1, 1, 16}).expand({1, 8, 8, 16}).contiguous();
  SlidingWindowOptions o;
  o.patch_size = {8, 8, 16};
  const torch::Tensor plain = sliding_window_probabilities(edge, image, 2, o);
  o.mirror = true;
  const torch::Tensor mirrored = sliding_window_probabilities(edge, image, 2, o);
  EXPECT_GT((plain - mirrored).abs().max().item<double>(), 0.1);
  const double expected = (0.5 * (1 / (1 + std::exp(4.0))) + 0.5 * (1 / (1 + std::exp(-4.0))));
  EXPECT_NEAR(mirrored[1][0][0][5].item<double>(), expected, 1e-5);
}

TEST(Preprocessing, ResamplingIsExactForLinearIntensities) {
  Geometry from;
  from.size = {31, 27, 9};
  from.spacing_mm = {0.45, 0.45, 5.0};
  from.origin_mm = {-10, 20, 3};
  const Geometry to = grid_with_spacing(from, {1.0, 0.8, 2.0});
  EXPECT_EQ(to.size, (std::array<int64_t, 3>{14, 15, 21}));  // floor(13.5/1), floor(11.7/0.8), 40/2, each + 1
  const auto field = [](const Vec3& p) { return 2.0 * p[0] - 3.0 * p[1] + 0.5 * p[2]; };
  torch::Tensor v = torch::empty(tensor_shape(from), torch::kFloat64);
  auto a = v.accessor<double, 3>();
  for (int64_t z = 0; z < from.size[2]; ++z)
    for (int64_t y = 0; y < from.size[1]; ++y)
      for (int64_t x = 0; x < from.size[0]; ++x) a[z][y][x] = field(from.index_to_point({double(x), double(y), double(z)}));
  const torch::Tensor r = resample_between_grids(v, from, to);
  auto b = r.accessor<double, 3>();
  double worst = 0;
  for (int64_t z = 0; z < to.size[2]; ++z)
    for (int64_t y = 0; y < to.size[1]; ++y)
      for (int64_t x = 0; x < to.size[0]; ++x)
        worst = std::max(worst, std::abs(b[z][y][x] - field(to.index_to_point({double(x), double(y), double(z)}))));
  EXPECT_LT(worst, 1e-9);
  // With a channel dimension in front, each channel is resampled alike.
  const torch::Tensor two = resample_between_grids(torch::stack({v, -v}), from, to);
  EXPECT_TRUE(torch::allclose(two[1], -r));
}

// interpolate_axis on float CPU tensors runs its own loop (lerp_along): the bits of the tensor
// operations it replaced (index_select of both neighbours, then sub_, mul_, add_), along every
// dim, down and up, from a block's first index, on a non-contiguous input, on 1 and 2 threads.
TEST(Preprocessing, AxisInterpolationIsTheTensorOperationsBitForBit) {
  torch::manual_seed(9);
  const torch::Tensor x = torch::randn({2, 13, 37, 29}) * 400.0f;
  const auto reference = [](const torch::Tensor& v, int64_t dim, int64_t out_size, double first, double step,
                            int64_t first_k) {
    const int64_t in_size = v.size(dim);
    auto pos = (first + torch::arange(first_k, first_k + out_size, torch::kFloat64) * step).clamp(0, double(in_size - 1));
    const auto i0 = pos.floor().to(torch::kLong).clamp(0, in_size - 1), i1 = (i0 + 1).clamp(0, in_size - 1);
    std::vector<int64_t> shape(size_t(v.dim()), 1);
    shape[size_t(dim)] = out_size;
    const auto w = (pos - i0.to(torch::kFloat64)).to(torch::kFloat32).reshape(shape);
    const auto a = v.index_select(dim, i0);
    return v.index_select(dim, i1).sub_(a).mul_(w).add_(a);
  };
  int64_t compared = 0;
  for (const int threads : {1, 2}) {
    const test::ThreadCount threads_now(threads);
    for (int64_t dim = 0; dim < 4; ++dim)
      for (const double step : {0.3125, 1.0, 2.7})
        for (const int64_t first_k : {int64_t(0), int64_t(3)}) {
          const int64_t out_size = std::max<int64_t>(1, int64_t(double(x.size(dim)) / step) - first_k);
          for (const torch::Tensor& v : {x, x.transpose(1, 3)}) {
            const torch::Tensor got = interpolate_axis(v, dim, out_size, 0.25, step, std::nullopt, first_k);
            const torch::Tensor want = reference(v, dim, out_size, 0.25, step, first_k);
            ASSERT_EQ(got.sizes(), want.sizes());
            EXPECT_TRUE(torch::equal(got, want)) << "dim " << dim << " step " << step << " first " << first_k;
            ++compared;
          }
        }
  }
  EXPECT_EQ(compared, 96);
  // An empty input gives an empty output, as the tensor operations did (the loop is not run).
  EXPECT_EQ(interpolate_axis(torch::zeros({2, 3, 0}), 1, 5, 0.0, 0.5, std::nullopt, 0).sizes(),
            (std::vector<int64_t>{2, 5, 0}));
}

// A mask (uint8) is interpolated like the same mask in float: it used to be truncated to its
// integer type, which turned linear interpolation into taking the lower neighbour.
TEST(Preprocessing, IntegerMasksAreInterpolatedNotTruncated) {
  Geometry from;
  from.size = {8, 1, 1};
  from.spacing_mm = {1.0, 1.0, 1.0};
  Geometry to = from;
  to.size = {15, 1, 1};
  to.spacing_mm = {0.5, 1.0, 1.0};
  const torch::Tensor mask = torch::tensor({0, 0, 1, 1, 1, 0, 0, 0}, torch::kUInt8).view({1, 1, 8});
  const torch::Tensor r = resample_between_grids(mask, from, to);
  EXPECT_EQ(r.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(r, resample_between_grids(mask.to(torch::kFloat32), from, to)));
  EXPECT_FLOAT_EQ(r[0][0][3].item<float>(), 0.5f);  // halfway between voxels 1 and 2
  EXPECT_FLOAT_EQ(r[0][0][9].item<float>(), 0.5f);  // halfway between voxels 4 and 5
}

// Label maps between grids: each class's map resampled, the largest share wins, background's
// share is 1 minus the others', ties go to the lower code.
TEST(Labels, EachVoxelTakesTheClassWithTheLargestShare) {
  const Geometry g = test::grid({6, 1, 1}, {1, 1, 1});
  // Voxel by voxel: classes 1, 2, 3 shares; background is the rest.
  const torch::Tensor maps = torch::tensor({0.6f, 0.4f, 0.3f, 0.2f, 0.0f, 0.34f,   // class 1
                                            0.3f, 0.4f, 0.3f, 0.2f, 0.0f, 0.33f,   // class 2
                                            0.0f, 0.1f, 0.3f, 0.1f, 0.0f, 0.33f})  // class 3
                                 .view({3, 1, 1, 6});
  torch::Tensor first;
  const torch::Tensor codes = class_codes_between_grids(maps, g, g, &first);
  EXPECT_EQ(codes.scalar_type(), torch::kUInt8);
  // 0.6 > rest; 0.4 = 0.4 tie -> 1; three 0.3 vs background 0.1 -> 1; background 0.5 wins;
  // nothing -> 0; 0.34 over 0.33, 0.33 and background 0.0 -> 1.
  EXPECT_TRUE(torch::equal(codes.view({6}), torch::tensor({1, 1, 1, 0, 0, 1}, torch::kUInt8))) << codes;
  EXPECT_TRUE(torch::equal(first, maps[0]));
  const torch::Tensor swapped = class_codes_between_grids(torch::stack({maps[1], maps[2], maps[0]}), g, g);
  EXPECT_TRUE(torch::equal(swapped.view({6}), torch::tensor({3, 1, 1, 0, 0, 3}, torch::kUInt8))) << swapped;
}

// Slab by slab (bounded memory) the codes are those of resampling every class map to the whole
// output grid first, and class 1's map is that resampling: random maps, a finer output grid
// with slices in several slabs and a last slab left short, positions past the source's edge.
TEST(Labels, SlabsGiveWhatWholeGridResamplingGives) {
  Geometry from = test::grid({7, 6, 5}, {2.0, 1.7, 3.0});
  Geometry to = test::grid({15, 11, 21}, {0.9, 0.8, 0.7});
  torch::manual_seed(9);
  torch::Tensor maps = torch::rand({3, 5, 6, 7});
  maps = maps / (maps.sum(0, true) + torch::rand({1, 5, 6, 7}));  // shares summing to under 1
  torch::Tensor first;
  const torch::Tensor codes = class_codes_between_grids(maps, from, to, &first);
  // The reference: each class on the whole output grid, then the same rule.
  std::vector<torch::Tensor> full;
  for (int64_t k = 0; k < 3; ++k) full.push_back(resample_between_grids(maps[k], from, to));
  const torch::Tensor all = torch::stack(full), background = 1 - all.sum(0);
  const torch::Tensor expected = torch::where(std::get<0>(all.max(0)) <= background, torch::zeros_like(codes),
                                              (std::get<1>(all.max(0)) + 1).to(torch::kUInt8));
  ASSERT_EQ(codes.sizes(), expected.sizes());
  EXPECT_LE((first - full[0]).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(torch::equal(codes, expected)) << (codes != expected).sum().item<int64_t>() << " voxels differ";
  EXPECT_GT((codes == 0).sum().item<int64_t>(), 100);
  for (int64_t c = 1; c <= 3; ++c) EXPECT_GT((codes == c).sum().item<int64_t>(), 100) << "class " << c;
}

// Only the block of the output grid that can hold foreground is resampled (segment() without
// a probability map): foreground_block must hold every voxel that resampling the whole grid
// makes foreground, and the block's values must be exactly the whole grid's there. Random
// maps with a blob of foreground on a coarse model grid, a thin-slice output grid, two and four
// classes, source voxels just under the threshold at the blob's edge (the margin's case).
TEST(Labels, TheForegroundBlockGivesTheWholeGridsCodes) {
  const Geometry from = test::grid({24, 20, 9}, {1.5, 1.5, 5.0});
  const Geometry to = test::grid({77, 64, 41}, {0.45, 0.45, 1.1});
  torch::manual_seed(21);
  for (const int64_t classes : {2, 4}) {
    torch::Tensor logits = torch::randn({classes, 9, 20, 24});
    logits[0] += 9.0;                                                          // background (> 6 SD)
    logits.slice(0, 1).slice(1, 3, 6).slice(2, 8, 13).slice(3, 10, 16) += 14.0;  // the blob
    torch::Tensor p = torch::softmax(logits, 0);
    // A voxel beside the blob just under the threshold, its background just ahead: within the
    // margin, so in the block.
    p.slice(0, 1)[0][3][7][12] = 0.4995f, p[0][3][7][12] = 0.5005f;
    for (int64_t k = 2; k < classes; ++k) p[k][3][7][12] = 0.0f;
    const MaskBox block = foreground_block(p, 0.5, from, to);
    ASSERT_FALSE(block.empty());
    EXPECT_LT(block.size[0] * block.size[1] * block.size[2], 77 * 64 * 41) << "the block is the whole grid";
    torch::Tensor whole;
    if (classes == 2) {
      const torch::Tensor full = resample_between_grids(p[1].contiguous(), from, to);
      whole = (full > 0.5f).to(torch::kUInt8);
      const std::array<int64_t, 3> end{block.begin[0] + block.size[0], block.begin[1] + block.size[1],
                                       block.begin[2] + block.size[2]};
      EXPECT_TRUE(torch::equal(resample_block_between_grids(p[1].contiguous(), from, to, block.begin, end), block.crop(full)));
    } else {
      whole = class_codes_between_grids(p.slice(0, 1), from, to);
      EXPECT_TRUE(torch::equal(class_codes_between_grids(p.slice(0, 1), from, to, nullptr, &block), whole));
    }
    EXPECT_GT(whole.sum().item<int64_t>(), 100) << classes << " classes";
    const int64_t inside = block.crop(whole).ne(0).sum().item<int64_t>();
    EXPECT_EQ(inside, whole.ne(0).sum().item<int64_t>()) << "foreground outside the block, " << classes << " classes";
    // Background everywhere: nothing to resample.
    torch::Tensor none = torch::zeros_like(p);
    none[0].fill_(1.0f);
    EXPECT_TRUE(foreground_block(none, 0.5, from, to).empty());
  }
}

// The training label of a label map: on the same grid the codes come back exactly; on a grid
// twice as coarse each voxel takes the class of the voxel under its centre, and with two
// classes the rule is "more than half": what `run` applies to its probabilities.
TEST(Labels, TrainingLabelsKeepTheCodesAndTheHalfRule) {
  const Geometry fine = test::grid({12, 10, 8}, {1, 1, 1});
  torch::Tensor labels = torch::zeros(tensor_shape(fine), torch::kUInt8);
  labels.slice(0, 0, 4).fill_(1);
  labels.slice(0, 4, 6).slice(1, 0, 5).fill_(2);
  labels.slice(0, 6, 8).slice(2, 6, 12).fill_(3);
  labels[7][9][11] = 7;  // a code the model does not have: background
  torch::Tensor expected = labels.clone();
  expected[7][9][11] = 0;
  EXPECT_TRUE(torch::equal(prepare_network_label(labels, fine, fine, 4), expected));
  const Geometry coarse = grid_with_spacing(fine, {2, 2, 2});
  const torch::Tensor down = prepare_network_label(labels, fine, coarse, 4);
  EXPECT_TRUE(torch::equal(down, expected.slice(0, 0, 8, 2).slice(1, 0, 10, 2).slice(2, 0, 12, 2)));
  // Two classes: the mask's linear interpolation above one half.
  const Geometry half = grid_with_spacing(fine, {0.5, 0.5, 0.5});
  const torch::Tensor mask = (labels == 1).to(torch::kUInt8);
  EXPECT_TRUE(torch::equal(prepare_network_label(mask, fine, half),
                           (resample_between_grids(mask.to(torch::kFloat32), fine, half) > 0.5f).to(torch::kUInt8)));
}

TEST(Preprocessing, CtNormalisationFromTheCard) {
  const Preprocessing p = Preprocessing::from_json(
      {{"spacing_mm", {0.9, 0.9, 5.0}}, {"normalization", {{"type", "ct"}, {"clip_hu", {-20, 120}}, {"mean_hu", 40}, {"std_hu", 20}}}});
  const torch::Tensor n = normalize_ct(torch::tensor({-1000.f, 40.f, 80.f, 3000.f}), p);
  EXPECT_TRUE(torch::allclose(n, torch::tensor({-3.f, 0.f, 2.f, 4.f})));
  EXPECT_EQ(Preprocessing::from_json(p.to_json()).spacing_mm, p.spacing_mm);
}

}  // namespace
}  // namespace hemexp

namespace hemexp {
namespace {

// Three boxes of 1000, 150 and 40 voxels at 1 mm^3 (1, 0.15 and 0.04 mL).
TEST(Postprocessing, SmallComponentsGoByVolumeOrByShareOfTheLargest) {
  const Geometry g = test::grid({40, 40, 20}, {1, 1, 1});
  torch::Tensor m = torch::zeros(tensor_shape(g), torch::kUInt8);
  m.slice(0, 0, 10).slice(1, 0, 10).slice(2, 0, 10).fill_(1);
  m.slice(0, 0, 6).slice(1, 20, 25).slice(2, 20, 25).fill_(1);
  m.slice(0, 15, 20).slice(1, 30, 34).slice(2, 30, 32).fill_(1);
  int64_t removed = -1;
  EXPECT_TRUE(remove_small_components(m, g, {0.0, 0.0}, &removed).equal(m));
  EXPECT_EQ(removed, 0);
  EXPECT_EQ(remove_small_components(m, g, {0.1, 0.0}, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(removed, 1);
  // 20% of the largest is 200 voxels: only the largest stays, whatever the volume floor.
  EXPECT_EQ(remove_small_components(m, g, {0.0, 0.2}, &removed).sum().item<int64_t>(), 1000);
  EXPECT_EQ(removed, 2);
  EXPECT_EQ(remove_small_components(m, g, {0.01, 0.1}, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(removed, 1);
  // A volume floor above the largest removes everything.
  EXPECT_EQ(remove_small_components(m, g, {2.0, 0.2}, &removed).sum().item<int64_t>(), 0);
  EXPECT_EQ(removed, 3);
  // Satellites: the 150-voxel box's nearest voxel is 15.6 mm from the largest (11 voxels in y
  // and in x), the 40-voxel box's 30.3 mm (6 in z, 21 in y and in x).
  EXPECT_EQ(remove_small_components(m, g, {0.0, 0.2, 15.0}, &removed).sum().item<int64_t>(), 1000);
  EXPECT_EQ(remove_small_components(m, g, {0.0, 0.2, 30.0}, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(remove_small_components(m, g, {0.0, 0.2, 16.0}, &removed).sum().item<int64_t>(), 1150);
  EXPECT_EQ(removed, 1);
  EXPECT_EQ(remove_small_components(m, g, {0.0, 0.2, 30.5}, &removed).sum().item<int64_t>(), 1190);
  EXPECT_EQ(removed, 0);
}

// hemexp's own at::parallel_for loops (the fused normalisation, the selective scan, the brain
// check) are an OpenMP pragma in ATen's header: compiled without -fopenmp they ran on one thread
// whatever --threads said (docs/PERFORMANCE.md, 2026-12-05).
TEST(Runtime, ParallelLoopsUseTheThreadsAskedFor) {
  EXPECT_EQ(parallel_loop_threads(2), 2);
  EXPECT_EQ(parallel_loop_threads(3), 3);
}

// run_side_by_side (runtime.hpp): every task runs, two at a time, inside a parallel region of
// ATen's own team (the calling thread and the team's worker: no thread of its own), and the first
// failure in the list's order is rethrown once all have run; with one thread, in order on the
// calling thread, and a failure stops the rest. Tasks 0 and 1 meet (each waits for the other to
// start), which only two threads at once can do.
TEST(Runtime, SideBySideTasksRunTwoAtATimeInTheTeamOfTheLoops) {
  const test::ThreadCount threads(2);
  std::mutex m;
  std::set<std::thread::id> used;
  std::atomic<int> running{0}, most{0}, started{0}, in_region{0};
  std::vector<int> ran(6, 0);
  std::vector<std::function<void()>> tasks;
  for (int i = 0; i < 6; ++i)
    tasks.emplace_back([&, i] {
      const int now = ++running;
      for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
      }
      ++started;
      in_region += at::in_parallel_region();
      if (i < 2 && at::get_num_threads() >= 2) {  // the first two meet, for 10 s at most
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (started.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
      }
      {
        std::lock_guard<std::mutex> lock(m);
        used.insert(std::this_thread::get_id());
      }
      ++ran[size_t(i)];
      --running;
      if (i == 2 || i == 4) throw std::runtime_error("task " + std::to_string(i));
    });
  try {
    run_side_by_side(tasks);
    ADD_FAILURE() << "no failure rethrown";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "task 2");
  }
  EXPECT_EQ(ran, std::vector<int>(6, 1));
  EXPECT_EQ(most.load(), 2);
  EXPECT_EQ(in_region.load(), 6);
  EXPECT_EQ(used.size(), 2u);
  EXPECT_EQ(used.count(std::this_thread::get_id()), 1u);
  threads.set(1);
  ran.assign(6, 0);
  most = 0;
  in_region = 0;
  EXPECT_THROW(run_side_by_side(tasks), std::runtime_error);
  EXPECT_EQ(ran, (std::vector<int>{1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(most.load(), 1);
  EXPECT_EQ(in_region.load(), 0);
}

// use_huge_page_heap marks the heap for transparent huge pages (runtime.hpp): a large block taken
// after it lies in a mapping whose flags say so ("hg" in /proc/self/smaps; the flag says the
// mapping was marked, not that the kernel found huge pages for it). In a child process, so that
// the allocator settings stay out of the other tests when the whole binary runs in one process.
TEST(Runtime, HeapIsMarkedForHugePages) {
#if defined(__linux__)
  if (!huge_page_heap_allowed())
    GTEST_SKIP() << "no reservation here (HEMEXP_SMALL_PAGES, ulimit -v/-d, strict overcommit, ASan or not glibc)";
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) GTEST_SKIP() << "no transparent huge pages";
  // The VmFlags line of the mapping that holds `address`.
  const auto flags_at = [](uintptr_t address) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
      const size_t dash = line.find('-'), space = line.find(' ');
      if (dash != std::string::npos && space != std::string::npos && dash < space &&
          line.find_first_not_of("0123456789abcdef") == dash) {
        const uintptr_t lo = std::stoull(line.substr(0, dash), nullptr, 16);
        const uintptr_t hi = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
        inside = lo <= address && address < hi;
      } else if (inside && line.rfind("VmFlags:", 0) == 0) {
        return line;
      }
    }
    return std::string();
  };
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        keep_freed_memory();
        if (!use_huge_page_heap()) {
          std::fprintf(stderr, "use_huge_page_heap: false\n");
          std::exit(1);
        }
        constexpr size_t kBytes = size_t(256) << 20;
        char* const block = static_cast<char*>(std::malloc(kBytes));
        if (!block) std::exit(2);
        std::memset(block, 1, kBytes);
        const std::string flags = flags_at(reinterpret_cast<uintptr_t>(block) + kBytes / 2);
        std::free(block);
        std::fprintf(stderr, "the block's mapping: %s\n", flags.c_str());
        std::exit(flags.find(" hg") != std::string::npos ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "mapping: VmFlags:.* hg");
#else
  GTEST_SKIP() << "Linux only";
#endif
}

}  // namespace
}  // namespace hemexp
