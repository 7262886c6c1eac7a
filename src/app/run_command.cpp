#include "hemexp/app/run_command.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <optional>
#include <sstream>
#include <thread>

#include "hemexp/app/report.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/intracranial.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/qc.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::ostringstream s;
  s << std::put_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
  return s.str();
}

std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : "unknown";
}

// A one-line, bounded reason for results.csv.
std::string one_line(const std::string& what) {
  std::string s = what.substr(0, what.find('\n'));
  if (s.size() > 400) s = s.substr(0, 397) + "...";
  return s;
}

// Output names: a sharded run gets its own CSV, JSON and log so that the N processes of a
// job array can share one OUTDIR without touching each other's files.
struct OutputNames {
  std::string results = "results.csv", run = "run.json", log = "hemexp.log";
  explicit OutputNames(const RunOptions& o) {
    if (o.shard_count > 1) {
      const std::string tag = "-" + std::to_string(o.shard_index) + "-of-" + std::to_string(o.shard_count);
      results = "results" + tag + ".csv", run = "run" + tag + ".json", log = "hemexp" + tag + ".log";
    }
  }
};

struct RunContext {
  fs::path out;
  ReadOptions read;
  std::shared_ptr<spdlog::logger> log;
  std::optional<SegmentationModel> seg_model;  // loaded once for the whole run
  SegmentationRecipe seg_recipe;
  torch::Device device = torch::kCPU;
  bool save_probabilities = false;
  bool qc = true;
};

