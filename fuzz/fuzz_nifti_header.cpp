// libFuzzer target: the NIfTI header check that runs before ITK sees a file. Any input either
// parses into a header whose sizes are consistent, or is refused with an IoError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hemexp/io/error.hpp"
#include "hemexp/io/nifti_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const hemexp::NiftiHeader h = hemexp::parse_nifti_header(bytes, 512ull * 512 * 2000);
    if (h.voxels > 512ull * 512 * 2000 || h.voxels == 0 || h.vox_offset < 348) __builtin_trap();
    (void)h.data_end();
  } catch (const hemexp::IoError&) {
  }
  return 0;
}
