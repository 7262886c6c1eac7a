#pragma once

#include <string>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp eval`: a `run` output folder against a `synth` folder (the truth).
struct EvalOptions {
  std::string pred_dir;
  std::string truth_dir;
  std::string json_path;  // default: PRED/eval.json
};

CLI::App* setup_eval(CLI::App& app, EvalOptions& options);
int run_eval(const EvalOptions& options);

}  // namespace hemexp
