#include "hemexp/core/model_file.hpp"

#include <array>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "hemexp/core/error.hpp"
#include "hemexp/core/safetensors.hpp"

namespace hemexp {
namespace fs = std::filesystem;

namespace {

std::string shape_text(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

// SHA-256 (FIPS 180-4).
class Sha256 {
 public:
  void update(const unsigned char* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      block_[fill_++] = data[i];
      if (fill_ == 64) compress(), fill_ = 0;
    }
    length_ += n;
  }
  std::string hex() {
    const uint64_t bits = length_ * 8;
    const unsigned char pad = 0x80;
    update(&pad, 1);
    const unsigned char zero = 0;
    while (fill_ != 56) update(&zero, 1);
    for (int i = 7; i >= 0; --i) {
      const unsigned char b = static_cast<unsigned char>(bits >> (8 * i));
      update(&b, 1);
    }
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (uint32_t v : h_)
      for (int i = 7; i >= 0; --i) out += digits[(v >> (4 * i)) & 0xf];
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block_[4 * i]) << 24 | uint32_t(block_[4 * i + 1]) << 16 | uint32_t(block_[4 * i + 2]) << 8 |
             uint32_t(block_[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
  std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char block_[64] = {};
  size_t fill_ = 0;
  uint64_t length_ = 0;
};

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 s;
  s.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return s.hex();
}

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CoreError("cannot open " + path.string());
  Sha256 s;
  std::array<char, 1 << 16> buf;
  while (in) {
    in.read(buf.data(), buf.size());
    s.update(reinterpret_cast<const unsigned char*>(buf.data()), size_t(in.gcount()));
  }
  return s.hex();
}

int64_t card_integer(const nlohmann::json& v, const std::string& what) {
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
    throw CoreError("model card: " + what + " must be an integer");
  return v.get<int64_t>();
}

std::vector<int64_t> card_integers(const nlohmann::json& v, const std::string& what) {
  if (!v.is_array()) throw CoreError("model card: " + what + " must be a list of integers");
  std::vector<int64_t> out;
  for (const nlohmann::json& item : v) out.push_back(card_integer(item, what));
  return out;
}

ModelCard parse_model_card(const std::map<std::string, std::string>& metadata, const std::string& file_name) {
  const auto it = metadata.find(kModelCardKey);
  if (it == metadata.end())
    throw ModelError("model " + file_name + ": no model card (__metadata__ has no '" + kModelCardKey + "')");
  ModelCard card;
  try {
    card.json = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError("model " + file_name + ": model card is not valid JSON: " + e.what());
  }
  if (!card.json.is_object()) throw ModelError("model " + file_name + ": model card is not a JSON object");
  const nlohmann::json version = card.json.value("format_version", nlohmann::json(0));
  const nlohmann::json kind = card.json.value("kind", nlohmann::json(""));
  if (!version.is_number_integer() || !kind.is_string() ||
      (version.is_number_unsigned() && version.get<uint64_t>() > uint64_t(std::numeric_limits<int>::max())) ||
      (!version.is_number_unsigned() && (version.get<int64_t>() > std::numeric_limits<int>::max() ||
                                         version.get<int64_t>() < std::numeric_limits<int>::min())))
    throw ModelError("model " + file_name + ": model card format_version must be an integer and kind a string");
  card.format_version = int(version.get<int64_t>());
  card.kind = kind.get<std::string>();
  if (card.format_version > kModelFormatVersion)
    throw ModelError("model " + file_name + ": model card format_version " + std::to_string(card.format_version) +
                    " is newer than this hemexp reads (" + std::to_string(kModelFormatVersion) +
                    "): update hemexp to use this model");
  if (card.format_version != kModelFormatVersion)
    throw ModelError("model " + file_name + ": model card format_version " + std::to_string(card.format_version) +
                    " is not supported (expected " + std::to_string(kModelFormatVersion) + ")");
  return card;
}

void load_named_tensors(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                        const std::string& file_name) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  auto assign = [&](const std::string& name, torch::Tensor& target) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw ModelError("model " + file_name + ": missing tensor '" + name + "'");
    if (it->second.sizes() != target.sizes())
      throw ModelError("model " + file_name + ": tensor '" + name + "' has shape " + shape_text(it->second.sizes()) +
                      ", the network expects " + shape_text(target.sizes()));
    if (it->second.is_floating_point() != target.is_floating_point())
      throw ModelError("model " + file_name + ": tensor '" + name + "' is " + std::string(c10::toString(it->second.scalar_type())) +
                      ", the network expects " + std::string(c10::toString(target.scalar_type())));
    // A damaged or badly exported file: NaN weights give NaN outputs that pass as numbers.
    if (it->second.is_floating_point() && !torch::isfinite(it->second).all().item<bool>())
      throw ModelError("model " + file_name + ": tensor '" + name + "' holds NaN or infinite values (a damaged file?)");
    target.copy_(it->second.to(target.dtype()));
    used.insert(name);
  };
  for (auto& p : module.named_parameters(true)) assign(p.key(), p.value());
  for (auto& b : module.named_buffers(true)) assign(b.key(), b.value());
  for (const auto& [name, t] : tensors)
    if (!used.count(name)) throw ModelError("model " + file_name + ": unexpected tensor '" + name + "' (not in the network)");
}

ModelFile ModelFile::read(const fs::path& path, const std::string& expected_kind) {
  ModelFile model;
  model.path = path;
  const std::string name = path.filename().string();
  SafetensorsFile file;
  try {
    file = read_safetensors(path);
  } catch (const CoreError& e) {
    throw ModelError(e.what());  // the message names the path already
  }
  model.card = parse_model_card(file.metadata, name);
  if (!expected_kind.empty() && model.card.kind != expected_kind)
    throw ModelError("model " + name + ": is a '" + model.card.kind + "' model, not a " + expected_kind + " model");
  if (!model.card.json.contains("network")) throw ModelError("model " + name + ": model card has no network block");
  model.tensors = std::move(file.tensors);
  model.sha256 = sha256_file(path);
  return model;
}

void ModelFile::install_weights(torch::nn::Module& module, const torch::Device& device) {
  load_named_tensors(module, tensors, path.filename().string());
  tensors.clear();
  module.to(device);
  module.eval();
}

nlohmann::json ModelFile::provenance_json() const {
  return {{"path", path.string()}, {"sha256", sha256}, {"name", name()}, {"research_use_only", true}};
}

}  // namespace hemexp
