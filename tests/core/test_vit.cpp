// The ViT classifier in C++ against the PyTorch reference (tests/data/parity/vit*.safetensors,
// made by scripts/make_vit_parity_fixture.py), and the checks of its model card.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <set>

#include "hemexp/core/error.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/vit.hpp"

namespace hemexp {
namespace {

const std::filesystem::path kParity = std::filesystem::path(HEMEXP_TEST_DATA) / "parity";

struct Fixture {
  SafetensorsFile weights, io;
  ModelCard card;
  ViTConfig config;
};

Fixture load_fixture() {
  Fixture f;
  f.weights = read_safetensors(kParity / "vit.safetensors");
  f.io = read_safetensors(kParity / "vit_io.safetensors");
  f.card = parse_model_card(f.weights.metadata, "vit.safetensors");
  f.config = ViTConfig::from_json(f.card.json.at("network"));
  return f;
}

ViT load_network(const Fixture& f) {
  ViT net(f.config);
  load_named_tensors(*net, f.weights.tensors, "vit.safetensors");
  net->eval();
  return net;
}

// Expects CoreError whose message contains every needle.
template <typename Fn>
void expect_core_error(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no CoreError; expected one mentioning " << needles.front();
  } catch (const CoreError& e) {
    for (const auto& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "'" << needle << "' not in: " << e.what();
  }
}

TEST(ViTParity, LogitsMatchPyTorchTo1e4) {
  const Fixture f = load_fixture();
  EXPECT_EQ(f.card.kind, "classification");
  ViT net = load_network(f);
  const torch::Tensor& expected = f.io.tensors.at("logits");
  c10::InferenceMode guard;
  const torch::Tensor logits = net->forward(f.io.tensors.at("input"));
  ASSERT_EQ(logits.sizes().vec(), std::vector<int64_t>{2});
  ASSERT_EQ(expected.sizes(), logits.sizes());
  const double diff = (logits - expected).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4);
  EXPECT_GT(expected.abs().max().item<double>(), 0.1);  // not a trivially zero output
  std::printf("ViT parity: logits %.6f %.6f, max |C++ - PyTorch| %.3g\n", logits[0].item<double>(),
              logits[1].item<double>(), diff);
}

// One of the parity fixtures with scalar features (tests/data/parity/STEM*.safetensors): its
// card's network block round-trips through ViTConfig, the network built from it holds exactly
// the file's parameters, and its logits on the fixture's input (computed in inference mode: use
// them under an InferenceMode guard) differ from PyTorch's by `diff`.
struct FeatureFixture {
  SafetensorsFile weights, io;
  ViTConfig config;
  ViT net{nullptr};
  torch::Tensor x, features, logits;
  double diff = 0.0;
};

FeatureFixture load_feature_fixture(const std::string& stem) {
  FeatureFixture f;
  f.weights = read_safetensors(kParity / (stem + ".safetensors"));
  f.io = read_safetensors(kParity / (stem + "_io.safetensors"));
  const ModelCard card = parse_model_card(f.weights.metadata, stem + ".safetensors");
  f.config = ViTConfig::from_json(card.json.at("network"));
  EXPECT_EQ(f.config.to_json(), card.json.at("network"));
  f.net = ViT(f.config);
  load_named_tensors(*f.net, f.weights.tensors, stem + ".safetensors");
  f.net->eval();
  int64_t count = 0;
  for (const auto& p : f.net->named_parameters(true)) count += p.value().numel();
  EXPECT_EQ(count, f.config.num_parameters());
  c10::InferenceMode guard;
  f.x = f.io.tensors.at("input");
  f.features = f.io.tensors.at("features");
  f.logits = f.net->forward(f.x, f.features);
  f.diff = (f.logits - f.io.tensors.at("logits")).abs().max().item<double>();
  return f;
}

// The head joined with 5 scalar features (vit_features*.safetensors): same tolerance, and the
// features must matter (zeroing them changes the logits) and be required.
TEST(ViTParity, WithFeaturesLogitsMatchPyTorchTo1e4) {
  FeatureFixture f = load_feature_fixture("vit_features");
  ASSERT_EQ(f.config.num_features, 5);
  ViT& net = f.net;
  EXPECT_EQ(net->named_parameters(true)["head.weight"].sizes().vec(), (std::vector<int64_t>{1, 48 + 5}));
  c10::InferenceMode guard;
  const torch::Tensor &x = f.x, &features = f.features, &logits = f.logits;
  const double diff = f.diff;
  EXPECT_LE(diff, 1e-4);
  EXPECT_GT((net->forward(x, torch::zeros_like(features)) - logits).abs().max().item<double>(), 1e-2);
  expect_core_error([&] { net->forward(x); }, {"features", "[B, 5]"});
  expect_core_error([&] { net->forward(x, torch::zeros({2, 4})); }, {"features", "[B, 5]"});
  std::printf("ViT with features parity: max |C++ - PyTorch| %.3g\n", diff);
}

// A sign layer (vit_signs*.safetensors: 3 signs from 5 features; the head reads them and
// features 3 and 0 in that order): logits and sign probabilities against PyTorch, the head's
// width, and the features reaching the head only through the layer and the listed indices.
TEST(ViTParity, WithSignLayerLogitsAndSignsMatchPyTorch) {
  FeatureFixture f = load_feature_fixture("vit_signs");
  ASSERT_EQ(f.config.signs, (std::vector<std::string>{"swirl", "blend", "black_hole"}));
  ASSERT_EQ(f.config.head_features, (std::vector<int64_t>{3, 0}));
  ViT& net = f.net;
  auto params = net->named_parameters(true);
  EXPECT_EQ(params["head.weight"].sizes().vec(), (std::vector<int64_t>{1, 48 + 3 + 2}));
  EXPECT_EQ(params["signs.weight"].sizes().vec(), (std::vector<int64_t>{3, 5}));
  c10::InferenceMode guard;
  const torch::Tensor &x = f.x, &features = f.features, &logits = f.logits;
  const double diff = f.diff;
  EXPECT_LE(diff, 1e-4);
  const torch::Tensor signs = net->sign_probabilities(features);
  ASSERT_EQ(signs.sizes().vec(), (std::vector<int64_t>{2, 3}));
  EXPECT_LE((signs - f.io.tensors.at("sign_probabilities")).abs().max().item<double>(), 1e-6);
  // The features matter (the parity above is what pins the head's [3, 0] order: [0, 3] gives
  // other logits).
  const torch::Tensor swapped = features.index_select(1, torch::tensor({3, 1, 2, 0, 4}));
  EXPECT_GT((net->forward(x, swapped) - logits).abs().max().item<double>(), 1e-3);
  expect_core_error([&] { net->forward(x, torch::zeros({2, 4})); }, {"features", "[B, 5]"});
  expect_core_error([&] { net->sign_probabilities(torch::zeros({2, 4})); }, {"features", "[B, 5]"});
  std::printf("ViT with sign layer parity: max |C++ - PyTorch| %.3g\n", diff);
  // A network without a sign layer says so.
  ViT plain(load_fixture().config);
  expect_core_error([&] { plain->sign_probabilities(torch::zeros({1, 5})); }, {"no sign layer"});
}

// Quadratic sign inputs (vit_signs_quad*.safetensors: the 3 signs read the 5 features and their
// 15 pairwise products): the layer's width, parity of logits and signs, and the products'
// order (the lower triangle's order, what a column-major loop gives, changes the signs).
TEST(ViTParity, WithQuadraticSignInputsMatchPyTorch) {
  FeatureFixture f = load_feature_fixture("vit_signs_quad");
  ASSERT_TRUE(f.config.quadratic_signs());
  ASSERT_EQ(f.config.num_sign_inputs(), 5 + 15);
  ViT& net = f.net;
  auto params = net->named_parameters(true);
  EXPECT_EQ(params["signs.weight"].sizes().vec(), (std::vector<int64_t>{3, 20}));
  EXPECT_EQ(f.config.num_parameters(), int64_t(38405));
  c10::InferenceMode guard;
  EXPECT_LE(f.diff, 1e-4);
  const torch::Tensor signs = net->sign_probabilities(f.features);
  const torch::Tensor expected = f.io.tensors.at("sign_probabilities");
  EXPECT_LE((signs - expected).abs().max().item<double>(), 1e-6);
  // By hand: the products in row-major upper-triangle order, and the lower triangle's order.
  const torch::Tensor& x = f.features;
  std::vector<torch::Tensor> upper{x}, lower{x};
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = i; j < 5; ++j) upper.push_back((x.select(1, i) * x.select(1, j)).unsqueeze(1));
  for (int64_t j = 0; j < 5; ++j)
    for (int64_t i = 0; i <= j; ++i) lower.push_back((x.select(1, i) * x.select(1, j)).unsqueeze(1));
  const torch::Tensor w = params["signs.weight"], b = params["signs.bias"];
  EXPECT_LE((torch::sigmoid(torch::cat(upper, 1).matmul(w.t()) + b) - expected).abs().max().item<double>(), 1e-6);
  EXPECT_GT((torch::sigmoid(torch::cat(lower, 1).matmul(w.t()) + b) - expected).abs().max().item<double>(), 1e-3);
  // The card round-trips with its sign_inputs; a linear card's JSON does not gain the field.
  EXPECT_EQ(ViTConfig::from_json(f.config.to_json()).num_sign_inputs(), 20);
  EXPECT_FALSE(load_feature_fixture("vit_signs").config.to_json().contains("sign_inputs"));
  std::printf("ViT with quadratic sign inputs parity: max |C++ - PyTorch| %.3g\n", f.diff);
}

