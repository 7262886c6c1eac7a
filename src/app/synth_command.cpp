#include "hemexp/app/synth_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/io/error.hpp"
#include "hemexp/io/image_file.hpp"
#include "hemexp/io/inputs.hpp"
#include "hemexp/io/reader.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;

const std::vector<std::string>& synth_label_columns() {
  static const std::vector<std::string> columns = [] {
    std::vector<std::string> c{"case_id", "he_label", "he_probability", "he_observable_probability", "he_logit",
                               "volume_ml", "target_volume_ml", "mask_voxels", "location", "side"};
    for (const auto& m : synth::marker_names()) c.push_back(m);
    for (const char* n : {"marker_count", "ivh", "ivh_volume_ml", "edema_volume_ml", "blood_hu", "noise_sd_hu",
                          "followup_volume_ml", "growth_ml", "growth_fraction", "background", "size_x", "size_y",
                          "size_z", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm"})
      c.push_back(n);
    return c;
  }();
  return columns;
}

CLI::App* setup_synth(CLI::App& app, SynthOptions& o) {
  CLI::App* s = app.add_subcommand("synth", "Generate synthetic head NCCT cases with known hematoma and HE truth");
  s->add_option("-o,--output", o.output_dir, "Output folder")->required();
  s->add_option("--count", o.count, "Number of cases")->check(CLI::Range(int64_t{1}, int64_t{10000000}))->capture_default_str();
  s->add_option("--seed", o.seed, "Random seed (same seed and arguments give byte-identical output)")->capture_default_str();
  s->add_option("--he-fraction", o.he_fraction, "Expected share of cases with hematoma expansion")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            try {
              const double f = std::stod(v);
              return (f > 0.0 && f < 1.0) ? "" : "he-fraction must lie strictly between 0 and 1";
            } catch (...) {
              return "he-fraction must be a number";
            }
          },
          "(0,1)", "HeFraction"))
      ->capture_default_str();
  s->add_option("--background", o.backgrounds, "Real NCCT volumes (NIfTI/MHA/NRRD/DICOM) to insert hematomas into")
      ->check(CLI::ExistingPath);
  s->add_option("--label", o.label,
                "Only cases with this expansion label (he, nhe), drawn from the same model: e.g. to top up the "
                "expansion class")
      ->check(CLI::IsMember({"any", "he", "nhe"}))
      ->capture_default_str();
  s->add_flag("--followup", o.followup, "Also write a follow-up scan (~24 h) with growth consistent with the label");
  s->add_option("--threads", o.threads, "Cases rendered in parallel (default: all cores)")->check(CLI::Range(1, 1024));
  s->add_option("--matrix", o.matrix, "In-plane matrix of procedural cases (field of view stays 220-250 mm)")
      ->check(CLI::Range(32, 1024))
      ->capture_default_str();
  s->add_option("--thin-fraction", o.thin_fraction, "Share of procedural cases on a thin-slice (1.25 mm) grid")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  s->add_option("--log-level", o.log_level, "Log detail")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
      ->capture_default_str();
  s->add_flag("--overwrite", o.overwrite, "Replace the cases of an earlier hemexp synth in the output folder");
  return s;
}

