#include "hemexp/app/info_command.hpp"

#include <CLI/CLI.hpp>
#include <cmath>
#include <spdlog/spdlog.h>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/classifier.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {

CLI::App* setup_info(CLI::App& app, InfoOptions& o) {
  CLI::App* i = app.add_subcommand("info", "Describe a model file: card, tensors, checksum");
  i->add_option("model", o.model_path, "Model file (.safetensors)")->required()->check(CLI::ExistingFile);
  return i;
}

int run_info(const InfoOptions& o) {
  try {
    ModelFile file = ModelFile::read(o.model_path);
    const ModelCard card = file.card;
    const size_t tensors = file.tensors.size();
    int64_t parameters = 0;
    for (const auto& [name, t] : file.tensors) parameters += t.numel();
    const std::string sha256 = file.sha256;
    std::string recipe = "ok";
    if (card.kind == "segmentation") {
      // Builds the network and loads the weights: validates names and shapes.
      UMamba network(UMambaConfig::from_json(card.json["network"]));
      load_named_tensors(*network, file.tensors, file.path.filename().string());
      try {
        SegmentationRecipe::from_card(card.json);
      } catch (const std::exception& e) {
        recipe = std::string("incomplete, `hemexp run` cannot use this file: ") + e.what();
      }
    } else if (card.kind == "classification") {
      ViT network(ViTConfig::from_json(card.json["network"]));
      load_named_tensors(*network, file.tensors, file.path.filename().string());
      try {
        const ClassifierRecipe r = ClassifierRecipe::from_card(card.json);
        recipe = "ok; calibration " + r.calibration_method +
                 (r.calibrated() ? " (p = sigmoid(" + format_number(r.calibration_slope, 4) + " logit " +
                                       (r.calibration_intercept < 0 ? "- " : "+ ") +
                                       format_number(std::abs(r.calibration_intercept), 4) + "))"
                                 : std::string()) +
                 ", threshold " + format_number(r.threshold, 4) + ", minimum hematoma " +
                 format_number(r.min_volume_ml, 2) + " mL";
        if (!r.features.empty()) {
          recipe += "; the network also reads " + std::to_string(r.features.size()) + " features:";
          for (const FeatureNorm& f : r.features) recipe += " " + f.name;
        }
        const ViTConfig& net = network->config();
        if (!net.signs.empty()) {
          recipe += std::string("; a sign layer reads from them") +
                    (net.quadratic_signs() ? " and their pairwise products" : "") + " the probabilities of " +
                    std::to_string(net.signs.size()) + " signs (";
          for (size_t k = 0; k < net.signs.size(); ++k) recipe += (k ? ", " : "") + net.signs[k];
          recipe += "), which the head reads with";
          if (net.head_features.empty()) recipe += " no feature";
          for (int64_t i : net.head_features) recipe += " " + r.features.at(size_t(i)).name;
        }
      } catch (const std::exception& e) {
        recipe = std::string("incomplete, `hemexp run` cannot use this file: ") + e.what();
      }
    }
    std::printf("file:        %s\n", o.model_path.c_str());
    std::printf("sha256:      %s\n", sha256.c_str());
    std::printf("name:        %s\n", card.json.value("name", "(unnamed)").c_str());
    std::printf("kind:        %s (card format %d)\n", card.kind.c_str(), card.format_version);
    std::printf("tensors:     %zu, %lld parameters\n", tensors, static_cast<long long>(parameters));
    std::printf("recipe:      %s\n", recipe.c_str());
    for (const char* block : {"network", "preprocessing", "inference", "postprocessing", "roi", "min_volume_ml",
                              "features", "calibration", "decision", "risk_categories", "recalibration", "trained_on", "training",
                              "validation"})
      if (card.json.contains(block)) std::printf("%-12s %s\n", (std::string(block) + ":").c_str(), card.json[block].dump().c_str());
    // A model a researcher trained on their own labelled scans (scripts/train_classifier.py
    // writes what it was trained on) is not said to be synthetic.
    const std::string trained_on = card.json.value("trained_on", nlohmann::json()).is_string() ? card.json["trained_on"].get<std::string>() : "";
    if (trained_on.find("labelled") != std::string::npos || trained_on.find("labels file") != std::string::npos)
      std::printf("\nResearch use only, not for clinical decisions. This model was trained on labelled scans (its\n"
                  "trained_on above): its numbers hold for patients like those it was validated on; validate it on\n"
                  "patients it has not seen before relying on it.\n");
    else
      std::printf("\nResearch use only, not for clinical decisions. hemexp's models are trained on synthetic\n"
                  "data (procedural heads and synthetic hematomas in real CT backgrounds); their numbers on\n"
                  "synthetic validation data do not transfer to patients without your own validation.\n");
    return kExitOk;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitSetup;
  }
}

}  // namespace hemexp