TEST(ViTConfig, SignLayerFieldsChecked) {
  nlohmann::json good = load_fixture().card.json.at("network");
  good["num_features"] = 4;
  good["signs"] = {"swirl", "blend"};
  good["head_features"] = {0};
  EXPECT_EQ(ViTConfig::from_json(good).head_extra(), 3);
  nlohmann::json bad = good;
  bad["head_features"] = {4};
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.head_features", "[0, 4)"});
  bad = good;
  bad.erase("signs");
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.head_features", "needs network.signs"});
  bad = good;
  bad["num_features"] = 0;
  bad["head_features"] = nlohmann::json::array();
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.signs", "num_features"});
  bad = good;
  bad["signs"] = {1, 2};
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.signs", "list of names"});
  nlohmann::json quad = good;
  quad["sign_inputs"] = "quadratic";
  EXPECT_EQ(ViTConfig::from_json(quad).num_sign_inputs(), 4 + 10);
  bad = quad;
  bad["sign_inputs"] = "cubic";
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.sign_inputs", "\"linear\" or \"quadratic\""});
  bad["sign_inputs"] = 2;
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.sign_inputs", "must be a string"});
  bad = quad;
  bad.erase("signs");
  bad["head_features"] = nlohmann::json::array();
  expect_core_error([&] { ViTConfig::from_json(bad); }, {"network.sign_inputs", "needs network.signs"});
}

