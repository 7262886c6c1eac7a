// The direct (k x 3 x 3 and k x 1 x 1) convolution of the segmenter's small-channel layers against ATen's
// conv3d in double precision: every border, widths that are not a multiple of 16, batches,
// with and without bias; which convolutions it takes; thread-count independence.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "hemexp/core/conv_direct.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/umamba.hpp"
#include "test_helpers.hpp"

namespace hemexp {
namespace {

bool available() {
  const torch::Tensor x = torch::zeros({1, 8, 1, 3, 3});
  return direct_conv3d_applicable(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1);
}

// Largest |direct - reference| over the largest |reference|, the reference computed in double.
double relative_error(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, int64_t stride = 1) {
  const int64_t k = w.size(2), kk = w.size(3);
  const torch::Tensor got = direct_conv3d(x, w, b, stride);
  const torch::Tensor ref = torch::conv3d(x.to(torch::kFloat64), w.to(torch::kFloat64),
                                          b.defined() ? b.to(torch::kFloat64) : torch::Tensor(), {1, stride, stride},
                                          {k / 2, kk / 2, kk / 2});
  EXPECT_EQ(got.sizes(), ref.sizes());
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  return (got.to(torch::kFloat64) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

// The other DirectConv tests skip on a CPU without AVX-512F, where the network keeps oneDNN.
// That gate must follow the CPU and nothing else: on an AVX-512F CPU the kernel is available
// (a broken gate would otherwise turn every test here into a skip).
TEST(DirectConv, AvailableExactlyWhereTheCpuHasAvx512F) {
#if defined(__x86_64__) && defined(__GNUC__)
  EXPECT_EQ(available(), bool(__builtin_cpu_supports("avx512f")));
#else
  EXPECT_FALSE(available());
#endif
}

TEST(DirectConv, MatchesAtenOnEveryBorderAndWidth) {
  if (!available()) GTEST_SKIP() << "this CPU has no AVX-512F: the network keeps oneDNN";
  torch::manual_seed(3);
  struct Case {
    int64_t n, cin, cout, k, kk, d, h, w;
    bool bias;
    int64_t stride = 1;  // in plane
  };
  // The network's shapes (1 -> 8, 8 -> 8, 16 -> 8, 16 -> 16, 32 -> 32 in 3D; 1 x 1 x 1 skips) on
  // small grids, widths below, at and across multiples of 16 (masked columns), one-voxel grids,
  // batches.
  const std::vector<Case> cases{
      {1, 1, 8, 1, 3, 2, 5, 96, true},  {1, 8, 8, 1, 3, 3, 4, 48, true},   {2, 16, 8, 1, 3, 2, 3, 17, false},
      {1, 16, 16, 1, 3, 1, 6, 33, true}, {1, 32, 32, 3, 3, 4, 3, 20, true}, {3, 8, 24, 3, 3, 3, 2, 1, true},
      {1, 8, 8, 1, 3, 1, 1, 16, false},  {1, 3, 8, 5, 3, 6, 4, 64, true},   {1, 8, 8, 3, 3, 1, 1, 81, true},
      {1, 16, 8, 1, 1, 2, 5, 96, true},  {2, 32, 16, 1, 1, 3, 3, 35, false}, {1, 1, 8, 3, 1, 4, 2, 7, true},
      // Partial output blocks: the 8 -> 4 head, 12 and 1 output channels, 3 x 3 and 1 x 1.
      {1, 8, 4, 1, 1, 2, 5, 96, true},   {2, 8, 12, 1, 3, 2, 4, 40, true},  {1, 5, 1, 3, 3, 3, 3, 19, false},
      // Stride 1 x 2 x 2 (the 8 -> 16 downsampling): even and odd extents, outputs below, at and
      // across 16 columns (the two loads of a register on both sides of the right border), a
      // one-column input, partial blocks, 3 x 3 x 3.
      {1, 8, 16, 1, 3, 2, 6, 96, true, 2}, {1, 8, 16, 1, 3, 1, 7, 33, true, 2}, {2, 3, 12, 1, 3, 2, 5, 65, false, 2},
      {1, 8, 8, 3, 3, 3, 4, 31, true, 2},  {1, 8, 8, 1, 3, 1, 3, 1, true, 2},   {1, 16, 4, 1, 3, 2, 9, 130, true, 2}};
  for (const Case& c : cases) {
    const torch::Tensor x = torch::randn({c.n, c.cin, c.d, c.h, c.w});
    const torch::Tensor w = torch::randn({c.cout, c.cin, c.k, c.kk, c.kk});
    const torch::Tensor b = c.bias ? torch::randn({c.cout}) : torch::Tensor();
    EXPECT_LE(relative_error(x, w, b, c.stride), 5e-6) << c.n << "x" << c.cin << "->" << c.cout << " k" << c.k << "x"
                                                       << c.kk << " " << c.d << "x" << c.h << "x" << c.w << " stride "
                                                       << c.stride;
  }
  // A non-contiguous input (a slice of a wider tensor) is read as its values, not its storage.
  const torch::Tensor wide = torch::randn({1, 8, 2, 5, 40});
  const torch::Tensor view = wide.narrow(4, 3, 30);
  ASSERT_FALSE(view.is_contiguous());
  EXPECT_LE(relative_error(view, torch::randn({8, 8, 1, 3, 3}), torch::randn({8})), 5e-6);
}

TEST(DirectConv, TakesOnlyWhatItComputes) {
  if (!available()) GTEST_SKIP() << "this CPU has no AVX-512F";
  const torch::Tensor x = torch::zeros({1, 8, 2, 4, 4});
  const auto ok = [&](const torch::Tensor& in, const torch::Tensor& w, std::vector<int64_t> stride,
                      std::vector<int64_t> pad, std::vector<int64_t> dil = {1, 1, 1}, int64_t groups = 1) {
    return direct_conv3d_applicable(in, w, stride, pad, dil, groups);
  };
  EXPECT_TRUE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}));
  EXPECT_TRUE(ok(x, torch::zeros({16, 8, 3, 3, 3}), {1, 1, 1}, {1, 1, 1}));
  EXPECT_TRUE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 2, 2}, {0, 1, 1}));         // downsampling in plane
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 3, 3, 3}), {2, 2, 2}, {1, 1, 1}));        // strided in depth
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 3, 3}, {0, 1, 1}));        // stride 3
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 2}, {0, 1, 1}));        // in one direction
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 1}, {0, 0, 0}));        // not "same"
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}, {1, 2, 2}));  // dilated
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2));  // grouped
  EXPECT_TRUE(ok(x, torch::zeros({4, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}));         // 4 output channels
  EXPECT_FALSE(ok(x, torch::zeros({0, 8, 1, 3, 3}), {1, 1, 1}, {0, 1, 1}));        // none
  EXPECT_TRUE(ok(x, torch::zeros({8, 8, 1, 1, 1}), {1, 1, 1}, {0, 0, 0}));         // 1 x 1 x 1
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 1, 1}), {1, 1, 1}, {0, 1, 1}));        // 1 x 1 x 1, padded
  EXPECT_FALSE(ok(x, torch::zeros({16, 8, 1, 1, 1}), {1, 2, 2}, {0, 0, 0}));       // strided skip
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 1, 3, 1}), {1, 1, 1}, {0, 1, 0}));        // 3 x 1 in plane
  EXPECT_FALSE(ok(x, torch::zeros({8, 8, 2, 3, 3}), {1, 1, 1}, {1, 1, 1}));        // even depth
  EXPECT_FALSE(ok(x.to(torch::kFloat64), torch::zeros({8, 8, 1, 3, 3}, torch::kFloat64), {1, 1, 1}, {0, 1, 1}));
  EXPECT_THROW(direct_conv3d(x, torch::zeros({8, 8, 1, 3, 3}, torch::kFloat64), torch::Tensor()), CoreError);
  EXPECT_THROW(direct_conv3d(x, torch::zeros({8, 8, 1, 3, 3}), torch::zeros({7})), CoreError);
  EXPECT_THROW(direct_conv3d(x, torch::zeros({8, 8, 1, 3, 3}), torch::Tensor(), 3), CoreError);
  EXPECT_THROW(direct_conv3d(x, torch::zeros({8, 8, 1, 1, 1}), torch::Tensor(), 2), CoreError);
}

