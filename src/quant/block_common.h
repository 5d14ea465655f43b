// Shared helpers for the block-format kernels (block_*.cpp): little-endian field access, f16
// scale fields, a barrier that keeps the compiler from fusing a*b+c into an FMA where the
// reference (gguf-py / ggml) rounds the product separately, and AVX2 reductions.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/half.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QFORGE_BLOCKS_AVX2 1
#include <immintrin.h>
#endif

namespace qforge::blocks {

inline std::uint16_t load_u16(const std::byte* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_u16(std::byte* p, std::uint16_t v) {
  std::memcpy(p, &v, sizeof v);
}
inline void store_u32(std::byte* p, std::uint32_t v) {
  std::memcpy(p, &v, sizeof v);
}
inline float load_f16(const std::byte* p) {
  return f16_to_f32(load_u16(p));
}
inline void store_f16(std::byte* p, float f) {
  store_u16(p, f32_to_f16(f));
}
inline std::uint8_t u8(const std::byte* p, std::size_t i) {
  return std::to_integer<std::uint8_t>(p[i]);
}

// Returns x unchanged, but forces it to be materialised: the compiler cannot contract a product
// passed through here with a following add (with -march=x86-64-v3, GCC's default
// -ffp-contract=fast would otherwise do so and break bit-exactness with the numpy oracle).
inline float rounded(float x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(x));
#else
  volatile float v = x;
  x = v;
#endif
  return x;
}

// Round half away from zero to int, as C's roundf / ggml's nearest_int for the ranges used here.
inline int round_away(float x) {
  return static_cast<int>(std::round(x));
}

// Float -> int for values the caller knows to be small; NaN and out-of-range map to lo/hi
// instead of undefined behaviour.
inline int clamp_trunc(float x, int lo, int hi) {
  if (!(x >= static_cast<float>(lo))) return lo;
  if (x >= static_cast<float>(hi)) return hi;
  return static_cast<int>(x);
}

// The 16 non-linear levels of IQ4_NL / IQ4_XS.
inline constexpr std::int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};

#ifdef QFORGE_BLOCKS_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
// 8 bytes at p (unsigned) -> 8 floats.
inline __m256 u8x8_to_ps(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}
inline __m256 i8x8_to_ps(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}
#endif

}  // namespace qforge::blocks
