// Launcher of the CUDA selective-scan kernel (selective_scan_cuda.cu). Plain C++ types only, so
// that the core's C++ files include it without CUDA headers; compiled only when CMake configures
// HEMEXP_WITH_CUDA (a CUDA LibTorch and nvcc).
#pragma once

#include <cstdint>
#include <string>

namespace hemexp::cuda_kernels {

// Largest state size N the kernel handles (one lane per state, lanes of a channel in one warp).
constexpr int kScanMaxState = 32;

// y = selective scan of contiguous float32 device arrays: u, delta, y (batch, len, d_inner);
// A (d_inner, n_state); B, C (batch, len, n_state); D (d_inner). 1 <= n_state <= kScanMaxState,
// batch <= 65535. Enqueued on `stream` (a cudaStream_t). Returns "" on success, else the CUDA
// error text of the launch.
std::string selective_scan_launch(const float* u, const float* delta, const float* A, const float* B,
                                  const float* C, const float* D, float* y, int64_t batch, int64_t len,
                                  int64_t d_inner, int n_state, void* stream);

}  // namespace hemexp::cuda_kernels
