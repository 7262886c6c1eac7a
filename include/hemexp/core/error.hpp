#pragma once

#include <stdexcept>
#include <string>

namespace hemexp {

// Error raised by the core layer (tensors, geometry, networks). The message says what was
// being done, so the runner can report it as a one-line reason for a failed case.
class CoreError : public std::runtime_error {
 public:
  explicit CoreError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace hemexp
