// The Mamba selective scan: an ATen reference and a native CPU kernel.
//
// Kernel layout. One task = one sequence b and a block of kBlock consecutive channels. Over
// the tokens, in order, the task keeps its state h[n][c] (N x kBlock floats, 1 KiB for
// N = 16) in L1/registers; channels are the innermost, fixed-size dimension, so every update
// is an elementwise operation on kBlock lanes (u_t, delta_t and y_t rows of a block are
// contiguous in the (batch, L, d_inner) layout; B_t[n] and C_t[n] are broadcast scalars) and
// the sum over n of y_t accumulates lane-wise in a fixed order, with no horizontal reduction.
// The lanes are explicit vectors (GCC/Clang vector extension) and exp() is a branch-free
// Cephes-style polynomial on them. On x86-64 the block loop is compiled for AVX-512 (one
// 16-lane register per block), AVX2+FMA (two 8-lane registers) and baseline SSE2 (four), and
// the best one the CPU supports is picked at run time. The variants may differ in the last
// bits (FMA contraction), never between runs or thread counts on one machine.
// Each output is computed by exactly one task with the same code path, so results do not
// depend on the number of threads.
#include "hemexp/core/selective_scan.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "hemexp/core/error.hpp"
#include "simd.hpp"

#ifdef HEMEXP_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/selective_scan_cuda.hpp"
#endif

