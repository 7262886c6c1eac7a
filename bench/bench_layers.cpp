// Per-layer profile of the segmenter's U-Mamba on one window (issue 13: "find where the time
// goes, per layer"): each module of one forward pass timed as the network runs it (the
// inference fast paths: the direct kernel, oneDNN or ATen per convolution, fused norm +
// activation), and each convolution alone as the network runs it and through each backend
// (oneDNN, ATen's own conv3d, the direct kernel where it applies), with its GFLOP/s, against a
// plain large conv3d measured in the same run.
//
//   bench_layers --model models/hemexp-seg-labels.safetensors [--threads 2] [--repeats 15] [--json OUT]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "bench_timing.hpp"
#include "hemexp/core/conv_direct.hpp"
#include "hemexp/core/runtime.hpp"
#include "hemexp/core/segmenter.hpp"
#include "hemexp/core/umamba.hpp"

namespace {

using hemexp::bench::time_it;

struct Row {
  std::string name, kind;
  std::vector<int64_t> in_shape;
  double gflop = 0, seconds = 0;  // a module; a convolution as the network runs it (inference_conv3d)
  double onednn_seconds = 0, aten_seconds = 0, direct_seconds = 0;  // a convolution alone per backend (0: not applicable)
};

double conv_gflop(const torch::nn::Conv3dImpl& c, const torch::Tensor& out) {
  const auto& w = c.weight;
  return 2.0 * double(w.size(0) * w.size(1) * w.size(2) * w.size(3) * w.size(4)) *
         double(out.size(2) * out.size(3) * out.size(4)) / 1e9;
}

std::vector<int64_t> padding_of(const torch::nn::Conv3dImpl& c) {
  return {c.weight.size(2) / 2, c.weight.size(3) / 2, c.weight.size(4) / 2};
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, json_out;
  int threads = 2, repeats = 15;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--json") json_out = next();
    else {
      std::fprintf(stderr, "usage: %s --model FILE [--threads N] [--repeats R] [--json OUT]\n", argv[0]);
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "--model is required\n");
    return 2;
  }
  hemexp::keep_freed_memory();  // as hemexp and bench_segmenter do (fresh pages are slow here)
  torch::set_num_threads(threads);
  torch::InferenceMode guard;
  hemexp::Segmenter segmenter = hemexp::Segmenter::load(model);
  hemexp::UMamba net = segmenter.network();
  const hemexp::UMambaConfig& c = net->config();
  const auto patch = segmenter.recipe().patch_size;
  const int64_t n = c.n_stages();

  std::vector<Row> rows;
  // One module, timed as the network runs it.
  auto module_row = [&](const std::string& name, const std::string& kind, const torch::Tensor& x,
                        const std::function<torch::Tensor(const torch::Tensor&)>& f) {
    Row r{name, kind, x.sizes().vec()};
    torch::Tensor y;
    r.seconds = time_it(repeats, [&] { y = f(x); }).median;
    rows.push_back(r);
    return y;
  };
  // One convolution alone on its input: as the network runs it, and through oneDNN, ATen and the
  // direct kernel (where it applies).
  auto conv_row = [&](const std::string& name, torch::nn::Conv3dImpl& conv, const torch::Tensor& in) {
    const auto pad = padding_of(conv);
    Row r{name, "conv", in.sizes().vec()};
    torch::Tensor y;
    r.seconds = time_it(repeats, [&] { y = hemexp::inference_conv3d(conv, in, pad); }).median;
    r.onednn_seconds = time_it(repeats, [&] {
                         y = torch::mkldnn_convolution(in.contiguous(), conv.weight, conv.bias, pad,
                                                       *conv.options.stride(), {1, 1, 1}, 1);
                       }).median;
    r.aten_seconds = time_it(repeats, [&] { y = torch::conv3d(in, conv.weight, conv.bias, *conv.options.stride(), pad); }).median;
    if (hemexp::direct_conv3d_applicable(in, conv.weight, *conv.options.stride(), pad, {1, 1, 1}, 1))
      r.direct_seconds = time_it(repeats, [&] { y = hemexp::direct_conv3d(in, conv.weight, conv.bias, (*conv.options.stride())[1]); }).median;
    r.gflop = conv_gflop(conv, y);
    rows.push_back(r);
  };
  // Each convolution of a module alone (its own input).
  auto conv_rows = [&](const std::string& prefix, torch::nn::Module& m, const torch::Tensor& x) {
    for (const auto& item : m.named_children()) {
      auto* conv = item.value()->as<torch::nn::Conv3dImpl>();
      if (!conv) continue;
      // conv2 reads conv1's output: its input is a tensor of that shape (values do not matter).
      torch::Tensor in = x;
      if (item.key() == "conv2") {
        auto* c1 = m.named_children()["conv1"]->as<torch::nn::Conv3dImpl>();
        in = torch::mkldnn_convolution(x.contiguous(), c1->weight, c1->bias, padding_of(*c1), *c1->options.stride(),
                                       {1, 1, 1}, 1);
      }
      conv_row(prefix + "." + item.key(), *conv, in);
    }
  };

