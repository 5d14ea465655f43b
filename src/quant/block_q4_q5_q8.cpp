// The 32-element legacy formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//
// Layouts (little-endian, f16 = IEEE half):
//   Q4_0: d:f16, qs[16]           x[j] = d * ((nibble j) - 8)
//   Q4_1: d:f16, m:f16, qs[16]    x[j] = d * (nibble j) + m
//   Q5_0: d:f16, qh:u32, qs[16]   x[j] = d * ((nibble j | bit j of qh << 4) - 16)
//   Q5_1: d:f16, m:f16, qh:u32, qs[16]
//   Q8_0: d:f16, qs[32] int8      x[j] = d * qs[j]
// "nibble j" is the low nibble of qs[j] for j < 16 and the high nibble of qs[j - 16] otherwise.
//
// The quantizers reproduce gguf-py's (and ggml's reference) arithmetic step by step in F32,
// so the bytes match exactly; rounded() keeps products from being fused with the next add.
#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "quant/block_common.h"
#include "quant/block_kernels.h"

namespace qforge::blocks {
namespace {

constexpr std::size_t kQK = 32;

// The 32 4-bit codes of a qs[16] array, in element order.
inline void unpack_nibbles(const std::byte* qs, int* q) {
  for (std::size_t j = 0; j < 16; ++j) {
    q[j] = u8(qs, j) & 0x0f;
    q[j + 16] = u8(qs, j) >> 4;
  }
}
inline void pack_nibbles(const int* q, std::byte* qs) {
  for (std::size_t j = 0; j < 16; ++j)
    qs[j] = static_cast<std::byte>((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
}
inline void unpack_5bit(const std::byte* qh, const std::byte* qs, int* q) {
  const std::uint32_t h = load_u32(qh);
  unpack_nibbles(qs, q);
  for (std::size_t j = 0; j < kQK; ++j) q[j] |= static_cast<int>((h >> j) & 1u) << 4;
}
inline std::uint32_t high_bits(const int* q) {
  std::uint32_t h = 0;
  for (std::size_t j = 0; j < kQK; ++j) h |= static_cast<std::uint32_t>((q[j] >> 4) & 1) << j;
  return h;
}

// First element of largest magnitude, with its sign (numpy argmax semantics).
inline float signed_absmax(const float* x) {
  float amax = 0.0f, max = 0.0f;
  for (std::size_t j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}
inline void min_max(const float* x, float& lo, float& hi) {
  lo = x[0];
  hi = x[0];
  for (std::size_t j = 1; j < kQK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
}
inline float inverse_or_zero(float d) {
  return d != 0.0f ? 1.0f / d : 0.0f;
}

// Symmetric: q = trunc(x/d + offset + 0.5) with d = max / -offset.
void quantize_symmetric(const float* x, int offset, int qmax, float& d, int* q) {
  d = signed_absmax(x) / static_cast<float>(-offset);
  const float id = inverse_or_zero(d);
  const float bias = static_cast<float>(offset) + 0.5f;
  for (std::size_t j = 0; j < kQK; ++j) q[j] = clamp_trunc(rounded(x[j] * id) + bias, 0, qmax);
}
// Importance-weighted symmetric quantization (an imatrix is given), the search llama.cpp runs for
// its legacy types: per-element weights w = imp * sqrt(mean(x^2) + x^2); candidate inverse scales
// -(offset + k/10) / max for k = -9..9, each giving codes whose scale is refit by weighted least
// squares; the smallest weighted error (with the scale rounded to F16, as stored) wins. The
// reference rounding is the first candidate, so the weighted error never exceeds it.
void quantize_symmetric_weighted(const float* x, const float* imp, int offset, int qmax, float& d,
                                 int* q) {
  quantize_symmetric(x, offset, qmax, d, q);
  const float max = signed_absmax(x);
  if (max == 0.0f) return;
  float sigma2 = 0.0f;
  for (std::size_t j = 0; j < kQK; ++j) sigma2 += x[j] * x[j];
  sigma2 /= static_cast<float>(kQK);
  float w[kQK];
  for (std::size_t j = 0; j < kQK; ++j) w[j] = imp[j] * std::sqrt(sigma2 + x[j] * x[j]);
  const auto error = [&](float scale, const int* codes) {
    float e = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) {
      const float r = x[j] - scale * static_cast<float>(codes[j] - offset);
      e += w[j] * r * r;
    }
    return e;
  };
  d = f16_to_f32(f32_to_f16(d));
  float best = error(d, q);
  int l[kQK];
  for (int k = -9; k <= 9; ++k) {
    const float id = -(static_cast<float>(offset) + 0.1f * static_cast<float>(k)) / max;
    float sum_lx = 0.0f, sum_l2 = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) {
      l[j] = std::clamp(static_cast<int>(std::lround(x[j] * id)), -offset, qmax - offset) + offset;
      const auto c = static_cast<float>(l[j] - offset);
      sum_lx += w[j] * c * x[j];
      sum_l2 += w[j] * c * c;
    }
    if (sum_l2 <= 0.0f) continue;
    const float scale = f16_to_f32(f32_to_f16(sum_lx / sum_l2));
    const float e = error(scale, l);
    if (e < best) {
      best = e;
      d = scale;
      std::copy_n(l, kQK, q);
    }
  }
}
// Asymmetric: q = trunc((x - min)/d + 0.5) with d = (max - min) / qmax.
void quantize_affine(const float* x, int qmax, float& d, float& m, int* q) {
  float hi;
  min_max(x, m, hi);
  d = (hi - m) / static_cast<float>(qmax);
  const float id = inverse_or_zero(d);
  for (std::size_t j = 0; j < kQK; ++j)
    q[j] = clamp_trunc(rounded(rounded(x[j] - m) * id) + 0.5f, 0, qmax);
}

#ifdef QFORGE_BLOCKS_AVX2
// Sum over a 32-element block of q[j] * x[j] for 32 4-bit codes in qs[16] (element order above).
inline __m256 nibble_products(const std::byte* qs, const float* x, __m256 bias, __m256 acc) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(bytes, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  acc = _mm256_fmadd_ps(_mm256_add_ps(u8x8_to_ps(lo), bias), _mm256_loadu_ps(x), acc);
  acc = _mm256_fmadd_ps(_mm256_add_ps(u8x8_to_ps(_mm_srli_si128(lo, 8)), bias),
                        _mm256_loadu_ps(x + 8), acc);
  acc = _mm256_fmadd_ps(_mm256_add_ps(u8x8_to_ps(hi), bias), _mm256_loadu_ps(x + 16), acc);
  acc = _mm256_fmadd_ps(_mm256_add_ps(u8x8_to_ps(_mm_srli_si128(hi, 8)), bias),
                        _mm256_loadu_ps(x + 24), acc);
  return acc;
}
// Spreads 8 bits of h (starting at bit `first`) to 8 int32 lanes holding 16 or 0.
inline __m256 high_bit_values(std::uint32_t h, int first) {
  const __m256i bits = _mm256_set1_epi32(static_cast<int>(h >> first));
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(bits, sel), sel);
  return _mm256_and_ps(_mm256_castsi256_ps(on), _mm256_set1_ps(16.0f));
}
#endif

}  // namespace

// ---- Q4_0 ----------------------------------------------------------------------------------
void dequantize_q4_0(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 18, dst += kQK) {
    const float d = load_f16(src);
    int q[kQK];
    unpack_nibbles(src + 2, q);
    for (std::size_t j = 0; j < kQK; ++j) dst[j] = d * static_cast<float>(q[j] - 8);
  }
}
void quantize_q4_0(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 18) {
    float d;
    int q[kQK];
    if (importance) {
      quantize_symmetric_weighted(src, importance + b * kQK, 8, 15, d, q);
    } else {
      quantize_symmetric(src, 8, 15, d, q);
    }
    store_f16(dst, d);
    pack_nibbles(q, dst + 2);
  }
}
float dot_q4_0(const std::byte* row, const float* x, std::size_t n) {
  const std::size_t nb = n / kQK;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc = _mm256_setzero_ps();
  const __m256 bias = _mm256_set1_ps(-8.0f);
  for (std::size_t b = 0; b < nb; ++b, row += 18, x += kQK) {
    const __m256 s = nibble_products(row + 2, x, bias, _mm256_setzero_ps());
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_f16(row)), s, acc);
  }
  return hsum(acc);
