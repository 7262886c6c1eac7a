#include "hemexp/app/cohort.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <cmath>
#include <atomic>
#include <csignal>
#include <ctime>
#include <map>
#include <optional>
#include <regex>
#include <iomanip>
#include <sstream>
#include <tuple>

#include "hemexp/app/cli.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/statistics.hpp"
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

namespace {

// What the folder search left out, grouped by reason in the order first met.
std::vector<std::pair<std::string, std::vector<fs::path>>> by_reason(const std::vector<LeftOut>& left_out) {
  std::vector<std::pair<std::string, std::vector<fs::path>>> groups;
  for (const LeftOut& l : left_out) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == l.reason; });
    if (it == groups.end()) it = groups.insert(groups.end(), {l.reason, {}});
    it->second.push_back(l.path);
  }
  return groups;
}

// "1200 x <reason> (e.g. <first path>); 1 x <reason> (e.g. ...)" for the log and the console.
std::string left_out_summary(const std::vector<LeftOut>& left_out) {
  std::string text;
  for (const auto& [reason, paths] : by_reason(left_out))
    text += (text.empty() ? "" : "; ") + std::to_string(paths.size()) + " x " + reason + " (e.g. " +
            paths.front().string() + ")";
  return text;
}

}  // namespace

json left_out_json(const std::vector<LeftOut>& left_out) {
  json groups = json::array();
  for (const auto& [reason, paths] : by_reason(left_out)) {
    json list = json::array();
    for (const fs::path& p : paths) list.push_back(p.string());
    groups.push_back({{"reason", reason}, {"count", paths.size()}, {"paths", list}});
  }
  return groups;
}

CohortRunner::CohortRunner(CohortOptions options, std::vector<std::string> argv)
    : options_(std::move(options)), argv_(std::move(argv)), out_(options_.output_dir) {}

CohortRunner::~CohortRunner() = default;

namespace {

std::string working_directory() {
  std::error_code ec;  // a folder deleted under the run: recorded as unknown, not an abort
  const fs::path p = fs::current_path(ec);
  return ec ? std::string() : p.string();
}

}  // namespace

std::string CohortRunner::shard_file_name(const std::string& stem, const std::string& extension) const {
  if (options_.shard_count <= 1) return stem + extension;
  return stem + "-" + std::to_string(options_.shard_index) + "-of-" + std::to_string(options_.shard_count) + extension;
}
std::string CohortRunner::results_name() const { return shard_file_name("results", ".csv"); }
std::string CohortRunner::run_json_name() const { return shard_file_name("run", ".json"); }
std::string CohortRunner::log_name() const { return shard_file_name("hemexp", ".log"); }

std::optional<std::pair<int, int>> shard_of_file(const std::string& file_name) {
  static const std::regex name(R"((?:run-(\d{1,9})-of-(\d{1,9})\.json)|(?:results-(\d{1,9})-of-(\d{1,9})\.csv)|)"
                               R"((?:hemexp-(\d{1,9})-of-(\d{1,9})\.log)|(?:\.hemexp-(\d{1,9})-of-(\d{1,9})\.lock))");
  std::smatch m;
  if (!std::regex_match(file_name, m, name)) return std::nullopt;
  for (size_t g = 1; g + 1 < m.size(); g += 2)
    if (m[g].matched) return std::pair<int, int>{std::stoi(m[g]), std::stoi(m[g + 1])};
  return std::nullopt;
}

std::vector<ShardFile> shard_files(const fs::path& folder, const std::string& stem, const std::string& extension) {
  std::vector<ShardFile> out;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(stem + "-", 0) != 0 || it->path().extension() != extension) continue;
    if (const auto split = shard_of_file(name)) out.push_back({split->first, split->second, it->path()});
  }
  std::sort(out.begin(), out.end(), [](const ShardFile& a, const ShardFile& b) {
    return std::tie(a.count, a.index) < std::tie(b.count, b.index);
  });
  return out;
}

