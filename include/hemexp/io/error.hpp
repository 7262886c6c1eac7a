#pragma once

#include <string>

#include "hemexp/core/error.hpp"

namespace hemexp {

// Error raised by the I/O layer. Messages are one line, name the input, and say what is
// wrong in terms a researcher can act on ("DICOM series has duplicate slice positions").
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

}  // namespace hemexp
