#pragma once

// Text helpers shared by every layer: the one trim, number formatting and CSV of hemexp.

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hemexp {

std::string trim(const std::string& s);  // spaces, tabs, CR and LF at both ends
std::string lower(std::string s);
std::string upper(std::string s);
bool ends_with(const std::string& s, const std::string& suffix);
std::string join(const std::vector<std::string>& items, const std::string& separator);

// v as a JSON number, or null when v is NaN or infinite (JSON has neither).
nlohmann::json json_number(double v);

// j as the text of a JSON file: indented by 2, a final newline. Bytes that are not UTF-8 (a
// file name in Latin-1 from an old export) become U+FFFD instead of failing the write.
std::string json_text(const nlohmann::json& j);

// Fixed decimals, independent of the locale ("3.50", never "3,50").
std::string format_number(double value, int decimals);

// ---- CSV (RFC 4180) ---------------------------------------------------------------------
// A field is quoted when it holds a comma, a quote or a line break; quotes are doubled.
std::string csv_escape(const std::string& field);
// One line with its '\n'.
std::string csv_line(const std::vector<std::string>& fields);
// The fields of row in the order of columns (missing ones empty), with its '\n'.
std::string csv_line(const std::vector<std::string>& columns, const std::map<std::string, std::string>& row);

struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;  // as many fields as the line had

  // Each row as column -> value (columns a row lacks are absent).
  std::vector<std::map<std::string, std::string>> records() const;
};
// Reads what csv_line writes: quoted fields with commas, doubled quotes and line breaks; LF or
// CRLF line ends; a UTF-8 byte-order mark before the header is dropped. The first line is the
// header. Throws CoreError for an unterminated quoted field.
CsvTable parse_csv(const std::string& text);

}  // namespace hemexp
