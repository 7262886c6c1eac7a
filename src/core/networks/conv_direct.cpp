#include "hemexp/core/conv_direct.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Parallel.h>

#include "hemexp/core/error.hpp"
#include "../simd.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HEMEXP_DIRECT_CONV_X86 1
#endif

namespace hemexp {

namespace {

constexpr int64_t kBlock = 8;   // output channels held in registers at once
constexpr int64_t kLanes = 16;  // float32 lanes of an AVX-512 register

bool cpu_supported() {
#ifdef HEMEXP_DIRECT_CONV_X86
  return simd::cpu_has_avx512f();
#else
  return false;
#endif
}

struct Shape {
  int64_t cin, d, h, w, k;  // input channels and extent; kernel depth (its height and width: KK)
  int64_t oh, ow;           // output rows and columns: (h - 1) / S + 1 for an in-plane stride S
};

#ifdef HEMEXP_DIRECT_CONV_X86

// The lanes of a register holding columns [w0, w0 + 16) whose column + offset lies in [0, w):
// lanes lo <= j < hi.
inline __mmask16 lanes(int64_t w0, int64_t offset, int64_t w) {
  const int64_t first = w0 + offset;
  const int64_t lo = std::clamp<int64_t>(-first, 0, kLanes), hi = std::clamp<int64_t>(w - first, 0, kLanes);
  if (hi <= lo) return 0;
  return __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// One output row (od, oh), columns [w0, w0 + 16 V), the 8 output channels of one block:
// 8 x V accumulators in registers; for each input channel and kernel tap, V loads of the input
// row (masked at the borders: zero padding) and 8 x V fused multiply-adds with the tap's weight
// broadcast. KK: the kernel's height and width (3, or 1 for a 1 x 1 x 1 convolution). S: the
// in-plane stride (1, or 2 for a downsampling 3 x 3: output column c reads input columns 2c - 1,
// 2c, 2c + 1, so each register of 16 is the even lanes of two loads of 16, picked by one
// permute). `xn`: the sample's input; `wp`: the block's weights packed as [cin][k][KK][KK][8];
// `y`: output element (block's first channel, od, oh, w0); `cstride`: the output's D x OH x OW;
// `stored`: how many of the block's 8 channels exist (fewer in a last, partial block, whose
// missing channels have zero weights and are computed but not stored).
template <int V, int KK, int S>
__attribute__((target("avx512f"))) void row_chunk(const float* xn, const float* wp, const float* bias, float* y,
                                                  int64_t cstride, int64_t od, int64_t oh, int64_t w0,
                                                  const Shape& s, int stored) {
  __m512 acc[kBlock][V];
  __mmask16 in_mask[KK][V][S], out_mask[V];
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
#pragma GCC unroll 8
  for (int co = 0; co < kBlock; ++co)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[co][v] = _mm512_set1_ps(bias[co]);
  for (int v = 0; v < V; ++v) {
    out_mask[v] = lanes(w0 + kLanes * v, 0, s.ow);
    for (int kw = 0; kw < KK; ++kw)
      for (int part = 0; part < S; ++part)  // the S loads of 16 inputs a register of 16 outputs reads
        in_mask[kw][v][part] = lanes(S * (w0 + kLanes * v) + kLanes * part, kw - KK / 2, s.w);
  }
  const int64_t plane = s.h * s.w, volume = s.d * plane, half = s.k / 2;
  for (int64_t ci = 0; ci < s.cin; ++ci)
    for (int64_t kd = 0; kd < s.k; ++kd) {
      const int64_t id = od + kd - half;
      if (id < 0 || id >= s.d) continue;
      for (int64_t kh = 0; kh < KK; ++kh) {
        const int64_t ih = S * oh + kh - KK / 2;
        if (ih < 0 || ih >= s.h) continue;
        // Column S (w0 + 16 v) + kw - KK / 2 of the input row (and the 16 after it for S = 2); a
        // lane outside [0, w) is masked (never read). The address is formed as an integer: it may
        // lie just outside the tensor.
        const uintptr_t row = reinterpret_cast<uintptr_t>(xn + ci * volume + id * plane + ih * s.w);
        const float* wk = wp + ((ci * s.k + kd) * KK + kh) * KK * kBlock;
#pragma GCC unroll 3
        for (int kw = 0; kw < KK; ++kw) {
          __m512 xv[V];
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) {
            const uintptr_t at = row + uintptr_t((S * (w0 + kLanes * v) + kw - KK / 2) * int64_t(sizeof(float)));
            xv[v] = _mm512_maskz_loadu_ps(in_mask[kw][v][0], reinterpret_cast<const void*>(at));
            if constexpr (S == 2) {
              const __m512 next = _mm512_maskz_loadu_ps(in_mask[kw][v][1],
                                                        reinterpret_cast<const void*>(at + kLanes * sizeof(float)));
              xv[v] = _mm512_permutex2var_ps(xv[v], even, next);
            }
          }
#pragma GCC unroll 8
          for (int co = 0; co < kBlock; ++co) {
            const __m512 wv = _mm512_set1_ps(wk[kw * kBlock + co]);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) acc[co][v] = _mm512_fmadd_ps(xv[v], wv, acc[co][v]);
          }
        }
      }
    }
#pragma GCC unroll 8
  for (int co = 0; co < kBlock; ++co)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      if (co < stored) _mm512_mask_storeu_ps(y + co * cstride + kLanes * v, out_mask[v], acc[co][v]);
}

// Output rows [r0, r1) of all (sample, depth, row, channel block), each in chunks of up to three
// registers (48 columns). The channel blocks of one output row are neighbours, so they read the
// same input rows while those are in cache, and a thread reads only its share of the input. In
// (N, C, D, H, W) each input channel is its own stream (Cin streams, a D x H x W volume apart), too many
// for the hardware prefetcher: before the first block of a row, the rows that output row
// `kAhead` further down will need are prefetched, one per (input channel, kernel depth).
template <int KK, int S>
void rows(const float* x, const float* wp, const float* bias, float* y, int64_t cout, const Shape& s, int64_t r0,
          int64_t r1) {
  const int64_t blocks = (cout + kBlock - 1) / kBlock;
  constexpr int64_t kAhead = 2;
  const int64_t cstride = s.d * s.h * s.w, plane = s.h * s.w, vectors = (s.ow + kLanes - 1) / kLanes;
  const int64_t out_cstride = s.d * s.oh * s.ow;
  const int64_t wsize = s.cin * s.k * KK * KK * kBlock, half = s.k / 2;
  const int64_t row_bytes = s.w * int64_t(sizeof(float));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r % blocks, oh = (r / blocks) % s.oh, od = (r / (blocks * s.oh)) % s.d,
                  n = r / (blocks * s.oh * s.d);
    const float* xn = x + n * s.cin * cstride;
    // The input rows that output row oh + kAhead needs and the row before it did not (one with
    // stride 1; two with stride 2).
    for (int64_t ih = S * (oh + kAhead) + KK / 2 - (S - 1); b == 0 && ih <= S * (oh + kAhead) + KK / 2 && ih < s.h; ++ih)
      for (int64_t ci = 0; ci < s.cin; ++ci)
        for (int64_t kd = 0; kd < s.k; ++kd) {
          const int64_t id = od + kd - half;
          if (id < 0 || id >= s.d) continue;
          const char* row = reinterpret_cast<const char*>(xn + ci * cstride + id * plane + ih * s.w);
          for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
        }
    const float* wb = wp + b * wsize;
    const float* bb = bias + b * kBlock;
    float* yr = y + ((n * cout + b * kBlock) * s.d + od) * s.oh * s.ow + oh * s.ow;
    const int stored = int(std::min(kBlock, cout - b * kBlock));
    int64_t v = 0;
    for (; v + 3 <= vectors; v += 3)
      row_chunk<3, KK, S>(xn, wb, bb, yr + v * kLanes, out_cstride, od, oh, v * kLanes, s, stored);
    if (vectors - v == 2) row_chunk<2, KK, S>(xn, wb, bb, yr + v * kLanes, out_cstride, od, oh, v * kLanes, s, stored);
    if (vectors - v == 1) row_chunk<1, KK, S>(xn, wb, bb, yr + v * kLanes, out_cstride, od, oh, v * kLanes, s, stored);
  }
}

