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
}

}  // namespace
}  // namespace hemexp