TEST(ViTParity, ParameterNamesEqualFixtureTensors) {
  const Fixture f = load_fixture();
  ViT net(f.config);
  std::set<std::string> names, tensors;
  int64_t count = 0;
  for (const auto& p : net->named_parameters(true)) {
    names.insert(p.key());
    count += p.value().numel();
  }
  for (const auto& t : f.weights.tensors) tensors.insert(t.first);
  EXPECT_EQ(names, tensors);
  EXPECT_TRUE(net->named_buffers(true).is_empty());
  EXPECT_TRUE(names.count("blocks.1.attn.qkv.weight") && names.count("patch_embed.weight") && names.count("cls_token"));
  EXPECT_EQ(count, f.config.num_parameters());
  EXPECT_EQ(f.config.num_patches(), 3 * 5 * 4);
}

// The forward written out with functional ops on the fixture's tensors, with the head layout
// as a switch. The correct layout must reproduce the fixture; the two classic mistakes must
// not, which shows the fixture would catch them in ViTImpl.
enum class HeadLayout { kCorrect, kReshapeWithoutPermute, kMergeWithoutTranspose };

torch::Tensor functional_forward(const std::map<std::string, torch::Tensor>& w, const ViTConfig& c,
                                 const torch::Tensor& x, HeadLayout layout) {
  const int64_t b = x.size(0), e = c.embed_dim, h = c.num_heads, hd = c.head_dim();
  const std::vector<int64_t> patch(c.patch_size.begin(), c.patch_size.end());
  auto norm = [&](const torch::Tensor& t, const std::string& n) {
    return torch::layer_norm(t, {e}, w.at(n + ".weight"), w.at(n + ".bias"), c.layer_norm_eps);
  };
  auto linear = [&](const torch::Tensor& t, const std::string& n) {
    return torch::linear(t, w.at(n + ".weight"), w.at(n + ".bias"));
  };
  torch::Tensor t = torch::conv3d(x, w.at("patch_embed.weight"), w.at("patch_embed.bias"), patch).flatten(2).transpose(1, 2);
  t = torch::cat({w.at("cls_token").expand({b, -1, -1}), t}, 1) + w.at("pos_embed");
  const int64_t n = t.size(1);
  for (int64_t k = 0; k < c.depth; ++k) {
    const std::string block = "blocks." + std::to_string(k);
    const torch::Tensor qkv = linear(norm(t, block + ".norm1"), block + ".attn.qkv");
    const torch::Tensor split = layout == HeadLayout::kReshapeWithoutPermute
                                    ? qkv.reshape({3, b, h, n, hd})
                                    : qkv.reshape({b, n, 3, h, hd}).permute({2, 0, 3, 1, 4});
    const torch::Tensor attn = torch::softmax(torch::matmul(split[0], split[1].transpose(-2, -1)) / std::sqrt(double(hd)), -1);
    const torch::Tensor heads = torch::matmul(attn, split[2]);  // (B, H, N, hd)
    const torch::Tensor merged = layout == HeadLayout::kMergeWithoutTranspose ? heads.reshape({b, n, e})
                                                                              : heads.transpose(1, 2).reshape({b, n, e});
    t = t + linear(merged, block + ".attn.proj");
    t = t + linear(torch::gelu(linear(norm(t, block + ".norm2"), block + ".mlp.fc1")), block + ".mlp.fc2");
  }
  return linear(norm(t.select(1, 0), "norm"), "head").squeeze(-1);
}

