#pragma once

#include <stdexcept>
#include <string>

namespace hemexp {

// Error raised by the I/O layer. Messages are one line, name the input, and say what is
// wrong in terms a researcher can act on ("DICOM series has duplicate slice positions").
class IoError : public std::runtime_error {
 public:
  explicit IoError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace hemexp
