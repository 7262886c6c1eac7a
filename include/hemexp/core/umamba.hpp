#pragma once

#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn.h>

namespace hemexp {

// Hyper-parameters of a U-Mamba network, as the model card's "network" block states them.
// Per-stage 3-vectors are in tensor order (depth, height, width) = (z, y, x).
struct UMambaConfig {
  std::string architecture = "UMambaBot";  // "UMambaBot" (Mamba at the bottleneck) or "UMambaEnc"
  int64_t in_channels = 1;
  int64_t num_classes = 2;
  std::vector<int64_t> features_per_stage;
  std::vector<std::array<int64_t, 3>> strides;       // stride of each encoder stage (first usually 1)
  std::vector<std::array<int64_t, 3>> kernel_sizes;  // conv kernel of each stage
  std::vector<int64_t> blocks_per_stage;             // residual blocks per encoder stage (>= 1)
  std::vector<int64_t> blocks_per_stage_decoder;     // per decoder stage, n_stages - 1 entries
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  bool deep_supervision = true;

  int64_t n_stages() const { return int64_t(features_per_stage.size()); }
  bool mamba_after_every_stage() const { return architecture == "UMambaEnc"; }

  // Validates everything (CoreError with the offending field on failure).
  static UMambaConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// One of the network's convolutions at inference, through the backend the network picks for it
// (umamba.cpp: the direct kernel, oneDNN or ATen; the modules themselves when gradients are on).
// `padding` is the one the module was built with; `dtype` the precision of the convolution.
torch::Tensor inference_conv3d(torch::nn::Conv3dImpl& conv, const torch::Tensor& x, const std::vector<int64_t>& padding,
                               torch::ScalarType dtype = torch::kFloat32);

// torch::cat({nearest upsampling of x to skip's spatial size, skip}, 1), as the decoder joins an
// upsampled stage to its skip connection: written once into the result for float32 contiguous
// CPU tensors of the same batch size, with gradients off, whose sizes are x's or twice them
// (ATen's nearest then takes voxel o / 2, exactly), else through ATen's interpolate and cat. The
// same values either way (copies only).
torch::Tensor upsample_concat(const torch::Tensor& x, const torch::Tensor& skip);

// The Mamba block's causal depthwise convolution along the tokens: x (batch, L, channels), a view
// whose channels are adjacent (a chunk of in_proj's output), weight (channels, 1, taps), bias
// (channels); y[n, l, c] = bias[c] + sum over k of weight[c, 0, k] x[n, l + k - taps + 1, c] (tokens
// before the first count as zero), contiguous (batch, L, channels): conv1d with padding taps - 1,
// its first L outputs, transposed. One loop, the same sums in the same order as LibTorch 1.13's
// CPU conv1d for this case; `applicable` says where it runs (float32 CPU tensors, gradients off, a
// CPU with AVX2 and FMA).
bool causal_depthwise_conv1d_applicable(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
torch::Tensor causal_depthwise_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// conv - InstanceNorm - LeakyReLU - conv - InstanceNorm, plus a 1x1 (strided) projection on the
// skip when the shape changes, then LeakyReLU of the sum.
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 3> kernel,
                    std::array<int64_t, 3> stride);
  torch::Tensor forward(const torch::Tensor& x);
  // The precision of its convolutions at inference (UMambaImpl::set_convolution_dtype).
  void set_convolution_dtype(torch::ScalarType dtype) { conv_dtype_ = dtype; }

 private:
  torch::nn::Conv3d conv1_{nullptr}, conv2_{nullptr}, skip_{nullptr};
  torch::nn::InstanceNorm3d norm1_{nullptr}, norm2_{nullptr};
  std::vector<int64_t> pad_;  // "same" zero padding of conv1 and conv2
  torch::ScalarType conv_dtype_ = torch::kFloat32;
};
TORCH_MODULE(ResidualBlock);

// The Mamba block: in_proj -> (x, z); causal depthwise conv1d + SiLU on x; x_proj -> (dt, B, C);
// delta = softplus(dt_proj(dt)); A = -exp(A_log); selective scan; out_proj(y * SiLU(z)).
class MambaImpl : public torch::nn::Module {
 public:
  MambaImpl(int64_t d_model, int64_t d_state, int64_t d_conv, int64_t expand);
  torch::Tensor forward(const torch::Tensor& x);  // (batch, L, d_model)

 private:
  int64_t d_inner_, d_state_, d_conv_, dt_rank_;
  torch::nn::Linear in_proj_{nullptr}, x_proj_{nullptr}, dt_proj_{nullptr}, out_proj_{nullptr};
  torch::nn::Conv1d conv1d_{nullptr};
  torch::Tensor A_log_, D_;
};
TORCH_MODULE(Mamba);

// Flattens (B, C, D, H, W) to (B, L, C) with W fastest, LayerNorm(C), Mamba, and back.
class MambaLayerImpl : public torch::nn::Module {
 public:
  MambaLayerImpl(int64_t channels, int64_t d_state, int64_t d_conv, int64_t expand);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::LayerNorm norm_{nullptr};
  Mamba mamba_{nullptr};
};
TORCH_MODULE(MambaLayer);

// U-Mamba (Bot or Enc): residual encoder, Mamba layer(s), decoder with nearest upsampling +
// 1x1 conv, skip concatenation, residual blocks, and one 1x1 segmentation head per stage.
// Parameter names match scripts/hemexp_nets.py one to one.
class UMambaImpl : public torch::nn::Module {
 public:
  explicit UMambaImpl(const UMambaConfig& config);
  // Logits at full resolution (the last decoder head).
  torch::Tensor forward(const torch::Tensor& x);
  // Logits of every decoder head, full resolution first (deep supervision outputs).
  std::vector<torch::Tensor> forward_all(const torch::Tensor& x);
  const UMambaConfig& config() const { return config_; }
  // Inference only (gradients off): every 3D convolution (residual blocks, decoder 1x1
  // convolutions, heads) takes its input, weights and bias rounded to `dtype` (kBFloat16 or
  // kHalf; kFloat32, the default, changes nothing) and gives float32 back; normalisations,
  // activations and the Mamba layers (projections and selective scan) stay float32. Training
  // ignores it. A lower precision is tried at once on the stem's convolutions (on the device of
  // the parameters): CoreError, and the previous precision kept, when the backend cannot.
  void set_convolution_dtype(torch::ScalarType dtype);
  torch::ScalarType convolution_dtype() const { return conv_dtype_; }

 private:
  // The forward pass; all_heads: every deep-supervision output, else the full-resolution one.
  std::vector<torch::Tensor> run(const torch::Tensor& x, bool all_heads);
  UMambaConfig config_;
  torch::ScalarType conv_dtype_ = torch::kFloat32;
  ResidualBlock stem_{nullptr};
  torch::nn::ModuleList encoder_stages_{nullptr}, encoder_mamba_{nullptr};
  torch::nn::ModuleList upsample_convs_{nullptr}, decoder_stages_{nullptr}, seg_heads_{nullptr};
};
TORCH_MODULE(UMamba);

}  // namespace hemexp