#endif  // HEMEXP_DIRECT_CONV_X86

}  // namespace

bool direct_conv3d_applicable(const torch::Tensor& x, const torch::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (!cpu_supported() || !x.defined() || !weight.defined()) return false;
  if (!x.is_cpu() || !weight.is_cpu() || x.scalar_type() != torch::kFloat32 || weight.scalar_type() != torch::kFloat32)
    return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())) return false;
  if (x.dim() != 5 || weight.dim() != 5 || groups != 1 || weight.size(1) != x.size(1)) return false;
  const int64_t k = weight.size(2), kk = weight.size(3);
  if (k % 2 == 0 || (kk != 1 && kk != 3) || weight.size(4) != kk || weight.size(0) < 1) return false;
  const auto is = [](at::IntArrayRef a, int64_t d, int64_t h, int64_t w) {
    return a.size() == 3 && a[0] == d && a[1] == h && a[2] == w;
  };
  // Stride 1, or (1, 2, 2) for a 3 x 3 in plane (the downsampling convolutions).
  return (is(stride, 1, 1, 1) || (kk == 3 && is(stride, 1, 2, 2))) && is(dilation, 1, 1, 1) &&
         is(padding, k / 2, kk / 2, kk / 2);
}

torch::Tensor direct_conv3d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            int64_t in_plane_stride) {
  const int64_t kk = weight.dim() == 5 ? weight.size(3) : 0, st = in_plane_stride;
  const std::vector<int64_t> unit{1, 1, 1}, stride{1, st, st}, same{weight.dim() == 5 ? weight.size(2) / 2 : 0, kk / 2, kk / 2};
  if (!direct_conv3d_applicable(x, weight, stride, same, unit, 1))  // stride 1, or 2 for k x 3 x 3
    throw CoreError("direct_conv3d: not a float32 CPU (k x 3 x 3) or (k x 1 x 1) \"same\" convolution of stride 1 "
                    "(or 1 x 2 x 2 in plane for k x 3 x 3) on an AVX-512 machine");
  const int64_t cout = weight.size(0), cin = weight.size(1), k = weight.size(2), blocks = (cout + kBlock - 1) / kBlock;
  if (bias.defined() && (bias.scalar_type() != torch::kFloat32 || bias.numel() != cout))
    throw CoreError("direct_conv3d: the bias must be float32 with one value per output channel");
  const torch::Tensor in = x.contiguous();
  // Weights packed as [block][cin][k][kk][kk][8]: the 8 output channels of a tap side by side;
  // a last, partial block padded with zero weights and biases.
  const int64_t padded = blocks * kBlock - cout;
  const torch::Tensor wfull =
      padded ? torch::cat({weight, torch::zeros({padded, cin, k, kk, kk}, weight.options())}) : weight;
  const torch::Tensor wp = wfull.reshape({blocks, kBlock, cin * k * kk * kk}).permute({0, 2, 1}).contiguous();
  const torch::Tensor b = torch::cat({bias.defined() ? bias.reshape({cout}) : torch::zeros({cout}, torch::kFloat32),
                                      torch::zeros({padded}, torch::kFloat32)});
  const int64_t oh = (x.size(3) - 1) / st + 1, ow = (x.size(4) - 1) / st + 1;  // "same" padding, stride st
  torch::Tensor y = torch::empty({x.size(0), cout, x.size(2), oh, ow}, x.options());
#ifdef HEMEXP_DIRECT_CONV_X86
  const Shape s{cin, x.size(2), x.size(3), x.size(4), k, oh, ow};
  const float* xp = in.data_ptr<float>();
  const float* wptr = wp.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t total = x.size(0) * blocks * s.d * s.oh;
  at::parallel_for(0, total, 8, [&](int64_t r0, int64_t r1) {
    if (kk == 3 && st == 2) rows<3, 2>(xp, wptr, bp, yp, cout, s, r0, r1);
    else if (kk == 3) rows<3, 1>(xp, wptr, bp, yp, cout, s, r0, r1);
    else rows<1, 1>(xp, wptr, bp, yp, cout, s, r0, r1);
  });
#endif
  return y;
}

}  // namespace hemexp
