#pragma once
// Float vectors of kW lanes (GCC/Clang vector extensions) and an exp on them, shared by the core's
// own kernels (the selective scan, the sliding window's softmax). Internal to hemexp_core: not
// installed. Include it in a .cpp only, inside nothing; functions that use a width wider than the
// file's baseline ISA need the matching target attribute (avx2,fma for 8; avx512f for 16).
#include <cstdint>
#include <cstring>

#if !defined(__GNUC__)
#error "hemexp's kernels use GCC/Clang vector extensions"
#endif

namespace hemexp::simd {

// kW float lanes (GCC/Clang vector extension): 16 = one AVX-512 register, 8 = one AVX2
// register, 4 = one SSE2 register. Written with explicit vectors so that vectorisation does
// not depend on the optimiser (auto-vectorising the selects in fast_exp would need
// -fno-trapping-math). (-Wpsabi: these vectors are passed by value only between inlined
// functions of one file.)
#pragma GCC diagnostic ignored "-Wpsabi"
#define HEMEXP_INLINE inline __attribute__((always_inline))

// (One explicit specialisation per width: GCC drops vector_size on dependent typedefs.)
template <int kW>
struct SimdTypes;
template <>
struct SimdTypes<4> {
  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
};
template <>
struct SimdTypes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct SimdTypes<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};

template <int kW>
struct Simd {
  using F = typename SimdTypes<kW>::F;
  using I = typename SimdTypes<kW>::I;
  static_assert(sizeof(F) == sizeof(float) * kW && sizeof(I) == sizeof(F), "vector types");

  static HEMEXP_INLINE F splat(float x) { return F{} + x; }
  static HEMEXP_INLINE F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static HEMEXP_INLINE void store(float* p, F v) { std::memcpy(p, &v, sizeof(v)); }

  // exp(x) lane-wise: x = k ln2 + r with |r| <= ln2/2, Cephes' degree-6 polynomial for exp(r),
  // 2^k built in the exponent bits. About 1 ulp; exactly 1 at x = 0; 0 below -87.34 (where
  // expf would be subnormal); clamped at +88 (not reached: delta >= 0 and A < 0 in Mamba).
  static HEMEXP_INLINE F exp(F x) {
    const F low = splat(-87.33654f);
    const F high = splat(88.0f);
    const F round = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    F xc = x < low ? low : x;
    xc = xc > high ? high : xc;
    const F k = (xc * 1.44269504088896341f + round) - round;
    const F r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;  // ln 2 in two parts: k * hi is exact
    F p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const I bits = (__builtin_convertvector(k, I) + 127) << 23;
    const F scale = (F)bits;  // same-size vector cast: reinterprets the bits
    return x < low ? splat(0.0f) : p * scale;
  }
};

// Whether this CPU runs the AVX2 + FMA kernels (x86 GCC builds; elsewhere false): what a target
// ("avx2,fma") function, or an "arch=x86-64-v3" clone, needs.
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Whether this CPU runs the AVX-512 kernels (AVX-512F; x86 GCC builds, elsewhere false).
inline bool cpu_has_avx512f() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
#else
  return false;
#endif
}

}  // namespace hemexp::simd