  // The residual blocks of one stage, each with its convolutions, in order.
  auto stage_rows = [&](const std::string& prefix, torch::nn::SequentialImpl& seq, torch::Tensor t) {
    for (size_t b = 0; b < seq.size(); ++b) {
      auto& blk = *seq.ptr(b);
      const std::string name = prefix + "." + std::to_string(b);
      conv_rows(name, blk, t);
      t = module_row(name, "block", t, [&](const torch::Tensor& u) { return blk.as<hemexp::ResidualBlockImpl>()->forward(u); });
    }
    return t;
  };

  auto children = net->named_children();
  torch::Tensor x = torch::randn({1, c.in_channels, patch[0], patch[1], patch[2]});
  auto& stem = *children["stem"];
  conv_rows("stem", stem, x);
  x = module_row("stem", "block", x, [&](const torch::Tensor& t) { return stem.as<hemexp::ResidualBlockImpl>()->forward(t); });
  auto encoder = children["encoder_stages"]->as<torch::nn::ModuleListImpl>();
  auto mamba = children["encoder_mamba"]->as<torch::nn::ModuleListImpl>();
  std::vector<torch::Tensor> skips;
  size_t mi = 0;
  for (int64_t s = 0; s < n; ++s) {
    x = stage_rows("encoder" + std::to_string(s), *(*encoder)[s]->as<torch::nn::SequentialImpl>(), x);
    if (c.mamba_after_every_stage() || s == n - 1) {
      auto layer = (*mamba)[mi++]->as<hemexp::MambaLayerImpl>();
      x = module_row("mamba" + std::to_string(s), "mamba", x, [&](const torch::Tensor& t) { return layer->forward(t); });
    }
    skips.push_back(x);
  }
  auto ups = children["upsample_convs"]->as<torch::nn::ModuleListImpl>();
  auto decoder = children["decoder_stages"]->as<torch::nn::ModuleListImpl>();
  auto heads = children["seg_heads"]->as<torch::nn::ModuleListImpl>();
  for (int64_t s = 0; s < n - 1; ++s) {
    const torch::Tensor& skip = skips[size_t(n - 2 - s)];
    auto up = (*ups)[s]->as<torch::nn::Conv3dImpl>();
    // As the network does it: the 1x1x1 channel change at the lower resolution, then the nearest
    // upsampling written with the skip connection into the joined tensor (upsample_concat).
    x = module_row("up" + std::to_string(s), "upsample", x,
                   [&](const torch::Tensor& t) { return hemexp::inference_conv3d(*up, t, {0, 0, 0}); });
    x = module_row("join" + std::to_string(s), "join", x,
                   [&](const torch::Tensor& t) { return hemexp::upsample_concat(t, skip); });
    x = stage_rows("decoder" + std::to_string(s), *(*decoder)[s]->as<torch::nn::SequentialImpl>(), x);
    // forward() runs the full-resolution head only (the deep-supervision ones are for training).
    if (s == n - 2) conv_row("head" + std::to_string(s), *(*heads)[s]->as<torch::nn::Conv3dImpl>(), x);
  }
  torch::Tensor whole = torch::randn({1, c.in_channels, patch[0], patch[1], patch[2]});
  const double forward_s = time_it(repeats, [&] { net->forward(whole); }).median;
  const double big_gflops = hemexp::bench::plain_conv3d(std::max(3, repeats / 3), torch::kCPU).gflops;

