#include "hemexp/app/merge_command.hpp"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hemexp/app/cohort.hpp"
#include "hemexp/app/run_options.hpp"
#include "hemexp/core/text.hpp"
#include "hemexp/io/atomic_file.hpp"

namespace hemexp {
namespace fs = std::filesystem;
using json = nlohmann::json;

CLI::App* setup_merge(CLI::App& app, MergeOptions& o) {
  CLI::App* m = app.add_subcommand("merge", "Combine the shard tables of a `run --shard K/N` job array into one run");
  m->add_option("outdir", o.output_dir, "The OUTDIR the shards wrote into")->required()->check(CLI::ExistingDirectory);
  return m;
}

namespace {

// Every shard's run.json `left_out` together, each path once, in path order as one run lists
// them (left_out_json): a shard that started after another had written cases into OUTDIR, or
// was resumed, left out more than the first.
json merged_left_out(const std::map<int, json>& shards) {
  std::set<std::pair<fs::path, std::string>> seen;
  std::vector<LeftOut> all;
  for (const auto& [k, r] : shards)
    for (const json& g : r.value("left_out", json::array()))
      for (const json& p : g.value("paths", json::array()))
        if (seen.insert({fs::path(p.get<std::string>()), g.value("reason", "")}).second)
          all.push_back({p.get<std::string>(), g.value("reason", "")});
  std::stable_sort(all.begin(), all.end(), [](const LeftOut& a, const LeftOut& b) { return a.path < b.path; });
  return left_out_json(all);
}

}  // namespace

int run_merge(const MergeOptions& o) {
  const fs::path out(o.output_dir);
  // Not a job array's folder: said before any lock file is made in it.
  const std::vector<ShardFile> records = shard_files(out, "run", ".json");
  if (records.empty()) {
    spdlog::error("{} holds no shard files (run-K-of-N.json)", out.string());
    return kExitUsage;
  }
  // The folder's lock, exclusively, as an unsharded run holds it, before any shard file is read:
  // no shard is running while merge reads their records and tables (a shard that has not
  // finished has then been stopped), and none starts before results.csv and run.json are written.
  std::unique_ptr<FileLock> lock;
  try {
    lock = std::make_unique<FileLock>(out / ".hemexp.lock", fmt::format("pid {} on {} since {} (hemexp merge)",
                                                                        ::getpid(), host_name(), utc_now()));
  } catch (const std::exception& e) {
    spdlog::error("output folder {} is not writable: {}", out.string(), one_line(e.what()));
    return kExitSetup;
  }
  if (lock->state() == FileLock::State::busy) {
    spdlog::error("{} is in use by {}: merge once every shard has finished", out.string(),
                  lock->detail().empty() ? "shards that are still running (each OUTDIR/.hemexp-K-of-N.lock names one)"
                                         : "another hemexp run (" + lock->detail() + ", as its lock file says)");
    return kExitSetup;
  }
  const bool none_running = lock->state() == FileLock::State::held;
  std::map<int, json> shards;
  const int count = records.back().count;
  for (const ShardFile& f : records) {
    if (f.count != count) {
      spdlog::error("{} holds shards of different splits (of {} and of {})", out.string(), f.count, count);
      return kExitUsage;
    }
    try {
      shards[f.index] = json::parse(read_text_file(f.path));
    } catch (const std::exception& ex) {
      spdlog::error("{}: {}", f.path.filename().string(), ex.what());
      return kExitUsage;
    }
  }
  std::vector<std::string> problems;
  for (int k = 1; k <= count; ++k)
    if (!shards.count(k)) problems.push_back("shard " + std::to_string(k) + " of " + std::to_string(count) + " is missing");
  const json* first = shards.empty() ? nullptr : &shards.begin()->second;
  for (const auto& [k, r] : shards) {
    const std::string who = "shard " + std::to_string(k);
    if (r.value("finished", json()).is_null())
      problems.push_back(who + (none_running ? " was stopped before it finished (killed, or its node lost): rerun it with --resume"
                                             : " has not finished"));
    if (r.contains("interrupted")) problems.push_back(who + " was interrupted: rerun it with --resume");
    for (const char* key : {"inputs", "models", "result_options"})
      if (r.value(key, json()) != first->value(key, json()))
        problems.push_back(who + " was made with other " + std::string(key) + " than shard " +
                           std::to_string(shards.begin()->first));
  }
  if (!problems.empty()) {
    for (const std::string& p : problems) spdlog::error("{}", p);
    return kExitUsage;
  }
  // Case g of the unsharded list is row g / N of shard g % N + 1.
  std::vector<CsvTable> tables;
  for (int k = 1; k <= count; ++k) {
    const fs::path table = out / ("results-" + std::to_string(k) + "-of-" + std::to_string(count) + ".csv");
    try {
      tables.push_back(parse_csv(read_text_file(table)));
    } catch (const std::exception& e) {
      spdlog::error("shard {}: {}: rerun it with --resume", k, one_line(e.what()));
      return kExitUsage;
    }
    if (tables.back().header != tables.front().header) {
      spdlog::error("shard {} has other columns than shard 1", k);
      return kExitUsage;
    }
    const size_t expected = shards[k]["cases"]["total"].get<size_t>();
    if (tables.back().rows.size() != expected) {
      spdlog::error("shard {} lists {} cases of its {}: rerun it with --resume", k, tables.back().rows.size(), expected);
      return kExitUsage;
    }
  }
  const size_t total = first->at("inputs").at("cases").get<size_t>();
  std::string csv = csv_line(tables.front().header);
  for (size_t g = 0; g < total; ++g) csv += csv_line(tables[g % size_t(count)].rows.at(g / size_t(count)));
  json run = *first;
  run.erase("shard");
  // The record of the whole run: shard 1's command and options without its --shard, so that
  // `--config` with it (or its argv) runs the cohort unsharded.
  json argv = json::array();
  const json given = run.value("argv", json::array());
  for (size_t i = 0; i < given.size(); ++i) {
    const std::string a = given[i].is_string() ? given[i].get<std::string>() : "";
    if (a == "--shard") ++i;
    else if (a.rfind("--shard=", 0) != 0) argv.push_back(given[i]);
  }
  run["argv"] = argv;
  if (run.contains("config") && run["config"].is_string()) {
    std::istringstream lines(run["config"].get<std::string>());
    std::string kept;
    for (std::string line; std::getline(lines, line);) {
      const std::string t = trim(line);
      const size_t eq = t.find('=');
      if (eq == std::string::npos || trim(t.substr(0, eq)) != "shard") kept += line + "\n";
    }
    run["config"] = kept;
  }
  run["merged_from"] = json::array();
  json cases = {{"total", 0}, {"ok", 0}, {"failed", 0}, {"skipped", 0}};
  std::string started = first->value("started", ""), finished = first->value("finished", "");
  for (const auto& [k, r] : shards) {
    run["merged_from"].push_back("run-" + std::to_string(k) + "-of-" + std::to_string(count) + ".json");
    for (const char* c : {"total", "ok", "failed", "skipped"}) cases[c] = cases[c].get<int>() + r["cases"][c].get<int>();
    started = std::min(started, r.value("started", ""));
    finished = std::max(finished, r.value("finished", ""));
  }
  run["cases"] = cases;
  if (json left_out = merged_left_out(shards); !left_out.empty()) run["left_out"] = std::move(left_out);
  run["started"] = started;
  run["finished"] = finished;
  try {
    write_text_atomically(out / "results.csv", csv);
    write_text_atomically(out / "run.json", json_text(run));
  } catch (const std::exception& e) {
    spdlog::error("{} (the shard files are intact: free space and merge again)", one_line(e.what()));
    return kExitOutputFailed;
  }
  std::printf("merged %d shards: %zu cases (%d ok, %d failed, %d kept) into %s\n", count, total, cases["ok"].get<int>(),
              cases["failed"].get<int>(), cases["skipped"].get<int>(), (out / "results.csv").string().c_str());
  // The whole cohort's outcome, as one unsharded run of it would exit: a job that checks only
  // the merge's exit code sees failed cases.
  return outcome_exit_code(cases["ok"].get<int>() + cases["skipped"].get<int>(), cases["failed"].get<int>());
}

}  // namespace hemexp
