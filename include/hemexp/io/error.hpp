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

// The reason in an ITK or GDCM exception's description, without the source location and
// object address ITK puts before it ("ITK ERROR: NiftiImageIO(0x55...): "), on one line.
std::string library_reason(const std::string& description);

}  // namespace hemexp
