#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace hemexp {

// The contents of a safetensors file (https://huggingface.co/docs/safetensors): named
// tensors and the string-to-string `__metadata__` map.
struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;  // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;
};

// Strict reader: validates the 8-byte header length against the file size, the header JSON
// (an object; every entry has a known dtype, a shape of non-negative integers and
// data_offsets [begin, end] inside the data section with end - begin == bytes of the shape),
// no overlapping tensors, no unindexed bytes, and a string-to-string __metadata__.
// Anything else throws CoreError naming the file and the problem.
SafetensorsFile read_safetensors(const std::filesystem::path& path);
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& name);

// Writes tensors (any of the supported dtypes, CPU) and metadata, tensors in name order.
std::string serialize_safetensors(const SafetensorsFile& file);

// serialize_safetensors() written to `path` (replaced if it exists).
void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file);

}  // namespace hemexp
