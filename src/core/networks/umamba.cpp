#include "hemexp/core/umamba.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <ATen/Parallel.h>

#include "hemexp/core/conv_direct.hpp"
#include "hemexp/core/error.hpp"
#include "hemexp/core/model_file.hpp"
#include "hemexp/core/selective_scan.hpp"
#include "../simd.hpp"

namespace hemexp {

namespace F = torch::nn::functional;

namespace {

constexpr std::array<int64_t, 3> kUnitStride{1, 1, 1};
// Widest convolution sent to direct_conv3d (docs/PERFORMANCE.md: where it beats oneDNN).
constexpr int64_t kDirectMaxChannels = 16;

std::vector<int64_t> vec(const std::array<int64_t, 3>& a) { return {a[0], a[1], a[2]}; }

std::array<int64_t, 3> triple(const nlohmann::json& j, const std::string& what) {
  if (!j.is_array() || j.size() != 3) throw CoreError("model card: " + what + " must be a list of 3 integers");
  std::array<int64_t, 3> out{};
  for (int k = 0; k < 3; ++k) {
    out[k] = card_integer(j[k], what);
    if (out[k] < 1) throw CoreError("model card: " + what + " must hold positive integers");
  }
  return out;
}

torch::Tensor lrelu(const torch::Tensor& x) { return F::leaky_relu(x, F::LeakyReLUFuncOptions().negative_slope(0.01)); }

// A Conv3d through oneDNN (MKL-DNN) for CPU float32 inference, whatever the batch and channel
// counts. LibTorch 1.13 otherwise sends a batch of one with few channels (this network's 8- and
// 16-channel stages) to its vol2col + GEMM path: 1-8 GFLOP/s there against 50-90 through oneDNN
// on 2 cores (docs/PERFORMANCE.md). Same weights and arithmetic, different summation order
// (results agree to float rounding). `padding` is the one the module was built with (its options
// hold it as a variant whose type differs between LibTorch versions). Anything else (CUDA, gradients, no oneDNN) uses the module.
//
// With a lower-precision `dtype` (inference only), input, weights and bias are rounded to it,
// the backend convolves (oneDNN on the CPU, cuDNN on CUDA; both accumulate in float32), and the
// result comes back as float32.
torch::Tensor conv3d(torch::nn::Conv3dImpl& conv, const torch::Tensor& x, const std::vector<int64_t>& padding,
                     torch::ScalarType dtype) {
  const bool lower = dtype != torch::kFloat32 && x.scalar_type() == torch::kFloat32 && !torch::GradMode::is_enabled();
  const bool onednn = x.is_cpu() && (x.scalar_type() == torch::kFloat32 || lower) && !torch::GradMode::is_enabled() &&
                      at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
  if (!lower && !onednn) return conv.forward(x);
  const auto& o = conv.options;  // this file's convolutions: zero padding `padding`, no dilation
  const bool pointwise = conv.weight.size(2) == 1 && conv.weight.size(3) == 1 && conv.weight.size(4) == 1;
  // The layers with at most 16 output channels (k x 3 x 3 of stride 1 or 1 x 2 x 2; 1 x 1 x 1
  // skips, channel changes and the segmentation head): a direct kernel (conv_direct.hpp) where
  // the CPU has AVX-512. An unpadded 1 x 1 x 1 reads every s-th voxel of a stride s: it gets those
  // voxels (a strided view, gathered by the kernel) at stride 1 (ATen's strided path ran at 33
  // GFLOP/s, bench_layers).
  if (!lower && conv.weight.size(0) <= kDirectMaxChannels) {
    const auto stride = *o.stride();
    const bool gather = pointwise && x.dim() == 5 && padding == std::vector<int64_t>{0, 0, 0};
    const torch::Tensor in =
        gather ? x.slice(2, 0, x.size(2), stride[0]).slice(3, 0, x.size(3), stride[1]).slice(4, 0, x.size(4), stride[2])
               : x;
    if (direct_conv3d_applicable(in, conv.weight, gather ? at::IntArrayRef{1, 1, 1} : at::IntArrayRef(*o.stride()),
                                 padding, *o.dilation(), o.groups()))
      return direct_conv3d(in, conv.weight, conv.bias, gather ? 1 : stride[1]);
  }
  // Any other 1 x 1 x 1 convolution (more than 16 output channels, strided or not; all of them
  // without AVX-512) is a matrix product over the voxels: ATen's own conv3d does it as one GEMM,
  // where oneDNN was 3-4x slower on such layers (bench_layers, docs/PERFORMANCE.md).
  if (pointwise && !lower) return torch::conv3d(x, conv.weight, conv.bias, *o.stride(), padding, *o.dilation(), o.groups());
  const torch::Tensor in = lower ? x.to(dtype) : x, weight = lower ? conv.weight.to(dtype) : conv.weight;
  const torch::Tensor bias = lower && conv.bias.defined() ? conv.bias.to(dtype) : conv.bias;
  const torch::Tensor y = onednn ? torch::mkldnn_convolution(in.contiguous(), weight, bias, padding, *o.stride(),
                                                             *o.dilation(), o.groups())
                                 : torch::conv3d(in, weight, bias, *o.stride(), padding, *o.dilation(), o.groups());
  return lower ? y.to(torch::kFloat32) : y;
}

// Instance normalisation (per sample and channel, biased variance, affine), then optionally
// `residual` added, then LeakyReLU(0.01), in place on a float32 contiguous (N, C,
// ...) tensor: for inference, where ATen's instance_norm and leaky_relu would each write a new
// tensor. Statistics in one pass, in double, of the values less the plane's first value (a pivot
// near the mean, so that a plane with a large mean and a small spread loses nothing to
// cancellation): their sum and sum of squares, 32 partial sums of each so that the loop
// vectorises without reordering and keeps the adders busy; variance = mean of squares - squared
// mean. target_clones compiles AVX-512 and AVX2 variants.
__attribute__((target_clones("avx512f", "avx2", "default"))) void normalize_plane(
    float* x, const float* residual, int64_t n, float gamma, float beta, double eps) {
  constexpr int kParts = 32;
  const double pivot = n > 0 ? double(x[0]) : 0.0;
  double part_sum[kParts] = {}, part_sq[kParts] = {};
  int64_t i = 0;
  for (; i + kParts <= n; i += kParts)
    for (int k = 0; k < kParts; ++k) {
      const double v = double(x[i + k]) - pivot;
      part_sum[k] += v;
      part_sq[k] += v * v;
    }
  double sum = 0, sq = 0;
  for (; i < n; ++i) {
    const double v = double(x[i]) - pivot;
    sum += v;
    sq += v * v;
  }
  for (int k = 0; k < kParts; ++k) {
    sum += part_sum[k];
    sq += part_sq[k];
  }
  const double shift = sum / double(n), var = std::max(0.0, sq / double(n) - shift * shift);
  const double mean = pivot + shift;
  const double scale = double(gamma) / std::sqrt(var + eps);
  const float a = float(scale), b = float(double(beta) - mean * scale);
  for (i = 0; i < n; ++i) {
    float v = x[i] * a + b;
    if (residual) v += residual[i];
    x[i] = v < 0.0f ? 0.01f * v : v;
  }
}

bool fusable(const torch::Tensor& x) {
  return x.is_cpu() && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && !torch::GradMode::is_enabled();
}

// LeakyReLU(norm(x) [+ residual]) for a fusable x (which it overwrites); the modules otherwise.
torch::Tensor norm_act(torch::nn::InstanceNorm3dImpl& norm, torch::Tensor x, const torch::Tensor* residual) {
  const bool fuse = fusable(x) && norm.options.affine() && (!residual || (fusable(*residual) && residual->sizes() == x.sizes()));
  if (!fuse) {
    torch::Tensor y = norm.forward(x);
    return lrelu(residual ? y + *residual : y);
  }
  const int64_t planes = x.size(0) * x.size(1), n = x.numel() / std::max<int64_t>(1, planes), channels = x.size(1);
  const torch::Tensor gamma = norm.weight.to(torch::kFloat32).contiguous(), beta = norm.bias.to(torch::kFloat32).contiguous();
  float* xp = x.data_ptr<float>();
  const float* rp = residual ? residual->data_ptr<float>() : nullptr;
  const float* gp = gamma.data_ptr<float>();
  const float* bp = beta.data_ptr<float>();
  const double eps = norm.options.eps();
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      normalize_plane(xp + p * n, rp ? rp + p * n : nullptr, n, gp[p % channels], bp[p % channels], eps);
  });
  return x;
}

}  // namespace

