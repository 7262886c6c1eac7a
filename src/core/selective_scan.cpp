// The Mamba selective scan: an ATen reference and a native CPU kernel.
//
// Kernel layout. One task = one sequence b and a block of kBlock consecutive channels. Over
// the tokens, in order, the task keeps its state h[n][c] (N x kBlock floats, 1 KiB for
// N = 16) in L1/registers; channels are the innermost, fixed-size dimension, so every update
// is an elementwise operation on kBlock lanes (u_t, delta_t and y_t rows of a block are
// contiguous in the (batch, L, d_inner) layout; B_t[n] and C_t[n] are broadcast scalars) and
// the sum over n of y_t accumulates lane-wise in a fixed order, with no horizontal reduction.
// exp() is a branch-free Cephes-style polynomial that the compiler vectorises; on x86-64 the
// block update is compiled twice (AVX2 and baseline SSE2) and picked at load time.
// Each output is computed by exactly one task with the same code path, so results do not
// depend on the number of threads.
#include "hemexp/core/selective_scan.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "hemexp/core/error.hpp"

namespace hemexp {
namespace {

constexpr int kBlock = 16;  // channels per task (two AVX2 vectors)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define HEMEXP_SCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HEMEXP_SCAN_CLONES
#endif

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Throws unless the six tensors have consistent selective-scan shapes.
void check_shapes(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D, const char* who) {
  const std::string ctx = std::string(who) + ": ";
  const torch::Tensor* all[] = {&u, &delta, &A, &B, &C, &D};
  const char* names[] = {"u", "delta", "A", "B", "C", "D"};
  for (int i = 0; i < 6; ++i)
    if (!all[i]->defined()) throw CoreError(ctx + names[i] + " is undefined");
  if (u.dim() != 3) throw CoreError(ctx + "u must be (batch, L, d_inner), got " + shape_of(u));
  const int64_t batch = u.size(0), len = u.size(1), d_inner = u.size(2);
  if (!delta.sizes().equals(u.sizes()))
    throw CoreError(ctx + "delta " + shape_of(delta) + " must have the shape of u " + shape_of(u));
  if (A.dim() != 2 || A.size(0) != d_inner)
    throw CoreError(ctx + "A must be (d_inner=" + std::to_string(d_inner) + ", N), got " + shape_of(A));
  const int64_t n_state = A.size(1);
  for (const auto& [t, nm] : {std::pair<const torch::Tensor*, const char*>{&B, "B"}, {&C, "C"}})
    if (t->dim() != 3 || t->size(0) != batch || t->size(1) != len || t->size(2) != n_state)
      throw CoreError(ctx + nm + " must be (batch=" + std::to_string(batch) + ", L=" + std::to_string(len) +
                      ", N=" + std::to_string(n_state) + "), got " + shape_of(*t));
  if (D.dim() != 1 || D.size(0) != d_inner)
    throw CoreError(ctx + "D must be (d_inner=" + std::to_string(d_inner) + "), got " + shape_of(D));
  for (int i = 1; i < 6; ++i)
    if (all[i]->device() != u.device())
      throw CoreError(ctx + names[i] + " is on " + all[i]->device().str() + " but u is on " + u.device().str());
}

// exp(x) for float, branch-free so that loops over it vectorise: x = k ln2 + r with
// |r| <= ln2/2, Cephes' degree-6 polynomial for exp(r), 2^k built in the exponent bits.
// About 1 ulp; 0 below -87.3 (where expf would be subnormal), clamped at +88.
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;      // 9 significant bits: k * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kLow = -87.33654f;
  constexpr float kHigh = 88.0f;
  const float xc = std::min(std::max(x, kLow), kHigh);
  const float k = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - k * kLn2Hi) - k * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < kLow ? 0.0f : p * scale;
}

// One token of one channel block: h <- exp(delta A) h + delta u B_t ; y = <h, C_t> + D u.
// h and At are (n_state, kBlock); dl, uu, dd, y are kBlock lanes.
template <int kN>
inline void scan_token(int n_state, float* __restrict h, const float* __restrict At, const float* __restrict dl,
                       const float* __restrict uu, const float* __restrict dd, const float* __restrict Bt,
                       const float* __restrict Ct, float* __restrict y) {
  const int n_count = kN > 0 ? kN : n_state;
  float du[kBlock];
  float acc[kBlock];
  for (int c = 0; c < kBlock; ++c) {
    du[c] = dl[c] * uu[c];
    acc[c] = 0.0f;
  }
  for (int n = 0; n < n_count; ++n) {
    const float b = Bt[n];
    const float cc = Ct[n];
    float* __restrict hn = h + n * kBlock;
    const float* __restrict an = At + n * kBlock;
    for (int c = 0; c < kBlock; ++c) {
      const float hv = fast_exp(dl[c] * an[c]) * hn[c] + du[c] * b;
      hn[c] = hv;
      acc[c] += hv * cc;
    }
  }
  for (int c = 0; c < kBlock; ++c) y[c] = acc[c] + dd[c] * uu[c];
}

