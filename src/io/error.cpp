#include "hemexp/io/error.hpp"

#include <cctype>

namespace hemexp {

std::string library_reason(const std::string& description) {
  std::string text = description.substr(0, description.find('\n'));
  const size_t at = text.find("): ");
  if (text.rfind("ITK ERROR", 0) == 0 && at != std::string::npos) text = text.substr(at + 3);
  else if (text.rfind("ITK ERROR: ", 0) == 0) text = text.substr(11);
  // ITK separates sentences with two spaces.
  for (size_t p; (p = text.find("  ")) != std::string::npos;) text.erase(p, 1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.erase(text.begin());
  return text;
}

}  // namespace hemexp
