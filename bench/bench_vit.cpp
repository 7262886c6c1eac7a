// Benchmark of one ViT classifier forward on a (1, 3, 16, 64, 64) ROI, for 1 and 2 threads, at
// the sizes we would train (embed 128, 4 heads, MLP 512), with the parameter count and the
// size of its float32 safetensors file.
//
//   bench_vit [--repeats R] [--model CLASSIFIER.safetensors]
//
// Weights are the constructor's (random Linear/Conv init, zero embeddings): timing does not
// depend on their values.
//
// With --model: that classifier file as `hemexp run` runs it, on the bench head of
// bench_segmenter (`hemexp synth --seed 424242 --thin-fraction 0`, case 0, 512 x 512) with its
// true hematoma mask: what `timings_s.classify` times (the card's features from the measured
// markers, ROI and network: Classifier::score), and the network alone on that ROI, for 1 and 2
// threads. The markers themselves belong to the `measure` stage and are measured once, untimed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/classifier.hpp"
#include "hemexp/core/markers.hpp"
#include "hemexp/core/measurements.hpp"
#include "hemexp/core/orientation.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/synth.hpp"
#include "hemexp/core/vit.hpp"

using hemexp::bench::Timing;
using hemexp::bench::time_it;

namespace {

// The classifier file on the bench head, as the case pipeline calls it.
int bench_model(const std::string& path, int repeats) {
  const hemexp::Classifier classifier = hemexp::Classifier::load(path);
  const hemexp::ClassifierRecipe& recipe = classifier.recipe();
  hemexp::synth::SynthOptions so;
  so.seed = 424242;
  so.thin_fraction = 0;
  const hemexp::synth::SynthCase c = hemexp::synth::render_procedural_case(so, 0);
  const hemexp::Volume head{c.baseline.geometry, c.baseline.ct.to(torch::kFloat32).contiguous()};
  const torch::Tensor mask = c.baseline.mask.to(torch::kUInt8);
  const hemexp::HematomaMeasurements h = hemexp::measure_hematoma(mask, head.voxels, head.geometry);
  const hemexp::NcctMarkers markers = hemexp::measure_markers(mask, head.voxels, head.geometry);
  const hemexp::CanonicalVolume canonical = hemexp::to_canonical(head);
  const torch::Tensor canonical_mask = hemexp::to_canonical(mask, canonical.map);
  const double ivh_ml = c.baseline.ivh_volume_ml;
  std::printf("classifier %s (%s), bench head %s, hematoma %.1f mL, IVH %.1f mL, median of %d runs\n", path.c_str(),
              classifier.file().name().c_str(), head.geometry.describe().c_str(), h.volume_ml, ivh_ml, repeats);
  std::printf("%s", at::get_parallel_info().c_str());
  std::printf("%3s %12s %9s | %12s %9s\n", "thr", "classify s", "(min)", "network s", "(min)");
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    c10::InferenceMode guard;
    hemexp::ExpansionScore s;
    const Timing whole = time_it(repeats, [&] {
      s = classifier.score(canonical.volume, canonical_mask, recipe.feature_vector(markers, h, ivh_ml));
    });
    const torch::Tensor roi = s.roi.image.unsqueeze(0), features = recipe.feature_vector(markers, h, ivh_ml);
    const Timing network = time_it(repeats, [&] { classifier.logits(roi, features); });
    std::printf("%3d %12.4f %9.4f | %12.4f %9.4f   (p = %.4f)\n", threads, whole.median, whole.min, network.median,
                network.min, s.probability);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 5;
  std::string model;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--repeats R] [--model CLASSIFIER.safetensors]\n", argv[0]);
      return 2;
    }
  }
  if (!model.empty()) return bench_model(model, repeats);
  struct Variant {
    std::array<int64_t, 3> patch;
    int64_t depth;
  };
  const Variant variants[] = {{{4, 8, 8}, 4}, {{4, 8, 8}, 6}, {{2, 8, 8}, 6}, {{2, 4, 4}, 6}};
  std::printf("ViT forward, input (1, 3, 16, 64, 64), embed 128, 4 heads, MLP 512, float32, median of %d runs\n",
              repeats);
  std::printf("%s", at::get_parallel_info().c_str());
  std::printf("%-8s %5s %6s %10s %10s | %3s %9s %9s\n", "patch", "depth", "tokens", "parameters", "file MB", "thr",
              "s", "(min)");
  for (const Variant& v : variants) {
    hemexp::ViTConfig c;
    c.in_channels = 3;
    c.image_size = {16, 64, 64};
    c.patch_size = v.patch;
    c.embed_dim = 128;
    c.depth = v.depth;
    c.num_heads = 4;
    c.mlp_dim = 512;
    torch::manual_seed(1);
    hemexp::ViT net(c);
    net->eval();
    hemexp::SafetensorsFile file;
    for (const auto& p : net->named_parameters(true)) file.tensors[p.key()] = p.value().detach();
    file.metadata["hemexp_model_card"] = c.to_json().dump();
    const double file_mb = double(hemexp::serialize_safetensors(file).size()) / 1e6;
    const torch::Tensor x = torch::randn({1, 3, 16, 64, 64});
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      c10::InferenceMode guard;
      const Timing t = time_it(repeats, [&] { net->forward(x); });
      std::printf("%lldx%lldx%lld %5lld %6lld %10lld %10.2f | %3d %9.4f %9.4f\n", static_cast<long long>(v.patch[0]),
                  static_cast<long long>(v.patch[1]), static_cast<long long>(v.patch[2]),
                  static_cast<long long>(c.depth), static_cast<long long>(c.num_patches() + 1),
                  static_cast<long long>(c.num_parameters()), file_mb, threads, t.median, t.min);
      std::fflush(stdout);
    }
  }
  return 0;
}
