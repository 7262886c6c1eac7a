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

// An advisory lock (flock) on `path`, exclusive or shared, taken without waiting and held for
// the object's life. The kernel releases it when the process ends, however it ends, so a killed
// run leaves no lock behind on a local file system. An exclusive holder writes `holder` (who and
// since when) into the file, for the message of a process that finds the lock taken; shared
// holders clear it (no exclusive holder can exist beside them). The file is created with the
// umask's permissions (a group's shared folder stays shared); one that exists and cannot be
// written is locked through a read-only descriptor. A file system without locks (some cluster
// mounts) is `unsupported`, not an error: the caller decides whether to go on unprotected.
class FileLock {
 public:
  enum class State { held, busy, unsupported };
  enum class Mode { exclusive, shared };
  // IoError when the file can neither be created nor opened.
  FileLock(const std::filesystem::path& path, const std::string& holder, Mode mode = Mode::exclusive);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  State state() const { return state_; }
  // busy: what the holder wrote ("" when it wrote nothing, as shared holders do);
  // unsupported: why the lock could not be taken.
  const std::string& detail() const { return detail_; }

 private:
  int fd_ = -1;
  State state_ = State::unsupported;
  std::string detail_;
};

}  // namespace hemexp