torch::Tensor upsample_concat(const torch::Tensor& x, const torch::Tensor& skip) {
  const auto nearest = [&] {
    return F::interpolate(x, F::InterpolateFuncOptions()
                                 .size(std::vector<int64_t>{skip.size(2), skip.size(3), skip.size(4)})
                                 .mode(torch::kNearest));
  };
  const bool plain = x.dim() == 5 && skip.dim() == 5 && x.is_cpu() && skip.is_cpu() &&
                     x.scalar_type() == torch::kFloat32 && skip.scalar_type() == torch::kFloat32 &&
                     x.is_contiguous() && skip.is_contiguous() && x.size(0) == skip.size(0) && !torch::GradMode::is_enabled();
  bool whole = plain;
  for (int k = 2; whole && k < 5; ++k)
    whole = x.size(k) > 0 && (skip.size(k) == x.size(k) || skip.size(k) == 2 * x.size(k));
  if (!whole) return torch::cat({nearest(), skip}, 1);
  const int64_t batch = x.size(0), c1 = x.size(1), c2 = skip.size(1);
  const int64_t d = x.size(2), h = x.size(3), w = x.size(4), D = skip.size(2), H = skip.size(3), W = skip.size(4);
  const int64_t sd = D / d, sh = H / h, sw = W / w, plane = D * H * W;
  torch::Tensor out = torch::empty({batch, c1 + c2, D, H, W}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = skip.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // One output row position (sample, z, y) per step, every channel: repeated rows of x, then rows
  // of skip. Each thread gets both kinds of work (split by channel, one thread would get all the
  // repeating and the other all the copying), and the depth slices that the next convolution's
  // share of rows reads.
  at::parallel_for(0, batch * D * H, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oy = r % H, oz = (r / H) % D, n = r / (H * D);
      float* row = op + (n * (c1 + c2) * D + oz) * H * W + oy * W;  // channel 0's
      for (int64_t c = 0; c < c1; ++c, row += plane) {
        const float* src = xp + ((n * c1 + c) * d + oz / sd) * h * w + (oy / sh) * w;
        if (sw == 2)
          for (int64_t i = 0; i < w; ++i) row[2 * i] = row[2 * i + 1] = src[i];
        else
          std::memcpy(row, src, size_t(W) * sizeof(float));
      }
      for (int64_t c = 0; c < c2; ++c, row += plane)
        std::memcpy(row, sp + (n * c2 + c) * plane + (oz * H + oy) * W, size_t(W) * sizeof(float));
    }
  });
  return out;
}