// A file of a sharded run with another shard count than this run's, by name ("" when none).
std::string CohortRunner::file_of_another_split() const {
  std::error_code ec;
  std::vector<std::string> found;
  for (fs::directory_iterator it(out_, ec), end; !ec && it != end; it.increment(ec))
    if (const auto split = shard_of_file(it->path().filename().string()); split && split->second != options_.shard_count)
      found.push_back(it->path().filename().string());
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found.front();
}

// One process per shard of an OUTDIR: a second run into it (a job submitted twice, a run
// started again while the first still runs) would clean away the first's files as they are
// written, and both would rewrite results.csv. An unsharded run holds OUTDIR/.hemexp.lock
// exclusively; shard K of N holds it shared (shards run side by side, an unsharded run does not
// run beside them: it would redo their unfinished cases) and .hemexp-K-of-N.lock exclusively.
int CohortRunner::lock_output_folder() {
  const std::string who = fmt::format("pid {} on {} since {}", ::getpid(), host_name(), utc_now());
  const bool sharded = options_.shard_count > 1;
  const auto busy = [&](const std::string& by) {
    spdlog::error("{} is in use by {}: let it finish or stop it first; to run at the same time, give each run its own "
                  "output folder, or each process its own --shard K/N of one",
                  out_.string(), by);
    return kExitSetup;
  };
  std::vector<std::string> unprotected;
  try {
    folder_lock_ = std::make_unique<FileLock>(out_ / ".hemexp.lock", who,
                                              sharded ? FileLock::Mode::shared : FileLock::Mode::exclusive);
    if (folder_lock_->state() == FileLock::State::busy)
      return busy(!folder_lock_->detail().empty() ? "another hemexp run (" + folder_lock_->detail() + ", as its lock file says)"
                  : sharded ? "another hemexp run"
                            : "the shards of a job array (each OUTDIR/.hemexp-K-of-N.lock names one)");
    if (folder_lock_->state() == FileLock::State::unsupported) unprotected.push_back(folder_lock_->detail());
    if (sharded) {
      // One OUTDIR takes one split: shard 1/3 beside the shards of a split into 2 would analyse
      // cases they analyse too, and merge cannot combine the two. Looked for before this shard's
      // own lock file is made, so that a refused run leaves nothing in the other split's folder.
      if (const std::string other = file_of_another_split(); !other.empty()) {
        spdlog::error("{0} holds the files of a run split into {1} shards ({2}), and this is shard {3}/{4}: one output "
                      "folder takes one split. Use --shard K/{1} as that run did, or give this run its own output "
                      "folder, or, once none of that split's shards is running, delete its files (run-*-of-{1}.json, "
                      "results-*-of-{1}.csv, hemexp-*-of-{1}.log, .hemexp-*-of-{1}.lock): the cases it finished are "
                      "kept by --resume",
                      out_.string(), shard_of_file(other)->second, other, options_.shard_index, options_.shard_count);
        return kExitUsage;
      }
      const fs::path own = out_ / shard_file_name(".hemexp", ".lock");
      const bool made = !fs::exists(own);
      lock_ = std::make_unique<FileLock>(own, who);
      // Two job arrays of different splits started at one moment: each now sees the other's
      // lock file, and both stop (rather than both going on).
      if (lock_->state() != FileLock::State::busy && !file_of_another_split().empty()) {
        lock_.reset();
        std::error_code ec;
        if (made) fs::remove(own, ec);
        spdlog::error("{} is being started as another split of shards at the same time (a file of it appeared: {}): "
                      "one output folder takes one split",
                      out_.string(), file_of_another_split());
        return kExitUsage;
      }
      if (lock_->state() == FileLock::State::busy)
        return busy(fmt::format("another hemexp run of shard {}/{} ({})", options_.shard_index, options_.shard_count,
                                lock_->detail().empty() ? "it gave no name" : lock_->detail() + ", as its lock file says"));
      if (lock_->state() == FileLock::State::unsupported) unprotected.push_back(lock_->detail());
    }
  } catch (const std::exception& e) {
    spdlog::error("output folder {} is not writable: {}", out_.string(), one_line(e.what()));
    return kExitSetup;
  }
  if (!unprotected.empty())
    lock_note_ = fmt::format("{} cannot be locked ({}): a second hemexp run into it at the same time would not be "
                             "detected",
                             out_.string(), unprotected.front());
  return kExitOk;
}

