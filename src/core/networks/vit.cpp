#include "hemexp/core/vit.hpp"

#include <cmath>
#include <set>
#include <sstream>

#include "hemexp/core/error.hpp"

namespace hemexp {

namespace F = torch::nn::functional;

namespace {

// Sanity bounds: far above any ROI classifier we would train, far below sizes that would
// allocate gigabytes, so a corrupt or foreign card fails with a message, not an OOM kill.
constexpr int64_t kMaxInChannels = 64;
constexpr int64_t kMaxImageDim = 512;
constexpr int64_t kMaxEmbedDim = 2048;
constexpr int64_t kMaxDepth = 48;
constexpr int64_t kMaxMlpDim = 4 * kMaxEmbedDim;
// Attention holds a (tokens x tokens) matrix per head and ROI: 4096 tokens are 64 MiB each.
constexpr int64_t kMaxPatches = 4096;
constexpr int64_t kMaxParameters = 200'000'000;
constexpr int64_t kMaxFeatures = 256;

const char* const kFields[] = {"architecture", "in_channels", "image_size", "patch_size", "embed_dim",
                               "depth",        "num_heads",   "mlp_dim",    "layer_norm_eps", "dropout",
                               "num_features", "signs",       "head_features", "sign_inputs"};

std::string field(const std::string& name) { return "model card: network." + name; }

std::string text(const std::array<int64_t, 3>& a) {
  return "[" + std::to_string(a[0]) + "," + std::to_string(a[1]) + "," + std::to_string(a[2]) + "]";
}

void check_range(const std::string& name, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    throw CoreError(field(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                    std::to_string(v) + ")");
}

const nlohmann::json& required(const nlohmann::json& j, const std::string& name) {
  const auto it = j.find(name);
  if (it == j.end()) throw CoreError(field(name) + " is missing");
  return *it;
}

int64_t integer(const nlohmann::json& j, const std::string& name) {
  const nlohmann::json& v = required(j, name);
  // Strict: 48.0 or "48" is a sign of a hand-edited or foreign card, not a ViT we exported.
  if (!v.is_number_integer()) throw CoreError(field(name) + " must be an integer");
  return v.get<int64_t>();
}

std::array<int64_t, 3> triple(const nlohmann::json& j, const std::string& name) {
  const nlohmann::json& v = required(j, name);
  if (!v.is_array() || v.size() != 3) throw CoreError(field(name) + " must be a list of 3 integers (z, y, x)");
  std::array<int64_t, 3> out{};
  for (size_t k = 0; k < 3; ++k) {
    if (!v[k].is_number_integer()) throw CoreError(field(name) + " must be a list of 3 integers (z, y, x)");
    out[k] = v[k].get<int64_t>();
  }
  return out;
}

double number(const nlohmann::json& j, const std::string& name, double fallback) {
  const auto it = j.find(name);
  if (it == j.end()) return fallback;
  if (!it->is_number()) throw CoreError(field(name) + " must be a number");
  return it->get<double>();
}

}  // namespace

int64_t ViTConfig::num_patches() const {
  return (image_size[0] / patch_size[0]) * (image_size[1] / patch_size[1]) * (image_size[2] / patch_size[2]);
}

int64_t ViTConfig::num_parameters() const {
  const int64_t e = embed_dim, m = mlp_dim;
  const int64_t patch = in_channels * patch_size[0] * patch_size[1] * patch_size[2] * e + e;
  const int64_t tokens = e + (1 + num_patches()) * e;  // cls_token, pos_embed
  const int64_t block = 2 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * e + (e * m + m) + (m * e + e);
  return patch + tokens + depth * block + 2 * e + (e + head_extra() + 1) + num_sign_inputs() * num_signs() + num_signs();
}

void ViTConfig::validate() const {
  if (architecture != "ViT") throw CoreError(field("architecture") + " must be \"ViT\" (got \"" + architecture + "\")");
  check_range("in_channels", in_channels, 1, kMaxInChannels);
  for (int k = 0; k < 3; ++k) check_range("image_size", image_size[k], 1, kMaxImageDim);
  for (int k = 0; k < 3; ++k) check_range("patch_size", patch_size[k], 1, image_size[k]);
  for (int k = 0; k < 3; ++k)
    if (image_size[k] % patch_size[k] != 0)
      throw CoreError(field("patch_size") + " " + text(patch_size) + " must divide network.image_size " +
                      text(image_size) + " in every axis");
  check_range("embed_dim", embed_dim, 1, kMaxEmbedDim);
  check_range("depth", depth, 1, kMaxDepth);
  check_range("num_heads", num_heads, 1, embed_dim);
  if (embed_dim % num_heads != 0)
    throw CoreError(field("num_heads") + " (" + std::to_string(num_heads) + ") must divide network.embed_dim (" +
                    std::to_string(embed_dim) + ")");
  check_range("mlp_dim", mlp_dim, 1, kMaxMlpDim);
  if (!(layer_norm_eps > 0 && layer_norm_eps <= 0.1))
    throw CoreError(field("layer_norm_eps") + " must be in (0, 0.1]");
  if (!(dropout >= 0 && dropout < 1)) throw CoreError(field("dropout") + " must be in [0, 1)");
  check_range("num_features", num_features, 0, kMaxFeatures);
  check_range("signs", num_signs(), 0, kMaxFeatures);
  if (!signs.empty() && num_features == 0) throw CoreError(field("signs") + " needs network.num_features > 0");
  if (signs.empty() && !head_features.empty()) throw CoreError(field("head_features") + " needs network.signs");
  if (sign_inputs != "linear" && sign_inputs != "quadratic")
    throw CoreError(field("sign_inputs") + " must be \"linear\" or \"quadratic\" (got \"" + sign_inputs + "\")");
  if (signs.empty() && quadratic_signs()) throw CoreError(field("sign_inputs") + " needs network.signs");
  for (int64_t i : head_features)
    if (i < 0 || i >= num_features)
      throw CoreError(field("head_features") + " must index the features: " + std::to_string(i) + " is not in [0, " +
                      std::to_string(num_features) + ")");
  // Each bound above keeps these products far from int64 overflow.
  if (num_patches() > kMaxPatches)
    throw CoreError(field("patch_size") + ": image_size / patch_size gives " + std::to_string(num_patches()) +
                    " patches, more than " + std::to_string(kMaxPatches));
  if (num_parameters() >= kMaxParameters)
    throw CoreError("model card: network has " + std::to_string(num_parameters()) + " parameters, more than " +
                    std::to_string(kMaxParameters) + " (embed_dim, depth, mlp_dim or patch_size too large)");
}

ViTConfig ViTConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw CoreError("model card: network block is not a JSON object");
  // A misspelt or foreign field (mlp_ratio, qkv_bias) would otherwise be silently ignored.
  const std::set<std::string> known(std::begin(kFields), std::end(kFields));
  for (const auto& item : j.items())
    if (!known.count(item.key())) throw CoreError(field(item.key()) + " is not a ViT field");
  ViTConfig c;
  const nlohmann::json& arch = required(j, "architecture");
  if (!arch.is_string()) throw CoreError(field("architecture") + " must be a string");
  c.architecture = arch.get<std::string>();
  c.in_channels = integer(j, "in_channels");
  c.image_size = triple(j, "image_size");
  c.patch_size = triple(j, "patch_size");
  c.embed_dim = integer(j, "embed_dim");
  c.depth = integer(j, "depth");
  c.num_heads = integer(j, "num_heads");
  c.mlp_dim = integer(j, "mlp_dim");
  c.layer_norm_eps = number(j, "layer_norm_eps", 1e-6);
  c.dropout = number(j, "dropout", 0.0);
  if (j.contains("num_features")) c.num_features = integer(j, "num_features");
  try {
    if (j.contains("signs")) c.signs = j.at("signs").get<std::vector<std::string>>();
    if (j.contains("head_features")) c.head_features = j.at("head_features").get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception&) {
    throw CoreError(field("signs") + " must be a list of names and network.head_features a list of integers");
  }
  if (j.contains("sign_inputs")) {
    if (!j.at("sign_inputs").is_string()) throw CoreError(field("sign_inputs") + " must be a string");
    c.sign_inputs = j.at("sign_inputs").get<std::string>();
  }
  c.validate();
  return c;
}

nlohmann::json ViTConfig::to_json() const {
  nlohmann::json j = {{"architecture", architecture}, {"in_channels", in_channels}, {"image_size", image_size},
          {"patch_size", patch_size},     {"embed_dim", embed_dim},     {"depth", depth},
          {"num_heads", num_heads},       {"mlp_dim", mlp_dim},         {"layer_norm_eps", layer_norm_eps},
          {"dropout", dropout}};
  if (num_features > 0) j["num_features"] = num_features;  // cards without features stay as they were
  if (!signs.empty()) {
    j["signs"] = signs;
    j["head_features"] = head_features;
    if (quadratic_signs()) j["sign_inputs"] = sign_inputs;  // linear cards stay as they were
  }
  return j;
}

// --- Blocks --------------------------------------------------------------------------------------

SelfAttentionImpl::SelfAttentionImpl(int64_t embed_dim, int64_t num_heads)
    : num_heads_(num_heads), head_dim_(embed_dim / num_heads) {
  qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(embed_dim, 3 * embed_dim)));
  proj_ = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(embed_dim, embed_dim)));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t batch = x.size(0), tokens = x.size(1), embed = x.size(2);
  // qkv's output features are ordered (q|k|v, head, head_dim): reshape exposes that order, the
  // permute brings q/k/v first and heads before tokens. Reshaping straight to (3, B, H, N, hd)
  // would mix tokens and heads; the parity fixture and test_vit.cpp catch exactly that.
  const torch::Tensor qkv = qkv_(x).reshape({batch, tokens, 3, num_heads_, head_dim_}).permute({2, 0, 3, 1, 4});
  const torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];  // (B, H, N, hd)
  const torch::Tensor attn = torch::softmax(torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(head_dim_)), -1);
  // Heads back next to each other per token before merging them into E.
  return proj_(torch::matmul(attn, v).transpose(1, 2).reshape({batch, tokens, embed}));
}

