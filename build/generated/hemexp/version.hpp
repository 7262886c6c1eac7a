#pragma once

namespace hemexp {
inline constexpr const char* kVersion = "0.1.0";
inline constexpr const char* kGitCommit = "cc7a049a3097";
}  // namespace hemexp