int CohortRunner::prepare() {
  lock_.reset();
  folder_lock_.reset();
  lock_note_.clear();
  // A folder that exists is locked before anything is read from it: a second run gets "in use",
  // not "holds the results of a run".
  if (fs::is_directory(out_))
    if (const int code = lock_output_folder(); code != kExitOk) return code;
  // Nothing is created before the inputs are known: a folder with no scans leaves no empty
  // OUTDIR behind.
  // The results of a run this one would mix with: its own table, and an unsharded run's beside a
  // shard's or the reverse (the other shards' tables of this split are its siblings).
  if (!options_.resume && !options_.overwrite) {
    std::string previous = fs::exists(out_ / results_name()) ? results_name() : "";
    if (previous.empty() && options_.shard_count > 1 && fs::exists(out_ / "results.csv")) previous = "results.csv";
    if (const auto tables = shard_files(out_, "results", ".csv"); previous.empty() && options_.shard_count <= 1 && !tables.empty())
      previous = tables.front().path.filename().string();
    if (!previous.empty()) {
      spdlog::error("{} already holds the results of a run ({}); use --resume to continue it or --overwrite to replace it",
                    out_.string(), previous);
      return kExitUsage;
    }
  }
  std::vector<CaseInput> all = options_.cases;
  try {
    left_out_ = options_.left_out;
    if (all.empty())
      all = expand_inputs(std::vector<fs::path>(options_.inputs.begin(), options_.inputs.end()), &left_out_, out_);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }
  if (all.empty()) {
    spdlog::error("no scans found in the inputs{}", left_out_.empty() ? "" : "; left out: " + left_out_summary(left_out_));
    return kExitUsage;
  }
  // Output folder: must be creatable and writable, and not silently mixed with an old run.
  std::error_code ec;
  fs::create_directories(out_, ec);
  // Each shard probes with its own file: the shards of a job array start together, and one
  // shard's clean-up must not take away the file another is writing.
  const std::string probe = shard_file_name(".hemexp-write-test", "");
  try {
    write_text_atomically(out_ / probe, "");
    fs::remove(out_ / probe);
  } catch (const std::exception&) {
    spdlog::error("output folder {} is not writable", out_.string());
    return kExitSetup;
  }
  if (!folder_lock_)
    if (const int code = lock_output_folder(); code != kExitOk) return code;
  // What a killed run of this shard was writing (other shards may be writing theirs now).
  remove_temporaries(out_, {probe, results_name(), run_json_name()});
  cohort_size_ = all.size();
  std::string list;
  for (const CaseInput& c : all) list += c.id + '\t' + c.path.string() + '\n';
  inputs_sha256_ = sha256_hex(list);
  // A list's own columns follow hemexp's in results.csv (all shards alike); one named like a
  // hemexp column is written as list_<name>.
  extra_columns_.clear();
  for (const CaseInput& c : all)
    for (const auto& [name, value] : c.extra)
      if (std::find(extra_columns_.begin(), extra_columns_.end(), name) == extra_columns_.end())
        extra_columns_.push_back(name);
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
  if (!lock_note_.empty()) log_->warn("{}", lock_note_);
  return *log_;
}

std::optional<CaseResult> CohortRunner::previous_result(const CaseInput& c) const {
  const fs::path dir = out_ / "cases" / c.id;
  if (!fs::exists(dir / CaseFiles::kMask)) return std::nullopt;
  std::optional<CaseResult> previous = CaseResult::read(dir / CaseFiles::kResult);
  if (!previous || previous->status != "ok") return std::nullopt;
  return previous;
}

