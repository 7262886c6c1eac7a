// Benchmark of segmentation (Segmenter::segment, exactly what `hemexp run` calls) on one
// synthetic 512 x 512 head (`hemexp synth --seed 424242 --thin-fraction 0`, case 0) resampled
// along z to each requested slice count, for each thread count: median seconds of segment()'s
// steps, the network's FLOPs per window (counted from the card's network), its GFLOP/s, and a
// plain large conv3d's GFLOP/s in the same process (what this machine's LibTorch can do); for
// the first slice count, the network's share of that from --pairs alternated pairs (default 11;
// 0: none): median, min and max.
//
//   bench_segmenter --model FILE [--repeats R] [--pairs P] [--slices 32,128,300] [--threads 1,2]
//                   [--json OUT] [--dump DIR] [--device cpu|cuda] [--windows-per-pass N] [--parity]
//                   [--precision fp32|bf16|fp16]
//
// --precision sets the network's convolutions (Segmenter::set_precision); with --parity and a
// precision other than fp32 the logits are not held to 1e-3 (bf16 keeps 8 bits of mantissa):
// only the mask Dice against the float32 CPU is (>= 0.99), and both are reported.
// --device runs the benchmark there (default cpu). --parity first checks the device against the
// CPU one window at a time on all threads (the CPU's default is a window per thread at once):
// the logits of two windows (max |difference|, must be <= 1e-3) and the whole 32-slice head's
// segment() (max |probability difference|, mask Dice, must be >= 0.999); exit status 1 when
// either fails. With --device cpu and --windows-per-pass N > 1 its segment() half checks N
// windows at once (one per thread) against one at a time on all threads.
//
// --dump DIR writes DIR/windows.safetensors for scripts/bench_reference.py: the model-grid input
// of the first slice count, the C++ softmax probabilities on it, and the seconds the C++ sliding
// window took per thread count (the PyTorch reference runs the same windows on the same weights).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/metrics.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/statistics.hpp"
#include "hemexp/core/synth.hpp"

using hemexp::bench::time_it;

