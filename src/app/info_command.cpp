#include "hemexp/app/info_command.hpp"

#include <CLI/CLI.hpp>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/safetensors.hpp"

namespace hemexp {

CLI::App* setup_info(CLI::App& app, InfoOptions& o) {
  CLI::App* i = app.add_subcommand("info", "Describe a model file: card, tensors, checksum");
  i->add_option("model", o.model_path, "Model file (.safetensors)")->required()->check(CLI::ExistingFile);
  return i;
}

int run_info(const InfoOptions& o) {
  try {
    const SafetensorsFile file = read_safetensors(o.model_path);
    const ModelCard card = parse_model_card(file.metadata, o.model_path);
    int64_t parameters = 0;
    for (const auto& [name, t] : file.tensors) parameters += t.numel();
    if (card.kind == "segmentation") load_segmentation_model(o.model_path);  // validates names and shapes
    std::printf("file:        %s\n", o.model_path.c_str());
    std::printf("sha256:      %s\n", sha256_file(o.model_path).c_str());
    std::printf("name:        %s\n", card.json.value("name", "(unnamed)").c_str());
    std::printf("kind:        %s (card format %d)\n", card.kind.c_str(), card.format_version);
    std::printf("tensors:     %zu, %lld parameters\n", file.tensors.size(), static_cast<long long>(parameters));
    for (const char* block : {"network", "preprocessing", "inference", "postprocessing", "training", "validation"})
      if (card.json.contains(block)) std::printf("%-12s %s\n", (std::string(block) + ":").c_str(), card.json[block].dump().c_str());
    std::printf("\nResearch use only, not for clinical decisions. hemexp's models are trained on synthetic\n"
                "data (procedural heads and synthetic hematomas in real CT backgrounds); their numbers on\n"
                "synthetic validation data do not transfer to patients without your own validation.\n");
    return kExitOk;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitSetup;
  }
}

}  // namespace hemexp
