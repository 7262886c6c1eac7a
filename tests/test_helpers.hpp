#pragma once
// Helpers shared by the test binaries of every layer.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"

namespace hemexp::test {

// A model file shipped in the repository's models/ (beside tests/).
inline std::filesystem::path shipped_model(const std::string& name) {
  return std::filesystem::path(HEMEXP_TEST_DATA).parent_path().parent_path() / "models" / name;
}

// Sets LibTorch's thread count for a scope and puts the caller's back when it ends, also when an
// ASSERT leaves the test early.
class ThreadCount {
 public:
  explicit ThreadCount(int threads) : before_(at::get_num_threads()) { at::set_num_threads(threads); }
  ~ThreadCount() { at::set_num_threads(before_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;
  void set(int threads) const { at::set_num_threads(threads); }

 private:
  int before_;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The card of an expansion classifier around the parity ViT (tests/data/parity/vit.safetensors:
// 3 channels, 6 x 20 x 12, random weights, so its numbers mean nothing): an ROI of that size,
// Platt calibration (slope, intercept), threshold 0.3, risk categories low < 0.1 <= intermediate
// < 0.3 <= high.
inline nlohmann::json parity_classifier_card(double min_volume_ml, double slope, double intercept) {
  const SafetensorsFile f = read_safetensors(std::filesystem::path(HEMEXP_TEST_DATA) / "parity/vit.safetensors");
  nlohmann::json card = nlohmann::json::parse(f.metadata.at(kModelCardKey));
  card["name"] = "random-weights-test-classifier";
  card["roi"] = {{"size", {6, 20, 12}},
                 {"spacing_mm", {3.0, 3.0, 5.0}},
                 {"channels", {{{"name", "brain"}, {"window_hu", {0, 80}}},
                               {{"name", "blood"}, {"window_hu", {40, 90}}},
                               {{"name", "mask"}}}},
                 {"centre", "mask_centroid"}};
  card["min_volume_ml"] = min_volume_ml;
  card["calibration"] = {{"method", "platt"}, {"slope", slope}, {"intercept", intercept}};
  card["decision"] = {{"threshold", 0.3}, {"rule", "test"}};
  card["risk_categories"] = {{{"name", "low"}, {"below", 0.1}},
                             {{"name", "intermediate"}, {"below", 0.3}},
                             {{"name", "high"}}};
  return card;
}

// The five features the parity sign-layer fixtures (tests/data/parity/vit_signs*) read, in order.
inline const std::vector<std::string> kParitySignFeatures{"log_volume_ml", "hypodense_fraction", "hu_sd", "mean_hu",
                                                          "surface_ratio"};

// `card` with the network of tests/data/parity/STEM.safetensors (a sign layer: vit_signs,
// vit_signs_quad) and its features kParitySignFeatures, each normalised with mean 0 and sd 1.
inline nlohmann::json with_parity_sign_layer(nlohmann::json card, const std::string& stem) {
  const SafetensorsFile f = read_safetensors(std::filesystem::path(HEMEXP_TEST_DATA) / "parity" / (stem + ".safetensors"));
  card["network"] = nlohmann::json::parse(f.metadata.at(kModelCardKey))["network"];
  card["features"] = nlohmann::json::array();
  for (const std::string& n : kParitySignFeatures) card["features"].push_back({{"name", n}, {"mean", 0.0}, {"sd", 1.0}});
  return card;
}

// The weights of a parity ViT (tests/data/parity/STEM.safetensors) with `card`, written to `where`.
inline std::filesystem::path write_parity_classifier(const std::filesystem::path& where, const nlohmann::json& card,
                                                     const std::string& stem = "vit") {
  SafetensorsFile f = read_safetensors(std::filesystem::path(HEMEXP_TEST_DATA) / "parity" / (stem + ".safetensors"));
  f.metadata[kModelCardKey] = card.dump();
  write_safetensors(where, f);
  return where;
}

// A segmentation model around the parity U-Mamba_Bot (random weights: its masks mean nothing
// but are deterministic) with a card `hemexp run` can use: 2 x 2 x 6 mm, 8 x 32 x 32 windows.
inline std::filesystem::path write_random_segmenter(const std::filesystem::path& where,
                                                    const std::string& name = "random-weights-test-model") {
  SafetensorsFile file = read_safetensors(std::filesystem::path(HEMEXP_TEST_DATA) / "parity/umambabot.safetensors");
  nlohmann::json card = nlohmann::json::parse(file.metadata.at(kModelCardKey));
  card["name"] = name;
  card["preprocessing"] = {{"spacing_mm", {2.0, 2.0, 6.0}},
                           {"normalization", {{"type", "ct"}, {"clip_hu", {-100, 200}}, {"mean_hu", 40}, {"std_hu", 50}}}};
  card["inference"] = {{"patch_size", {8, 32, 32}}, {"overlap", 0.5}, {"mirror", false}};
  card["postprocessing"] = {{"threshold", 0.5}, {"min_component_ml", 0.05}};
  file.metadata[kModelCardKey] = card.dump();
  write_safetensors(where, file);
  return where;
}

// The same random segmenter with four labels (background, hematoma, ivh, edema): each head's
// rows for the new classes are class 1's with other biases, so that every label is given to
// some voxels of a synthetic head.
inline std::filesystem::path write_random_multiclass_segmenter(const std::filesystem::path& where) {
  write_random_segmenter(where, "random-weights-test-model-4-labels");
  SafetensorsFile file = read_safetensors(where);
  for (auto& [name, t] : file.tensors) {
    if (name.rfind("seg_heads.", 0) != 0) continue;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const torch::Tensor fg = t.slice(0, 1, 2);
    t = torch::cat({t, bias ? fg - 0.1 : fg * 0.9, bias ? fg - 0.1 : fg * 1.1}, 0).contiguous();
  }
  nlohmann::json card = nlohmann::json::parse(file.metadata.at(kModelCardKey));
  card["network"]["num_classes"] = 4;
  card["labels"] = {{"0", "background"}, {"1", "hematoma"}, {"2", "ivh"}, {"3", "edema"}};
  file.metadata[kModelCardKey] = card.dump();
  write_safetensors(where, file);
  return where;
}

}  // namespace hemexp::test