MlpImpl::MlpImpl(int64_t embed_dim, int64_t hidden_dim) {
  fc1_ = register_module("fc1", torch::nn::Linear(torch::nn::LinearOptions(embed_dim, hidden_dim)));
  fc2_ = register_module("fc2", torch::nn::Linear(torch::nn::LinearOptions(hidden_dim, embed_dim)));
}

// torch::gelu defaults to the exact (erf) form, as nn.GELU() in the reference.
torch::Tensor MlpImpl::forward(const torch::Tensor& x) { return fc2_(torch::gelu(fc1_(x))); }

TransformerBlockImpl::TransformerBlockImpl(int64_t embed_dim, int64_t num_heads, int64_t mlp_dim,
                                           double layer_norm_eps) {
  const auto norm_options = torch::nn::LayerNormOptions({embed_dim}).eps(layer_norm_eps);
  norm1_ = register_module("norm1", torch::nn::LayerNorm(norm_options));
  attn_ = register_module("attn", SelfAttention(embed_dim, num_heads));
  norm2_ = register_module("norm2", torch::nn::LayerNorm(norm_options));
  mlp_ = register_module("mlp", Mlp(embed_dim, mlp_dim));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x) {
  const torch::Tensor y = x + attn_(norm1_(x));
  return y + mlp_(norm2_(y));
}

