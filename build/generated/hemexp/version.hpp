#pragma once

namespace hemexp {
inline constexpr const char* kVersion = "0.1.0";
inline constexpr const char* kGitCommit = "unknown";
}  // namespace hemexp