namespace {

// Output (l, c) of a row of tokens: bias, then each tap's product fused into the sum in kernel
// order, the taps before the first token skipped: the order (and so the bits) of LibTorch's CPU
// conv1d for this depthwise case (checked equal on the shipped model's shapes; test_umamba.cpp).
// Clones for AVX-512 and for AVX2 with FMA; std::fma keeps the fused rounding in each. The
// default clone (which would call libm's fmaf per element) is never used: `applicable` asks for
// AVX2 and FMA, and the module runs elsewhere.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void causal_taps(
    const float* x, int64_t x_row, const float* w, const float* bias, float* y, int64_t length, int64_t channels,
    int64_t taps) {
  for (int64_t l = 0; l < length; ++l) {
    float* out = y + l * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = bias[c];
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t j = l + k - (taps - 1);
      if (j < 0) continue;
      const float* in = x + j * x_row;
      for (int64_t c = 0; c < channels; ++c) out[c] = std::fma(w[k * channels + c], in[c], out[c]);
    }
  }
}

// dt_proj at inference: y[l, c] = (sum over r of w[r][c] x[l, r], each product fused in order from
// zero) + bias[c], for a few input features (the Mamba block's dt_rank): the order, and so the
// bits, of Debian's LibTorch 1.13 CPU linear (an OpenBLAS product, then the bias) for these shapes,
// without its cost for a product this thin (0.55 ms for 576 tokens x 4 -> 128, most of it outside
// the arithmetic). `w`: the weight transposed, [feature][output].
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void thin_linear_rows(
    const float* x, int64_t x_row, const float* w, const float* bias, float* y, int64_t rows, int64_t features,
    int64_t outputs) {
  for (int64_t l = 0; l < rows; ++l) {
    float* out = y + l * outputs;
    const float* in = x + l * x_row;
    for (int64_t c = 0; c < outputs; ++c) out[c] = 0.0f;
    for (int64_t r = 0; r < features; ++r)
      for (int64_t c = 0; c < outputs; ++c) out[c] = std::fma(w[r * outputs + c], in[r], out[c]);
    for (int64_t c = 0; c < outputs; ++c) out[c] += bias[c];
  }
}

