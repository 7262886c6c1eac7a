// U-Mamba in C++ against the PyTorch reference (tests/data/parity, made by
// scripts/make_parity_fixture.py), and the strict weight loading.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/umamba.hpp"
#include "test_helpers.hpp"
#include "test_shapes.hpp"

namespace hemexp {
namespace {

const std::filesystem::path kParity = std::filesystem::path(HEMEXP_TEST_DATA) / "parity";

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, LogitsMatchPyTorchTo1e4) {
  const std::string stem = GetParam();
  // The parity models have no inference block: build the network from the file as Segmenter does.
  const ModelFile file = ModelFile::read(kParity / (stem + ".safetensors"), "segmentation");
  EXPECT_EQ(file.card.kind, "segmentation");
  UMamba network(UMambaConfig::from_json(file.card.json["network"]));
  load_named_tensors(*network, file.tensors, stem);
  network->eval();
  EXPECT_EQ(network->config().architecture, stem == "umambabot" ? "UMambaBot" : "UMambaEnc");
  const SafetensorsFile io = read_safetensors(kParity / (stem + "_io.safetensors"));
  c10::InferenceMode guard;
  const std::vector<torch::Tensor> outputs = network->forward_all(io.tensors.at("input"));
  ASSERT_EQ(outputs.size(), 2u);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const torch::Tensor& expected = io.tensors.at("output." + std::to_string(i));
    ASSERT_EQ(outputs[i].sizes(), expected.sizes());
    const double diff = (outputs[i] - expected).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << stem << " output " << i;
    EXPECT_GT(expected.abs().max().item<double>(), 0.1);  // not a trivially zero output
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, Parity, ::testing::Values("umambabot", "umambaenc"));

// Several windows in one forward pass (the sliding window's windows_per_pass): each item of the
// batch gets what it gets alone (the scan and every layer keep items apart), to float rounding
// (oneDNN and ATen may sum a batch in another order).
TEST(UMamba, BatchedWindowsEqualOneAtATime) {
  for (const std::string stem : {"umambabot", "umambaenc"}) {
    const ModelFile file = ModelFile::read(kParity / (stem + ".safetensors"), "segmentation");
    UMamba network(UMambaConfig::from_json(file.card.json["network"]));
    load_named_tensors(*network, file.tensors, stem);
    network->eval();
    const torch::Tensor x = read_safetensors(kParity / (stem + "_io.safetensors")).tensors.at("input");
    c10::InferenceMode guard;
    const std::vector<torch::Tensor> items{x, x.flip({3}) * 0.5, -x};
    const torch::Tensor batched = network->forward(torch::cat(items, 0));
    ASSERT_EQ(batched.size(0), 3);
    for (int64_t i = 0; i < 3; ++i) {
      const torch::Tensor alone = network->forward(items[size_t(i)]);
      EXPECT_LE((batched[i] - alone[0]).abs().max().item<double>(), 1e-5) << stem << " item " << i;
    }
  }
}

// Inference sends every convolution through oneDNN (umamba.cpp, conv3d) and does each instance
// norm with the residual and LeakyReLU after it in one in-place pass (norm_act); with
// gradients on, the modules' own forward runs (LibTorch's kernels). The shipped model on a
// real-sized window: both give the same logits to float rounding, and the argmax agrees
// everywhere. (The parity fixtures, whose stages have two blocks, cover the identity skip.)
TEST(UMamba, OneDnnConvolutionsAgreeWithTheModules) {
  const Segmenter seg = Segmenter::load(test::shipped_model("hemexp-seg.safetensors"));
  UMamba net = seg.network();
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({1, 1, 16, 96, 96});
  torch::Tensor fast, modules;
  {
    c10::InferenceMode guard;
    fast = net->forward(x);
  }
  {
    torch::GradMode::set_enabled(true);
    modules = net->forward(x).detach();
  }
  ASSERT_EQ(fast.sizes(), modules.sizes());
  EXPECT_LE((fast - modules).abs().max().item<double>(), 1e-3);
  EXPECT_GT(modules.abs().max().item<double>(), 1.0);
  EXPECT_TRUE(torch::equal(fast.argmax(1), modules.argmax(1)));
}

// The decoder's join (upsample_concat) writes exactly what ATen's nearest interpolate and cat give:
// every mix of kept and doubled sizes, odd extents, a batch of two, the 8 -> 4 channel split, and
// the fallback (a ratio of 3, a non-contiguous input) through ATen itself.
TEST(UMamba, UpsampleConcatIsInterpolateThenCat) {
  namespace F = torch::nn::functional;
  c10::InferenceMode guard;
  torch::manual_seed(11);
  const auto reference = [](const torch::Tensor& x, const torch::Tensor& skip) {
    return torch::cat({F::interpolate(x, F::InterpolateFuncOptions()
                                             .size(std::vector<int64_t>{skip.size(2), skip.size(3), skip.size(4)})
                                             .mode(torch::kNearest)),
                       skip},
                      1);
  };
  struct Case {
    std::vector<int64_t> x, skip;
  };
  const std::vector<Case> cases = {{{1, 8, 4, 12, 12}, {1, 4, 8, 24, 24}},   {{1, 4, 8, 24, 24}, {1, 4, 8, 48, 48}},
                                   {{2, 3, 3, 5, 7}, {2, 5, 6, 10, 14}},     {{1, 2, 5, 3, 9}, {1, 1, 5, 6, 9}},
                                   {{1, 1, 1, 1, 1}, {1, 2, 2, 2, 2}},       {{1, 2, 2, 3, 4}, {1, 2, 6, 3, 4}},
                                   {{1, 2, 3, 4, 5}, {1, 3, 3, 4, 10}},      {{1, 2, 3, 4, 5}, {1, 3, 6, 4, 5}},
                                   {{2, 2, 3, 4, 5}, {2, 3, 3, 4, 5}},       {{1, 2, 3, 4, 5}, {1, 1, 3, 8, 5}}};
  for (const Case& c : cases) {
    const torch::Tensor x = torch::randn(c.x), skip = torch::randn(c.skip);
    const torch::Tensor got = upsample_concat(x, skip);
    EXPECT_TRUE(torch::equal(got, reference(x, skip))) << c.x << " -> " << c.skip;
  }
  const torch::Tensor x = torch::randn({1, 2, 6, 4, 3}).transpose(3, 4), skip = torch::randn({1, 3, 12, 6, 8});
  EXPECT_TRUE(torch::equal(upsample_concat(x, skip), reference(x, skip)));
}

// The Mamba block's causal depthwise convolution as one loop (causal_depthwise_conv1d) against
// conv1d with padding taps - 1, its first L outputs (what the module computes), on chunks of a
// wider tensor as in_proj's output gives them: one token, fewer tokens than taps, the shipped
// model's 576 tokens x 128 channels, a batch of two. A tap applied to the wrong token or channel
// would be off by the size of the values (about 1), not by float rounding (measured: equal bits
// with LibTorch 1.13's CPU conv1d).
TEST(UMamba, CausalDepthwiseConv1dIsTheModulesConv1d) {
  namespace F = torch::nn::functional;
  torch::manual_seed(13);
  struct Case {
    int64_t batch, length, channels, taps;
  };
  for (const Case& c : {Case{1, 576, 128, 4}, Case{2, 7, 5, 4}, Case{1, 1, 3, 4}, Case{1, 2, 16, 4}, Case{1, 9, 6, 1}}) {
    const torch::Tensor xz = torch::randn({c.batch, c.length, 2 * c.channels});
    const torch::Tensor x = xz.chunk(2, -1)[0];
    const torch::Tensor w = 0.5 * torch::randn({c.channels, 1, c.taps}), b = torch::randn({c.channels});
    const torch::Tensor expected =
        F::conv1d(x.transpose(1, 2), w, F::Conv1dFuncOptions().bias(b).padding(c.taps - 1).groups(c.channels))
            .slice(2, 0, c.length)
            .transpose(1, 2);
    EXPECT_FALSE(causal_depthwise_conv1d_applicable(x, w, b));  // gradients on: the module's own path
    c10::InferenceMode guard;
    ASSERT_TRUE(causal_depthwise_conv1d_applicable(x, w, b));
    const torch::Tensor got = causal_depthwise_conv1d(x, w, b);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5) << c.length << " tokens, " << c.taps << " taps";
  }
  c10::InferenceMode guard;
  const torch::Tensor x = torch::randn({1, 4, 6});
  EXPECT_THROW(causal_depthwise_conv1d(x.transpose(1, 2), torch::randn({4, 1, 4}), torch::randn({4})), CoreError);
  EXPECT_THROW(causal_depthwise_conv1d(x, torch::randn({6, 1, 4}), torch::Tensor()), CoreError);
  EXPECT_THROW(causal_depthwise_conv1d(x.to(torch::kFloat64), torch::randn({6, 1, 4}), torch::randn({6})), CoreError);
}

