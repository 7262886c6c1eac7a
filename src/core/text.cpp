#include "hemexp/core/text.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <locale>
#include <sstream>

#include "hemexp/core/error.hpp"

namespace hemexp {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::toupper(c)); });
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string format_number(double value, int decimals) {
  std::ostringstream s;
  s.imbue(std::locale::classic());
  s.setf(std::ios::fixed);
  s.precision(decimals);
  s << value;
  return s.str();
}

std::string csv_escape(const std::string& field) {
  // Quoted too: a field that starts with a UTF-8 byte-order mark (at the start of a file the
  // reader would drop the mark as an encoding signature).
  if (field.find_first_of(",\"\r\n") == std::string::npos && field.compare(0, 3, "\xEF\xBB\xBF") != 0) return field;
  std::string out = "\"";
  for (char c : field) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_line(const std::vector<std::string>& fields) {
  // A row of one empty field written bare would be a blank line, which readers skip.
  if (fields.size() == 1 && fields[0].empty()) return "\"\"\n";
  std::string line;
  for (size_t i = 0; i < fields.size(); ++i) line += (i ? "," : "") + csv_escape(fields[i]);
  return line + "\n";
}

std::string csv_line(const std::vector<std::string>& columns, const std::map<std::string, std::string>& row) {
  std::vector<std::string> fields;
  fields.reserve(columns.size());
  for (const std::string& c : columns) {
    const auto it = row.find(c);
    fields.push_back(it == row.end() ? std::string() : it->second);
  }
  return csv_line(fields);
}

std::vector<std::map<std::string, std::string>> CsvTable::records() const {
  std::vector<std::map<std::string, std::string>> out;
  out.reserve(rows.size());
  for (const auto& r : rows) {
    std::map<std::string, std::string> m;
    for (size_t i = 0; i < header.size() && i < r.size(); ++i) m[header[i]] = r[i];
    out.push_back(std::move(m));
  }
  return out;
}

CsvTable parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> lines;
  std::vector<std::string> fields(1);
  bool quoted = false, line_has_content = false;
  size_t i = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') fields.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else fields.back() += c;
    } else if (c == '"') {
      quoted = true, line_has_content = true;
    } else if (c == ',') {
      fields.emplace_back(), line_has_content = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (line_has_content || !fields.back().empty()) lines.push_back(fields);  // blank lines are skipped
      fields.assign(1, std::string());
      line_has_content = false;
    } else {
      fields.back() += c, line_has_content = true;
    }
  }
  if (quoted) throw CoreError("CSV: a quoted field is not closed before the end of the text");
  if (line_has_content || !fields.back().empty()) lines.push_back(fields);
  CsvTable t;
  if (lines.empty()) return t;
  t.header = std::move(lines.front());
  t.rows.assign(std::make_move_iterator(lines.begin() + 1), std::make_move_iterator(lines.end()));
  return t;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : std::string()) + items[i];
  return out;
}

std::string json_text(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

nlohmann::json json_number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace hemexp
