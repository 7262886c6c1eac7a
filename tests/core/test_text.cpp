// The one CSV writer/reader, number formatting and the summary statistics.
#include <gtest/gtest.h>

#include <clocale>
#include <cmath>

#include "hemexp/core/error.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/text.hpp"

namespace hemexp {
namespace {

TEST(Csv, WriterAndReaderRoundTripHostileFields) {
  const std::vector<std::string> header{"case_id", "input", "error"};
  const std::vector<std::vector<std::string>> rows{
      {"a", "/data/with,comma/ct.nii.gz", ""},
      {"b", "/data/\"quoted\" name/ct.nii.gz", "DICOM series has duplicate slice positions"},
      {"c", "/data/new\nline/ct.nii.gz", "two\r\nlines"},
      {"d", "", ",\",\"\""},
      {"", "", ""}};
  std::string text = csv_line(header);
  for (const auto& r : rows) text += csv_line(r);
  const CsvTable t = parse_csv(text);
  EXPECT_EQ(t.header, header);
  ASSERT_EQ(t.rows.size(), rows.size()) << "a row of empty fields is written as commas, not as a blank line";
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(t.rows[i], rows[i]) << i;
  EXPECT_EQ(csv_line(rows[1]), "b,\"/data/\"\"quoted\"\" name/ct.nii.gz\",DICOM series has duplicate slice positions\n");
  EXPECT_EQ(csv_line({"plain", "1.5"}), "plain,1.5\n");
  // Found by fuzzing (fuzz/fuzz_csv.cpp): a row of a single empty field was written as a blank
  // line, which the reader skips, so the row was lost on the way back.
  EXPECT_EQ(csv_line(std::vector<std::string>{""}), "\"\"\n");
  const CsvTable one = parse_csv("path\n\"\"\nx\n");
  EXPECT_EQ(one.rows, (std::vector<std::vector<std::string>>{{""}, {"x"}}));
  // And a first field that starts with a byte-order mark is quoted, so that it stays a field.
  const std::string bom = "\xEF\xBB\xBF";
  EXPECT_EQ(parse_csv(csv_line({bom + "a", "b"})).header, (std::vector<std::string>{bom + "a", "b"}));
}

TEST(Csv, RowsByColumnName) {
  const std::vector<std::string> columns{"x", "y", "z"};
  EXPECT_EQ(csv_line(columns, {{"z", "3"}, {"x", "1"}, {"unused", "9"}}), "1,,3\n");
  const auto records = parse_csv("x,y\r\n1,2\r\n\r\n3\r\n").records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].at("y"), "2");
  EXPECT_EQ(records[1].at("x"), "3");
  EXPECT_EQ(records[1].count("y"), 0u);
}

TEST(Csv, ByteOrderMarkAndErrors) {
  EXPECT_EQ(parse_csv("\xEF\xBB\xBFpath\n/a\n").header, std::vector<std::string>{"path"});
  EXPECT_THROW(parse_csv("a,b\n\"never closed,1\n"), CoreError);
  EXPECT_TRUE(parse_csv("").header.empty());
}

TEST(Text, TrimAndNumbers) {
  EXPECT_EQ(trim(" \t a b \r\n"), "a b");
  EXPECT_EQ(trim(" \n "), "");
  EXPECT_EQ(format_number(3.14159, 2), "3.14");
  EXPECT_EQ(format_number(-0.5, 0), "-0");
  EXPECT_EQ(format_number(1234567.0, 1), "1234567.0");  // no thousands separator
  if (std::setlocale(LC_ALL, "de_DE.UTF-8")) {
    EXPECT_EQ(format_number(2.5, 1), "2.5");
    std::setlocale(LC_ALL, "C");
  }
  EXPECT_EQ(lower("AbC"), "abc");
  EXPECT_EQ(upper("AbC"), "ABC");
  EXPECT_TRUE(ends_with("ct.nii.gz", ".nii.gz"));
  EXPECT_FALSE(ends_with("gz", ".nii.gz"));
}

TEST(Statistics, PercentileMedianMean) {
  EXPECT_DOUBLE_EQ(median({3, 1, 2}), 2.0);
  EXPECT_DOUBLE_EQ(median({4, 1, 3, 2}), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 1.0), 5.0);
  EXPECT_DOUBLE_EQ(percentile({10, 20}, 0.9), 19.0);  // linear between order statistics (NumPy's default)
  std::vector<double> many;
  for (int i = 100; i >= 0; --i) many.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(many, 0.95), 95.0);
  EXPECT_DOUBLE_EQ(percentile(many, 0.105), 10.5);
  EXPECT_DOUBLE_EQ(mean({1, 2, 6}), 3.0);
  EXPECT_TRUE(std::isnan(median({})));
  EXPECT_TRUE(std::isnan(mean({})));
  // Floats without a double copy: what the median of their double copy is, odd and even counts.
  for (const size_t n : {size_t(7), size_t(1000), size_t(1001)}) {
    std::vector<float> hu;
    for (size_t i = 0; i < n; ++i) hu.push_back(float((i * 7919) % 1013) * 0.37f - 50.0f);
    const std::vector<double> copy(hu.begin(), hu.end());
    EXPECT_EQ(median_in_place(hu), median(copy)) << n << " values";
  }
  std::vector<float> none;
  EXPECT_TRUE(std::isnan(median_in_place(none)));
}

}  // namespace
}  // namespace hemexp