// The Mamba block at inference (its conv1d and dt_proj as loops of their own) against the same
// block with gradients on (the modules): d_model 64 gives dt_rank 4, as in the shipped model;
// d_model 20 gives 2. A product over the wrong feature or tap would be off by about the size of
// the output, not by float rounding.
TEST(UMamba, MambaBlockAtInferenceIsTheModules) {
  torch::manual_seed(14);
  for (const int64_t d_model : {64, 20}) {
    Mamba block(d_model, 16, 4, 2);
    const torch::Tensor x = torch::randn({2, 37, d_model});
    const torch::Tensor modules = block->forward(x).detach();
    torch::Tensor fast;
    {
      c10::InferenceMode guard;
      fast = block->forward(x);
    }
    ASSERT_EQ(fast.sizes(), modules.sizes());
    EXPECT_GT(modules.abs().max().item<double>(), 0.05);
    EXPECT_LE((fast - modules).abs().max().item<double>(), 1e-5) << d_model;
  }
}

// The fused normalisation (one pass of statistics in double, then the in-place apply; umamba.cpp,
// norm_act) against the modules' own InstanceNorm3d (ATen, two passes in double) on planes that
// sit on a large mean (1000) with a small spread (0.1). Both convolutions are the identity plus a
// bias of 1000 (one rounding, the same in every backend), so only the normalisations differ: a
// variance formed in float, or one that cancels badly, would be off by far more than this.
TEST(UMamba, FusedNormKeepsASmallSpreadOnALargeMean) {
  torch::manual_seed(12);
  ResidualBlock block(8, 8, std::array<int64_t, 3>{1, 3, 3}, std::array<int64_t, 3>{1, 1, 1});
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : block->named_parameters()) {
      if (p.key().find("conv") == std::string::npos) continue;
      if (p.key().find("bias") != std::string::npos) {
        p.value().fill_(1000.0);
        continue;
      }
      p.value().zero_();
      for (int64_t c = 0; c < 8; ++c) p.value()[c][c][0][1][1] = 1.0;
    }
  }
  const torch::Tensor x = 0.1 * torch::randn({1, 8, 3, 12, 40});
  torch::Tensor fast, modules;
  {
    c10::InferenceMode guard;
    fast = block->forward(x);
  }
  modules = block->forward(x).detach();
  ASSERT_EQ(fast.sizes(), modules.sizes());
  EXPECT_GT(modules.abs().max().item<double>(), 1.0);
  EXPECT_LE((fast - modules).abs().max().item<double>(), 5e-3);
}