namespace {

std::string yes_no(bool b) { return b ? "1" : "0"; }

std::map<std::string, std::string> label_row(const synth::SynthCase& c) {
  const auto& t = c.truth;
  std::map<std::string, std::string> r;
  r["case_id"] = t.case_id;
  r["he_label"] = yes_no(t.he.label);
  r["he_probability"] = format_number(t.he.probability, 6);
  r["he_observable_probability"] = format_number(t.he.observable_probability, 6);
  r["he_logit"] = format_number(t.he.logit, 6);
  r["volume_ml"] = format_number(c.baseline.volume_ml, 4);
  r["target_volume_ml"] = format_number(t.features.volume_ml, 4);
  r["mask_voxels"] = std::to_string(c.baseline.mask_voxels);
  r["location"] = c.location;
  r["side"] = t.features.left ? "left" : "right";
  const auto names = synth::marker_names();
  const auto values = synth::marker_values(t.features.markers);
  for (size_t i = 0; i < names.size(); ++i) r[names[i]] = yes_no(values[i]);
  r["marker_count"] = std::to_string(t.features.markers.count());
  r["ivh"] = yes_no(c.baseline.ivh_volume_ml > 0.0);
  r["ivh_volume_ml"] = format_number(c.baseline.ivh_volume_ml, 4);
  r["edema_volume_ml"] = format_number(c.baseline.edema_volume_ml, 4);
  r["blood_hu"] = format_number(c.blood_hu, 2);
  r["noise_sd_hu"] = format_number(c.noise_sd_hu, 2);
  if (c.has_followup) {
    r["followup_volume_ml"] = format_number(c.followup.volume_ml, 4);
    r["growth_ml"] = format_number(c.growth_ml, 4);
    r["growth_fraction"] = format_number(c.growth_fraction, 6);
  }
  r["background"] = c.background;
  const Geometry& g = c.baseline.geometry;
  r["size_x"] = std::to_string(g.size[0]);
  r["size_y"] = std::to_string(g.size[1]);
  r["size_z"] = std::to_string(g.size[2]);
  r["spacing_x_mm"] = format_number(g.spacing_mm[0], 6);
  r["spacing_y_mm"] = format_number(g.spacing_mm[1], 6);
  r["spacing_z_mm"] = format_number(g.spacing_mm[2], 6);
  return r;
}

// `placement`: a NIfTI background's own qform and sform (and units), written into every file
// on its grid, as `run` writes its masks: each viewer places a case where it places the background.
void write_case(const fs::path& dir, const synth::SynthCase& c, const NiftiPlacement* placement) {
  fs::create_directories(dir);
  write_image_file(dir / "ct.nii.gz", c.baseline.ct, c.baseline.geometry, placement);
  write_image_file(dir / "mask.nii.gz", c.baseline.mask, c.baseline.geometry, placement);
  write_image_file(dir / "labels.nii.gz", c.baseline.labels, c.baseline.geometry, placement);
  if (c.has_followup) {
    write_image_file(dir / "followup_ct.nii.gz", c.followup.ct, c.followup.geometry, placement);
    write_image_file(dir / "followup_mask.nii.gz", c.followup.mask, c.followup.geometry, placement);
    write_image_file(dir / "followup_labels.nii.gz", c.followup.labels, c.followup.geometry, placement);
  }
}

}  // namespace

