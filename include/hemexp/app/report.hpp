#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hemexp/io/reader.hpp"

namespace hemexp {

nlohmann::json geometry_json(const Geometry& g);
// The `input` block of result.json.
nlohmann::json input_json(const InputInfo& info);

// results.csv: fixed columns in a fixed order, one row per case in input order.
const std::vector<std::string>& results_columns();
// One CSV line (with '\n'); values missing from row are empty. Fields are quoted when needed.
std::string csv_line(const std::vector<std::string>& columns,
                     const std::map<std::string, std::string>& row);
std::string csv_escape(const std::string& field);

// Numbers in CSV and messages: fixed decimals, no locale.
std::string format_number(double value, int decimals);

}  // namespace hemexp