// segment() resamples only the block that can hold foreground, and removes small components
// there, unless the probability map is asked for: both shipped models (two classes; four labels) give the same label maps either way
// on a thin-slice synthetic head with a hematoma.
TEST(Segmenter, LabelsWithoutTheProbabilityMapAreTheWholeGrids) {
  synth::SynthCase c;
  const Volume canonical = to_canonical(test::synthetic_head(31, 128, 1.0, &c)).volume;
  ASSERT_GT(c.baseline.volume_ml, 1.0);
  for (const char* name : {"hemexp-seg.safetensors", "hemexp-seg-labels.safetensors"}) {
    const Segmenter seg = Segmenter::load(test::shipped_model(name));
    const Segmentation block = seg.segment(canonical), whole = seg.segment(canonical, true);
    EXPECT_FALSE(block.probability.defined());
    ASSERT_TRUE(whole.probability.defined());
    EXPECT_TRUE(torch::equal(block.labels, whole.labels)) << name;
    EXPECT_TRUE(torch::equal(block.mask, whole.mask)) << name;
    // Small components removed in the block or on the whole grid: the same (2 with the two-class model).
    EXPECT_EQ(block.removed_components, whole.removed_components) << name;
    if (std::string(name) == "hemexp-seg.safetensors") EXPECT_EQ(block.removed_components, 2);
    EXPECT_GT(block.mask.sum().item<int64_t>(), 100) << name;
  }
}

// segment() on the CPU takes a window per thread at once (the sliding window's
// concurrent_windows): the probability map and the labels are the same bits on one, two and
// three threads, with as many windows a pass as threads, and every window is counted once.
TEST(Segmenter, ProbabilitiesDoNotDependOnTheThreadCount) {
  synth::SynthCase c;
  const Volume canonical = to_canonical(test::synthetic_head(31, 128, 1.0, &c)).volume;
  const Segmenter seg = Segmenter::load(test::shipped_model("hemexp-seg-labels.safetensors"));
  const test::ThreadCount threads_now(1);
  EXPECT_EQ(seg.windows_per_pass(), 1);
  const Segmentation one = seg.segment(canonical, true);
  ASSERT_GT(one.windows, 2);
  for (const int threads : {2, 3}) {
    threads_now.set(threads);
    EXPECT_EQ(seg.windows_per_pass(), threads);
    const Segmentation more = seg.segment(canonical, true);
    EXPECT_TRUE(torch::equal(more.probability, one.probability)) << threads << " threads";
    EXPECT_TRUE(torch::equal(more.labels, one.labels)) << threads << " threads";
    EXPECT_EQ(more.windows, one.windows) << threads << " threads";
  }
}