// --- ViT ---------------------------------------------------------------------------------------

ViTImpl::ViTImpl(const ViTConfig& c) : config_(c) {
  c.validate();  // before any allocation: a hand-built config gets the same checks as a card
  const int64_t e = c.embed_dim;
  const std::vector<int64_t> patch(c.patch_size.begin(), c.patch_size.end());
  patch_embed_ = register_module("patch_embed",
                                 torch::nn::Conv3d(torch::nn::Conv3dOptions(c.in_channels, e, patch).stride(patch)));
  // Zeros until the weights file fills them (the reference's training init is in hemexp_nets.py).
  cls_token_ = register_parameter("cls_token", torch::zeros({1, 1, e}));
  pos_embed_ = register_parameter("pos_embed", torch::zeros({1, 1 + c.num_patches(), e}));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t b = 0; b < c.depth; ++b) blocks_->push_back(TransformerBlock(e, c.num_heads, c.mlp_dim, c.layer_norm_eps));
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({e}).eps(c.layer_norm_eps)));
  if (!c.signs.empty()) {
    signs_ = register_module("signs", torch::nn::Linear(torch::nn::LinearOptions(c.num_sign_inputs(), c.num_signs())));
    head_feature_index_ = torch::tensor(c.head_features, torch::kInt64);
    if (c.quadratic_signs()) {
      const torch::Tensor pairs = torch::triu_indices(c.num_features, c.num_features);  // row-major, as numpy's
      pair_i_ = pairs[0].contiguous();
      pair_j_ = pairs[1].contiguous();
    }
  }
  head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(e + c.head_extra(), 1)));
}

