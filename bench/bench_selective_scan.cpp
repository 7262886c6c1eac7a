// Benchmark of the selective scan: the native CPU kernel against the ATen reference at
// U-Mamba-like sizes (batch 1, N = 16, d_inner = 2 C), for 1 and 2 threads.
//
//   bench_selective_scan [--repeats R] [--quick]
//
// Prints one line per (L, d_inner, threads): median (and minimum) seconds of kernel and
// reference, throughput in tokens x channels per second (from the median), and the speed-up
// (reference median / kernel median), then the kernel's instruction-set variants on one thread. --quick runs the smallest
// size only.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/selective_scan.hpp"

using hemexp::bench::Timing;
using hemexp::bench::time_it;

int main(int argc, char** argv) {
  int repeats = 5;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--repeats R] [--quick]\n", argv[0]);
      return 2;
    }
  }
  struct Size {
    const char* label;
    int64_t len, d_inner;
  };
  std::vector<Size> sizes = {
      {"4x12x12, C=256", 4 * 12 * 12, 512},
      {"4x12x12, C=320", 4 * 12 * 12, 640},
      {"8x24x24, C=256", 8 * 24 * 24, 512},
      {"8x24x24, C=320", 8 * 24 * 24, 640},
  };
  if (quick) sizes.resize(1);
  const int64_t n_state = 16;
  std::printf("selective scan, batch 1, N %lld, float32, median of %d runs\n", static_cast<long long>(n_state),
              repeats);
  std::printf("kernel variant: %s\n", hemexp::selective_scan_cpu_isa());
  std::printf("%s", at::get_parallel_info().c_str());
  std::printf("%-16s %6s %7s %3s | %9s %9s %11s | %9s %9s %11s | %8s\n", "tokens (DxHxW)", "L", "d_inner", "thr",
              "kernel s", "(min)", "kernel t*c/s", "ref s", "(min)", "ref t*c/s", "speed-up");
  for (const Size& s : sizes) {
    torch::manual_seed(1);
    const torch::Tensor u = torch::randn({1, s.len, s.d_inner});
    const torch::Tensor delta = torch::softplus(torch::randn({1, s.len, s.d_inner}) - 3.0);
    const torch::Tensor A =
        -torch::arange(1, n_state + 1, torch::kFloat32).expand({s.d_inner, n_state}).contiguous();
    const torch::Tensor B = torch::randn({1, s.len, n_state});
    const torch::Tensor C = torch::randn({1, s.len, n_state});
    const torch::Tensor D = torch::ones({s.d_inner});
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      const Timing tk = time_it(repeats, [&] { hemexp::selective_scan_cpu(u, delta, A, B, C, D); });
      const Timing tr =
          time_it(std::min(repeats, 3), [&] { hemexp::selective_scan_reference(u, delta, A, B, C, D); });
      const double work = static_cast<double>(s.len) * s.d_inner;
      std::printf("%-16s %6lld %7lld %3d | %9.5f %9.5f %11.3e | %9.5f %9.5f %11.3e | %7.1fx\n", s.label,
                  static_cast<long long>(s.len), static_cast<long long>(s.d_inner), threads, tk.median, tk.min,
                  work / tk.median, tr.median, tr.min, work / tr.median, tr.median / tk.median);
      std::fflush(stdout);
    }
  }
  // The instruction-set variants of the kernel, 1 thread, at the largest size.
  if (!quick) {
    const Size& s = sizes.back();
    torch::manual_seed(1);
    const torch::Tensor u = torch::randn({1, s.len, s.d_inner});
    const torch::Tensor delta = torch::softplus(torch::randn({1, s.len, s.d_inner}) - 3.0);
    const torch::Tensor A =
        -torch::arange(1, n_state + 1, torch::kFloat32).expand({s.d_inner, n_state}).contiguous();
    const torch::Tensor B = torch::randn({1, s.len, n_state});
    const torch::Tensor C = torch::randn({1, s.len, n_state});
    const torch::Tensor D = torch::ones({s.d_inner});
    torch::set_num_threads(1);
    std::printf("\nkernel variants, %s, 1 thread\n", s.label);
    const std::pair<hemexp::ScanIsa, const char*> variants[] = {
        {hemexp::ScanIsa::Avx512, "avx512"}, {hemexp::ScanIsa::Avx2, "avx2+fma"}, {hemexp::ScanIsa::Baseline, "sse2"}};
    for (const auto& [isa, name] : variants) {
      if (!hemexp::selective_scan_cpu_supports(isa)) {
        std::printf("%-10s not supported by this CPU\n", name);
        continue;
      }
      const Timing tk = time_it(repeats, [&] { hemexp::selective_scan_cpu(u, delta, A, B, C, D, isa); });
      std::printf("%-10s %9.5f s (min %9.5f) %11.3e t*c/s\n", name, tk.median, tk.min,
                  static_cast<double>(s.len) * s.d_inner / tk.median);
    }
  }
  return 0;
}