  double module_total = 0, conv_total = 0, conv_used = 0, conv_best = 0, gflop_total = 0;
  std::printf("%d thread(s), window %lldx%lldx%lld, median of %d\n", threads, (long long)patch[0], (long long)patch[1],
              (long long)patch[2], repeats);
  std::printf("%-14s %-8s %-22s %9s %9s %9s %9s %9s %8s\n", "layer", "kind", "input", "ms", "oneDNN", "ATen", "direct",
              "GFLOP", "GFLOP/s");
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    std::string shape;
    for (size_t i = 1; i < r.in_shape.size(); ++i) shape += (i > 1 ? "x" : "") + std::to_string(r.in_shape[i]);
    const bool conv = r.kind == "conv";
    const auto ms = [&](double s) { return conv && s > 0 ? std::to_string(s * 1e3).substr(0, 7) : std::string(); };
    if (conv) {
      conv_total += r.onednn_seconds;
      conv_used += r.seconds;
      double best = std::min(r.onednn_seconds, r.aten_seconds);
      if (r.direct_seconds > 0) best = std::min(best, r.direct_seconds);
      conv_best += best;
      gflop_total += r.gflop;
    } else {
      module_total += r.seconds;
    }
    std::printf("%-14s %-8s %-22s %9.3f %9s %9s %9s %9.4f %8s\n", r.name.c_str(), r.kind.c_str(), shape.c_str(),
                r.seconds * 1e3, ms(r.onednn_seconds).c_str(), ms(r.aten_seconds).c_str(), ms(r.direct_seconds).c_str(),
                r.gflop, conv ? std::to_string(int(r.gflop / r.seconds)).c_str() : "");
    out.push_back({{"layer", r.name}, {"kind", r.kind}, {"input", r.in_shape}, {"seconds", r.seconds},
                   {"onednn_seconds", r.onednn_seconds}, {"aten_seconds", r.aten_seconds},
                   {"direct_seconds", r.direct_seconds}, {"gflop", r.gflop}});
  }
  std::printf("modules summed %.2f ms, whole forward %.2f ms; convolutions alone: %.2f ms as the network runs them "
              "(%.0f GFLOP/s), %.2f ms all through oneDNN, %.2f ms taking the fastest backend per layer\n",
              module_total * 1e3, forward_s * 1e3, conv_used * 1e3, gflop_total / conv_used, conv_total * 1e3, conv_best * 1e3);
  std::printf("plain conv3d 64->64 3x3x3 on 32x64x64: %.1f GFLOP/s; of it: convolutions alone as run %.0f%%, at the fastest "
              "backend per layer %.0f%%, whole forward %.0f%% (convolution GFLOP only)\n",
              big_gflops, 100 * gflop_total / conv_used / big_gflops, 100 * gflop_total / conv_best / big_gflops,
              100 * gflop_total / forward_s / big_gflops);
  if (!json_out.empty()) {
    std::ofstream f(json_out);
    f << nlohmann::json{{"threads", threads},
                        {"layers", out},
                        {"forward_seconds", forward_s},
                        {"plain_conv_gflops", big_gflops},
                        {"conv_gflop", gflop_total}}
             .dump(2)
      << "\n";
  }
  return 0;
}
