#pragma once

#include <string>
#include <vector>

#include "hemexp/app/cli.hpp"

namespace hemexp {

// `hemexp run`: reads every case, writes cases/<id>/{mask.nii.gz,result.json}, results.csv,
// run.json and hemexp.log under options.output_dir. A failing case never stops the run.
// argv is recorded in run.json. Returns an ExitCode.
int run_cases(const RunOptions& options, const std::vector<std::string>& argv);

}  // namespace hemexp
