#pragma once

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/nn.h>

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

// ModelError when the card is missing, not JSON, not an object, or of another format version.
// A model card's integer field `what`: an integer JSON number that fits int64, else CoreError
// naming the field. A float (1e300) is refused, never converted (the conversion would be
// undefined behaviour). card_integers: a list of them.
int64_t card_integer(const nlohmann::json& v, const std::string& what);
std::vector<int64_t> card_integers(const nlohmann::json& v, const std::string& what);

ModelCard parse_model_card(const std::map<std::string, std::string>& metadata, const std::string& file_name);

// Copies tensors into the module's parameters and buffers by name. Every parameter must be
// present with the same shape, and every tensor must belong to a parameter or buffer;
// otherwise ModelError names the first offender.
void load_named_tensors(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                        const std::string& file_name);

// A model file as read, whatever kind of model it holds: the loader every model shares.
// Segmenter (and the classifier) build their network from `card`, load `tensors` into it with
// load_named_tensors, and keep the rest as their provenance.
struct ModelFile {
  std::filesystem::path path;
  std::string sha256;  // of the file's bytes
  ModelCard card;
  std::map<std::string, torch::Tensor> tensors;

  // Reads and checks the file (safetensors rules, card format) and that its card is of
  // expected_kind ("segmentation", "classification"; empty: any). ModelError on failure.
  static ModelFile read(const std::filesystem::path& path, const std::string& expected_kind = "");

  std::string name() const { return card.json.value("name", ""); }
  // The last step of building a model's network from this file: load_named_tensors into
  // module, free the tensors here (the weights live in the module from then on), move the
  // module to device and switch it to eval mode.
  void install_weights(torch::nn::Module& module, const torch::Device& device);
  // The block result.json and run.json record for a model.
  nlohmann::json provenance_json() const;
};

// Lower-case hex SHA-256 of a file's bytes / of a string.
std::string sha256_file(const std::filesystem::path& path);
std::string sha256_hex(const std::string& bytes);

}  // namespace hemexp