constexpr int64_t kThinLinearFeatures = 4;  // where the order above was checked against LibTorch

bool thin_linear_applicable(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return simd::cpu_has_avx2_fma() && x.dim() == 3 && x.is_cpu() && x.scalar_type() == torch::kFloat32 &&
         x.stride(2) == 1 && x.stride(0) == x.size(1) * x.stride(1) && weight.dim() == 2 && weight.is_cpu() &&
         weight.size(1) == x.size(2) && weight.size(1) <= kThinLinearFeatures &&
         weight.scalar_type() == torch::kFloat32 && bias.defined() && bias.is_cpu() && bias.numel() == weight.size(0) &&
         bias.scalar_type() == torch::kFloat32 && !torch::GradMode::is_enabled();
}

torch::Tensor thin_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t rows = x.size(0) * x.size(1), outputs = weight.size(0);
  const torch::Tensor w = weight.t().contiguous(), b = bias.contiguous();
  torch::Tensor y = torch::empty({x.size(0), x.size(1), outputs}, x.options());
  thin_linear_rows(x.data_ptr<float>(), x.stride(1), w.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(),
                   rows, x.size(2), outputs);
  return y;
}

}  // namespace

bool causal_depthwise_conv1d_applicable(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return simd::cpu_has_avx2_fma() && x.dim() == 3 && x.is_cpu() && x.scalar_type() == torch::kFloat32 &&
         x.stride(2) == 1 && weight.dim() == 3 && weight.size(0) == x.size(2) && weight.size(1) == 1 && weight.is_cpu() &&
         weight.scalar_type() == torch::kFloat32 && bias.defined() && bias.is_cpu() && bias.numel() == x.size(2) &&
         bias.scalar_type() == torch::kFloat32 && !torch::GradMode::is_enabled();
}

torch::Tensor causal_depthwise_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!causal_depthwise_conv1d_applicable(x, weight, bias))
    throw CoreError("causal_depthwise_conv1d: not a float32 CPU (batch, tokens, channels) input with channels "
                    "adjacent, a (channels, 1, taps) weight and a bias, at inference");
  const int64_t batch = x.size(0), length = x.size(1), channels = x.size(2), taps = weight.size(2);
  // Taps laid out [k][channel], so that the inner loop runs along the channels of a token.
  const torch::Tensor w = weight.reshape({channels, taps}).t().contiguous();
  const torch::Tensor b = bias.contiguous();
  torch::Tensor y = torch::empty({batch, length, channels}, x.options());
  for (int64_t n = 0; n < batch; ++n)
    causal_taps(x.data_ptr<float>() + n * x.stride(0), x.stride(1), w.data_ptr<float>(), b.data_ptr<float>(),
                y.data_ptr<float>() + n * length * channels, length, channels, taps);
  return y;
}

torch::Tensor inference_conv3d(torch::nn::Conv3dImpl& conv, const torch::Tensor& x, const std::vector<int64_t>& padding,
                               torch::ScalarType dtype) {
  return conv3d(conv, x, padding, dtype);
}

