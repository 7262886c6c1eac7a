#pragma once

#include <stdexcept>
#include <string>

namespace hemexp {

// Base of every error hemexp raises on purpose: one type per layer, each message one line that
// says what was being done and on which input, so the runner can report it as the reason a
// case failed. Anything else reaching the runner is a bug or a library's own exception.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Raised by the core layer (tensors, geometry, networks).
class CoreError : public Error {
 public:
  explicit CoreError(const std::string& what) : Error(what) {}
};

// Raised while reading or checking a model file (its card, its tensors, its network): a setup
// error for a run, never a per-case failure.
class ModelError : public Error {
 public:
  explicit ModelError(const std::string& what) : Error(what) {}
};

}  // namespace hemexp