TEST(ViTParity, FixtureCatchesScrambledHeads) {
  const Fixture f = load_fixture();
  const torch::Tensor& x = f.io.tensors.at("input");
  const torch::Tensor& expected = f.io.tensors.at("logits");
  c10::InferenceMode guard;
  auto diff = [&](HeadLayout layout) {
    return (functional_forward(f.weights.tensors, f.config, x, layout) - expected).abs().max().item<double>();
  };
  EXPECT_LE(diff(HeadLayout::kCorrect), 1e-4);
  EXPECT_GT(diff(HeadLayout::kReshapeWithoutPermute), 1e-3);
  EXPECT_GT(diff(HeadLayout::kMergeWithoutTranspose), 1e-3);
}

TEST(ViTConfig, RejectsBadFieldsNamingThem) {
  const nlohmann::json good = load_fixture().card.json.at("network");
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    return j;
  };
  expect_core_error([&] { ViTConfig::from_json(with("num_heads", 5)); }, {"network.num_heads", "divide", "embed_dim"});
  expect_core_error([&] { ViTConfig::from_json(with("patch_size", {2, 4, 5})); },
                    {"network.patch_size", "[2,4,5]", "divide", "image_size"});
  expect_core_error([&] { ViTConfig::from_json(with("embed_dim", 48.0)); }, {"network.embed_dim", "integer"});
  expect_core_error([&] { ViTConfig::from_json(with("image_size", {6, 20})); }, {"network.image_size", "3 integers"});
  expect_core_error([&] { ViTConfig::from_json(with("architecture", "UMambaBot")); }, {"network.architecture"});
  expect_core_error([&] { ViTConfig::from_json(with("mlp_ratio", 4.0)); }, {"network.mlp_ratio", "not a ViT field"});
  expect_core_error([&] { ViTConfig::from_json(with("dropout", 1.5)); }, {"network.dropout"});
  expect_core_error([&] { ViTConfig::from_json(with("layer_norm_eps", 0)); }, {"network.layer_norm_eps"});
  expect_core_error([&] { ViTConfig::from_json(with("in_channels", 0)); }, {"network.in_channels"});
  expect_core_error([&] { ViTConfig::from_json(with("num_features", -1)); }, {"network.num_features"});
  expect_core_error([&] { ViTConfig::from_json(with("num_features", 2.0)); }, {"network.num_features", "integer"});
  nlohmann::json missing = good;
  missing.erase("depth");
  expect_core_error([&] { ViTConfig::from_json(missing); }, {"network.depth", "missing"});
  expect_core_error([&] { ViTConfig::from_json(nlohmann::json::array()); }, {"not a JSON object"});
}