namespace {

std::string duration_text(double s) {
  if (!std::isfinite(s)) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

}  // namespace

std::string progress_line(size_t done, size_t total, const std::map<std::string, int>& counts, double elapsed_s,
                          double eta_s, const std::string& current) {
  const auto n = [&](const char* k) { const auto it = counts.find(k); return it == counts.end() ? 0 : it->second; };
  char buf[160];
  std::snprintf(buf, sizeof buf, "[%zu/%zu] ok %d, failed %d, kept %d | %s elapsed, ETA %s | ", done, total, n("ok"),
                n("failed"), n("skipped"), duration_text(elapsed_s).c_str(), duration_text(eta_s).c_str());
  return buf + current;
}

std::string resume_mismatch(const CaseResult& previous, const json& expected) {
  const json& had = previous.fingerprint;
  if (!had.is_object() || !had.contains("input")) return "its result has no fingerprint (an older hemexp wrote it)";
  const std::string input = expected.value("input", "");
  if (input.empty()) return "its input could not be fingerprinted";
  if (had.value("input", "") != input) return "its input changed";
  const json no = json::object();
  const json& m0 = had.contains("models") ? had["models"] : no;
  const json& m1 = expected.contains("models") ? expected["models"] : no;
  for (const json* m : {&m0, &m1})
    for (const auto& [role, sha] : m->items())
      if (m0.value(role, json()) != m1.value(role, json())) return "the " + role + " model changed";
  const json& o0 = had.contains("options") ? had["options"] : no;
  const json& o1 = expected.contains("options") ? expected["options"] : no;
  for (const json* o : {&o0, &o1})
    for (const auto& [key, value] : o->items())
      if (o0.value(key, json()) != o1.value(key, json()))
        return "option " + key + " changed (" + o0.value(key, json()).dump() + " -> " + o1.value(key, json()).dump() + ")";
  return "";
}

fs::path reusable_mask(const CaseResult& previous, const json& expected, const fs::path& case_dir) {
  const fs::path mask = case_dir / CaseFiles::kMask;
  if (previous.status != "ok" || !previous.hematoma || !fs::exists(mask)) return {};
  const json& had = previous.fingerprint;
  if (!had.is_object() || !had.contains("models") || !expected.contains("models")) return {};
  if (expected["models"].value("segmentation", json()).is_null()) return {};  // no segmenter: nothing to reuse
  json same = expected;  // the expected fingerprint with the previous classifier: nothing else may differ
  same["models"].erase("classification");
  if (had["models"].contains("classification")) same["models"]["classification"] = had["models"]["classification"];
  return resume_mismatch(previous, same).empty() ? mask : fs::path();
}

namespace {

// The first signal is recorded and the run stops between cases; a second one (of any kind)
// takes the default action at once. Atomic writes leave no half-written file either way.
// (Any thread may take the signal: a lock-free atomic, set once.)
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);
extern "C" void on_stop_signal(int sig) {
  int none = 0;
  if (!g_stop_signal.compare_exchange_strong(none, sig)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};
int g_holders = 0;
struct sigaction g_previous[3];
bool g_installed[3] = {false, false, false};

}  // namespace

StopSignals::StopSignals() {
  if (g_holders++ > 0) return;
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (const int sig : kStopSignals) sigaddset(&sa.sa_mask, sig);  // one handler at a time
  for (int i = 0; i < 3; ++i) {
    // A signal the process was started to ignore (`nohup`, a background job's SIGINT) stays ignored.
    sigaction(kStopSignals[i], nullptr, &g_previous[i]);
    g_installed[i] = g_previous[i].sa_handler != SIG_IGN;
    if (g_installed[i]) sigaction(kStopSignals[i], &sa, nullptr);
  }
}

StopSignals::~StopSignals() {
  if (--g_holders > 0) return;
  for (int i = 0; i < 3; ++i)
    if (g_installed[i]) sigaction(kStopSignals[i], &g_previous[i], nullptr);
}

int StopSignals::received() { return g_stop_signal.load(); }

const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : "SIGTERM"; }

