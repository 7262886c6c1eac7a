#pragma once

#include <string>

namespace CLI {
class App;
}

namespace hemexp {

// `hemexp info MODELFILE`: what a model file is, what it expects, how it was trained.
struct InfoOptions {
  std::string model_path;
};

CLI::App* setup_info(CLI::App& app, InfoOptions& options);
int run_info(const InfoOptions& options);

}  // namespace hemexp