UMambaConfig UMambaConfig::from_json(const nlohmann::json& j) {
  UMambaConfig c;
  try {
    c.architecture = j.at("architecture").get<std::string>();
    if (c.architecture != "UMambaBot" && c.architecture != "UMambaEnc")
      throw CoreError("model card: unknown architecture '" + c.architecture + "'");
    c.in_channels = card_integer(j.at("in_channels"), "network.in_channels");
    c.num_classes = card_integer(j.at("num_classes"), "network.num_classes");
    c.features_per_stage = card_integers(j.at("features_per_stage"), "network.features_per_stage");
    const size_t n = c.features_per_stage.size();
    if (n < 2) throw CoreError("model card: a U-Mamba needs at least 2 stages");
    for (const auto& s : j.at("strides")) c.strides.push_back(triple(s, "strides"));
    for (const auto& k : j.at("kernel_sizes")) c.kernel_sizes.push_back(triple(k, "kernel_sizes"));
    c.blocks_per_stage = card_integers(j.at("blocks_per_stage"), "network.blocks_per_stage");
    c.blocks_per_stage_decoder = card_integers(j.at("blocks_per_stage_decoder"), "network.blocks_per_stage_decoder");
    const auto optional = [&](const char* name, int64_t fallback) {
      return j.contains(name) ? card_integer(j.at(name), std::string("network.") + name) : fallback;
    };
    c.d_state = optional("d_state", 16);
    c.d_conv = optional("d_conv", 4);
    c.expand = optional("expand", 2);
    c.deep_supervision = j.value("deep_supervision", true);
    if (c.strides.size() != n || c.kernel_sizes.size() != n || c.blocks_per_stage.size() != n ||
        c.blocks_per_stage_decoder.size() != n - 1)
      throw CoreError("model card: strides, kernel_sizes and blocks_per_stage need one entry per stage, "
                      "blocks_per_stage_decoder one fewer");
    for (int64_t v : c.features_per_stage)
      if (v < 1) throw CoreError("model card: features_per_stage must be positive");
    for (int64_t v : c.blocks_per_stage)
      if (v < 1) throw CoreError("model card: blocks_per_stage must be >= 1");
    for (int64_t v : c.blocks_per_stage_decoder)
      if (v < 1) throw CoreError("model card: blocks_per_stage_decoder must be >= 1");
    for (const auto& k : c.kernel_sizes)
      for (int64_t v : k)
        if (v % 2 == 0) throw CoreError("model card: kernel sizes must be odd");
    if (c.in_channels < 1 || c.num_classes < 2 || c.d_state < 1 || c.d_conv < 1 || c.expand < 1)
      throw CoreError("model card: in_channels, num_classes, d_state, d_conv or expand out of range");
    // Upper bounds, checked before anything is allocated: a card asking for a network of
    // terabytes is refused with its field named (each bound is far above any U-Mamba in use).
    const auto at_most = [](const std::string& field, int64_t v, int64_t limit) {
      if (v > limit)
        throw CoreError("model card: network." + field + " is " + std::to_string(v) + ", more than " +
                        std::to_string(limit));
    };
    at_most("features_per_stage (stages)", int64_t(n), 10);
    at_most("in_channels", c.in_channels, 16);
    at_most("num_classes", c.num_classes, 64);
    at_most("d_state", c.d_state, 256);
    at_most("d_conv", c.d_conv, 16);
    at_most("expand", c.expand, 8);
    double parameters = 0;  // an upper estimate: convolutions and the Mamba layers' projections
    for (size_t s = 0; s < n; ++s) {
      const std::string at = "[" + std::to_string(s) + "]";
      at_most("features_per_stage" + at, c.features_per_stage[s], 2048);
      at_most("blocks_per_stage" + at, c.blocks_per_stage[s], 32);
      if (s + 1 < n) at_most("blocks_per_stage_decoder" + at, c.blocks_per_stage_decoder[s], 32);
      for (int k = 0; k < 3; ++k) {
        at_most("kernel_sizes" + at, c.kernel_sizes[s][size_t(k)], 15);
        at_most("strides" + at, c.strides[s][size_t(k)], 8);
      }
      const double f = double(c.features_per_stage[s]);
      const double kvol = double(c.kernel_sizes[s][0] * c.kernel_sizes[s][1] * c.kernel_sizes[s][2]);
      const double blocks = double(c.blocks_per_stage[s] + (s + 1 < n ? c.blocks_per_stage_decoder[s] : 0) + 2);
      parameters += blocks * 2 * f * f * kvol + 4 * f * f * double(c.expand) * double(c.expand + c.d_state);
    }
    if (parameters > 5e8)
      throw CoreError("model card: the network would have about " + std::to_string(int64_t(parameters / 1e6)) +
                      " million parameters, more than 500 million (features_per_stage, kernel_sizes or "
                      "blocks_per_stage too large)");
  } catch (const nlohmann::json::exception& e) {
    throw CoreError(std::string("model card: network block is incomplete: ") + e.what());
  }
  return c;
}

