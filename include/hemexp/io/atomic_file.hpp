#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace hemexp {

// A temporary name next to `target`, unique to this process, so that concurrent runs and a
// crash never leave a half-written file under the final name.
std::filesystem::path temporary_path_for(const std::filesystem::path& target);

// Calls write(tmp) and renames tmp onto target; removes tmp if write throws.
void write_atomically(const std::filesystem::path& target,
                      const std::function<void(const std::filesystem::path&)>& write);

void write_text_atomically(const std::filesystem::path& target, const std::string& contents);

// The whole file as bytes; IoError naming the path when it cannot be opened.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace hemexp