namespace {

std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

// Multiply-adds x 2 of one forward pass of the U-Mamba on a (1, C, patch) window: every
// convolution (of the heads, the full-resolution one: forward() skips the deep-supervision ones) and the Mamba
// layers' projections, depthwise convolution and scan (6 flops per state element and token).
// Normalisations and activations are not counted.
double umamba_flops(const hemexp::UMambaConfig& c, const std::array<int64_t, 3>& patch) {
  auto voxels = [](const std::array<int64_t, 3>& s) { return double(s[0] * s[1] * s[2]); };
  auto kvol = [](const std::array<int64_t, 3>& k) { return double(k[0] * k[1] * k[2]); };
  double flops = 0;
  auto block = [&](int64_t in, int64_t out, const std::array<int64_t, 3>& k, double v, bool projection) {
    flops += 2 * double(in * out) * kvol(k) * v + 2 * double(out * out) * kvol(k) * v;
    if (projection) flops += 2 * double(in * out) * v;
  };
  auto mamba = [&](int64_t d_model, double tokens) {
    const double di = double(c.expand * d_model), n = double(c.d_state), dtr = double((d_model + 15) / 16);
    flops += tokens * (2 * double(d_model) * 2 * di + 2 * di * double(c.d_conv) + 2 * di * (dtr + 2 * n) +
                       2 * dtr * di + 6 * di * n + 2 * di * double(d_model));
  };
  const int64_t n = c.n_stages();
  std::vector<std::array<int64_t, 3>> sizes;
  std::array<int64_t, 3> size = patch;
  block(c.in_channels, c.features_per_stage[0], c.kernel_sizes[0], voxels(size), c.in_channels != c.features_per_stage[0]);
  int64_t channels = c.features_per_stage[0];
  for (int64_t s = 0; s < n; ++s) {
    for (int a = 0; a < 3; ++a) size[size_t(a)] = (size[size_t(a)] + c.strides[s][size_t(a)] - 1) / c.strides[s][size_t(a)];
    const bool strided = c.strides[s] != std::array<int64_t, 3>{1, 1, 1};
    block(channels, c.features_per_stage[s], c.kernel_sizes[s], voxels(size), strided || channels != c.features_per_stage[s]);
    for (int64_t b = 1; b < c.blocks_per_stage[s]; ++b)
      block(c.features_per_stage[s], c.features_per_stage[s], c.kernel_sizes[s], voxels(size), false);
    channels = c.features_per_stage[s];
    if (c.mamba_after_every_stage() || s == n - 1) mamba(channels, voxels(size));
    sizes.push_back(size);
  }
  for (int64_t s = 0; s < n - 1; ++s) {
    const int64_t below = c.features_per_stage[n - 1 - s], skip = c.features_per_stage[n - 2 - s];
    const double v = voxels(sizes[size_t(n - 2 - s)]);
    flops += 2 * double(below * skip) * voxels(sizes[size_t(n - 1 - s)]);  // 1x1, before the upsampling
    block(2 * skip, skip, c.kernel_sizes[n - 2 - s], v, true);
    for (int64_t b = 1; b < c.blocks_per_stage_decoder[s]; ++b) block(skip, skip, c.kernel_sizes[n - 2 - s], v, false);
    if (s == n - 2) flops += 2 * double(skip * c.num_classes) * v;  // forward(): the full-resolution head only
  }
  return flops;
}

// The device segmenter against the CPU one (one window at a time: `cpu` is set so): the logits
// of a batch of two windows (the network alone: 0 when both are on the CPU) and the whole head's
// segment() (the sliding window as configured). Prints and records the differences; false when
// out of tolerance.
bool check_parity(const hemexp::Segmenter& candidate, const hemexp::Segmenter& cpu, const hemexp::Volume& head,
                  nlohmann::json& out) {
  c10::InferenceMode guard;
  const hemexp::SegmentationRecipe& r = cpu.recipe();
  torch::manual_seed(7);
  const torch::Tensor window = torch::randn({2, 1, r.patch_size[0], r.patch_size[1], r.patch_size[2]});
  hemexp::UMamba a = candidate.network(), b = cpu.network();
  const double logits = (a->forward(window.to(candidate.device())).to(torch::kCPU) - b->forward(window)).abs().max().item<double>();
  const hemexp::Segmentation sa = candidate.segment(head, true), sb = cpu.segment(head, true);
  const double probability = (sa.probability - sb.probability).abs().max().item<double>();
  const double dice = hemexp::compare_masks(sa.mask, sb.mask, head.geometry).dice;
  const bool labels_equal = sa.labels.equal(sb.labels);
  const bool full = candidate.precision() == "fp32";
  const bool ok = full ? logits <= 1e-3 && dice >= 0.999 : dice >= 0.99;
  out = {{"device", candidate.device().str()}, {"windows_per_pass", candidate.windows_per_pass()},
         {"precision", candidate.precision()},
         {"max_abs_logit_difference", logits}, {"max_abs_probability_difference", probability},
         {"mask_dice", dice}, {"mask_voxels", {sa.mask.sum().item<int64_t>(), sb.mask.sum().item<int64_t>()}},
         {"labels_identical", labels_equal}, {"ok", ok}};
  std::printf("parity %s %s (%lld windows per pass) vs cpu fp32: max |logit diff| %.2e (%s), max |probability diff| %.2e, "
              "mask Dice %.6f (>= %s), %lld vs %lld voxels, labels %s: %s\n",
              candidate.device().str().c_str(), candidate.precision().c_str(),
              static_cast<long long>(candidate.windows_per_pass()), logits, full ? "<= 1e-3" : "reported", probability,
              dice, full ? "0.999" : "0.99", static_cast<long long>(sa.mask.sum().item<int64_t>()), static_cast<long long>(sb.mask.sum().item<int64_t>()),
              labels_equal ? "identical" : "differ", ok ? "PASS" : "FAIL");
  return ok;
}

// The benchmark head with `slices` slices over the same z extent (linear along z).
hemexp::Volume head_with_slices(const hemexp::Volume& head, int64_t slices) {
  if (slices == head.geometry.size[2]) return head;
  hemexp::Volume v;
  v.geometry = head.geometry;
  v.geometry.size[2] = slices;
  v.geometry.spacing_mm[2] = head.geometry.spacing_mm[2] * double(head.geometry.size[2]) / double(slices);
  v.voxels = hemexp::resample_between_grids(head.voxels, head.geometry, v.geometry).contiguous();
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  hemexp::keep_freed_memory();  // as `hemexp` does
  std::string model, json_out, dump;
  int repeats = 3, pairs = 11;
  std::vector<int> slice_counts{32, 128, 300}, thread_counts{1, 2};
  std::string device_name = "cpu";
  std::string precision = "fp32";
  int windows_per_pass = 0;
  bool parity = false;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--model") && has_value) model = argv[++i];
    else if (!std::strcmp(argv[i], "--repeats") && has_value) repeats = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--pairs") && has_value) pairs = std::max(0, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--slices") && has_value) slice_counts = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads") && has_value) thread_counts = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && has_value) json_out = argv[++i];
    else if (!std::strcmp(argv[i], "--dump") && has_value) dump = argv[++i];
    else if (!std::strcmp(argv[i], "--device") && has_value) device_name = argv[++i];
    else if (!std::strcmp(argv[i], "--windows-per-pass") && has_value) windows_per_pass = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--parity")) parity = true;
    else if (!std::strcmp(argv[i], "--precision") && has_value) precision = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s --model FILE [--repeats R] [--pairs P] [--slices 32,128,300] [--threads 1,2] [--json OUT] "
                   "[--dump DIR] [--device cpu|cuda] [--windows-per-pass N] [--parity] [--precision fp32|bf16|fp16]\n", argv[0]);
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "bench_segmenter: --model is required\n");
    return 2;
  }
  const torch::Device device(device_name);
  hemexp::Segmenter segmenter = hemexp::Segmenter::load(model, device);
  if (windows_per_pass > 0) segmenter.set_windows_per_pass(windows_per_pass);
  segmenter.set_precision(precision);
  const hemexp::SegmentationRecipe& recipe = segmenter.recipe();
  const double window_flops = umamba_flops(segmenter.network()->config(), recipe.patch_size);

  hemexp::synth::SynthOptions so;
  so.seed = 424242;
  so.thin_fraction = 0;
  const hemexp::synth::SynthCase synth_case = hemexp::synth::render_procedural_case(so, 0);
  hemexp::Volume head{synth_case.baseline.geometry, synth_case.baseline.ct.to(torch::kFloat32).contiguous()};

  nlohmann::json report;
  report["model"] = model;
  report["parallel_info"] = at::get_parallel_info();
  report["repeats"] = repeats;
  report["window_gflop"] = window_flops / 1e9;
  report["device"] = device.str();
  report["precision"] = segmenter.precision();
  if (parity) {
    hemexp::Segmenter one_at_a_time = hemexp::Segmenter::load(model);
    one_at_a_time.set_windows_per_pass(1);
    const bool ok = check_parity(segmenter, one_at_a_time, head, report["parity"]);
    if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
    if (!ok) return 1;
  }
  std::printf("%s", at::get_parallel_info().c_str());
  std::printf("network: %.3f GFLOP per %lldx%lldx%lld window\n", window_flops / 1e9,
              static_cast<long long>(recipe.patch_size[0]), static_cast<long long>(recipe.patch_size[1]),
              static_cast<long long>(recipe.patch_size[2]));

  // A plain large convolution: 64 -> 64 channels, 3x3x3, on 32 x 64 x 64 (29 GFLOP).
  for (int threads : thread_counts) {
    torch::set_num_threads(threads);
    const hemexp::bench::PlainConv plain = hemexp::bench::plain_conv3d(repeats, device);
    report["plain_conv3d"][std::to_string(threads)] = {{"seconds", plain.seconds}, {"gflops", plain.gflops}};
    std::printf("plain conv3d 64->64 3x3x3 on 32x64x64, %d thread(s): %.3f s, %.1f GFLOP/s\n", threads, plain.seconds,
                plain.gflops);
  }

  std::printf("%6s %3s %7s | %8s %8s %8s %8s %8s | %8s %8s\n", "slices", "thr", "windows", "prepare", "network",
              "resample", "cleanup", "total", "GFLOP/s", "ns/voxel");
  for (size_t si = 0; si < slice_counts.size(); ++si) {
    const hemexp::Volume volume = head_with_slices(head, slice_counts[si]);
    hemexp::Geometry grid;
    {
      c10::InferenceMode guard;
      hemexp::prepare_network_input(volume, recipe.preprocessing, &grid);
    }
    int64_t whole_grid_windows = 1;  // tiling the whole model grid (what --dump times, for the PyTorch reference)
    for (int a = 0; a < 3; ++a)
      whole_grid_windows *= int64_t(hemexp::window_starts(std::max(grid.size[size_t(2 - a)], recipe.patch_size[size_t(a)]),
                                                          recipe.patch_size[size_t(a)], recipe.overlap)
                                        .size());
    int64_t windows = 0;  // what segment() evaluates (the box of the head), from its runs below
    for (int threads : thread_counts) {
      torch::set_num_threads(threads);
      std::map<std::string, std::vector<double>> steps;
      int64_t mask_voxels = 0;
      time_it(repeats, [&] {
        const hemexp::Segmentation s = segmenter.segment(volume);
        steps["prepare"].push_back(s.seconds.prepare);
        steps["network"].push_back(s.seconds.network);
        steps["resample"].push_back(s.seconds.resample);
        steps["cleanup"].push_back(s.seconds.cleanup);
        steps["total"].push_back(s.seconds.prepare + s.seconds.network + s.seconds.resample + s.seconds.cleanup);
        mask_voxels = s.mask.sum().item<int64_t>();
        windows = s.windows;
      });
      nlohmann::json row{{"slices", slice_counts[si]}, {"threads", threads}, {"windows", windows},
                         {"windows_per_pass", segmenter.windows_per_pass()},
                         {"whole_grid_windows", whole_grid_windows},
                         {"input_voxels", volume.geometry.voxel_count()}, {"mask_voxels", mask_voxels}};
      for (auto& [name, values] : steps) {
        values.erase(values.begin());  // the warm-up
        row["seconds"][name] = hemexp::median(values);
      }
      const double network = row["seconds"]["network"].get<double>();
      row["network_gflops"] = double(windows) * window_flops / network / 1e9;
      row["ns_per_voxel"] = row["seconds"]["total"].get<double>() / double(volume.geometry.voxel_count()) * 1e9;
      std::printf("%6d %3d %7lld | %8.3f %8.3f %8.3f %8.3f %8.3f | %8.1f %8.1f\n", slice_counts[si], threads,
                  static_cast<long long>(windows), row["seconds"]["prepare"].get<double>(), network,
                  row["seconds"]["resample"].get<double>(), row["seconds"]["cleanup"].get<double>(),
                  row["seconds"]["total"].get<double>(), row["network_gflops"].get<double>(),
                  row["ns_per_voxel"].get<double>());
      // The network's share of the plain conv3d from alternated pairs (one plain conv3d, then
      // one segment() of this scan): a slow phase of a shared machine slows both halves of a
      // pair, where the plain conv3d timed once before everything else may have run in another.
      if (si == 0 && pairs > 0) {
        const hemexp::bench::PlainConvRun plain(device);
        plain();  // warm-up
        std::vector<double> shares;
        for (int p = 0; p < pairs; ++p) {
          const auto start = std::chrono::steady_clock::now();
          plain();
          const double plain_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          const hemexp::Segmentation s = segmenter.segment(volume);
          const double network_gflops = double(s.windows) * window_flops / s.seconds.network / 1e9;
          shares.push_back(network_gflops / (hemexp::bench::PlainConvRun::kFlops / plain_seconds / 1e9));
        }
        const double median_share = hemexp::median(shares);
        const auto [lo, hi] = std::minmax_element(shares.begin(), shares.end());
        row["network_share_paired"] = {{"median", median_share}, {"min", *lo}, {"max", *hi}, {"pairs", pairs}};
        std::printf("%6s %3s network share of the plain conv3d in %d alternated pairs: median %.1f%% (%.1f-%.1f%%)\n",
                    "", "", pairs, 100 * median_share, 100 * *lo, 100 * *hi);
      }
      report["segment"].push_back(row);
      std::fflush(stdout);
    }
    if (si == 0 && !dump.empty()) {  // the windows for scripts/bench_reference.py
      c10::InferenceMode guard;
      const torch::Tensor input = hemexp::prepare_network_input(volume, recipe.preprocessing, nullptr);
      hemexp::SlidingWindowOptions o;
      o.patch_size = recipe.patch_size;
      o.overlap = recipe.overlap;
      o.mirror = recipe.mirror;
      o.pad_value = float((recipe.preprocessing.clip_low_hu - recipe.preprocessing.mean_hu) / recipe.preprocessing.std_hu);
      hemexp::UMamba net = segmenter.network();
      const hemexp::PatchNetwork forward = [&net](const torch::Tensor& p) { return net->forward(p); };
      hemexp::SafetensorsFile file;
      file.tensors["input"] = input;
      file.tensors["probabilities"] =
          hemexp::sliding_window_probabilities(forward, input, net->config().num_classes, o);
      for (int threads : thread_counts) {
        torch::set_num_threads(threads);
        const auto t = time_it(repeats, [&] { hemexp::sliding_window_probabilities(forward, input, net->config().num_classes, o); });
        file.metadata["cpp_seconds_threads_" + std::to_string(threads)] = std::to_string(t.median);
      }
      char pad[32];
      std::snprintf(pad, sizeof pad, "%.9g", double(o.pad_value));
      file.metadata["pad_value"] = pad;
      file.metadata["windows"] = std::to_string(whole_grid_windows);
      std::ofstream(dump + "/windows.safetensors", std::ios::binary) << hemexp::serialize_safetensors(file);
    }
  }
  if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
  return 0;
}
