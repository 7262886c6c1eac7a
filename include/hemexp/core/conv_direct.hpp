#pragma once

#include <torch/torch.h>

namespace hemexp {

// A direct convolution for the segmenter's small-channel layers: kernel (k, 3, 3) or (k, 1, 1)
// with k odd, stride 1 (or, for (k, 3, 3), stride 2 in plane: the downsampling convolutions),
// "same" zero padding, no dilation, one group, float32 on the CPU. Output channels go in blocks of
// 8 (a last, partial block, e.g. the 4 of a segmentation head, is computed with zero weights in
// the missing places and only its real channels are stored). LibTorch 1.13's oneDNN and ATen
// kernels run the 8- and 16-channel layers at a third of what the machine does for a wide
// convolution (docs/PERFORMANCE.md): this one keeps eight output channels of sixteen consecutive voxels in
// registers and streams the input rows, in the tensor's own (N, C, D, H, W) layout.
//
// Each output is bias + sum over (input channel, kernel depth, row, column), in that order, on
// one thread: the result does not depend on the thread count. It differs from oneDNN's by float
// rounding only (a different summation order).

// True when direct_conv3d can compute this convolution on this machine (AVX-512F, checked at
// run time; other CPUs keep the network's other backends: oneDNN, ATen for 1 x 1 x 1). The bias
// is not looked at: direct_conv3d wants a float32 one (or none) and computes no gradients.
bool direct_conv3d_applicable(const torch::Tensor& x, const torch::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The convolution (x: N x Cin x D x H x W; weight: Cout x Cin x k x 3 x 3 or Cout x Cin x k x 1
// x 1; bias: Cout or undefined), of stride (1, s, s) with s = in_plane_stride (2 only for k x 3 x
// 3): output N x Cout x D x ((H - 1) / s + 1) x ((W - 1) / s + 1). CoreError when
// direct_conv3d_applicable would say no.
torch::Tensor direct_conv3d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            int64_t in_plane_stride = 1);

}  // namespace hemexp