nlohmann::json UMambaConfig::to_json() const {
  return {{"architecture", architecture},
          {"in_channels", in_channels},
          {"num_classes", num_classes},
          {"features_per_stage", features_per_stage},
          {"strides", strides},
          {"kernel_sizes", kernel_sizes},
          {"blocks_per_stage", blocks_per_stage},
          {"blocks_per_stage_decoder", blocks_per_stage_decoder},
          {"d_state", d_state},
          {"d_conv", d_conv},
          {"expand", expand},
          {"deep_supervision", deep_supervision}};
}

// --- Residual block ------------------------------------------------------------------------

ResidualBlockImpl::ResidualBlockImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 3> kernel,
                                     std::array<int64_t, 3> stride) {
  pad_ = {kernel[0] / 2, kernel[1] / 2, kernel[2] / 2};
  conv1_ = register_module("conv1", torch::nn::Conv3d(torch::nn::Conv3dOptions(in_channels, out_channels, vec(kernel))
                                                          .stride(vec(stride))
                                                          .padding(pad_)));
  norm1_ = register_module("norm1", torch::nn::InstanceNorm3d(torch::nn::InstanceNorm3dOptions(out_channels).affine(true).eps(1e-5)));
  conv2_ = register_module("conv2", torch::nn::Conv3d(torch::nn::Conv3dOptions(out_channels, out_channels, vec(kernel)).padding(pad_)));
  norm2_ = register_module("norm2", torch::nn::InstanceNorm3d(torch::nn::InstanceNorm3dOptions(out_channels).affine(true).eps(1e-5)));
  const bool strided = stride[0] != 1 || stride[1] != 1 || stride[2] != 1;
  if (in_channels != out_channels || strided)
    skip_ = register_module("skip", torch::nn::Conv3d(torch::nn::Conv3dOptions(in_channels, out_channels, 1).stride(vec(stride))));
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x) {
  // conv - norm - LeakyReLU - conv - norm, + skip, LeakyReLU: each norm with what follows it in
  // one in-place pass at inference (norm_act), the modules' own ops otherwise.
  const torch::Tensor y = norm_act(*norm1_, conv3d(*conv1_, x, pad_, conv_dtype_), nullptr);
  const torch::Tensor skip = skip_ ? conv3d(*skip_, x, {0, 0, 0}, conv_dtype_) : x;
  return norm_act(*norm2_, conv3d(*conv2_, y, pad_, conv_dtype_), &skip);
}

// --- Mamba -----------------------------------------------------------------------------------

MambaImpl::MambaImpl(int64_t d_model, int64_t d_state, int64_t d_conv, int64_t expand)
    : d_inner_(expand * d_model), d_state_(d_state), d_conv_(d_conv),
      dt_rank_((d_model + 15) / 16) {
  in_proj_ = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(d_model, 2 * d_inner_).bias(false)));
  conv1d_ = register_module("conv1d", torch::nn::Conv1d(torch::nn::Conv1dOptions(d_inner_, d_inner_, d_conv)
                                                            .groups(d_inner_)
                                                            .padding(d_conv - 1)));
  x_proj_ = register_module("x_proj", torch::nn::Linear(torch::nn::LinearOptions(d_inner_, dt_rank_ + 2 * d_state).bias(false)));
  dt_proj_ = register_module("dt_proj", torch::nn::Linear(torch::nn::LinearOptions(dt_rank_, d_inner_)));
  // S4D-real initialisation (A = -(1..N)); trained values come from the weights file.
  A_log_ = register_parameter("A_log", torch::log(torch::arange(1, d_state + 1, torch::kFloat32)).repeat({d_inner_, 1}));
  D_ = register_parameter("D", torch::ones({d_inner_}));
  out_proj_ = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(d_inner_, d_model).bias(false)));
}

