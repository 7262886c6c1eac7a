// Benchmark of one ViT classifier forward on a (1, 3, 16, 64, 64) ROI, for 1 and 2 threads, at
// the sizes we would train (embed 128, 4 heads, MLP 512), with the parameter count and the
// size of its float32 safetensors file.
//
//   bench_vit [--repeats R]
//
// Weights are the constructor's (random Linear/Conv init, zero embeddings): timing does not
// depend on their values.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/safetensors.hpp"
#include "hemexp/core/vit.hpp"

using hemexp::bench::Timing;
using hemexp::bench::time_it;

int main(int argc, char** argv) {
  int repeats = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--repeats R]\n", argv[0]);
      return 2;
    }
  }
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
