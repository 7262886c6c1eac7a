#pragma once

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/nn.h>

#include "hemexp/core/umamba.hpp"

namespace hemexp {

// The model card stored as JSON text in the safetensors __metadata__ entry
// "hemexp_model_card". Everything about a model lives here; nothing is hard-coded in C++.
struct ModelCard {
  nlohmann::json json;
  int format_version = 0;
  std::string kind;  // "segmentation" or "classification"
};

inline constexpr const char* kModelCardKey = "hemexp_model_card";
inline constexpr int kModelFormatVersion = 1;

ModelCard parse_model_card(const std::map<std::string, std::string>& metadata, const std::string& file_name);

// Copies tensors into the module's parameters and buffers by name. Every parameter must be
// present with the same shape, and every tensor must belong to a parameter or buffer;
// otherwise CoreError names the first offender.
void load_named_tensors(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                        const std::string& file_name);

struct SegmentationModel {
  UMamba network{nullptr};
  ModelCard card;
  std::string sha256;
  std::filesystem::path path;
};

// Reads a segmentation model file, builds its network from the card, loads and checks the
// weights, and moves it to device in eval mode.
SegmentationModel load_segmentation_model(const std::filesystem::path& path,
                                          const torch::Device& device = torch::kCPU);

// Lower-case hex SHA-256 of a file's bytes / of a string.
std::string sha256_file(const std::filesystem::path& path);
std::string sha256_hex(const std::string& bytes);

}  // namespace hemexp
