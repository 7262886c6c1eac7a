// Own PRNGs for `hemexp synth`: SplitMix64 seeding, xoshiro256**, Box-Muller normals and
// counter-based (hash) numbers for per-voxel noise. No torch or std:: distributions, so
// the output is the same on every platform and thread count.
#include <cmath>

#include "hemexp/core/synth.hpp"

namespace hemexp::synth {

namespace {
constexpr double kTwoPi = 6.283185307179586;

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// 53 random bits -> [0, 1).
inline double to_unit(uint64_t x) { return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0); }
}  // namespace

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t stream_key(uint64_t seed, uint64_t index, uint64_t purpose) {
  return mix64(mix64(mix64(seed) ^ (index * 0xD1B54A32D192ED03ULL)) ^ (purpose * 0x8CB92BA72F3D8DD7ULL));
}

Rng::Rng(uint64_t key) {
  uint64_t state = key;
  for (auto& s : s_) {
    state += 0x9E3779B97F4A7C15ULL;
    s = mix64(state);
  }
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return to_unit(next()); }
double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(kTwoPi * u2);
  has_spare_ = true;
  return r * std::cos(kTwoPi * u2);
}

double Rng::normal(double mean, double sd) { return mean + sd * normal(); }
bool Rng::bernoulli(double p) { return uniform() < p; }
int Rng::integer(int n) { return static_cast<int>(uniform() * n) % (n > 0 ? n : 1); }

double hash_uniform(uint64_t key, uint64_t counter) {
  const uint64_t h = mix64(key ^ mix64(counter));
  return (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

float hash_normal(uint64_t key, uint64_t counter) {
  // One Box-Muller draw per counter from two independent 32-bit halves.
  const uint64_t h = mix64(key ^ mix64(counter));
  const float u1 = (static_cast<float>(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = static_cast<float>((h >> 8) & 0xFFFFFF) * (1.0f / 16777216.0f);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
}

namespace {
// Gradient at a lattice point: one of 12 cube-edge directions.
inline float grad_dot(uint64_t key, int64_t ix, int64_t iy, int64_t iz, float dx, float dy, float dz) {
  const uint64_t h = mix64(key ^ (static_cast<uint64_t>(ix) * 0x9E3779B1ULL) ^
                           (static_cast<uint64_t>(iy) * 0x85EBCA77ULL << 20) ^
                           (static_cast<uint64_t>(iz) * 0xC2B2AE3DULL << 40));
  switch (h % 12) {
    case 0: return dx + dy;
    case 1: return -dx + dy;
    case 2: return dx - dy;
    case 3: return -dx - dy;
    case 4: return dx + dz;
    case 5: return -dx + dz;
    case 6: return dx - dz;
    case 7: return -dx - dz;
    case 8: return dy + dz;
    case 9: return -dy + dz;
    case 10: return dy - dz;
    default: return -dy - dz;
  }
}
inline float fade(float t) { return t * t * t * (t * (t * 6.f - 15.f) + 10.f); }
inline float lerp(float a, float b, float t) { return a + t * (b - a); }
}  // namespace

float gradient_noise(uint64_t key, float x, float y, float z) {
  const float fx = std::floor(x), fy = std::floor(y), fz = std::floor(z);
  const int64_t ix = static_cast<int64_t>(fx), iy = static_cast<int64_t>(fy), iz = static_cast<int64_t>(fz);
  const float dx = x - fx, dy = y - fy, dz = z - fz;
  const float u = fade(dx), v = fade(dy), w = fade(dz);
  const float n000 = grad_dot(key, ix, iy, iz, dx, dy, dz);
  const float n100 = grad_dot(key, ix + 1, iy, iz, dx - 1, dy, dz);
  const float n010 = grad_dot(key, ix, iy + 1, iz, dx, dy - 1, dz);
  const float n110 = grad_dot(key, ix + 1, iy + 1, iz, dx - 1, dy - 1, dz);
  const float n001 = grad_dot(key, ix, iy, iz + 1, dx, dy, dz - 1);
  const float n101 = grad_dot(key, ix + 1, iy, iz + 1, dx - 1, dy, dz - 1);
  const float n011 = grad_dot(key, ix, iy + 1, iz + 1, dx, dy - 1, dz - 1);
  const float n111 = grad_dot(key, ix + 1, iy + 1, iz + 1, dx - 1, dy - 1, dz - 1);
  return lerp(lerp(lerp(n000, n100, u), lerp(n010, n110, u), v),
              lerp(lerp(n001, n101, u), lerp(n011, n111, u), v), w);
}

}  // namespace hemexp::synth