// The default segmentation model: $HEMEXP_MODEL_DIR, then models/ beside or above the
// executable (build tree or install prefix), then share/hemexp/models.
std::optional<fs::path> default_seg_model(std::vector<std::string>& looked) {
  const std::string name = "hemexp-seg.safetensors";
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

json model_json(const SegmentationModel& m) {
  return {{"path", m.path.string()}, {"sha256", m.sha256}, {"name", m.card.json.value("name", "")},
          {"research_use_only", true}};
}

struct CaseOutcome {
  std::string status;  // ok, failed, skipped
  std::map<std::string, std::string> row;
};

std::map<std::string, std::string> row_from_result(const json& r) {
  std::map<std::string, std::string> row;
  row["case_id"] = r.value("case_id", "");
  row["status"] = r.value("status", "");
  row["error"] = r.value("error", "");
  if (r.contains("input")) {
    const json& in = r["input"];
    row["input"] = in.value("path", "");
    row["format"] = in.value("format", "");
    row["series_uid"] = in.value("series_uid", "");
    if (in.contains("gantry_tilt_deg")) row["gantry_tilt_deg"] = format_number(in["gantry_tilt_deg"].get<double>(), 2);
    std::string corrections;
    for (const auto& c : in.value("corrections", json::array())) corrections += (corrections.empty() ? "" : "; ") + c.get<std::string>();
    row["corrections"] = corrections;
  }
  if (r.contains("hematoma")) {
    const json& h = r["hematoma"];
    row["hematoma_volume_ml"] = format_number(h.value("volume_ml", 0.0), 3);
    row["abc2_volume_ml"] = format_number(h.value("abc2_volume_ml", 0.0), 3);
    if (h.value("voxels", 0) > 0) row["mean_hu"] = format_number(h.value("mean_hu", 0.0), 1);
  }
  if (r.contains("models") && r["models"].contains("segmentation"))
    row["seg_model_sha256"] = r["models"]["segmentation"].value("sha256", "");
  if (r.contains("seconds")) row["seconds"] = format_number(r["seconds"].get<double>(), 2);
  return row;
}

// A case done by an earlier run with the same input is kept when resuming.
bool previous_result_ok(const fs::path& dir, const CaseInput& c, json& previous) {
  const fs::path result = dir / "result.json";
  if (!fs::exists(result) || !fs::exists(dir / "mask.nii.gz")) return false;
  try {
    std::ifstream in(result);
    previous = json::parse(in);
  } catch (const std::exception&) {
    return false;
  }
  return previous.value("status", "") == "ok" && previous.contains("input") &&
         previous["input"].value("path", "") == c.path.string();
}

CaseOutcome process_case(const CaseInput& c, const RunContext& ctx) {
  const auto t_case = Clock::now();
  const fs::path dir = ctx.out / "cases" / c.id;
  json result = {{"case_id", c.id}, {"status", "ok"}};
  json timings = json::object();
  try {
    fs::create_directories(dir);
    auto t0 = Clock::now();
    LoadedVolume loaded = read_volume(c.path, ctx.read);
    timings["read"] = seconds_since(t0);
    ctx.log->info("{}: read {} ({}), {}", c.id, c.path.string(), loaded.info.format,
                  loaded.volume.geometry.describe());
    if (!loaded.info.series_choice.empty()) ctx.log->info("{}: {}", c.id, loaded.info.series_choice);
    for (const std::string& corr : loaded.info.corrections) ctx.log->info("{}: corrected: {}", c.id, corr);
    for (const std::string& w : loaded.info.warnings) ctx.log->warn("{}: {}", c.id, w);

    // Work happens in the canonical orientation; results go back to the input grid.
    t0 = Clock::now();
    const AxisMap to_canonical_map = canonical_axis_map(loaded.volume.geometry);
    const Volume canonical{to_canonical(loaded.volume.geometry, to_canonical_map),
                           to_canonical(loaded.volume.voxels, to_canonical_map)};
    json qc_flags = json::array();
    // A hematoma is only looked for in a head with a brain: a phantom or a non-head series
    // fails here with what was found, rather than yielding a made-up hematoma.
    const IntracranialContent intracranial = intracranial_content(canonical);
    result["intracranial"] = intracranial.to_json();
    timings["brain_check"] = seconds_since(t0);
    t0 = Clock::now();
    if (!intracranial.brain_like)
      throw CoreError("not a head CT with a brain: " + intracranial.describe() + " (a phantom or a non-head series?)");
    if (!intracranial.skull_found) {
      qc_flags.push_back("skull_not_found");
      ctx.log->warn("{}: {}; the brain check was skipped", c.id, intracranial.describe());
    }
    torch::Tensor mask, probability, canonical_mask;
    if (ctx.seg_model) {
      SegmentationModel model = *ctx.seg_model;
      const Segmentation seg = segment_hematoma(model, ctx.seg_recipe, canonical, ctx.device);
      canonical_mask = seg.mask;
      mask = from_canonical(seg.mask, to_canonical_map);
      if (ctx.save_probabilities) probability = from_canonical(seg.probability, to_canonical_map);
      if (seg.removed_components > 0)
        ctx.log->info("{}: removed {} components smaller than {} mL or {}% of the largest", c.id,
                      seg.removed_components, ctx.seg_recipe.min_component_ml,
                      100.0 * ctx.seg_recipe.min_component_fraction);
    } else {
      // No segmentation model: the mask is empty, and the case says so.
      mask = torch::zeros(tensor_shape(loaded.volume.geometry), torch::kUInt8);
      canonical_mask = torch::zeros(tensor_shape(canonical.geometry), torch::kUInt8);
      qc_flags.push_back("no_segmentation_model");
    }
    timings["segment"] = seconds_since(t0);

    if (ctx.seg_model) {
      t0 = Clock::now();
      const HematomaMeasurements h = measure_hematoma(mask, loaded.volume.voxels, loaded.volume.geometry);
      result["hematoma"] = h.to_json();
      if (h.touches_border) qc_flags.push_back("hematoma_touches_border");
      if (h.components > 1) qc_flags.push_back("multiple_components");
      timings["measure"] = seconds_since(t0);
      ctx.log->info("{}: hematoma {:.2f} mL (ABC/2 {:.2f} mL), mean {:.1f} HU, {} components", c.id, h.volume_ml,
                    h.abc2_volume_ml, h.mean_hu, h.components);
    }

    t0 = Clock::now();
    write_image_file(dir / "mask.nii.gz", mask, loaded.volume.geometry);
    if (probability.defined()) write_image_file(dir / "probability.nii.gz", probability, loaded.volume.geometry);
    if (ctx.qc) write_png(dir / "qc.png", qc_mosaic(canonical, canonical_mask));
    if (loaded.info.grid_resampled) {
      // The mask lives on the corrected grid, which no viewer rebuilds from the DICOM files
      // in the same way: ship the corrected CT so that the mask overlays it exactly.
      const torch::Tensor hu = loaded.volume.voxels.round().clamp(-32768, 32767).to(torch::kInt16);
      write_image_file(dir / "ct.nii.gz", hu, loaded.volume.geometry);
      result["corrected_ct"] = "ct.nii.gz";
    }
    timings["write"] = seconds_since(t0);

    result["input"] = input_json(loaded.info);
    result["qc_flags"] = qc_flags;
  } catch (const std::exception& e) {
    result["status"] = "failed";
    result["error"] = one_line(e.what());
    if (!result.contains("input")) result["input"] = {{"path", c.path.string()}};
    std::error_code ec;
    fs::remove(dir / "mask.nii.gz", ec);  // never leave outputs of an earlier attempt
    fs::remove(dir / "ct.nii.gz", ec);
    fs::remove(dir / "probability.nii.gz", ec);
    fs::remove(dir / "qc.png", ec);
    ctx.log->error("{}: failed: {} ({})", c.id, one_line(e.what()), c.path.string());
  }
  result["timings_s"] = timings;
  result["models"] = json::object();
  if (ctx.seg_model) result["models"]["segmentation"] = model_json(*ctx.seg_model);
  result["seconds"] = seconds_since(t_case);
  result["hemexp_version"] = kVersion;
  CaseOutcome outcome;
  outcome.status = result["status"];
  outcome.row = row_from_result(result);
  try {
    write_text_atomically(dir / "result.json", result.dump(2) + "\n");
  } catch (const std::exception& e) {
    outcome.status = "failed";
    outcome.row["status"] = "failed";
    outcome.row["error"] = one_line(std::string("writing result.json: ") + e.what());
  }
  return outcome;
}

std::shared_ptr<spdlog::logger> make_logger(const fs::path& log_file, const RunOptions& o) {
  const auto level = spdlog::level::from_str(o.log_level);
  auto file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file.string(), !o.resume);
  file_sink->set_level(std::min(level, spdlog::level::info));
  file_sink->set_pattern("%Y-%m-%d %H:%M:%S.%e [%l] %v");
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(std::max(level, spdlog::level::warn) == spdlog::level::warn && level < spdlog::level::info
                         ? level
                         : std::max(level, spdlog::level::warn));
  console->set_pattern("%^%l%$: %v");
  auto log = std::make_shared<spdlog::logger>("hemexp", spdlog::sinks_init_list{file_sink, console});
  log->set_level(std::min(level, spdlog::level::info));
  log->flush_on(spdlog::level::info);
  return log;
}