#else
  float sum = 0.0f;
  for (std::size_t b = 0; b < nb; ++b, row += 18, x += kQK) {
    int q[kQK];
    unpack_nibbles(row + 2, q);
    float s = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) s += static_cast<float>(q[j] - 8) * x[j];
    sum += load_f16(row) * s;
  }
  return sum;
#endif
}

// ---- Q4_1 ----------------------------------------------------------------------------------
void dequantize_q4_1(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 20, dst += kQK) {
    const float d = load_f16(src), m = load_f16(src + 2);
    int q[kQK];
    unpack_nibbles(src + 4, q);
    for (std::size_t j = 0; j < kQK; ++j) dst[j] = rounded(d * static_cast<float>(q[j])) + m;
  }
}
void quantize_q4_1(const float* src, std::byte* dst, std::size_t n, const float*) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 20) {
    float d, m;
    int q[kQK];
    quantize_affine(src, 15, d, m, q);
    store_f16(dst, d);
    store_f16(dst + 2, m);
    pack_nibbles(q, dst + 4);
  }
}
float dot_q4_1(const std::byte* row, const float* x, std::size_t n) {
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / kQK; ++b, row += 20, x += kQK) {
    int q[kQK];
    unpack_nibbles(row + 4, q);
    float sq = 0.0f, sx = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) {
      sq += static_cast<float>(q[j]) * x[j];
      sx += x[j];
    }
    sum += load_f16(row) * sq + load_f16(row + 2) * sx;
  }
  return sum;
}

