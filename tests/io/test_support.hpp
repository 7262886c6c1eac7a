#pragma once
// Helpers shared by the I/O tests: paths to bundled data and scratch folders.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace hemexp::test {

inline std::filesystem::path data(const std::string& relative) {
  return std::filesystem::path(HEMEXP_TEST_DATA) / relative;
}

// A fresh folder per test, removed afterwards.
class ScratchDir {
 public:
  // `name` tells apart the folders of one test.
  explicit ScratchDir(const std::string& name = "") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("hemexp-test-" + std::string(info->test_suite_name()) + "-" + info->name() + "-" +
             std::to_string(::getpid()) + (name.empty() ? "" : "-" + name));
    for (char& c : const_cast<std::string&>(path_.native()))
      if (c == '*') c = '_';
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace hemexp::test
