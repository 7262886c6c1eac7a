// libFuzzer target: the safetensors reader (model files). Any input either parses into tensors
// that serialise back to a file that parses to the same bytes, or is refused with a CoreError.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "hemexp/core/error.hpp"
#include "hemexp/core/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  hemexp::SafetensorsFile f;
  try {
    f = hemexp::parse_safetensors(bytes, "fuzz");
  } catch (const hemexp::CoreError&) {
    return 0;
  }
  const hemexp::SafetensorsFile again = hemexp::parse_safetensors(hemexp::serialize_safetensors(f), "again");
  if (again.tensors.size() != f.tensors.size() || again.metadata != f.metadata) __builtin_trap();
  for (const auto& [name, t] : f.tensors) {  // bytes, not values: NaN != NaN
    const torch::Tensor a = t.contiguous(), b = again.tensors.at(name).contiguous();
    if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type() ||
        (a.numel() > 0 && std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.numel()) * a.element_size()) != 0))
      __builtin_trap();
  }
  return 0;
}
