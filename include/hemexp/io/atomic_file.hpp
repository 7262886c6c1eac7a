#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace hemexp {

// A temporary name next to `target`, unique to this process, so that concurrent runs and a
// crash never leave a half-written file under the final name.
std::filesystem::path temporary_path_for(const std::filesystem::path& target);

// Calls write(tmp) and renames tmp onto target; removes tmp if write throws.
void write_atomically(const std::filesystem::path& target,
                      const std::function<void(const std::filesystem::path&)>& write);

void write_text_atomically(const std::filesystem::path& target, const std::string& contents);

// Removes what a killed process left of its writes in `dir`: the temporary files of
// temporary_path_for, of any process; only those of the files named in `names` when it is not
// empty (a folder that other processes write to at the same time, e.g. shards of one cohort).
void remove_temporaries(const std::filesystem::path& dir, const std::vector<std::string>& names = {});

// The whole file as bytes; IoError naming the path when it cannot be opened.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace hemexp
