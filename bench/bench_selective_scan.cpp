// Benchmark of the selective scan: the native CPU kernel against the ATen reference at
// U-Mamba-like sizes (batch 1, N = 16, d_inner = 2 C), for 1 and 2 threads.
//
//   bench_selective_scan [--repeats R] [--quick] [--device cuda]
//
// --device cuda: instead, the CUDA kernel against the chunked ATen scan on the GPU (each call
// synchronised), at the CPU sizes and at U-Mamba_Enc's first stage (8 windows of 16 x 96 x 96
// tokens, d_inner 16), where a per-token loop is hopeless.
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
#include <torch/cuda.h>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/selective_scan.hpp"

using hemexp::bench::Timing;
using hemexp::bench::time_it;

struct Size {
  const char* label;
  int64_t len, d_inner, batch = 1;
};

int bench_cuda(std::vector<Size> sizes, int64_t n_state, int repeats) {
  if (!hemexp::selective_scan_cuda_compiled() || !torch::cuda::is_available()) {
    std::printf("cuda: skipped (kernel compiled: %s, CUDA device: %s)\n",
                hemexp::selective_scan_cuda_compiled() ? "yes" : "no", torch::cuda::is_available() ? "yes" : "no");
    return 0;
  }
  sizes.push_back({"16x96x96, C=8 x8", 16 * 96 * 96, 16, 8});  // U-Mamba_Enc stage 1 (8 features, d_inner 16), 8 windows
  const torch::Device cuda(torch::kCUDA);
  std::printf("selective scan on cuda, N %lld, float32, median of %d runs (synchronised)\n",
              static_cast<long long>(n_state), repeats);
  std::printf("%-20s %6s %7s %5s | %9s %11s | %9s %11s | %8s\n", "tokens (DxHxW)", "L", "d_inner", "batch",
              "kernel s", "kernel t*c/s", "chunked s", "chunk t*c/s", "speed-up");
  for (const Size& s : sizes) {
    torch::manual_seed(1);
    const auto opts = torch::TensorOptions().device(cuda);
    const torch::Tensor u = torch::randn({s.batch, s.len, s.d_inner}, opts);
    const torch::Tensor delta = torch::softplus(torch::randn({s.batch, s.len, s.d_inner}, opts) - 3.0);
    const torch::Tensor A =
        -torch::arange(1, n_state + 1, opts.dtype(torch::kFloat32)).expand({s.d_inner, n_state}).contiguous();
    const torch::Tensor B = torch::randn({s.batch, s.len, n_state}, opts);
    const torch::Tensor C = torch::randn({s.batch, s.len, n_state}, opts);
    const torch::Tensor D = torch::ones({s.d_inner}, opts);
    const Timing tk = time_it(repeats, [&] {
      hemexp::selective_scan_cuda(u, delta, A, B, C, D);
      torch::cuda::synchronize();
    });
    const Timing tc = time_it(std::min(repeats, 3), [&] {
      hemexp::selective_scan_chunked(u, delta, A, B, C, D);
      torch::cuda::synchronize();
    });
    const double work = static_cast<double>(s.batch) * s.len * s.d_inner;
    std::printf("%-20s %6lld %7lld %5lld | %9.5f %11.3e | %9.5f %11.3e | %7.1fx\n", s.label,
                static_cast<long long>(s.len), static_cast<long long>(s.d_inner), static_cast<long long>(s.batch),
                tk.median, work / tk.median, tc.median, work / tc.median, tc.median / tk.median);
    std::fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  int repeats = 5;
  bool quick = false;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      device = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--repeats R] [--quick] [--device cpu|cuda]\n", argv[0]);
      return 2;
    }
  }
  std::vector<Size> sizes = {
      {"4x12x12, C=256", 4 * 12 * 12, 512},
      {"4x12x12, C=320", 4 * 12 * 12, 640},
      {"8x24x24, C=256", 8 * 24 * 24, 512},
      {"8x24x24, C=320", 8 * 24 * 24, 640},
  };
  if (quick) sizes.resize(1);
  const int64_t n_state = 16;
  if (device == "cuda") return bench_cuda(sizes, n_state, repeats);
  if (device != "cpu") {
    std::fprintf(stderr, "--device must be cpu or cuda, not %s\n", device.c_str());
    return 2;
  }
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
