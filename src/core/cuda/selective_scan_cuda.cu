// The Mamba selective scan on CUDA, fp32 (issue 14):
//   h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = <h_t, C_t> + D u_t.
//
// Layout. One thread per (sequence b, channel c, state n): the state h[c][n] lives in a
// register for the whole sequence. The P lanes of one channel (P = N rounded up to a power of
// two, at most 32) are adjacent in a warp, so y_t's sum over n is a butterfly of warp shuffles
// within those P lanes. A block of 128 threads holds 128 / P channels of one sequence; the grid
// is (channel blocks, batch). Tokens stream through shared memory in tiles: the block loads a
// tile's u and delta rows (its channels) and B, C rows cooperatively and coalesced, runs the
// recursion over the tile from shared memory, and writes the tile's y rows back coalesced.
// Lanes beyond N (A = B = C = 0) and channels beyond d_inner (u = delta = 0) keep h = 0 and
// add nothing. Each output has one fixed computation order: results do not depend on timing.
#include "selective_scan_cuda.hpp"

#include <cuda_runtime.h>

namespace hemexp::cuda_kernels {
namespace {

constexpr int kThreads = 128;

template <int P>
__global__ void __launch_bounds__(kThreads)
    scan_kernel(const float* __restrict__ u, const float* __restrict__ delta, const float* __restrict__ A,
                const float* __restrict__ B, const float* __restrict__ C, const float* __restrict__ D,
                float* __restrict__ y, int64_t len, int64_t d_inner, int n_state) {
  constexpr int kChannels = kThreads / P;            // channels per block
  constexpr int kTile = kChannels >= 64 ? 16 : 32;   // tokens per tile (shared memory under 48 KB)
  __shared__ float s_u[kTile][kChannels];
  __shared__ float s_delta[kTile][kChannels];
  __shared__ float s_y[kTile][kChannels];
  __shared__ float s_B[kTile][P];
  __shared__ float s_C[kTile][P];

  const int tid = threadIdx.x;
  const int lane_channel = tid / P;
  const int n = tid % P;
  const int64_t b = blockIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kChannels;
  const int64_t c = c0 + lane_channel;
  const bool channel_ok = c < d_inner;
  const float a = channel_ok && n < n_state ? A[c * n_state + n] : 0.0f;
  const float skip = channel_ok ? D[c] : 0.0f;

  const float* ub = u + b * len * d_inner;
  const float* db = delta + b * len * d_inner;
  const float* Bb = B + b * len * n_state;
  const float* Cb = C + b * len * n_state;
  float* yb = y + b * len * d_inner;

  float h = 0.0f;
  for (int64_t t0 = 0; t0 < len; t0 += kTile) {
    const int64_t rest = len - t0;
    const int count = rest < kTile ? static_cast<int>(rest) : kTile;
    for (int i = tid; i < kTile * kChannels; i += kThreads) {
      const int tt = i / kChannels, cc = i % kChannels;
      const bool ok = tt < count && c0 + cc < d_inner;
      const int64_t at = (t0 + tt) * d_inner + c0 + cc;
      s_u[tt][cc] = ok ? ub[at] : 0.0f;
      s_delta[tt][cc] = ok ? db[at] : 0.0f;
    }
    for (int i = tid; i < kTile * P; i += kThreads) {
      const int tt = i / P, nn = i % P;
      const bool ok = tt < count && nn < n_state;
      const int64_t at = (t0 + tt) * n_state + nn;
      s_B[tt][nn] = ok ? Bb[at] : 0.0f;
      s_C[tt][nn] = ok ? Cb[at] : 0.0f;
    }
    __syncthreads();
    for (int tt = 0; tt < count; ++tt) {
      const float dt = s_delta[tt][lane_channel];
      const float ut = s_u[tt][lane_channel];
      h = expf(dt * a) * h + dt * s_B[tt][n] * ut;
      float part = h * s_C[tt][n];
#pragma unroll
      for (int offset = P / 2; offset > 0; offset /= 2) part += __shfl_xor_sync(0xffffffffu, part, offset, P);
      if (n == 0) s_y[tt][lane_channel] = part + skip * ut;
    }
    __syncthreads();
    for (int i = tid; i < kTile * kChannels; i += kThreads) {
      const int tt = i / kChannels, cc = i % kChannels;
      if (tt < count && c0 + cc < d_inner) yb[(t0 + tt) * d_inner + c0 + cc] = s_y[tt][cc];
    }
    __syncthreads();  // the next tile overwrites the shared rows
  }
}

template <int P>
cudaError_t launch(const float* u, const float* delta, const float* A, const float* B, const float* C,
                   const float* D, float* y, int64_t batch, int64_t len, int64_t d_inner, int n_state,
                   cudaStream_t stream) {
  constexpr int kChannels = kThreads / P;
  const dim3 grid(static_cast<unsigned>((d_inner + kChannels - 1) / kChannels), static_cast<unsigned>(batch));
  scan_kernel<P><<<grid, kThreads, 0, stream>>>(u, delta, A, B, C, D, y, len, d_inner, n_state);
  return cudaGetLastError();
}

}  // namespace

std::string selective_scan_launch(const float* u, const float* delta, const float* A, const float* B,
                                  const float* C, const float* D, float* y, int64_t batch, int64_t len,
                                  int64_t d_inner, int n_state, void* stream_ptr) {
  if (n_state < 1 || n_state > kScanMaxState) return "n_state must be 1.." + std::to_string(kScanMaxState);
  if (batch < 1 || batch > 65535) return "batch must be 1..65535";
  if (len < 1 || d_inner < 1) return "";  // nothing to compute
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err;
  if (n_state <= 1)
    err = launch<1>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  else if (n_state <= 2)
    err = launch<2>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  else if (n_state <= 4)
    err = launch<4>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  else if (n_state <= 8)
    err = launch<8>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  else if (n_state <= 16)
    err = launch<16>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  else
    err = launch<32>(u, delta, A, B, C, D, y, batch, len, d_inner, n_state, stream);
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace hemexp::cuda_kernels
