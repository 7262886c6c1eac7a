// libFuzzer target: a model card (the JSON in a model file's metadata) through every parser
// that reads one. Each either accepts it or refuses it with hemexp's own error; a raw JSON
// library exception or a crash is a finding.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "hemexp/core/classifier.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/umamba.hpp"
#include "hemexp/core/vit.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::map<std::string, std::string> metadata{
      {hemexp::kModelCardKey, std::string(reinterpret_cast<const char*>(data), size)}};
  hemexp::ModelCard card;
  try {
    card = hemexp::parse_model_card(metadata, "fuzz.safetensors");
  } catch (const hemexp::Error&) {
    return 0;
  }
  const nlohmann::json network = card.json.contains("network") ? card.json["network"] : nlohmann::json();
  try {
    hemexp::UMambaConfig::from_json(network);
  } catch (const hemexp::Error&) {
  }
  try {
    hemexp::ViTConfig::from_json(network);
  } catch (const hemexp::Error&) {
  }
  try {
    hemexp::SegmentationRecipe::from_card(card.json);
  } catch (const hemexp::Error&) {
  }
  try {
    hemexp::ClassifierRecipe::from_card(card.json);
  } catch (const hemexp::Error&) {
  }
  return 0;
}