// Two blocks and a partial one (12 output channels), a batch of two: the same bits on one and
// two threads, and each sample what it gives alone (a block's rows never land in another
// sample's or channel's place).
TEST(DirectConv, SameBitsOnOneAndTwoThreads) {
  if (!available()) GTEST_SKIP() << "this CPU has no AVX-512F";
  torch::manual_seed(8);
  const torch::Tensor x = torch::randn({2, 16, 4, 24, 96}), w = torch::randn({12, 16, 1, 3, 3}), b = torch::randn({12});
  const test::ThreadCount threads_now(1);
  const torch::Tensor one = direct_conv3d(x, w, b);
  threads_now.set(2);
  for (int repeat = 0; repeat < 3; ++repeat) {
    const torch::Tensor two = direct_conv3d(x, w, b);
    EXPECT_TRUE(torch::equal(one, two));
    for (int64_t n = 0; n < 2; ++n) EXPECT_TRUE(torch::equal(two[n], direct_conv3d(x.slice(0, n, n + 1), w, b)[0]));
  }
  // Stride 2 in plane: rows split over the threads by output row.
  threads_now.set(1);
  const torch::Tensor one_strided = direct_conv3d(x, w, b, 2);
  threads_now.set(2);
  EXPECT_TRUE(torch::equal(one_strided, direct_conv3d(x, w, b, 2)));
  EXPECT_EQ(one_strided.sizes(), (std::vector<int64_t>{2, 12, 4, 12, 48}));
}