void write_run_json(const fs::path& path, json run) {
  write_text_atomically(path, run.dump(2) + "\n");
}

}  // namespace

int run_cases(const RunOptions& o, const std::vector<std::string>& argv) {
  const fs::path out(o.output_dir);
  const OutputNames names(o);

  // Output folder: must be creatable and writable, and not silently mixed with an old run.
  std::error_code ec;
  fs::create_directories(out, ec);
  try {
    write_text_atomically(out / ".hemexp-write-test", "");
    fs::remove(out / ".hemexp-write-test");
  } catch (const std::exception&) {
    std::fprintf(stderr, "error: output folder %s is not writable\n", out.c_str());
    return kExitSetup;
  }
  if (fs::exists(out / names.results) && !o.resume && !o.overwrite) {
    std::fprintf(stderr,
                 "error: %s already holds the results of a run; use --resume to continue it or "
                 "--overwrite to replace it\n",
                 out.c_str());
    return kExitUsage;
  }

  std::vector<CaseInput> all;
  try {
    std::vector<fs::path> inputs(o.inputs.begin(), o.inputs.end());
    all = expand_inputs(inputs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitUsage;
  }
  if (all.empty()) {
    std::fprintf(stderr, "error: no scans found in the inputs\n");
    return kExitUsage;
  }
  std::vector<CaseInput> cases;
  for (size_t k = 0; k < all.size(); ++k)
    if (int(k % size_t(o.shard_count)) == o.shard_index - 1) cases.push_back(all[k]);

  if (o.device != "cpu" && !torch::cuda::is_available()) {
    std::fprintf(stderr, "error: --device %s requested but CUDA is not available to this build\n",
                 o.device.c_str());
    return kExitSetup;
  }
  if (o.overwrite) {
    for (const CaseInput& c : cases) fs::remove_all(out / "cases" / c.id, ec);
    fs::remove(out / names.results, ec);
  }

  const int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);

  RunContext ctx;
  ctx.device = torch::Device(o.device);
  ctx.save_probabilities = o.save_probabilities;
  ctx.qc = o.qc;
  std::vector<std::string> looked;
  // "none": read, check and describe the scans without segmenting them.
  const std::optional<fs::path> seg_path = o.seg_model == "none" ? std::nullopt
                                           : o.seg_model.empty() ? default_seg_model(looked)
                                                                 : std::optional<fs::path>(o.seg_model);
  if (seg_path) {
    try {
      ctx.seg_model = load_segmentation_model(*seg_path, ctx.device);
      ctx.seg_recipe = SegmentationRecipe::from_card(ctx.seg_model->card.json);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: segmentation model %s: %s\n", seg_path->c_str(), e.what());
      return kExitSetup;
    }
  }
  ctx.out = out;
  ctx.read.series_uid = o.series_uid;
  ctx.log = make_logger(out / names.log, o);

  std::string command_line;
  for (const std::string& a : argv) command_line += (command_line.empty() ? "" : " ") + a;
  ctx.log->info("hemexp {} ({}) on {}: {}", kVersion, kGitCommit, host_name(), command_line);
  ctx.log->info("device {}, {} threads, {} of {} cases in this shard ({}/{})", o.device, threads,
                cases.size(), all.size(), o.shard_index, o.shard_count);
  if (ctx.seg_model)
    ctx.log->info("segmentation model {} ({}), sha256 {}; research use only", ctx.seg_model->path.string(),
                  ctx.seg_model->card.json.value("name", "unnamed"), ctx.seg_model->sha256);
  else if (o.seg_model == "none")
    ctx.log->info("no segmentation (--seg-model none): masks stay empty");
  else
    ctx.log->warn("no segmentation model (none given with --seg-model; looked in {}): masks stay empty",
                  looked.empty() ? std::string("-") : looked.front() + (looked.size() > 1 ? " and others" : ""));

  json run = {{"tool", "hemexp"},
              {"version", kVersion},
              {"git_commit", kGitCommit},
              {"argv", argv},
              {"device", o.device},
              {"threads", threads},
              {"host", host_name()},
              {"shard", {{"index", o.shard_index}, {"count", o.shard_count}}},
              {"models", ctx.seg_model ? json{{"segmentation", model_json(*ctx.seg_model)}} : json::object()},
              {"started", utc_now()},
              {"finished", nullptr},
              {"cases", {{"total", cases.size()}, {"ok", 0}, {"failed", 0}, {"skipped", 0}}}};
  write_run_json(out / names.run, run);

  const std::vector<std::string>& columns = results_columns();
  std::string header;
  for (size_t i = 0; i < columns.size(); ++i) header += (i ? "," : "") + columns[i];
  std::string csv = header + "\n";
  std::map<std::string, int> counts{{"ok", 0}, {"failed", 0}, {"skipped", 0}};
  for (size_t k = 0; k < cases.size(); ++k) {
    const CaseInput& c = cases[k];
    CaseOutcome outcome;
    json previous;
    if (o.resume && previous_result_ok(out / "cases" / c.id, c, previous)) {
      outcome.row = row_from_result(previous);
      outcome.status = "skipped";
      outcome.row["status"] = "skipped";
      ctx.log->info("{}: kept from the previous run", c.id);
    } else {
      outcome = process_case(c, ctx);
    }
    ++counts[outcome.status];
    csv += csv_line(columns, outcome.row);
    write_text_atomically(out / names.results, csv);  // a crash leaves every finished row
    if (o.progress)
      std::fprintf(stderr, "[%zu/%zu] %s: %s%s%s\n", k + 1, cases.size(), c.id.c_str(),
                   outcome.status.c_str(), outcome.row["error"].empty() ? "" : ": ",
                   outcome.row["error"].c_str());
  }
  run["finished"] = utc_now();
  run["cases"] = {{"total", cases.size()}, {"ok", counts["ok"]}, {"failed", counts["failed"]},
                  {"skipped", counts["skipped"]}};
  write_run_json(out / names.run, run);
  ctx.log->info("done: {} ok, {} failed, {} kept from a previous run", counts["ok"], counts["failed"],
                counts["skipped"]);
  return counts["failed"] > 0 ? kExitCaseFailed : kExitOk;
}

}  // namespace hemexp