// ---- Q5_0 ----------------------------------------------------------------------------------
void dequantize_q5_0(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 22, dst += kQK) {
    const float d = load_f16(src);
    int q[kQK];
    unpack_5bit(src + 2, src + 6, q);
    for (std::size_t j = 0; j < kQK; ++j) dst[j] = d * static_cast<float>(q[j] - 16);
  }
}
void quantize_q5_0(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 22) {
    float d;
    int q[kQK];
    if (importance) {
      quantize_symmetric_weighted(src, importance + b * kQK, 16, 31, d, q);
    } else {
      quantize_symmetric(src, 16, 31, d, q);
    }
    store_f16(dst, d);
    store_u32(dst + 2, high_bits(q));
    pack_nibbles(q, dst + 6);
  }
}
float dot_q5_0(const std::byte* row, const float* x, std::size_t n) {
  const std::size_t nb = n / kQK;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc = _mm256_setzero_ps();
  const __m256 bias = _mm256_set1_ps(-16.0f);
  for (std::size_t b = 0; b < nb; ++b, row += 22, x += kQK) {
    const std::uint32_t h = load_u32(row + 2);
    __m256 s = nibble_products(row + 6, x, bias, _mm256_setzero_ps());
    for (int g = 0; g < 4; ++g)
      s = _mm256_fmadd_ps(high_bit_values(h, 8 * g), _mm256_loadu_ps(x + 8 * g), s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_f16(row)), s, acc);
  }
  return hsum(acc);
#else
  float sum = 0.0f;
  for (std::size_t b = 0; b < nb; ++b, row += 22, x += kQK) {
    int q[kQK];
    unpack_5bit(row + 2, row + 6, q);
    float s = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) s += static_cast<float>(q[j] - 16) * x[j];
    sum += load_f16(row) * s;
  }
  return sum;
#endif
}

// ---- Q5_1 ----------------------------------------------------------------------------------
void dequantize_q5_1(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 24, dst += kQK) {
    const float d = load_f16(src), m = load_f16(src + 2);
    int q[kQK];
    unpack_5bit(src + 4, src + 8, q);
    for (std::size_t j = 0; j < kQK; ++j) dst[j] = rounded(d * static_cast<float>(q[j])) + m;
  }
}
void quantize_q5_1(const float* src, std::byte* dst, std::size_t n, const float*) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 24) {
    float d, m;
    int q[kQK];
    quantize_affine(src, 31, d, m, q);
    store_f16(dst, d);
    store_f16(dst + 2, m);
    store_u32(dst + 4, high_bits(q));
    pack_nibbles(q, dst + 8);
  }
}
float dot_q5_1(const std::byte* row, const float* x, std::size_t n) {
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / kQK; ++b, row += 24, x += kQK) {
    int q[kQK];
    unpack_5bit(row + 4, row + 8, q);
    float sq = 0.0f, sx = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) {
      sq += static_cast<float>(q[j]) * x[j];
      sx += x[j];
    }
    sum += load_f16(row) * sq + load_f16(row + 2) * sx;
  }
  return sum;
}

// ---- Q8_0 ----------------------------------------------------------------------------------
void dequantize_q8_0(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 34, dst += kQK) {
    const float d = load_f16(src);
    for (std::size_t j = 0; j < kQK; ++j)
      dst[j] = static_cast<float>(static_cast<std::int8_t>(u8(src + 2, j))) * d;
  }
}
void quantize_q8_0(const float* src, std::byte* dst, std::size_t n, const float*) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 34) {
    float amax = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127.0f;
    const float id = inverse_or_zero(d);
    store_f16(dst, d);
    for (std::size_t j = 0; j < kQK; ++j) {
      const float v = std::round(src[j] * id);  // half away from zero, like gguf's np_roundf
      const int q = std::isnan(v) ? 0 : static_cast<int>(std::clamp(v, -127.0f, 127.0f));
      dst[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(q));
    }
  }
}
float dot_q8_0(const std::byte* row, const float* x, std::size_t n) {
  const std::size_t nb = n / kQK;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t b = 0; b < nb; ++b, row += 34, x += kQK) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2));
    const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
    __m256 s = _mm256_mul_ps(i8x8_to_ps(q0), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(q0, 8)), _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(i8x8_to_ps(q1), _mm256_loadu_ps(x + 16), s);
    s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(q1, 8)), _mm256_loadu_ps(x + 24), s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_f16(row)), s, acc);
  }
  return hsum(acc);
#else
  float sum = 0.0f;
  for (std::size_t b = 0; b < nb; ++b, row += 34, x += kQK) {
    float s = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j)
      s += static_cast<float>(static_cast<std::int8_t>(u8(row + 2, j))) * x[j];
    sum += load_f16(row) * s;
  }
  return sum;
#endif
}

}  // namespace qforge::blocks
