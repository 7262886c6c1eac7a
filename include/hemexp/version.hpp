#pragma once

namespace hemexp {

// The release (CMake's PROJECT_VERSION) and the commit this binary was built from: 12 hex
// digits, "-modified" when tracked files differed from that commit, "unknown" outside a git
// checkout. Both are written into a generated source at every build (cmake/git_commit.cmake),
// not only when CMake configures, so that --version, run.json and the log name the code that ran.
extern const char* const kVersion;
extern const char* const kGitCommit;

}  // namespace hemexp
