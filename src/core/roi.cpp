#include "hemexp/core/roi.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include "hemexp/core/error.hpp"
#include "hemexp/core/preprocessing.hpp"

namespace hemexp {

namespace {

// Bounds that keep a mistaken card from asking for gigabytes: 256^3 would be 64 MB per channel.
constexpr int64_t kMaxRoiSide = 256;
constexpr int64_t kMaxRoiVoxels = int64_t(1) << 22;
constexpr double kMaxRoiSpacingMm = 20.0;
constexpr size_t kMaxRoiChannels = 8;
constexpr double kAirHu = -1000.0;

[[noreturn]] void bad_field(const std::string& field, const std::string& why) {
  throw CoreError("model card: roi." + field + " " + why);
}

const nlohmann::json& required(const nlohmann::json& j, const std::string& prefix, const char* name) {
  if (!j.contains(name)) bad_field(prefix + name, "is missing");
  return j.at(name);
}

// Unknown keys are refused: a misspelt field would otherwise silently fall back to a default.
void only_keys(const nlohmann::json& j, const std::string& where, std::initializer_list<const char*> known) {
  for (const auto& item : j.items())
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return item.key() == k; }))
      bad_field(where + item.key(), "is not a known field");
}

bool finite_numbers(const nlohmann::json& j, size_t count) {
  if (!j.is_array() || j.size() != count) return false;
  return std::all_of(j.begin(), j.end(), [](const nlohmann::json& v) {
    return v.is_number() && std::isfinite(v.get<double>());
  });
}

}  // namespace

Vec3 RoiRecipe::extent_mm() const {
  return {double(size[2]) * spacing_mm[0], double(size[1]) * spacing_mm[1], double(size[0]) * spacing_mm[2]};
}

RoiRecipe RoiRecipe::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw CoreError("model card: roi must be an object");
  only_keys(j, "", {"size", "spacing_mm", "channels", "centre"});
  RoiRecipe r;

  const nlohmann::json& size = required(j, "", "size");
  if (!size.is_array() || size.size() != 3 ||
      !std::all_of(size.begin(), size.end(), [](const nlohmann::json& v) { return v.is_number_integer(); }))
    bad_field("size", "must be 3 integers (z, y, x)");
  int64_t voxels = 1;
  for (size_t a = 0; a < 3; ++a) {
    r.size[a] = size[a].get<int64_t>();
    if (r.size[a] < 1 || r.size[a] > kMaxRoiSide) bad_field("size", "must be 3 integers (z, y, x), each 1 to 256");
    voxels *= r.size[a];
  }
  if (voxels > kMaxRoiVoxels) bad_field("size", "holds more than 2^22 voxels per channel");

  const nlohmann::json& spacing = required(j, "", "spacing_mm");
  if (!finite_numbers(spacing, 3)) bad_field("spacing_mm", "must be 3 numbers (x, y, z)");
  for (size_t a = 0; a < 3; ++a) {
    r.spacing_mm[a] = spacing[a].get<double>();
    if (!(r.spacing_mm[a] > 0 && r.spacing_mm[a] <= kMaxRoiSpacingMm))
      bad_field("spacing_mm", "must be 3 numbers (x, y, z), each above 0 and at most 20 mm");
  }

  const nlohmann::json& channels = required(j, "", "channels");
  if (!channels.is_array() || channels.empty() || channels.size() > kMaxRoiChannels)
    bad_field("channels", "must be a list of 1 to 8 channels");
  std::set<std::string> names;
  for (size_t i = 0; i < channels.size(); ++i) {
    const std::string at = "channels[" + std::to_string(i) + "]";
    const nlohmann::json& c = channels[i];
    if (!c.is_object()) bad_field(at, "must be an object with a name");
    only_keys(c, at + ".", {"name", "window_hu"});
    const nlohmann::json& name = required(c, at + ".", "name");
    if (!name.is_string() || name.get<std::string>().empty()) bad_field(at + ".name", "must be a non-empty string");
    RoiChannel channel;
    channel.name = name.get<std::string>();
    if (!names.insert(channel.name).second) bad_field(at + ".name", "repeats the channel name '" + channel.name + "'");
    channel.is_mask = channel.name == "mask";
    if (channel.is_mask) {
      if (c.contains("window_hu")) bad_field(at + ".window_hu", "must be absent: the mask channel has no window");
    } else {
      const nlohmann::json& window = required(c, at + ".", "window_hu");
      if (!finite_numbers(window, 2) || !(window[0].get<double>() < window[1].get<double>()))
        bad_field(at + ".window_hu", "must be [low, high] in HU with low < high");
      channel.window_low_hu = window[0].get<double>();
      channel.window_high_hu = window[1].get<double>();
    }
    r.channels.push_back(channel);
  }

  const nlohmann::json& centre = required(j, "", "centre");
  if (!centre.is_string() || centre.get<std::string>() != "mask_centroid")
    bad_field("centre", "must be \"mask_centroid\" (the only centre supported)");
  r.centre = centre.get<std::string>();
  return r;
}

nlohmann::json RoiRecipe::to_json() const {
  nlohmann::json channel_list = nlohmann::json::array();
  for (const RoiChannel& c : channels) {
    if (c.is_mask)
      channel_list.push_back({{"name", c.name}});
    else
      channel_list.push_back({{"name", c.name}, {"window_hu", {c.window_low_hu, c.window_high_hu}}});
  }
  return {{"size", size}, {"spacing_mm", spacing_mm}, {"channels", channel_list}, {"centre", centre}};
}