int run_synth(const SynthOptions& o, const std::vector<std::string>& argv) {
  const auto t0 = Clock::now();
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  const fs::path out(o.output_dir);
  std::error_code ec;
  // An earlier synth's cases left beside this one's would be taken for them (prepare --synth).
  const bool earlier = fs::exists(out / "labels.csv", ec) || fs::exists(out / "synth.json", ec);
  if (earlier && !o.overwrite) {
    spdlog::error("{} already holds the cases of a hemexp synth (labels.csv, synth.json): give another folder, or "
                  "--overwrite to replace them", out.string());
    return kExitUsage;
  }
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out)) {
    spdlog::error("cannot create output folder {}: {}", out.string(), ec.message());
    return kExitSetup;
  }
  synth::SynthOptions so;
  so.seed = o.seed;
  so.he_fraction = o.he_fraction;
  so.followup = o.followup;
  so.thin_fraction = o.thin_fraction;
  so.matrix = o.matrix;
  double intercept = 0.0;
  try {
    intercept = synth::calibrated_intercept(o.he_fraction, {}, o.backgrounds.empty());
  } catch (const CoreError& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }

  std::vector<synth::Background> backgrounds;
  std::vector<std::optional<NiftiPlacement>> placements;  // per background
  nlohmann::json background_records = nlohmann::json::array();
  for (const auto& path : o.backgrounds) {
    try {
      const LoadedVolume loaded = read_volume(path);
      backgrounds.push_back(synth::prepare_background(loaded.volume, path));
      placements.push_back(loaded.info.nifti_placement);
      // Which scan, exactly (its content fingerprint), and what reading it changed.
      background_records.push_back({{"path", path},
                                    {"absolute_path", fs::absolute(path).lexically_normal().string()},
                                    {"fingerprint", input_fingerprint(path)},
                                    {"corrections", loaded.info.corrections},
                                    {"warnings", loaded.info.warnings}});
      for (const std::string& w : loaded.info.warnings) spdlog::warn("background {}: {}", path, w);
      spdlog::info("background {}: {} mL parenchyma, noise sd {:.1f} HU", path,
                   backgrounds.back().parenchyma_voxels * loaded.volume.geometry.voxel_volume_mm3() / 1000.0,
                   backgrounds.back().noise_sd_hu);
    } catch (const std::exception& e) {
      spdlog::error("background {} unusable: {}", path, e.what());
      return kExitSetup;
    }
  }

  // Replaced only once nothing else can stop the command, and only a hemexp synth's own cases:
  // those its labels.csv lists, beside its synth.json (a researcher's labels.csv is not one).
  if (earlier) {
    try {
      const nlohmann::json meta = nlohmann::json::parse(read_text_file(out / "synth.json"));
      if (!meta.is_object() || meta.value("tool", std::string()).rfind("hemexp", 0) != 0) throw std::runtime_error("");
    } catch (const std::exception&) {
      spdlog::error("{} holds a labels.csv or synth.json that is not a hemexp synth's: nothing replaced; give another "
                    "folder", out.string());
      return kExitUsage;
    }
    try {
      if (fs::exists(out / "labels.csv"))
        for (const auto& row : parse_csv(read_text_file(out / "labels.csv")).records())
          if (const auto id = row.find("case_id"); id != row.end() && !id->second.empty() &&
                                                   case_id_from_path(id->second) == id->second)
            fs::remove_all(out / id->second);
      fs::remove(out / "labels.csv");
      fs::remove(out / "synth.json");
    } catch (const std::exception& e) {
      spdlog::error("cannot replace the earlier cases in {}: {}", out.string(), e.what());
      return kExitSetup;
    }
  }

  // The generator's case indices to render: 0..count-1, or with --label the first `count`
  // indices whose label (drawn from the HE model at --he-fraction, before any image exists) is
  // the one asked for, so an expansion-only top-up comes from the same model as a cohort.
  std::vector<int64_t> indices;
  for (int64_t i = 0; int64_t(indices.size()) < o.count; ++i)
    if (o.label == "any" ||
        synth::sample_case_truth(o.seed, i, o.he_fraction, o.backgrounds.empty()).he.label == (o.label == "he"))
      indices.push_back(i);

  const int threads = o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::map<std::string, std::string>> rows(static_cast<size_t>(o.count));
  std::vector<std::string> errors(static_cast<size_t>(o.count));
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> failed{0};
  auto worker = [&] {
    for (int64_t k = next++; k < o.count; k = next++) {
      const int64_t i = indices[size_t(k)];
      const auto tc = Clock::now();
      const std::string id = synth::case_id_for(i);
      try {
        const synth::SynthCase c =
            backgrounds.empty() ? synth::render_procedural_case(so, i)
                                : synth::render_background_case(so, i, backgrounds[size_t(k) % backgrounds.size()]);
        const size_t b = backgrounds.empty() ? 0 : size_t(k) % backgrounds.size();
        write_case(out / c.truth.case_id, c, backgrounds.empty() || !placements[b] ? nullptr : &*placements[b]);
        rows[k] = label_row(c);
        release_freed_memory();  // the worker's arena would keep each case's volumes (core/runtime.hpp)
        // No expansion label or probability on the console: a held-out cohort stays blind until
        // labels.csv is read on purpose.
        spdlog::info("{}: {:.1f} mL {} ({:.1f} s)", id, c.baseline.volume_ml, c.location, seconds_since(tc));
      } catch (const std::exception& e) {
        errors[k] = e.what();
        rows[k] = {{"case_id", id}};
        ++failed;
        spdlog::error("{} failed: {}", id, e.what());
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < std::min<int64_t>(threads, o.count); ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();

  const auto& columns = synth_label_columns();
  std::string csv = csv_line(columns);
  for (const auto& row : rows) csv += csv_line(columns, row);
  write_text_atomically(out / "labels.csv", csv);

  const synth::HeModel model;
  nlohmann::json meta = {
      {"tool", std::string("hemexp ") + kVersion},
      {"argv", argv},
      {"seed", o.seed},
      {"count", o.count},
      {"label", o.label},
      {"he_fraction", o.he_fraction},
      {"followup", o.followup},
      {"matrix", o.matrix},
      {"thin_fraction", o.thin_fraction},
      {"backgrounds", o.backgrounds},
      {"background_scans", background_records},
      {"he_model",
       {{"intercept", intercept},
        {"volume_per_log_ml_over_15", model.volume_per_log},
        {"heterogeneity", model.heterogeneity},
        {"swirl", model.swirl},
        {"blend", model.blend},
        {"black_hole", model.black_hole},
        {"island", model.island},
        {"irregular_margin", model.irregular_margin},
        {"hypodensity", model.hypodensity},
        {"ivh", model.ivh},
        {"ivh_drawn", o.backgrounds.empty()},
        {"unobserved_sd", model.unobserved_sd}}},
      {"he_definition", "follow-up growth > 6 mL or > 33 %"},
      {"failed", failed.load()},
  };
  write_text_atomically(out / "synth.json", json_text(meta));
  const double seconds = seconds_since(t0);
  spdlog::info("{} cases in {:.1f} s ({:.2f} cases/s), {} failed", o.count, seconds, o.count / seconds, failed.load());
  return failed > 0 ? kExitCaseFailed : kExitOk;
}

}  // namespace hemexp