// The network sends its 4-, 8- and 16-channel convolutions to the kernel (bit for bit what
// direct_conv3d gives; a strided 1 x 1 x 1 on the voxels it reads) and its 32-channel ones to
// oneDNN (umamba.cpp, conv3d).
TEST(DirectConv, TheNetworkRoutesItsSmallLayersHere) {
  if (!available()) GTEST_SKIP() << "this CPU has no AVX-512F";
  torch::manual_seed(4);
  c10::InferenceMode guard;
  torch::nn::Conv3d small(torch::nn::Conv3dOptions(8, 8, {1, 3, 3}).padding({0, 1, 1}));
  torch::nn::Conv3d skip(torch::nn::Conv3dOptions(16, 8, 1));
  torch::nn::Conv3d wide(torch::nn::Conv3dOptions(32, 32, 3).padding(1));
  const torch::Tensor x8 = torch::randn({1, 8, 4, 20, 40}), x16 = torch::randn({1, 16, 4, 20, 40});
  const torch::Tensor x32 = torch::randn({1, 32, 4, 12, 12});
  EXPECT_TRUE(torch::equal(inference_conv3d(*small, x8, {0, 1, 1}), direct_conv3d(x8, small->weight, small->bias)));
  EXPECT_TRUE(torch::equal(inference_conv3d(*skip, x16, {0, 0, 0}), direct_conv3d(x16, skip->weight, skip->bias)));
  torch::nn::Conv3d head(torch::nn::Conv3dOptions(8, 4, 1));
  EXPECT_TRUE(torch::equal(inference_conv3d(*head, x8, {0, 0, 0}), direct_conv3d(x8, head->weight, head->bias)));
  // A strided 1 x 1 x 1 skip: every other voxel in plane (odd extents), gathered, then the kernel;
  // ATen's strided convolution gives the same shape and values to float rounding.
  torch::nn::Conv3d strided(torch::nn::Conv3dOptions(8, 16, 1).stride({1, 2, 2}));
  const torch::Tensor odd = torch::randn({1, 8, 3, 21, 41});
  const torch::Tensor got = inference_conv3d(*strided, odd, {0, 0, 0});
  EXPECT_TRUE(torch::equal(got, direct_conv3d(odd.slice(3, 0, 21, 2).slice(4, 0, 41, 2), strided->weight, strided->bias)));
  const torch::Tensor aten = torch::conv3d(odd, strided->weight, strided->bias, {1, 2, 2});
  ASSERT_EQ(got.sizes(), aten.sizes());
  EXPECT_LE((got - aten).abs().max().item<double>(), 1e-5);
  // The 8 -> 16 downsampling (1 x 3 x 3, stride 1 x 2 x 2) too.
  torch::nn::Conv3d down(torch::nn::Conv3dOptions(8, 16, {1, 3, 3}).stride({1, 2, 2}).padding({0, 1, 1}));
  EXPECT_TRUE(torch::equal(inference_conv3d(*down, odd, {0, 1, 1}), direct_conv3d(odd, down->weight, down->bias, 2)));
  EXPECT_LE((inference_conv3d(*down, odd, {0, 1, 1}) -
             torch::conv3d(odd, down->weight, down->bias, {1, 2, 2}, {0, 1, 1})).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(inference_conv3d(*wide, x32, {1, 1, 1}),
                           torch::mkldnn_convolution(x32, wide->weight, wide->bias, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1)));
}

}  // namespace
}  // namespace hemexp