torch::Tensor MambaImpl::forward(const torch::Tensor& x) {
  const int64_t L = x.size(1);
  const auto xz = in_proj_(x).chunk(2, -1);
  // Causal depthwise convolution along the tokens: pad d_conv - 1 on both sides, keep the first L
  // (the module), or the same sums in one loop at inference on the CPU.
  torch::Tensor u = causal_depthwise_conv1d_applicable(xz[0], conv1d_->weight, conv1d_->bias)
                        ? causal_depthwise_conv1d(xz[0], conv1d_->weight, conv1d_->bias)
                        : conv1d_(xz[0].transpose(1, 2)).slice(2, 0, L).transpose(1, 2).contiguous();
  u = F::silu(u).contiguous();
  const auto parts = x_proj_(u).split({dt_rank_, d_state_, d_state_}, -1);
  const bool thin = thin_linear_applicable(parts[0], dt_proj_->weight, dt_proj_->bias);
  const torch::Tensor dt = thin ? thin_linear(parts[0], dt_proj_->weight, dt_proj_->bias) : dt_proj_(parts[0]);
  const torch::Tensor delta = F::softplus(dt).contiguous();
  const torch::Tensor A = -torch::exp(A_log_.to(torch::kFloat32));
  const torch::Tensor y = selective_scan(u, delta, A, parts[1].contiguous(), parts[2].contiguous(), D_);
  return out_proj_(y * F::silu(xz[1]));
}

MambaLayerImpl::MambaLayerImpl(int64_t channels, int64_t d_state, int64_t d_conv, int64_t expand) {
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({channels}).eps(1e-5)));
  mamba_ = register_module("mamba", Mamba(channels, d_state, d_conv, expand));
}

torch::Tensor MambaLayerImpl::forward(const torch::Tensor& x) {
  const auto sizes = x.sizes().vec();
  const int64_t batch = sizes[0], channels = sizes[1];
  const torch::Tensor tokens = x.reshape({batch, channels, -1}).transpose(1, 2);  // (B, L, C), W fastest
  const torch::Tensor out = mamba_(norm_(tokens));
  return out.transpose(1, 2).reshape(sizes);
}

// --- U-Mamba -----------------------------------------------------------------------------------

UMambaImpl::UMambaImpl(const UMambaConfig& c) : config_(c) {
  const int64_t n = c.n_stages();
  stem_ = register_module("stem", ResidualBlock(c.in_channels, c.features_per_stage[0], c.kernel_sizes[0], kUnitStride));
  encoder_stages_ = register_module("encoder_stages", torch::nn::ModuleList());
  encoder_mamba_ = register_module("encoder_mamba", torch::nn::ModuleList());
  int64_t channels = c.features_per_stage[0];
  for (int64_t s = 0; s < n; ++s) {
    torch::nn::Sequential stage;
    stage->push_back(ResidualBlock(channels, c.features_per_stage[s], c.kernel_sizes[s], c.strides[s]));
    for (int64_t b = 1; b < c.blocks_per_stage[s]; ++b)
      stage->push_back(ResidualBlock(c.features_per_stage[s], c.features_per_stage[s], c.kernel_sizes[s], kUnitStride));
    encoder_stages_->push_back(stage);
    channels = c.features_per_stage[s];
    if (c.mamba_after_every_stage() || s == n - 1)
      encoder_mamba_->push_back(MambaLayer(channels, c.d_state, c.d_conv, c.expand));
  }
  upsample_convs_ = register_module("upsample_convs", torch::nn::ModuleList());
  decoder_stages_ = register_module("decoder_stages", torch::nn::ModuleList());
  seg_heads_ = register_module("seg_heads", torch::nn::ModuleList());
  for (int64_t s = 0; s < n - 1; ++s) {
    const int64_t below = c.features_per_stage[n - 1 - s], skip = c.features_per_stage[n - 2 - s];
    upsample_convs_->push_back(torch::nn::Conv3d(torch::nn::Conv3dOptions(below, skip, 1)));
    torch::nn::Sequential stage;
    stage->push_back(ResidualBlock(2 * skip, skip, c.kernel_sizes[n - 2 - s], kUnitStride));
    for (int64_t b = 1; b < c.blocks_per_stage_decoder[s]; ++b)
      stage->push_back(ResidualBlock(skip, skip, c.kernel_sizes[n - 2 - s], kUnitStride));
    decoder_stages_->push_back(stage);
    seg_heads_->push_back(torch::nn::Conv3d(torch::nn::Conv3dOptions(skip, c.num_classes, 1)));
  }
}

