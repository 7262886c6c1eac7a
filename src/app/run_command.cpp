#include "hemexp/app/run_command.hpp"

#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <thread>

#include "hemexp/app/case_pipeline.hpp"
#include "hemexp/app/cohort.hpp"
#include "hemexp/core/selective_scan.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The default model file `name`: $HEMEXP_MODEL_DIR, then models/ beside or above the
// executable (the build tree), then share/hemexp/models of the install prefix
// (`cmake --install` puts the shipped models there).
std::optional<fs::path> default_model(const std::string& name, std::vector<std::string>& looked) {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("HEMEXP_MODEL_DIR")) dirs.emplace_back(env);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path bin = exe.parent_path();
    dirs.push_back(bin / "models");
    dirs.push_back(bin.parent_path() / "models");
    dirs.push_back(bin.parent_path() / "share/hemexp/models");
  }
  for (const fs::path& d : dirs) {
    looked.push_back(d.string());
    if (fs::exists(d / name)) return d / name;
  }
  return std::nullopt;
}

// A --seg-model / --cls-model value: "none", a file, or empty for the default file `name`.
std::optional<fs::path> model_path(const std::string& option, const std::string& name, std::vector<std::string>& looked) {
  if (option == "none") return std::nullopt;
  return option.empty() ? default_model(name, looked) : std::optional<fs::path>(option);
}

}  // namespace

CohortOptions cohort_options(const RunOptions& o) {
  CohortOptions c;
  c.inputs = o.inputs;
  c.output_dir = o.output_dir;
  c.resume = o.resume;
  c.overwrite = o.overwrite;
  c.shard_index = o.shard_index;
  c.shard_count = o.shard_count;
  c.log_level = o.log_level;
  c.progress = o.progress;
  c.read_ahead = o.read_ahead;
  return c;
}


