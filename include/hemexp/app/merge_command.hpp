#pragma once

#include <string>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp merge OUTDIR`: the N shard tables of a `run --shard K/N` job array in one OUTDIR
// combined into the results.csv and run.json of one unsharded run.
struct MergeOptions {
  std::string output_dir;
};

CLI::App* setup_merge(CLI::App& app, MergeOptions& options);
// Checks that every shard 1..N is present and finished (not interrupted, every case of it in
// its table) and that all were made with the same inputs, models and result options (naming
// what differs); then writes results.csv in the order of the unsharded input list and
// run.json (cases summed, `merged_from`). Returns kExitOk, or kExitUsage when it refuses.
int run_merge(const MergeOptions& options);

}  // namespace hemexp