// The whole sequence for channels [c0, c0 + width) of sequence b. Pointers are to the start
// of that sequence: u, delta, y are (L, d_inner); B, C are (L, N).
template <int kN>
HEMEXP_SCAN_CLONES void scan_block(int64_t len, int64_t d_inner, int n_state, int64_t c0, int width,
                                   const float* u, const float* delta, const float* A, const float* B,
                                   const float* C, const float* D, float* y) {
  // State and transposed A: (n_state, kBlock), zero-padded lanes beyond `width`.
  std::vector<float> storage(2 * static_cast<size_t>(n_state) * kBlock + 64, 0.0f);
  float* h = storage.data();
  float* At = h + static_cast<size_t>(n_state) * kBlock;
  for (int c = 0; c < width; ++c)
    for (int n = 0; n < n_state; ++n) At[n * kBlock + c] = A[(c0 + c) * n_state + n];
  alignas(64) float dd[kBlock] = {};
  alignas(64) float dl[kBlock] = {};
  alignas(64) float uu[kBlock] = {};
  alignas(64) float yy[kBlock];
  for (int c = 0; c < width; ++c) dd[c] = D[c0 + c];

  const bool full = width == kBlock;
  for (int64_t t = 0; t < len; ++t) {
    const float* ut = u + t * d_inner + c0;
    const float* dt = delta + t * d_inner + c0;
    float* yt = y + t * d_inner + c0;
    if (full) {
      std::memcpy(dl, dt, sizeof(dl));
      std::memcpy(uu, ut, sizeof(uu));
    } else {
      std::memcpy(dl, dt, sizeof(float) * width);
      std::memcpy(uu, ut, sizeof(float) * width);
    }
    scan_token<kN>(n_state, h, At, dl, uu, dd, B + t * n_state, C + t * n_state, yy);
    std::memcpy(yt, yy, sizeof(float) * width);
  }
}

}  // namespace

torch::Tensor selective_scan_reference(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                       const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  check_shapes(u, delta, A, B, C, D, "selective_scan_reference");
  // Run in fp32 at least (double stays double, e.g. for tests); return that dtype.
  const torch::ScalarType type = u.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor uf = u.to(type), df = delta.to(type), Af = A.to(type), Bf = B.to(type), Cf = C.to(type),
                      Df = D.to(type);
  const int64_t batch = u.size(0), len = u.size(1), d_inner = u.size(2), n_state = A.size(1);
  torch::Tensor h = torch::zeros({batch, d_inner, n_state}, uf.options());  // the only state
  torch::Tensor y = torch::empty({batch, len, d_inner}, uf.options());
  for (int64_t t = 0; t < len; ++t) {
    const torch::Tensor dt = df.select(1, t).unsqueeze(-1);  // (batch, d_inner, 1)
    const torch::Tensor ut = uf.select(1, t);                // (batch, d_inner)
    const torch::Tensor decay = torch::exp(dt * Af);          // (batch, d_inner, N)
    h = decay * h + (dt * ut.unsqueeze(-1)) * Bf.select(1, t).unsqueeze(1);
    const torch::Tensor yt = (h * Cf.select(1, t).unsqueeze(1)).sum(-1) + Df * ut;
    y.select(1, t).copy_(yt);
  }
  return y;
}

torch::Tensor selective_scan_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  check_shapes(u, delta, A, B, C, D, "selective_scan_cpu");
  const torch::Tensor* all[] = {&u, &delta, &A, &B, &C, &D};
  for (const torch::Tensor* t : all) {
    if (!t->device().is_cpu())
      throw CoreError("selective_scan_cpu: needs CPU tensors, got " + t->device().str());
    if (t->scalar_type() != torch::kFloat32)
      throw CoreError(std::string("selective_scan_cpu: needs float32 tensors, got ") +
                      c10::toString(t->scalar_type()));
  }
  const torch::Tensor uc = u.contiguous(), dc = delta.contiguous(), Ac = A.contiguous(), Bc = B.contiguous(),
                      Cc = C.contiguous(), Dc = D.contiguous();
  const int64_t batch = u.size(0), len = u.size(1), d_inner = u.size(2);
  const int n_state = static_cast<int>(A.size(1));
  torch::Tensor y = torch::empty({batch, len, d_inner}, uc.options());
  if (y.numel() == 0) return y;
  if (n_state == 0) return y.copy_(Dc * uc);

  const int64_t blocks = (d_inner + kBlock - 1) / kBlock;
  const float* up = uc.data_ptr<float>();
  const float* dp = dc.data_ptr<float>();
  const float* Ap = Ac.data_ptr<float>();
  const float* Bp = Bc.data_ptr<float>();
  const float* Cp = Cc.data_ptr<float>();
  const float* Dp = Dc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t c0 = (task % blocks) * kBlock;
      const int width = static_cast<int>(std::min<int64_t>(kBlock, d_inner - c0));
      const int64_t seq = b * len * d_inner;
      const int64_t seq_n = b * len * n_state;
      if (n_state == 16)
        scan_block<16>(len, d_inner, n_state, c0, width, up + seq, dp + seq, Ap, Bp + seq_n, Cp + seq_n, Dp,
                       yp + seq);
      else
        scan_block<0>(len, d_inner, n_state, c0, width, up + seq, dp + seq, Ap, Bp + seq_n, Cp + seq_n, Dp,
                      yp + seq);
    }
  });
  return y;
}

torch::Tensor selective_scan(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                             const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  check_shapes(u, delta, A, B, C, D, "selective_scan");
  const torch::Tensor* all[] = {&u, &delta, &A, &B, &C, &D};
  bool kernel = true;
  for (const torch::Tensor* t : all) kernel = kernel && t->device().is_cpu() && t->scalar_type() == torch::kFloat32;
  return kernel ? selective_scan_cpu(u, delta, A, B, C, D) : selective_scan_reference(u, delta, A, B, C, D);
}

}  // namespace hemexp
