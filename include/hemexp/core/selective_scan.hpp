#pragma once

#include <torch/types.h>

namespace hemexp {

// The selective scan of a Mamba block (fp32), for one batch of sequences:
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (state h: d_inner x N per batch)
//   y_t = <h_t, C_t> + D * u_t
// Shapes: u, delta (batch, L, d_inner); A (d_inner, N); B, C (batch, L, N); D (d_inner).
// delta is already softplus'ed. Returns y (batch, L, d_inner). Never materialises a
// (L, d_inner, N) tensor.
//
// selective_scan() uses the native CPU kernel (parallel over batch x channels, sequential
// over tokens, state in registers) for CPU float tensors, the CUDA kernel for CUDA tensors other
// than float64 (computed in float32; N <= 32, in a build that has it), the reference for float64 input, and the chunked scan
// (below) for anything else (other devices, larger N, CPU half types). The result is float32
// for any input other than float64 (bf16 / fp16 in, float32 out). A CUDA kernel that fails to
// launch is reported once on stderr and the chunked scan takes over.
torch::Tensor selective_scan(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                             const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D);

// Plain ATen implementation (a loop over tokens of tensor ops), any device: the reference
// for tests and the fallback for devices without a kernel. Computes and returns float64 for
// float64 u (tests), float32 for anything else.
torch::Tensor selective_scan_reference(const torch::Tensor& u, const torch::Tensor& delta,
                                       const torch::Tensor& A, const torch::Tensor& B,
                                       const torch::Tensor& C, const torch::Tensor& D);

// The chunked two-level scan in plain ATen, any device (the fallback where there is no kernel,
// e.g. CUDA until it has its own): within a chunk of `chunk` tokens the recursion in closed form,
// h_t = exp(S_t) h_start + sum_{s<=t} exp(S_t - S_s) delta_s B_s u_s with S the cumulative sum of
// delta * A (float64, so the differences keep their precision; only the causal half, <= 0, is
// exponentiated); across chunks only h is carried: L / chunk sequential steps instead of L.
// Largest temporary (batch, d_inner, N, chunk, chunk). float32 result. Same as
// scripts/hemexp_nets.py's selective_scan_chunked.
torch::Tensor selective_scan_chunked(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                     int64_t chunk = 32);

// The native CUDA kernel alone (src/core/cuda/selective_scan_cuda.cu: one thread per channel
// and state, the state in a register, tokens streamed through shared memory in tiles). Needs
// float32 tensors on one CUDA device and N <= 32; throws CoreError otherwise, and in a build
// without it (see selective_scan_cuda_compiled()).
torch::Tensor selective_scan_cuda(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D);
// Whether this build has the CUDA kernel (CMake: HEMEXP_WITH_CUDA, a CUDA LibTorch and nvcc).
bool selective_scan_cuda_compiled();
// The native CPU kernel alone (throws CoreError for non-CPU or non-float32 input).
torch::Tensor selective_scan_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D);

// Instruction-set variants of the kernel (x86-64). Auto picks the best the CPU supports;
// the others are for tests and benchmarks and throw CoreError where the CPU lacks them.
enum class ScanIsa { Auto, Avx512, Avx2, Baseline };
torch::Tensor selective_scan_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                 ScanIsa isa);
bool selective_scan_cpu_supports(ScanIsa isa);
const char* selective_scan_cpu_isa();  // the variant Auto uses here: "avx512", "avx2" or "baseline"

}  // namespace hemexp