void ViTImpl::check_features(const torch::Tensor& features, int64_t batch) const {
  const ViTConfig& c = config_;
  const bool ok = c.num_features == 0 ? !features.defined()
                                      : features.defined() && features.dim() == 2 && features.size(0) == batch &&
                                            features.size(1) == c.num_features;
  if (!ok) {
    std::ostringstream msg;
    msg << "ViT: features of shape " << (features.defined() ? features.sizes() : c10::IntArrayRef{})
        << " do not match the model card: expected " << (c.num_features ? "[B, " + std::to_string(c.num_features) + "]" : "none");
    throw CoreError(msg.str());
  }
}

torch::Tensor ViTImpl::sign_probabilities(const torch::Tensor& features) {
  if (config_.signs.empty()) throw CoreError("ViT: the model card has no sign layer (network.signs)");
  check_features(features, features.defined() && features.dim() == 2 ? features.size(0) : -1);
  return sign_layer(features.to(signs_->weight.dtype()));
}

torch::Tensor ViTImpl::sign_layer(const torch::Tensor& f) {
  if (!config_.quadratic_signs()) return torch::sigmoid(signs_(f));
  const torch::Tensor products = f.index_select(1, pair_i_.to(f.device())) * f.index_select(1, pair_j_.to(f.device()));
  return torch::sigmoid(signs_(torch::cat({f, products}, 1)));
}

torch::Tensor ViTImpl::head_inputs(const torch::Tensor& f) {
  if (config_.signs.empty()) return f;
  return torch::cat({sign_layer(f), f.index_select(1, head_feature_index_.to(f.device()))}, 1);
}

torch::Tensor ViTImpl::forward(const torch::Tensor& x, const torch::Tensor& features) {
  const ViTConfig& c = config_;
  if (x.dim() != 5 || x.size(0) < 1 || x.size(1) != c.in_channels || x.size(2) != c.image_size[0] ||
      x.size(3) != c.image_size[1] || x.size(4) != c.image_size[2]) {
    std::ostringstream msg;
    msg << "ViT: input of shape " << x.sizes() << " does not match the model card: expected [B, " << c.in_channels
        << ", " << c.image_size[0] << ", " << c.image_size[1] << ", " << c.image_size[2] << "]";
    throw CoreError(msg.str());
  }
  const int64_t batch = x.size(0);
  check_features(features, batch);
  // (B, E, gz, gy, gx) -> (B, N, E), tokens in z, y, x order (x fastest), as the reference's flatten(2).
  torch::Tensor tokens = patch_embed_(x).flatten(2).transpose(1, 2);
  tokens = torch::cat({cls_token_.expand({batch, -1, -1}), tokens}, 1) + pos_embed_;
  for (const auto& block : *blocks_) tokens = block->as<TransformerBlock>()->forward(tokens);
  // LayerNorm is per token, so normalising only the class token equals timm's norm-then-select.
  torch::Tensor pooled = norm_(tokens.select(1, 0));
  if (c.num_features > 0) pooled = torch::cat({pooled, head_inputs(features.to(pooled.dtype()))}, 1);
  return head_(pooled).squeeze(-1);  // (B, 1) -> (B)
}

}  // namespace hemexp
