// The QC picture: tiles where the mask is, red where the mask is, brain window elsewhere.
#include <gtest/gtest.h>

#include "hemexp/core/qc.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

TEST(Qc, MosaicShowsMaskedSlicesInRed) {
  const Geometry g = test::grid({300, 200, 20}, {0.5, 0.5, 5.0});
  Volume v{g, torch::full(tensor_shape(g), 40.f)};  // brain grey
  torch::Tensor mask = torch::zeros(tensor_shape(g), torch::kUInt8);
  mask.slice(0, 8, 11).slice(1, 50, 60).slice(2, 100, 120).fill_(1);  // slices 8, 9, 10
  const torch::Tensor img = qc_mosaic(v, mask);
  // 3 tiles in one row, each shrunk by 2 (300 px wide -> 150).
  EXPECT_EQ(img.sizes(), (c10::IntArrayRef{100, 450, 3}));
  // Inside the mask: red blend of grey 127.5; outside: pure grey.
  EXPECT_TRUE(torch::equal(img[27][55], torch::tensor({185, 70, 70}, torch::kUInt8))) << img[27][55];
  EXPECT_TRUE(torch::equal(img[5][5], torch::tensor({128, 128, 128}, torch::kUInt8))) << img[5][5];
  // Without a mask: 12 tiles spread over the volume, 4 per row.
  const torch::Tensor plain = qc_mosaic(v, torch::zeros_like(mask));
  EXPECT_EQ(plain.sizes(), (c10::IntArrayRef{300, 600, 3}));
  EXPECT_EQ(plain.select(2, 1).max().item<uint8_t>(), 128);
  // A label map: intraventricular blood (2) in blue, edema (3) in yellow, beside the red clot.
  torch::Tensor labels = mask.clone();
  labels.slice(0, 8, 11).slice(1, 50, 60).slice(2, 140, 160).fill_(2);
  labels.slice(0, 8, 11).slice(1, 80, 90).slice(2, 100, 120).fill_(3);
  const torch::Tensor coloured = qc_mosaic(v, labels);
  EXPECT_TRUE(torch::equal(coloured[27][55], torch::tensor({185, 70, 70}, torch::kUInt8))) << coloured[27][55];
  EXPECT_TRUE(torch::equal(coloured[27][75], torch::tensor({88, 124, 185}, torch::kUInt8))) << coloured[27][75];
  EXPECT_TRUE(torch::equal(coloured[42][55], torch::tensor({185, 169, 70}, torch::kUInt8))) << coloured[42][55];
  // Without hematoma, a label map shows the slices of its other labels: blood in the ventricles
  // in slice 3 and in the last byte of slice 15's plane, edema in the first byte of slice 16:
  // three tiles, the first with the blue.
  torch::Tensor others = torch::zeros_like(mask);
  others[3].slice(0, 50, 60).slice(1, 100, 120).fill_(2);
  others[15][199][299] = 2;
  others[16][0][0] = 3;
  const torch::Tensor shown = qc_mosaic(v, others);
  EXPECT_EQ(shown.sizes(), (c10::IntArrayRef{100, 450, 3}));
  EXPECT_TRUE(torch::equal(shown[27][55], torch::tensor({88, 124, 185}, torch::kUInt8))) << shown[27][55];
  EXPECT_TRUE(torch::equal(qc_mosaic(v, others.to(torch::kLong)), shown));  // codes of another type
}

// A tile is the brain-window grey blended with the label colours, computed in one loop: the
// same bytes as the element-wise tensor formula, on random HU with exact ties for the rounding
// (values on a 1/8 grid) and every code, the higher ones clamped to green.
TEST(Qc, TileIsTheTensorFormulaExactly) {
  const Geometry g = test::grid({301, 197, 1}, {0.5, 0.5, 5.0});
  torch::manual_seed(11);
  const torch::Tensor hu = ((torch::rand(tensor_shape(g)) * 300 - 100) * 8).round() / 8;
  const torch::Tensor mask = torch::randint(0, 7, tensor_shape(g), torch::kUInt8);
  const torch::Tensor got = qc_mosaic(Volume{g, hu}, mask);
  // The formula, on every second pixel (301 px -> 151 across).
  const torch::Tensor h = hu[0].slice(0, 0, 197, 2).slice(1, 0, 301, 2);
  const torch::Tensor codes = mask[0].slice(0, 0, 197, 2).slice(1, 0, 301, 2).to(torch::kLong).clamp(0, 4);
  const torch::Tensor grey = ((h - 0.f) / 80.f).clamp(0, 1) * 255.f;
  const torch::Tensor colours =
      torch::tensor({0.f, 0.f, 0.f, 255.f, 0.f, 0.f, 40.f, 120.f, 255.f, 255.f, 220.f, 0.f, 0.f, 200.f, 0.f}).view({5, 3});
  const torch::Tensor alpha = (0.45f * (codes != 0).to(torch::kFloat32)).unsqueeze(-1);
  const torch::Tensor blended = torch::stack({grey, grey, grey}, -1) * (1 - alpha) + colours.index({codes}) * alpha;
  const torch::Tensor want = blended.round().to(torch::kUInt8);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_EQ(got.ne(want).sum().item<int64_t>(), 0);
  EXPECT_GT((blended.frac() == 0.5f).sum().item<int64_t>(), 0) << "ties must occur for this test to test";
}

}  // namespace
}  // namespace hemexp