int setup_run_pipeline(const RunOptions& o, RunSetup& setup) {
  if (o.device != "cpu" && !torch::cuda::is_available()) {
    spdlog::error("--device {} requested but CUDA is not available to this build", o.device);
    return kExitSetup;
  }
  const int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  setup.threads = threads;
  torch::set_num_threads(threads);
  set_itk_threads(threads);  // reading: ITK's decompression and resampling
  const torch::Device device(o.device);

  CasePipeline& pipeline = setup.pipeline;
  pipeline.read.series_uid = o.series_uid;
  pipeline.read.max_voxels = o.max_voxels;
  pipeline.save_probabilities = o.save_probabilities;
  pipeline.qc = o.qc;
  std::vector<std::string> looked;
  // "none": read, check and describe the scans without segmenting them.
  const std::optional<fs::path> seg_path = model_path(o.seg_model, "hemexp-seg-labels.safetensors", looked);
  // A default model that cannot be found is a setup error, not a cohort of empty masks: a
  // copied binary or a broken install would otherwise give 2,000 rows of "ok" without a volume.
  const auto missing = [](const char* what, const char* flag, const std::vector<std::string>& l) {
    std::string places;
    for (const std::string& d : l) places += (places.empty() ? "" : ", ") + d;
    spdlog::error("no {} found (looked in {}); give {} FILE, or {} none to run without it", what,
                  places.empty() ? "-" : places, flag, flag);
    return kExitSetup;
  };
  if (!seg_path && o.seg_model != "none") return missing("segmentation model", "--seg-model", looked);
  if (seg_path) {
    try {
      pipeline.segmenter = Segmenter::load(*seg_path, device);
      pipeline.segmenter->set_precision(o.precision);
    } catch (const std::exception& e) {
      spdlog::error("segmentation model {}: {}", seg_path->string(), one_line(e.what()));
      return kExitSetup;
    }
  }
  std::vector<std::string> looked_cls;
  // The classifier scores the segmenter's masks: without a segmenter there is nothing to score.
  const std::optional<fs::path> cls_path =
      pipeline.segmenter ? model_path(o.cls_model, "hemexp-cls.safetensors", looked_cls) : std::nullopt;
  if (!cls_path && pipeline.segmenter && o.cls_model != "none")
    return missing("expansion classifier", "--cls-model", looked_cls);
  if (cls_path) {
    try {
      pipeline.classifier = Classifier::load(*cls_path, device);
    } catch (const std::exception& e) {
      spdlog::error("expansion classifier {}: {}", cls_path->string(), one_line(e.what()));
      return kExitSetup;
    }
  }

  if (pipeline.segmenter) {
    const ModelFile& m = pipeline.segmenter->file();
    setup.notes.emplace_back(false, fmt::format("segmentation model {} ({}), sha256 {}; research use only",
                                                m.path.string(), m.name().empty() ? "unnamed" : m.name(), m.sha256));
  } else {
    setup.notes.emplace_back(false, "no segmentation (--seg-model none): masks stay empty");
  }
  if (pipeline.classifier) {
    const ModelFile& m = pipeline.classifier->file();
    const ClassifierRecipe& r = pipeline.classifier->recipe();
    setup.notes.emplace_back(
        false, fmt::format("expansion classifier {} ({}), sha256 {}; threshold {}, calibration {}; research use only",
                           m.path.string(), m.name().empty() ? "unnamed" : m.name(), m.sha256, r.threshold,
                           r.calibration_method));
    const std::vector<std::string>& seg_labels = pipeline.segmenter->recipe().labels;
    if (r.needs_ivh_label() && std::find(seg_labels.begin(), seg_labels.end(), "ivh") == seg_labels.end())
      setup.notes.emplace_back(
          true, "the expansion classifier reads the intraventricular-blood volume, which this segmentation model "
                "does not label: that feature is taken as its training mean (use the segmentation model the "
                "classifier was trained with, e.g. --seg-model models/hemexp-seg-labels.safetensors)");
  }

  json models = json::object();
  for (const auto& [role, provenance] : pipeline.models()) models[role] = provenance;
  // The options that change a case's results: a result made with other values is not kept by
  // --resume (the models' sha256 and the input's content are the rest of the fingerprint).
  json result_options = {{"series_uid", o.series_uid},
                         {"device", device.is_cuda() ? "cuda" : "cpu"},
                         {"save_probabilities", o.save_probabilities},
                         {"qc", o.qc},
                         {"hemexp_version", kVersion}};
  // Only when not the default, so that results of runs before the option existed stay valid.
  if (o.precision != "fp32") result_options["precision"] = o.precision;
  setup.run_info = {{"device", o.device},
                    {"precision", o.precision},
                    {"config", o.effective_config},
                    {"result_options", result_options},
                    {"threads", threads},
                    {"models", models},
                    {"libraries",
                     {{"libtorch", TORCH_VERSION},
                      {"itk", itk_version()},
                      {"selective_scan", o.device == "cpu"                ? std::string("cpu-") + selective_scan_cpu_isa()
                                         : selective_scan_cuda_compiled() ? std::string("cuda-kernel")
                                                                          : std::string("chunked")}}}};
  return kExitOk;
}

void log_run_setup(spdlog::logger& log, const RunOptions& o, const RunSetup& setup, const CohortRunner& cohort) {
  log.info("device {}, {} threads, {} of {} cases in this shard ({}/{})", o.device, setup.threads,
           cohort.cases().size(), cohort.cohort_size(), o.shard_index, o.shard_count);
  for (const auto& [warning, line] : setup.notes) {
    if (warning) log.warn("{}", line);
    else log.info("{}", line);
  }
}

int run_pipeline(CohortRunner& cohort, const CasePipeline& pipeline, const json& run_info) {
  return cohort.run(
      [&pipeline](const CaseInput& c, const fs::path& dir, spdlog::logger& case_log, std::future<ReadCase>* read) {
        return process_case(c, dir, pipeline, case_log, read);
      },
      [&pipeline](const CaseInput& c, spdlog::logger& case_log) { return read_case(c, pipeline, case_log); },
      run_info);
}

int run_cases(const RunOptions& o, const std::vector<std::string>& argv) {
  const StopSignals signals;  // from the start: a signal while models load or inputs are searched stops cleanly
  // The models first: a missing or broken one is exit 3 before any input is walked or OUTDIR made.
  RunSetup setup;
  if (const int code = setup_run_pipeline(o, setup); code != kExitOk) return code;
  CohortRunner cohort(cohort_options(o), argv);
  if (const int code = cohort.prepare(); code != kExitOk) return code;
  spdlog::logger& log = cohort.open_log();
  log_run_setup(log, o, setup, cohort);
  return run_pipeline(cohort, setup.pipeline, setup.run_info);
}

}  // namespace hemexp
