#pragma once

#include "hemexp/core/geometry.hpp"

namespace hemexp {

// An RGB picture (H, W, 3, uint8) to eyeball a case: up to `tiles` axial slices of a
// canonical-orientation volume (radiological view: patient right on the left, anterior up)
// at brain window (W80 L40), with the mask blended in red; a label map's further codes in their
// own colours (2, intraventricular blood: blue; 3, edema: yellow; higher: green). Slices holding the mask (label 1) are
// preferred (evenly spread over them); without a mask they are spread over the volume.
// Each tile is shrunk by an integer factor to at most 256 pixels across.
torch::Tensor qc_mosaic(const Volume& canonical, const torch::Tensor& mask, int64_t tiles = 12, int64_t columns = 4);

// Baseline and follow-up side by side (baseline left, a 4-pixel black gap): for each, the axial
// slice of its canonical volume with the largest mask area (the middle slice without a mask),
// drawn as qc_mosaic draws its tiles.
torch::Tensor qc_pair(const Volume& baseline, const torch::Tensor& baseline_mask, const Volume& followup,
                      const torch::Tensor& followup_mask);

}  // namespace hemexp
