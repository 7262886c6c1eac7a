#pragma once

#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn.h>

namespace hemexp {

// Hyper-parameters of a Vision Transformer classifier, as the model card's "network" block
// states them. 3-vectors are in tensor order (depth, height, width) = (z, y, x).
struct ViTConfig {
  std::string architecture = "ViT";
  int64_t in_channels = 1;
  std::array<int64_t, 3> image_size{16, 64, 64};  // the ROI the network was trained on
  std::array<int64_t, 3> patch_size{4, 8, 8};     // must divide image_size in every axis
  int64_t embed_dim = 128;
  int64_t depth = 6;       // transformer blocks
  int64_t num_heads = 4;   // must divide embed_dim
  int64_t mlp_dim = 512;   // hidden width of each block's MLP (an integer, so no ratio rounding)
  double layer_norm_eps = 1e-6;
  double dropout = 0.0;    // training only; inference ignores it
  // Scalar features of the hematoma (measured markers, log volume; the card's "features" block
  // names and normalises them) joined to the class token before the head: the head is
  // Linear(embed_dim + num_features, 1). 0: the head reads the class token only.
  int64_t num_features = 0;
  // Optional sign layer (two-stage head): signs names S NCCT signs; Linear(num_features, S) on
  // the features gives each sign's logit, and the head then reads the class token, the S sign
  // probabilities (sigmoid) and the features listed in head_features (indices into the
  // features, in that order) instead of all the features: Linear(embed_dim + S +
  // head_features.size(), 1). Empty signs: no sign layer, head_features must be empty too.
  std::vector<std::string> signs;
  std::vector<int64_t> head_features;
  // What the sign layer reads: "linear" (the default) the features; "quadratic" the features
  // and their pairwise products f_i f_j (i <= j, row-major upper triangle: (0,0), (0,1), ...,
  // (1,1), ...), so Linear(num_features (num_features + 3) / 2, S). Needs signs.
  std::string sign_inputs = "linear";

  int64_t num_signs() const { return int64_t(signs.size()); }
  bool quadratic_signs() const { return sign_inputs == "quadratic"; }
  // Width of the sign layer's input.
  int64_t num_sign_inputs() const { return num_features + (quadratic_signs() ? num_features * (num_features + 1) / 2 : 0); }
  // Width of the head's input beyond the class token.
  int64_t head_extra() const { return signs.empty() ? num_features : num_signs() + int64_t(head_features.size()); }
  int64_t num_patches() const;
  int64_t head_dim() const { return embed_dim / num_heads; }
  // Number of parameters the network will have (exact; the same sum as named_parameters()).
  int64_t num_parameters() const;

  // Bounds and divisibility of every field; CoreError naming the field on failure. Called by
  // from_json and by ViTImpl's constructor, so no card and no hand-built config reaches an
  // allocation with absurd sizes.
  void validate() const;
  // Parses (every field type-checked, unknown fields rejected) and validates.
  static ViTConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// Multi-head self-attention written out (not torch::nn::MultiheadAttention) so that the
// parameter names and the head layout are those of timm / scripts/hemexp_nets.py: one qkv
// Linear(E, 3E) whose output splits as (3, heads, head_dim), and proj Linear(E, E).
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t embed_dim, int64_t num_heads);
  torch::Tensor forward(const torch::Tensor& x);  // (B, N, E) -> (B, N, E)

 private:
  int64_t num_heads_, head_dim_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
};
TORCH_MODULE(SelfAttention);

// fc1 -> GELU (exact, erf) -> fc2.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t embed_dim, int64_t hidden_dim);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(Mlp);

// Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).
class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(int64_t embed_dim, int64_t num_heads, int64_t mlp_dim, double layer_norm_eps);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  SelfAttention attn_{nullptr};
  Mlp mlp_{nullptr};
};
TORCH_MODULE(TransformerBlock);

// ViT classifier of a hematoma-centred ROI: non-overlapping 3D patches (Conv3d with
// kernel = stride = patch_size), a class token, learned position embeddings, pre-norm blocks,
// a final LayerNorm, and a linear head on the class token (joined with num_features scalar
// features when the card has them, or with sign probabilities and some of the features when it
// has a sign layer). Parameter names match scripts/hemexp_nets.py one to one.
class ViTImpl : public torch::nn::Module {
 public:
  explicit ViTImpl(const ViTConfig& config);
  // x: (B, in_channels, image_size z, y, x); features: (B, num_features), normalised as the
  // card says (undefined when num_features is 0). Returns one logit per ROI, shape (B).
  // CoreError when x or features do not have the card's shape.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& features = {});
  // The sign layer's probabilities (B, num_signs) for features (B, num_features); CoreError
  // when the card has no sign layer or the features do not have its shape.
  torch::Tensor sign_probabilities(const torch::Tensor& features);
  const ViTConfig& config() const { return config_; }

 private:
  ViTConfig config_;
  torch::nn::Conv3d patch_embed_{nullptr};
  torch::Tensor cls_token_, pos_embed_;
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear signs_{nullptr}, head_{nullptr};
  torch::Tensor head_feature_index_;  // config_.head_features as a tensor (int64), with a sign layer
  torch::Tensor pair_i_, pair_j_;      // the (i, j) of each product, with quadratic sign inputs

  void check_features(const torch::Tensor& features, int64_t batch) const;
  // sigmoid of the sign layer on checked features.
  torch::Tensor sign_layer(const torch::Tensor& features);
  // What the head reads beside the class token: the features, or with a sign layer the sign
  // probabilities and the head_features (as hemexp_nets.ViT.head_inputs).
  torch::Tensor head_inputs(const torch::Tensor& features);
};
TORCH_MODULE(ViT);

}  // namespace hemexp