Roi build_roi(const Volume& canonical_ct_hu, const torch::Tensor& canonical_mask, const RoiRecipe& recipe) {
  const Geometry& g = canonical_ct_hu.geometry;
  check_matches(g, canonical_ct_hu.voxels, "building the classifier ROI: CT");
  check_matches(g, canonical_mask, "building the classifier ROI: mask");
  if (recipe.channels.empty()) throw CoreError("building the classifier ROI: the recipe has no channels");
  torch::NoGradGuard no_grad;
  Roi r;

  // The hematoma's voxel indices, (n, 3) as (z, y, x): one read of the volume and a small
  // result. Whole-volume temporaries are what make this slow: `mask != 0` on 512 x 512 x 32
  // allocates 8 MB and an integer sum casts to 64 MB, 18 and 220 ms on a machine whose page
  // faults cost 17 us per 4 KB page, against the 50 ms the whole ROI may take. Everything
  // below uses these indices or the block of the volume under the ROI.
  const torch::Tensor where = canonical_mask.nonzero();
  r.mask_voxels = where.size(0);
  if (r.mask_voxels == 0)
    throw CoreError("no hematoma: the mask on " + g.describe() + " is empty, so the classifier ROI has no centre");
  const torch::Tensor mean_zyx = where.to(torch::kFloat64).mean(0);
  const Vec3 centroid_index{mean_zyx[2].item<double>(), mean_zyx[1].item<double>(), mean_zyx[0].item<double>()};
  r.centre_mm = g.index_to_point(centroid_index);

  // The ROI grid: continuous index (size - 1) / 2 lands on the centroid.
  r.grid.size = {recipe.size[2], recipe.size[1], recipe.size[0]};
  r.grid.spacing_mm = recipe.spacing_mm;
  r.grid.direction = g.direction;
  Vec3 half_extent_mm{};
  for (int a = 0; a < 3; ++a) half_extent_mm[a] = 0.5 * double(r.grid.size[a] - 1) * recipe.spacing_mm[a];
  r.grid.origin_mm = r.centre_mm - mat_vec(g.direction, half_extent_mm);

  // Both grids share the direction, so the map from ROI index to input index is separable:
  // ROI index i along axis a lands on input index first[a] + i * step[a].
  const Vec3 first = g.point_to_index(r.grid.origin_mm);
  Vec3 step{};
  for (int a = 0; a < 3; ++a) step[a] = recipe.spacing_mm[a] / g.spacing_mm[a];

  // Hematoma voxels whose centres lie in the box of ROI indices [-0.5, size - 0.5).
  torch::Tensor in_box = torch::ones({r.mask_voxels}, torch::kBool);
  for (int a = 0; a < 3; ++a) {
    const torch::Tensor roi_index = (where.select(1, 2 - a).to(torch::kFloat64) - first[a]) / step[a];
    in_box &= (roi_index >= -0.5) & (roi_index < double(r.grid.size[a]) - 0.5);
  }
  r.mask_fraction_inside = double(in_box.sum().item<int64_t>()) / double(r.mask_voxels);

  // Only the input block under the ROI's samples and their upper neighbours is read. It is
  // never empty: the centroid lies within the scan, and within the sampled range.
  std::array<int64_t, 3> block_lo{}, block_size{};
  for (int a = 0; a < 3; ++a) {
    const double last = first[a] + double(r.grid.size[a] - 1) * step[a];
    block_lo[a] = std::clamp<int64_t>(int64_t(std::floor(first[a])), 0, g.size[a] - 1);
    const int64_t block_hi = std::clamp<int64_t>(int64_t(std::floor(last)) + 1, 0, g.size[a] - 1);
    block_size[a] = std::max<int64_t>(1, block_hi - block_lo[a] + 1);
  }
  const auto block = [&](const torch::Tensor& t) {
    return t.narrow(0, block_lo[2], block_size[2]).narrow(1, block_lo[1], block_size[1]).narrow(2, block_lo[0], block_size[0]);
  };
  // Trilinear as three linear passes, x first: the in-plane block is the largest.
  const auto sample = [&](torch::Tensor t, double outside) {
    for (int a = 0; a < 3; ++a)
      t = interpolate_axis(t, 2 - a, r.grid.size[a], first[a] - double(block_lo[a]), step[a], outside);
    return t;
  };
  // Channels are written straight into the image: every fresh megabyte costs (see above).
  const int64_t channel_count = int64_t(recipe.channels.size());
  r.image = torch::empty({channel_count, recipe.size[0], recipe.size[1], recipe.size[2]}, torch::kFloat32);
  torch::Tensor hu;  // sampled once, however many windows use it
  for (int64_t c = 0; c < channel_count; ++c) {
    const RoiChannel& channel = recipe.channels[size_t(c)];
    torch::Tensor out = r.image[c];
    if (channel.is_mask) {
      out.copy_(sample(block(canonical_mask) != 0, 0.0)).clamp_(0, 1);
    } else {
      if (!hu.defined()) hu = sample(block(canonical_ct_hu.voxels), kAirHu);
      out.copy_(hu).sub_(channel.window_low_hu).div_(channel.window_high_hu - channel.window_low_hu).clamp_(0, 1);
    }
  }
  return r;
}

}  // namespace hemexp