// --precision bf16 (Segmenter::set_precision): the convolutions run in bfloat16 through oneDNN
// (this CPU has AVX-512 BF16 or oneDNN emulates it on AVX-512; elsewhere the option is refused,
// and so is this test's premise), the logits move by bfloat16 rounding, not more, and fp32
// gives back exactly what the model gave before. fp16 needs CUDA; unknown names are refused.
TEST(Segmenter, Bf16ConvolutionsStayCloseAndFp32IsExact) {
  Segmenter seg = Segmenter::load(test::shipped_model("hemexp-seg.safetensors"));
  EXPECT_THROW(seg.set_precision("fp16"), CoreError);
  EXPECT_THROW(seg.set_precision("int8"), CoreError);
  EXPECT_EQ(seg.precision(), "fp32");
  UMamba net = seg.network();
  torch::manual_seed(6);
  const torch::Tensor x = torch::randn({1, 1, 16, 96, 96});
  c10::InferenceMode guard;
  const torch::Tensor full = net->forward(x);
  try {
    seg.set_precision("bf16");
  } catch (const CoreError& e) {
    GTEST_SKIP() << e.what();
  }
  EXPECT_EQ(net->convolution_dtype(), torch::kBFloat16);
  const torch::Tensor low = net->forward(x);
  ASSERT_EQ(low.scalar_type(), torch::kFloat32);
  const double diff = (low - full).abs().max().item<double>(), scale = full.abs().max().item<double>();
  EXPECT_GT(diff, 0.0) << "bf16 changed nothing";
  EXPECT_LT(diff, 0.05 * scale) << diff << " against logits up to " << scale;
  EXPECT_GT(low.argmax(1).eq(full.argmax(1)).to(torch::kFloat64).mean().item<double>(), 0.995);
  seg.set_precision("fp32");
  EXPECT_TRUE(torch::equal(net->forward(x), full));
}

TEST(ModelFile, WeightsAreCheckedByNameAndShape) {
  const SafetensorsFile file = read_safetensors(kParity / "umambabot.safetensors");
  const ModelCard card = parse_model_card(file.metadata, "bot");
  auto expect_error = [&](std::map<std::string, torch::Tensor> tensors, const std::string& needle) {
    UMamba net(UMambaConfig::from_json(card.json["network"]));
    try {
      load_named_tensors(*net, tensors, "bot");
      FAIL() << "expected: " << needle;
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto missing = file.tensors;
  missing.erase("seg_heads.0.weight");
  expect_error(missing, "missing tensor 'seg_heads.0.weight'");
  auto extra = file.tensors;
  extra["decoder_stages.9.weight"] = torch::zeros({1});
  expect_error(extra, "unexpected tensor 'decoder_stages.9.weight'");
  auto wrong = file.tensors;
  wrong["stem.conv1.weight"] = torch::zeros({4, 1, 3, 3, 3});
  expect_error(wrong, "'stem.conv1.weight' has shape [4,1,3,3,3], the network expects [4,1,1,3,3]");

  nlohmann::json network = card.json["network"];
  network["strides"].erase(0);
  EXPECT_THROW(UMambaConfig::from_json(network), CoreError);
  EXPECT_THROW(parse_model_card({}, "empty"), ModelError);
  EXPECT_THROW(parse_model_card({{kModelCardKey, "{\"format_version\": 99}"}}, "future"), ModelError);
  // A model of another kind, or one without an inference recipe, is not a segmenter.
  EXPECT_THROW(ModelFile::read(kParity / "umambabot.safetensors", "classification"), ModelError);
  try {
    Segmenter::load(kParity / "umambabot.safetensors");
    ADD_FAILURE() << "a card without preprocessing/inference blocks was accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("umambabot.safetensors: model card: no preprocessing block"),
              std::string::npos) << e.what();
  }
}

TEST(ModelFile, Sha256KnownAnswers) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string(1000, 'a')), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

}  // namespace
}  // namespace hemexp