std::vector<torch::Tensor> UMambaImpl::forward_all(const torch::Tensor& input) { return run(input, true); }

std::vector<torch::Tensor> UMambaImpl::run(const torch::Tensor& input, bool all_heads) {
  const int64_t n = config_.n_stages();
  std::vector<torch::Tensor> skips;
  torch::Tensor x = stem_(input);
  size_t mamba_index = 0;
  for (int64_t s = 0; s < n; ++s) {
    x = encoder_stages_[s]->as<torch::nn::Sequential>()->forward(x);
    if (config_.mamba_after_every_stage() || s == n - 1)
      x = encoder_mamba_[mamba_index++]->as<MambaLayer>()->forward(x);
    skips.push_back(x);
  }
  std::vector<torch::Tensor> outputs;
  for (int64_t s = 0; s < n - 1; ++s) {
    const torch::Tensor& skip = skips[n - 2 - s];
    // Nearest upsampling to the skip's size (= scale by the stage stride when it divides), then
    // the 1x1 convolution: computed in the other order, which gives the same values (a 1x1
    // convolution acts on each voxel alone, nearest upsampling copies voxels) at a quarter to an
    // eighth of the cost, and upsamples the fewer channels.
    x = conv3d(*upsample_convs_[s]->as<torch::nn::Conv3dImpl>(), x, {0, 0, 0}, conv_dtype_);
    x = decoder_stages_[s]->as<torch::nn::Sequential>()->forward(upsample_concat(x, skip));
    if ((all_heads && config_.deep_supervision) || s == n - 2)
      outputs.push_back(conv3d(*seg_heads_[s]->as<torch::nn::Conv3dImpl>(), x, {0, 0, 0}, conv_dtype_));
  }
  std::reverse(outputs.begin(), outputs.end());
  return outputs;
}

// The full-resolution head only: the deep-supervision heads are for training (forward_all).
torch::Tensor UMambaImpl::forward(const torch::Tensor& x) { return run(x, false).front(); }

void UMambaImpl::set_convolution_dtype(torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kHalf)
    throw CoreError("convolution precision must be float32, bfloat16 or float16");
  const auto apply = [this](torch::ScalarType t) {
    conv_dtype_ = t;
    for (const auto& m : modules(/*include_self=*/false))
      if (auto* block = dynamic_cast<ResidualBlockImpl*>(m.get())) block->set_convolution_dtype(t);
  };
  const torch::ScalarType previous = conv_dtype_;
  apply(dtype);
  if (dtype == torch::kFloat32) return;
  // Ask the backend once, through the stem's own convolutions (the path every case takes),
  // rather than fail on the first case.
  try {
    c10::InferenceMode guard;
    const auto& k = config_.kernel_sizes[0];
    const torch::Tensor probe =
        stem_->forward(torch::ones({1, config_.in_channels, k[0], k[1], k[2]}, parameters().front().options()));
    if (!torch::isfinite(probe).all().item<bool>()) throw CoreError("a non-finite result");
  } catch (const std::exception& e) {
    apply(previous);
    const std::string what = e.what();
    throw CoreError(std::string("this device cannot convolve in ") + c10::toString(dtype) + " (" +
                    what.substr(0, what.find('\n')) + ")");
  }
}

}  // namespace hemexp
