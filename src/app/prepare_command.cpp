#include "hemexp/app/prepare_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/io/atomic_file.hpp"
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
    std::fprintf(stderr, "error: card %s: %s\n", o.card_path.c_str(), e.what());
    return kExitUsage;
  }
  const fs::path out(o.output_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  std::string csv = "case_id,file,source,foreground_voxels\n";
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
        if (!mask.volume.geometry.same_grid(ct.volume.geometry, 1e-3)) throw std::runtime_error("mask and CT grids differ");
        const AxisMap map = canonical_axis_map(ct.volume.geometry);
        const Volume canonical{to_canonical(ct.volume.geometry, map), to_canonical(ct.volume.voxels, map)};
        Geometry model_grid;
        const torch::Tensor image = prepare_network_input(canonical, pre, &model_grid);
        // The label goes through the same resampling as the probabilities in `run`, mirrored:
        // linear interpolation of the mask, then > 0.5.
        const torch::Tensor label =
            (resample_between_grids(to_canonical(mask.volume.voxels, map), canonical.geometry, model_grid) > 0.5f)
                .to(torch::kUInt8);
        SafetensorsFile file;
        file.tensors["image"] = image;
        file.tensors["label"] = label;
        file.metadata["case_id"] = id;
        file.metadata["source"] = c.string();
        file.metadata["preprocessing"] = pre.to_json().dump();
        file.metadata["hemexp_version"] = kVersion;
        write_safetensors(out / (id + ".safetensors"), file);
        csv += id + "," + id + ".safetensors," + c.string() + "," + std::to_string(label.sum().item<int64_t>()) + "\n";
        ++done;
        std::fprintf(stderr, "[%d] %s: %ldx%ldx%ld\n", done, id.c_str(), long(image.size(3)), long(image.size(2)),
                     long(image.size(1)));
      } catch (const std::exception& e) {
        ++failed;
        std::fprintf(stderr, "error: %s: %s\n", c.string().c_str(), e.what());
      }
    }
  }
  write_text_atomically(out / "cases.csv", csv);
  return failed ? kExitCaseFailed : (done ? kExitOk : kExitUsage);
}

}  // namespace hemexp
