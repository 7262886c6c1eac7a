#include "hemexp/app/cohort.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ctime>
#include <map>
#include <optional>
#include <iomanip>
#include <sstream>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"
#include "hemexp/version.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

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

CohortRunner::CohortRunner(CohortOptions options, std::vector<std::string> argv)
    : options_(std::move(options)), argv_(std::move(argv)), out_(options_.output_dir) {}

CohortRunner::~CohortRunner() = default;

std::string CohortRunner::results_name() const {
  if (options_.shard_count <= 1) return "results.csv";
  return "results-" + std::to_string(options_.shard_index) + "-of-" + std::to_string(options_.shard_count) + ".csv";
}
std::string CohortRunner::run_json_name() const {
  if (options_.shard_count <= 1) return "run.json";
  return "run-" + std::to_string(options_.shard_index) + "-of-" + std::to_string(options_.shard_count) + ".json";
}
std::string CohortRunner::log_name() const {
  if (options_.shard_count <= 1) return "hemexp.log";
  return "hemexp-" + std::to_string(options_.shard_index) + "-of-" + std::to_string(options_.shard_count) + ".log";
}

int CohortRunner::prepare() {
  // Output folder: must be creatable and writable, and not silently mixed with an old run.
  std::error_code ec;
  fs::create_directories(out_, ec);
  try {
    write_text_atomically(out_ / ".hemexp-write-test", "");
    fs::remove(out_ / ".hemexp-write-test");
  } catch (const std::exception&) {
    spdlog::error("output folder {} is not writable", out_.string());
    return kExitSetup;
  }
  if (fs::exists(out_ / results_name()) && !options_.resume && !options_.overwrite) {
    spdlog::error("{} already holds the results of a run; use --resume to continue it or --overwrite to replace it",
                  out_.string());
    return kExitUsage;
  }
  std::vector<CaseInput> all = options_.cases;
  try {
    if (all.empty()) all = expand_inputs(std::vector<fs::path>(options_.inputs.begin(), options_.inputs.end()));
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }
  if (all.empty()) {
    spdlog::error("no scans found in the inputs");
    return kExitUsage;
  }
  cohort_size_ = all.size();
  cases_.clear();
  for (size_t k = 0; k < all.size(); ++k)
    if (int(k % size_t(options_.shard_count)) == options_.shard_index - 1) cases_.push_back(all[k]);
  return kExitOk;
}

spdlog::logger& CohortRunner::open_log() {
  const auto level = spdlog::level::from_str(options_.log_level);
  auto file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>((out_ / log_name()).string(), !options_.resume);
  file_sink->set_level(std::min(level, spdlog::level::info));
  file_sink->set_pattern("%Y-%m-%d %H:%M:%S.%e [%l] %v");
  // The console shows warnings and errors (and more when --log-level asks for more detail).
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(level < spdlog::level::info ? level : std::max(level, spdlog::level::warn));
  console->set_pattern("%^%l%$: %v");
  log_ = std::make_shared<spdlog::logger>("hemexp", spdlog::sinks_init_list{file_sink, console});
  log_->set_level(std::min(level, spdlog::level::info));
  log_->flush_on(spdlog::level::info);
  std::string command_line;
  for (const std::string& a : argv_) command_line += (command_line.empty() ? "" : " ") + a;
  log_->info("hemexp {} ({}) on {}: {}", kVersion, kGitCommit, host_name(), command_line);
  return *log_;
}

std::optional<CaseResult> CohortRunner::previous_result(const CaseInput& c) const {
  const fs::path dir = out_ / "cases" / c.id;
  if (!fs::exists(dir / CaseFiles::kMask)) return std::nullopt;
  std::optional<CaseResult> previous = CaseResult::read(dir / CaseFiles::kResult);
  if (!previous || previous->status != "ok" || previous->input_path != c.path.string()) return std::nullopt;
  return previous;
}

int CohortRunner::run(const CaseFunction& f, const json& run_info) {
  if (!log_) open_log();
  spdlog::logger& log = *log_;
  if (options_.overwrite) {
    std::error_code ec;
    for (const CaseInput& c : cases_) fs::remove_all(out_ / "cases" / c.id, ec);
    fs::remove(out_ / results_name(), ec);
  }
  json run = run_info;
  run.update({{"tool", "hemexp"},
              {"version", kVersion},
              {"git_commit", kGitCommit},
              {"argv", argv_},
              {"host", host_name()},
              {"shard", {{"index", options_.shard_index}, {"count", options_.shard_count}}},
              {"started", utc_now()},
              {"finished", nullptr},
              {"cases", {{"total", cases_.size()}, {"ok", 0}, {"failed", 0}, {"skipped", 0}}}});
  write_text_atomically(out_ / run_json_name(), run.dump(2) + "\n");

  const std::vector<std::string>& columns = CaseResult::csv_columns();
  std::string csv = csv_line(columns);
  std::map<std::string, int> counts{{"ok", 0}, {"failed", 0}, {"skipped", 0}};
  for (size_t k = 0; k < cases_.size(); ++k) {
    const CaseInput& c = cases_[k];
    std::optional<CaseResult> result = options_.resume ? previous_result(c) : std::nullopt;
    if (result) {
      result->status = "skipped";
      log.info("{}: kept from the previous run", c.id);
    } else {
      try {
        result = f(c, out_ / "cases" / c.id, log);
      } catch (const std::exception& e) {  // a bug in f: the cohort goes on all the same
        result = CaseResult{};
        result->case_id = c.id;
        result->input_path = c.path.string();
        result->status = "failed";
        result->error = one_line(e.what());
        log.error("{}: failed: {} ({})", c.id, result->error, c.path.string());
      }
    }
    ++counts[result->status];
    csv += csv_line(columns, result->csv_row());
    write_text_atomically(out_ / results_name(), csv);  // a crash leaves every finished row
    if (options_.progress)
      std::fprintf(stderr, "[%zu/%zu] %s: %s%s%s\n", k + 1, cases_.size(), c.id.c_str(), result->status.c_str(),
                   result->error.empty() ? "" : ": ", result->error.c_str());
  }
  run["finished"] = utc_now();
  run["cases"] = {{"total", cases_.size()}, {"ok", counts["ok"]}, {"failed", counts["failed"]},
                  {"skipped", counts["skipped"]}};
  write_text_atomically(out_ / run_json_name(), run.dump(2) + "\n");
  log.info("done: {} ok, {} failed, {} kept from a previous run", counts["ok"], counts["failed"], counts["skipped"]);
  return counts["failed"] > 0 ? kExitCaseFailed : kExitOk;
}

}  // namespace hemexp