TEST(ViTConfig, AbsurdSizesRejectedBeforeAllocation) {
  nlohmann::json absurd = load_fixture().card.json.at("network");
  absurd["embed_dim"] = 100000;
  absurd["depth"] = 1000;
  absurd["num_heads"] = 4;
  expect_core_error([&] { ViTConfig::from_json(absurd); }, {"network.embed_dim", "2048"});
  // Every field in bounds, the total not: 48 blocks of width 2048 are ~2.4e9 parameters.
  nlohmann::json wide = absurd;
  wide["embed_dim"] = 2048;
  wide["depth"] = 48;
  wide["mlp_dim"] = 8192;
  expect_core_error([&] { ViTConfig::from_json(wide); }, {"parameters", "200000000"});
  // Too many tokens: 512^3 voxels in 2^3 patches.
  nlohmann::json tokens = load_fixture().card.json.at("network");
  tokens["image_size"] = {512, 512, 512};
  tokens["patch_size"] = {2, 2, 2};
  expect_core_error([&] { ViTConfig::from_json(tokens); }, {"network.patch_size", "patches"});
  // A hand-built config bypassing from_json gets the same checks in the constructor; were the
  // 100000-wide qkv (3e10 floats) allocated first, this would be an OOM kill, not an exception.
  ViTConfig c;
  c.embed_dim = 100000;
  c.depth = 1000;
  expect_core_error([&] { ViT net(c); }, {"network.embed_dim"});
}

TEST(ViTConfig, JsonRoundTrip) {
  const nlohmann::json network = load_fixture().card.json.at("network");
  const ViTConfig c = ViTConfig::from_json(network);
  EXPECT_EQ(c.to_json(), network);
  nlohmann::json defaults = network;
  defaults.erase("layer_norm_eps");
  defaults.erase("dropout");
  EXPECT_EQ(ViTConfig::from_json(defaults).layer_norm_eps, 1e-6);
  EXPECT_EQ(ViTConfig::from_json(defaults).dropout, 0.0);
}

TEST(ViTForward, RejectsInputOfWrongShape) {
  const Fixture f = load_fixture();
  ViT net = load_network(f);
  c10::InferenceMode guard;
  expect_core_error([&] { net->forward(torch::zeros({1, 3, 6, 20, 13})); }, {"[1, 3, 6, 20, 13]", "[B, 3, 6, 20, 12]"});
  expect_core_error([&] { net->forward(torch::zeros({1, 1, 6, 20, 12})); }, {"ViT: input"});
  expect_core_error([&] { net->forward(torch::zeros({3, 6, 20, 12})); }, {"ViT: input"});
  EXPECT_EQ(net->forward(torch::zeros({1, 3, 6, 20, 12})).sizes().vec(), std::vector<int64_t>{1});
  // A network without features refuses them rather than ignoring them.
  expect_core_error([&] { net->forward(torch::zeros({1, 3, 6, 20, 12}), torch::zeros({1, 2})); }, {"features", "none"});
}

}  // namespace
}  // namespace hemexp
