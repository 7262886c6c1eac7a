#include "hemexp/app/prepare_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/reader.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;

CLI::App* setup_prepare(CLI::App& app, PrepareOptions& o) {
  CLI::App* p = app.add_subcommand("prepare", "Make network-ready training files from synth folders");
  p->add_option("--synth", o.synth_dirs, "Folders written by `hemexp synth`")->required()->check(CLI::ExistingDirectory);
  p->add_option("--card", o.card_path, "Model card (JSON) whose preprocessing block to apply")
      ->required()
      ->check(CLI::ExistingFile);
  p->add_option("-o,--output", o.output_dir, "Output folder")->required();
  return p;
}

int run_prepare(const PrepareOptions& o) {
  Preprocessing pre;
  try {
    std::ifstream in(o.card_path);
    pre = Preprocessing::from_json(nlohmann::json::parse(in).at("preprocessing"));
  } catch (const std::exception& e) {
    spdlog::error("card {}: {}", o.card_path, e.what());
    return kExitUsage;
  }
  const fs::path out(o.output_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  std::string csv = csv_line({"case_id", "file", "source", "foreground_voxels"});
  int failed = 0, done = 0;
  for (const std::string& dir : o.synth_dirs) {
    std::vector<fs::path> cases;
    for (const auto& e : fs::directory_iterator(dir))
      if (fs::exists(e.path() / "ct.nii.gz") && fs::exists(e.path() / "mask.nii.gz")) cases.push_back(e.path());
    std::sort(cases.begin(), cases.end());
    for (const fs::path& c : cases) {
      const std::string id = fs::path(dir).lexically_normal().filename().string() + "_" + c.filename().string();
      try {
        const LoadedVolume ct = read_volume(c / "ct.nii.gz");
        const ImageFileContents mask = read_image_file(c / "mask.nii.gz");
        if (!mask.volume.geometry.same_grid(ct.volume.geometry, 1e-3)) throw IoError("mask and CT grids differ");
        const CanonicalVolume canonical = to_canonical(ct.volume);
        Geometry model_grid;
        const torch::Tensor image = prepare_network_input(canonical.volume, pre, &model_grid);
        const torch::Tensor label = prepare_network_label(to_canonical(mask.volume.voxels, canonical.map),
                                                          canonical.volume.geometry, model_grid);
        SafetensorsFile file;
        file.tensors["image"] = image;
        file.tensors["label"] = label;
        file.metadata["case_id"] = id;
        file.metadata["source"] = c.string();
        file.metadata["preprocessing"] = pre.to_json().dump();
        file.metadata["hemexp_version"] = kVersion;
        write_safetensors(out / (id + ".safetensors"), file);
        csv += csv_line({id, id + ".safetensors", c.string(), std::to_string(label.sum().item<int64_t>())});
        ++done;
        spdlog::info("[{}] {}: {}x{}x{}", done, id, image.size(3), image.size(2), image.size(1));
      } catch (const std::exception& e) {
        ++failed;
        spdlog::error("{}: {}", c.string(), e.what());
      }
    }
  }
  write_text_atomically(out / "cases.csv", csv);
  return failed ? kExitCaseFailed : (done ? kExitOk : kExitUsage);
}

}  // namespace hemexp
