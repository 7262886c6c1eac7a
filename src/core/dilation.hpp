#pragma once
// Byte masks (nonzero = set): binary dilation by running counts (O(1) per voxel whatever the
// radius), shared by the core's morphology: close_slices (intracranial.cpp) and dilate_box
// (measurements.cpp); and whether a run of bytes holds a set one (mask_bounding_box's rows, the QC
// picture's slices). Internal to hemexp_core: not installed. Windows are clipped at the ends:
// beyond the data counts as unset.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace hemexp::dilation {

// Whether any of the n bytes at p is set: an OR over all of them (a loop that stops at the first
// set byte is not vectorised; this one is).
inline bool any_set(const uint8_t* p, int64_t n) {
  uint8_t any = 0;
  for (int64_t i = 0; i < n; ++i) any |= p[i];
  return any != 0;
}

// dst[i * step] = 1 when src holds a nonzero within r elements of i along a line of n.
inline void line(const uint8_t* src, uint8_t* dst, int64_t n, int64_t step, int64_t r) {
  int64_t count = 0;
  for (int64_t i = 0; i < std::min(r, n); ++i) count += src[i * step] != 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i + r < n) count += src[(i + r) * step] != 0;
    if (i - r - 1 >= 0) count -= src[(i - r - 1) * step] != 0;
    dst[i * step] = count > 0;
  }
}

// line() along every column of h rows of w elements, rows `stride` elements apart, at once: one
// running count per column, the rows visited in memory order (what line(src + x, dst + x, h,
// stride, r) gives for each x < w). The counts are 16-bit: min(2 r + 1, h) <= 65535.
inline void columns(const uint8_t* src, uint8_t* dst, int64_t h, int64_t w, int64_t stride, int64_t r,
                    std::vector<uint16_t>& count) {
  count.assign(size_t(w), 0);
  uint16_t* c = count.data();
  for (int64_t y = 0; y < std::min(r, h); ++y)
    for (int64_t x = 0; x < w; ++x) c[x] = uint16_t(c[x] + (src[y * stride + x] != 0));
  for (int64_t y = 0; y < h; ++y) {
    if (y + r < h) {
      const uint8_t* add = src + (y + r) * stride;
      for (int64_t x = 0; x < w; ++x) c[x] = uint16_t(c[x] + (add[x] != 0));
    }
    if (y - r - 1 >= 0) {
      const uint8_t* sub = src + (y - r - 1) * stride;
      for (int64_t x = 0; x < w; ++x) c[x] = uint16_t(c[x] - (sub[x] != 0));
    }
    uint8_t* d = dst + y * stride;
    for (int64_t x = 0; x < w; ++x) d[x] = c[x] > 0;
  }
}

// Dilation of an (h, w) binary slice by a (2 ry + 1) x (2 rx + 1) rectangle: rows, then columns.
inline void rectangle(const uint8_t* src, uint8_t* tmp, uint8_t* dst, int64_t h, int64_t w, int64_t ry, int64_t rx,
                      std::vector<uint16_t>& count) {
  for (int64_t y = 0; y < h; ++y) line(src + y * w, tmp + y * w, w, 1, rx);
  columns(tmp, dst, h, w, w, ry, count);
}

}  // namespace hemexp::dilation