int CohortRunner::run(const CaseFunction& f, const json& run_info) {
  return run(
      [&f](const CaseInput& c, const fs::path& dir, spdlog::logger& log, std::future<ReadCase>*) { return f(c, dir, log); },
      CaseReader{}, run_info);
}

int CohortRunner::run(const StagedCaseFunction& f, const CaseReader& read, const json& run_info) {
  if (!log_) open_log();
  spdlog::logger& log = *log_;
  if (options_.overwrite) {
    std::error_code ec;
    for (const CaseInput& c : cases_) fs::remove_all(out_ / "cases" / c.id, ec);
    fs::remove(out_ / results_name(), ec);
  }
  if (!left_out_.empty()) {
    log.warn("left out {} of the files and folders found in the inputs: {}; they are listed in {} and {} (a volume file named "
             "on the command line or in a list is read even where a search would leave it out; a scan reached twice, "
             "or a second copy of a DICOM series, is read once)",
             left_out_.size(), left_out_summary(left_out_), log_name(), run_json_name());
    for (const LeftOut& l : left_out_) log.info("left out {}: {}", l.path.string(), l.reason);
  }
  json run = run_info;
  run.update({{"tool", "hemexp"},
              {"version", kVersion},
              {"git_commit", kGitCommit},
              {"argv", argv_},
              {"host", host_name()},
              {"working_directory", working_directory()},  // where relative input paths start
              {"shard", {{"index", options_.shard_index}, {"count", options_.shard_count}}},
              {"inputs", {{"cases", cohort_size_}, {"sha256", inputs_sha256_}}},
              {"left_out", left_out_json(left_out_)},
              {"started", utc_now()},
              {"finished", nullptr},
              {"cases", {{"total", cases_.size()}, {"ok", 0}, {"failed", 0}, {"skipped", 0}}}});
  try {
    write_text_atomically(out_ / run_json_name(), json_text(run));
  } catch (const std::exception& e) {
    spdlog::error("cannot write {}: {}; nothing was done (free space and rerun)", run_json_name(), one_line(e.what()));
    return kExitOutputFailed;
  }

  std::vector<std::string> columns = CaseResult::csv_columns();
  const size_t own_columns = columns.size();
  for (const std::string& name : extra_columns_)
    columns.push_back(std::find(columns.begin(), columns.begin() + long(own_columns), name) !=
                              columns.begin() + long(own_columns)
                          ? "list_" + name
                          : name);
  std::string csv = csv_line(columns);
  // The table is written anew from each case's result.json: columns added or edited by hand (in
  // a spreadsheet) would go without a word. A table whose columns are not these is kept aside.
  if (std::error_code ec; options_.resume && fs::exists(out_ / results_name(), ec)) {
    try {
      if (parse_csv(read_text_file(out_ / results_name())).header != columns) {
        // Not results-K-of-N.*: nothing that looks for shard tables may take it for one.
        const std::string aside = shard_file_name("results.before-resume", ".csv");
        fs::copy_file(out_ / results_name(), out_ / aside, fs::copy_options::overwrite_existing);
        log.warn("{} has other columns than hemexp writes (edited in a spreadsheet?): it is written anew from each "
                 "case's result.json, and the old table is kept as {}", results_name(), aside);
        spdlog::warn("{} has other columns than hemexp writes: the old table is kept as {}", results_name(), aside);
      }
    } catch (const std::exception& e) {  // unreadable: written anew all the same
      log.warn("{} cannot be read ({}): it is written anew from each case's result.json", results_name(), one_line(e.what()));
    }
  }
  std::map<std::string, int> counts{{"ok", 0}, {"failed", 0}, {"skipped", 0}};
  // What every result of this run depends on besides its input.
  json models = json::object();
  if (run_info.contains("models"))
    for (const auto& [role, provenance] : run_info["models"].items()) models[role] = provenance.value("sha256", "");
  const json result_options = run_info.value("result_options", json::object());
  const StopSignals signals;
  // On a terminal the progress is one line updated in place; in a log or a pipe, a line per case.
  const bool terminal = ::isatty(STDERR_FILENO) == 1;
  const auto t_run = Clock::now();
  std::vector<double> case_seconds;  // of the cases analysed (not kept) in this run
  // Each case's fingerprint and whether a previous result is kept: decided once, ahead of the
  // case when the next case to read has to be found.
  struct Planned {
    CaseInput c;
    std::optional<CaseResult> kept;
  };
  std::vector<std::optional<Planned>> plans(cases_.size());
  const auto plan = [&](size_t k) -> Planned& {
    if (plans[k]) return *plans[k];
    Planned p{cases_[k], std::nullopt};
    std::string input_digest;
    try {
      input_digest = input_fingerprint(p.c.path);
    } catch (const std::exception&) {  // the case fails when it is read, with its own reason
    }
    p.c.fingerprint = {{"input", input_digest}, {"models", models}, {"options", result_options}};
    p.kept = options_.resume ? previous_result(p.c) : std::nullopt;
    if (p.kept) {
      if (const std::string why = resume_mismatch(*p.kept, p.c.fingerprint); !why.empty()) {
        p.c.reuse_mask = reusable_mask(*p.kept, p.c.fingerprint, out_ / "cases" / p.c.id);
        log.info("{}: done again: {}{}", p.c.id, why,
                 p.c.reuse_mask.empty() ? "" : " (its mask is kept: only the classifier runs again)");
        p.kept.reset();
      }
    }
    plans[k] = std::move(p);
    return *plans[k];
  };
  // Read-ahead: the next case to analyse is read on a second thread while this one is analysed;
  // at most one case ahead, so at most two volumes are in memory.
  std::future<ReadCase> ahead;
  size_t ahead_k = cases_.size();
  const auto read_next = [&](size_t from) {
    if (!read || !options_.read_ahead) return;
    for (size_t j = from; j < cases_.size(); ++j)
      if (!plan(j).kept) {
        ahead = std::async(std::launch::async, read, plans[j]->c, std::ref(log));
        ahead_k = j;
        return;
      }
  };
  std::string output_failure;  // why results.csv could not be written, if it could not
  size_t not_started = 0;  // after a signal: the cases not kept from a previous run that were not begun
  for (size_t k = 0; k < cases_.size(); ++k) {
    // After a signal, only the cases kept from a previous run still get their rows (nothing to
    // analyse); the others are not started. Without --resume none is kept, and no case's
    // fingerprint is computed (a scheduler's grace period after SIGTERM is short).
    if (signals.received() && (!options_.resume || !plan(k).kept)) {
      ++not_started;
      continue;
    }
    if (options_.progress && terminal)
      std::fprintf(stderr, "\r\033[K%s",
                   progress_line(k, cases_.size(), counts, seconds_since(t_run),
                                 case_seconds.empty() ? std::nan("") : median(case_seconds) * double(cases_.size() - k),
                                 "analysing " + cases_[k].id)
                       .c_str());
    Planned& p = plan(k);
    const CaseInput& c = p.c;
    std::optional<CaseResult> result = std::move(p.kept);
    if (result) {
      result->status = "skipped";
      result->input_path = c.path.string();  // the same content, perhaps moved
      log.info("{}: kept from the previous run", c.id);
    } else {
      std::future<ReadCase> mine;
      if (read && options_.read_ahead) {
        if (ahead_k == k) {
          mine = std::move(ahead);
        } else {
          mine = std::async(std::launch::async, read, c, std::ref(log));
        }
        ahead_k = cases_.size();
        read_next(k + 1);
      }
      try {
        result = f(c, out_ / "cases" / c.id, log, mine.valid() ? &mine : nullptr);
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
    std::map<std::string, std::string> row = result->csv_row();
    for (const auto& [name, value] : c.extra) {
      const size_t at = size_t(std::find(extra_columns_.begin(), extra_columns_.end(), name) - extra_columns_.begin());
      row[columns[own_columns + at]] = value;
    }
    csv += csv_line(columns, row);
    try {
      write_text_atomically(out_ / results_name(), csv);  // a crash leaves every finished row
    } catch (const std::exception& e) {
      // A full disk or quota: every file already written is intact (each written under a
      // temporary name, then renamed); going on would analyse cases nothing records.
      output_failure = one_line(e.what());
      log.error("cannot write {}: {}; the run stops here (the files already in {} are intact: free space and rerun "
                "with --resume)", results_name(), output_failure, out_.string());
      spdlog::error("cannot write {}: {}; stopped after {} of {} cases: free space and rerun with --resume",
                    results_name(), output_failure, k + 1, cases_.size());
      break;
    }
    if (result->status != "skipped") case_seconds.push_back(result->seconds);
    if (options_.progress) {
      if (terminal) {
        const double eta = case_seconds.empty() ? std::nan("") : median(case_seconds) * double(cases_.size() - k - 1);
        std::fprintf(stderr, "\r\033[K%s", progress_line(k + 1, cases_.size(), counts, seconds_since(t_run), eta,
                                                         c.id + ": " + result->status).c_str());
        if (result->status == "failed") std::fprintf(stderr, "\n%s: failed: %s\n", c.id.c_str(), result->error.c_str());
      } else {
        std::fprintf(stderr, "[%zu/%zu] %s: %s%s%s\n", k + 1, cases_.size(), c.id.c_str(), result->status.c_str(),
                     result->error.empty() ? "" : ": ", result->error.c_str());
      }
    }
  }
  if (options_.progress && terminal && !cases_.empty()) std::fprintf(stderr, "\n");
  // A shard with no case (more shards than scans) still has its table: merge reads every one.
  if (cases_.empty()) {
    try {
      write_text_atomically(out_ / results_name(), csv);
    } catch (const std::exception& e) {
      output_failure = one_line(e.what());
      spdlog::error("cannot write {}: {}: free space and rerun", results_name(), output_failure);
    }
  }
  // A signal that came once every case to analyse had started stops nothing: the run is complete.
  const int stop = not_started > 0 ? signals.received() : 0;
  if (signals.received() && !stop)
    log.info("{} arrived while the last case was analysed: the run is complete", signal_name(signals.received()));
  run["finished"] = utc_now();
  run["cases"] = {{"total", cases_.size()}, {"ok", counts["ok"]}, {"failed", counts["failed"]},
                  {"skipped", counts["skipped"]}};
  if (stop) {
    run["interrupted"] = {{"signal", signal_name(stop)}, {"not_started", not_started}};
  }
  if (!output_failure.empty()) {
    run["output_failure"] = output_failure;
    try {
      write_text_atomically(out_ / run_json_name(), json_text(run));
    } catch (const std::exception&) {  // the disk is still full: already said
    }
    return kExitOutputFailed;
  }
  try {
    write_text_atomically(out_ / run_json_name(), json_text(run));
  } catch (const std::exception& e) {
    // results.csv is complete; the record still says the run has not finished, as after a kill.
    log.error("cannot write {}: {}", run_json_name(), one_line(e.what()));
    spdlog::error("cannot write {}: {}; {} is complete: free space and rerun with --resume to record the run",
                  run_json_name(), one_line(e.what()), results_name());
    return kExitOutputFailed;
  }
  log.info("done: {} ok, {} failed, {} kept from a previous run", counts["ok"], counts["failed"], counts["skipped"]);
  if (stop) {
    log.warn("interrupted by {} after {} of {} cases; rerun with --resume to finish", signal_name(stop),
             counts["ok"] + counts["failed"] + counts["skipped"], cases_.size());
    return kExitInterrupted;
  }
  return outcome_exit_code(counts["ok"] + counts["skipped"], counts["failed"]);
}

}  // namespace hemexp
