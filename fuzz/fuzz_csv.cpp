// libFuzzer target: the CSV reader behind list files, pairs files and labels. Any text either
// parses, and then writes back (csv_line) to text that parses to the same table, or is refused
// with a CoreError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hemexp/core/error.hpp"
#include "hemexp/core/text.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  hemexp::CsvTable t;
  try {
    t = hemexp::parse_csv(text);
  } catch (const hemexp::CoreError&) {
    return 0;
  }
  (void)t.records();
  std::string again = hemexp::csv_line(t.header);
  for (const auto& row : t.rows) again += hemexp::csv_line(row);
  const hemexp::CsvTable back = hemexp::parse_csv(again);
  if (back.header != t.header || back.rows != t.rows) __builtin_trap();
  return 0;
}