namespace hemexp {
namespace {

using simd::Simd;

constexpr int kBlock = 16;  // channels per task: one AVX-512 vector, two AVX2 vectors
constexpr int64_t kPrefetch = 8;  // tokens ahead

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Throws unless every tensor is float32 on a device of the given type (what a native kernel reads).
void check_float32_on(c10::DeviceType type, std::initializer_list<const torch::Tensor*> all, const char* who) {
  for (const torch::Tensor* t : all) {
    if (t->device().type() != type)
      throw CoreError(std::string(who) + ": needs " + c10::DeviceTypeName(type) + " tensors, got " + t->device().str());
    if (t->scalar_type() != torch::kFloat32)
      throw CoreError(std::string(who) + ": needs float32 tensors, got " + c10::toString(t->scalar_type()));
  }
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

// The whole sequence for channels [c0, c0 + width) of one sequence, kW lanes per vector.
// Pointers are to the start of that sequence: u, delta, y are (L, d_inner); B, C are (L, N).
// kN = 0: any N.
template <int kN, int kW>
HEMEXP_INLINE void scan_block_body(int64_t len, int64_t d_inner, int n_state, int64_t c0, int width,
                                   const float* u, const float* delta, const float* A, const float* B,
                                   const float* C, const float* D, float* y) {
  using S = Simd<kW>;
  using F = typename S::F;
  constexpr int kVecs = kBlock / kW;  // vectors per channel block
  const int n_count = kN > 0 ? kN : n_state;
  // State h and transposed A: (n_count, kBlock) floats each, lanes beyond `width` stay 0.
  // (Plain floats and unaligned vector loads: heap memory is only 16-byte aligned.)
  std::vector<float> state(2 * static_cast<size_t>(n_count) * kBlock, 0.0f);
  float* h = state.data();
  float* At = h + static_cast<size_t>(n_count) * kBlock;
  for (int n = 0; n < n_count; ++n)
    for (int c = 0; c < width; ++c) At[n * kBlock + c] = A[(c0 + c) * n_count + n];
  float dbuf[kBlock] = {}, ubuf[kBlock] = {}, ybuf[kBlock] = {};
  for (int c = 0; c < width; ++c) dbuf[c] = D[c0 + c];
  F dd[kVecs];
  for (int j = 0; j < kVecs; ++j) dd[j] = S::load(dbuf + kW * j);
  std::fill(dbuf, dbuf + kBlock, 0.0f);

  const bool full = width == kBlock;
  for (int64_t t = 0; t < len; ++t) {
    const float* ut = u + t * d_inner + c0;
    const float* dt = delta + t * d_inner + c0;
    float* yt = y + t * d_inner + c0;
    const float* Bt = B + t * n_count;
    const float* Ct = C + t * n_count;
    // Rows of u and delta a few tokens ahead (a d_inner stride apart, not sequential).
    __builtin_prefetch(ut + kPrefetch * d_inner);
    __builtin_prefetch(dt + kPrefetch * d_inner);
    if (!full) {  // a partial block: go through zero-padded buffers
      std::memcpy(ubuf, ut, sizeof(float) * width);
      std::memcpy(dbuf, dt, sizeof(float) * width);
      ut = ubuf;
      dt = dbuf;
    }
    F uu[kVecs], dl[kVecs], du[kVecs], acc[kVecs];
    for (int j = 0; j < kVecs; ++j) {
      uu[j] = S::load(ut + kW * j);
      dl[j] = S::load(dt + kW * j);
      du[j] = dl[j] * uu[j];
      acc[j] = S::splat(0.0f);
    }
    for (int n = 0; n < n_count; ++n) {
      const float b = Bt[n];
      const float cc = Ct[n];
      float* hn = h + n * kBlock;
      const float* an = At + n * kBlock;
      for (int j = 0; j < kVecs; ++j) {
        const F hv = S::exp(dl[j] * S::load(an + kW * j)) * S::load(hn + kW * j) + du[j] * b;
        S::store(hn + kW * j, hv);
        acc[j] += hv * cc;
      }
    }
    float* out = full ? yt : ybuf;
    for (int j = 0; j < kVecs; ++j) S::store(out + kW * j, acc[j] + dd[j] * uu[j]);
    if (!full) std::memcpy(yt, ybuf, sizeof(float) * width);
  }
}

using ScanBlockFn = void (*)(int64_t, int64_t, int, int64_t, int, const float*, const float*, const float*,
                             const float*, const float*, const float*, float*);

// One instantiation per instruction set, each compiled for its target; kernel_for() picks one.
template <int kN>
void scan_block_baseline(int64_t len, int64_t d_inner, int n_state, int64_t c0, int width, const float* u,
                         const float* delta, const float* A, const float* B, const float* C, const float* D,
                         float* y) {
  scan_block_body<kN, 4>(len, d_inner, n_state, c0, width, u, delta, A, B, C, D, y);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HEMEXP_SCAN_X86 1
template <int kN>
__attribute__((target("avx2,fma"))) void scan_block_avx2(int64_t len, int64_t d_inner, int n_state, int64_t c0,
                                                         int width, const float* u, const float* delta,
                                                         const float* A, const float* B, const float* C,
                                                         const float* D, float* y) {
  scan_block_body<kN, 8>(len, d_inner, n_state, c0, width, u, delta, A, B, C, D, y);
}

template <int kN>
__attribute__((target("avx512f,avx2,fma"))) void scan_block_avx512(int64_t len, int64_t d_inner, int n_state,
                                                                   int64_t c0, int width, const float* u,
                                                                   const float* delta, const float* A,
                                                                   const float* B, const float* C, const float* D,
                                                                   float* y) {
  scan_block_body<kN, 16>(len, d_inner, n_state, c0, width, u, delta, A, B, C, D, y);
}
#endif

bool isa_supported(ScanIsa isa) {
  switch (isa) {
    case ScanIsa::Auto:
    case ScanIsa::Baseline:
      return true;
#ifdef HEMEXP_SCAN_X86
    case ScanIsa::Avx2:
      return simd::cpu_has_avx2_fma();
    case ScanIsa::Avx512:
      return simd::cpu_has_avx512f() && simd::cpu_has_avx2_fma();
#else
    default:
      return false;
#endif
  }
  return false;
}

ScanIsa resolve(ScanIsa isa) {
  if (isa != ScanIsa::Auto) return isa;
  static const ScanIsa best = isa_supported(ScanIsa::Avx512) ? ScanIsa::Avx512
                              : isa_supported(ScanIsa::Avx2) ? ScanIsa::Avx2
                                                             : ScanIsa::Baseline;
  return best;
}

ScanBlockFn kernel_for(ScanIsa isa, int n_state) {
  const bool n16 = n_state == 16;
  switch (isa) {
#ifdef HEMEXP_SCAN_X86
    case ScanIsa::Avx512:
      return n16 ? scan_block_avx512<16> : scan_block_avx512<0>;
    case ScanIsa::Avx2:
      return n16 ? scan_block_avx2<16> : scan_block_avx2<0>;
#endif
    default:
      return n16 ? scan_block_baseline<16> : scan_block_baseline<0>;
  }
}

const char* isa_name(ScanIsa isa) {
  switch (isa) {
    case ScanIsa::Avx512:
      return "avx512";
    case ScanIsa::Avx2:
      return "avx2";
    case ScanIsa::Baseline:
      return "baseline";
    default:
      return "auto";
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

const char* selective_scan_cpu_isa() { return isa_name(resolve(ScanIsa::Auto)); }

bool selective_scan_cpu_supports(ScanIsa isa) { return isa_supported(isa); }

torch::Tensor selective_scan_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  return selective_scan_cpu(u, delta, A, B, C, D, ScanIsa::Auto);
}

torch::Tensor selective_scan_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                 ScanIsa isa) {
  check_shapes(u, delta, A, B, C, D, "selective_scan_cpu");
  if (!isa_supported(isa))
    throw CoreError(std::string("selective_scan_cpu: this CPU does not support the ") + isa_name(isa) + " kernel");
  check_float32_on(c10::DeviceType::CPU, {&u, &delta, &A, &B, &C, &D}, "selective_scan_cpu");
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
  const ScanBlockFn scan_block = kernel_for(resolve(isa), n_state);
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t c0 = (task % blocks) * kBlock;
      const int width = static_cast<int>(std::min<int64_t>(kBlock, d_inner - c0));
      const int64_t seq = b * len * d_inner;
      const int64_t seq_n = b * len * n_state;
      scan_block(len, d_inner, n_state, c0, width, up + seq, dp + seq, Ap, Bp + seq_n, Cp + seq_n, Dp, yp + seq);
    }
  });
  return y;
}

torch::Tensor selective_scan_chunked(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                     int64_t chunk) {
  check_shapes(u, delta, A, B, C, D, "selective_scan_chunked");
  if (chunk < 1) throw CoreError("selective_scan_chunked: chunk must be >= 1");
  const auto f32 = u.options().dtype(torch::kFloat32);
  const torch::Tensor u32 = u.to(torch::kFloat32), dl = delta.to(torch::kFloat32), B32 = B.to(torch::kFloat32),
                      C32 = C.to(torch::kFloat32), D32 = D.to(torch::kFloat32);
  const int64_t batch = u.size(0), length = u.size(1), d_inner = u.size(2), n_state = A.size(1);
  if (length == 0) return torch::zeros({batch, 0, d_inner}, f32);
  torch::Tensor h = torch::zeros({batch, d_inner, n_state}, f32);
  const torch::Tensor noncausal = torch::ones({chunk, chunk}, u.options().dtype(torch::kBool)).triu(1);  // [t, s]: s > t
  const torch::Tensor A64 = A.to(torch::kFloat64).view({1, d_inner, n_state, 1});
  std::vector<torch::Tensor> ys;
  for (int64_t t0 = 0; t0 < length; t0 += chunk) {
    const int64_t t1 = std::min(t0 + chunk, length), size = t1 - t0;
    const torch::Tensor dt = dl.slice(1, t0, t1).transpose(1, 2);  // (b, d, T)
    const torch::Tensor uc = u32.slice(1, t0, t1);
    // S_t - S_s in float64 (no cancellation), exp only of the causal half (<= 0): no overflow.
    const torch::Tensor S = torch::cumsum(dt.to(torch::kFloat64).unsqueeze(2) * A64, -1);  // (b, d, N, T)
    const torch::Tensor decay = (S.unsqueeze(-1) - S.unsqueeze(-2))
                                    .to(torch::kFloat32)
                                    .masked_fill_(noncausal.slice(0, 0, size).slice(1, 0, size), -INFINITY)
                                    .exp_();                                                // (b, d, N, T_t, T_s)
    const torch::Tensor x = (dt * uc.transpose(1, 2)).unsqueeze(2) * B32.slice(1, t0, t1).transpose(1, 2).unsqueeze(1);
    const torch::Tensor states =
        torch::matmul(decay, x.unsqueeze(-1)).squeeze(-1) + torch::exp(S.to(torch::kFloat32)) * h.unsqueeze(-1);
    ys.push_back(torch::einsum("bdnt,btn->btd", {states, C32.slice(1, t0, t1)}) + D32 * uc);
    h = states.select(-1, size - 1);
  }
  return torch::cat(ys, 1);
}

bool selective_scan_cuda_compiled() {
#ifdef HEMEXP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

torch::Tensor selective_scan_cuda(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  check_shapes(u, delta, A, B, C, D, "selective_scan_cuda");
#ifdef HEMEXP_WITH_CUDA
  check_float32_on(c10::DeviceType::CUDA, {&u, &delta, &A, &B, &C, &D}, "selective_scan_cuda");
  const int64_t batch = u.size(0), len = u.size(1), d_inner = u.size(2);
  const int64_t n_state = A.size(1);
  if (n_state > cuda_kernels::kScanMaxState)
    throw CoreError("selective_scan_cuda: N = " + std::to_string(n_state) + " is above the kernel's " +
                    std::to_string(cuda_kernels::kScanMaxState));
  if (batch > 65535) throw CoreError("selective_scan_cuda: batch " + std::to_string(batch) + " is above 65535");
  const c10::cuda::CUDAGuard guard(u.device());
  const torch::Tensor uc = u.contiguous(), dc = delta.contiguous(), Ac = A.contiguous(), Bc = B.contiguous(),
                      Cc = C.contiguous(), Dc = D.contiguous();
  torch::Tensor y = torch::empty({batch, len, d_inner}, uc.options());
  if (y.numel() == 0) return y;
  if (n_state == 0) return y.copy_(Dc * uc);
  const std::string err = cuda_kernels::selective_scan_launch(
      uc.data_ptr<float>(), dc.data_ptr<float>(), Ac.data_ptr<float>(), Bc.data_ptr<float>(), Cc.data_ptr<float>(),
      Dc.data_ptr<float>(), y.data_ptr<float>(), batch, len, d_inner, static_cast<int>(n_state),
      c10::cuda::getCurrentCUDAStream(u.device().index()).stream());
  if (!err.empty()) throw CoreError("selective_scan_cuda: kernel launch failed: " + err);
  return y;
#else
  throw CoreError("selective_scan_cuda: this build has no CUDA kernel (configure with a CUDA LibTorch and nvcc, "
                  "-DHEMEXP_WITH_CUDA=ON)");
#endif
}

torch::Tensor selective_scan(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                             const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D) {
  check_shapes(u, delta, A, B, C, D, "selective_scan");
  const torch::Tensor* all[] = {&u, &delta, &A, &B, &C, &D};
  bool cpu_float = true, any_double = false, all_cuda = true;
  for (const torch::Tensor* t : all) {
    cpu_float = cpu_float && t->device().is_cpu() && t->scalar_type() == torch::kFloat32;
    any_double = any_double || t->scalar_type() == torch::kFloat64;
    all_cuda = all_cuda && t->device().is_cuda();
  }
  if (cpu_float) return selective_scan_cpu(u, delta, A, B, C, D);
  if (any_double) return selective_scan_reference(u, delta, A, B, C, D);  // tests: float64 stays float64
#ifdef HEMEXP_WITH_CUDA
  // A kernel that cannot launch (e.g. built by an nvcc newer than the driver, or for another
  // architecture) is reported once on stderr and the chunked scan is used from then on.
  static std::atomic<bool> kernel_unusable{false};
  if (all_cuda && A.size(1) <= cuda_kernels::kScanMaxState && u.size(0) <= 65535 && !kernel_unusable) {
    // bf16 / fp16 activations (--precision): the scan itself runs in float32
    const auto f = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
    try {
      return selective_scan_cuda(f(u), f(delta), f(A), f(B), f(C), f(D));
    } catch (const CoreError& e) {
      if (!kernel_unusable.exchange(true))
        std::fprintf(stderr, "hemexp: warning: %s; the chunked ATen scan is used instead\n", e.what());
    }
  }
#else
  (void)all_cuda;
#endif
  return selective_scan_chunked(u, delta, A, B, C, D);  // other devices: L / 32 sequential steps
}

}  // namespace hemexp
