// IQ4_NL and IQ4_XS: 4-bit codes indexing a fixed non-linear table (kIq4Values).
//   IQ4_NL (18 B per 32):   d:f16, qs[16]                 x[j] = d * kv[nibble j]
//   IQ4_XS (136 B per 256): d:f16, scales_h:u16, scales_l[4], qs[128]
//     sub-block ib (32 elements) has the 6-bit scale (nibble ib of scales_l | 2 bits ib of
//     scales_h << 4) - 32 and codes in qs[16 ib .. 16 ib + 15] with the Q4_0 nibble order.
// Quantization follows the reference idea: pick a scale from the block maximum, then try a few
// nearby scales and keep the one minimising the weighted squared error (weights x^2, or
// importance * sqrt(sigma^2 + x^2) with an imatrix).
#include <algorithm>
#include <cmath>

#include "quant/block_common.h"
#include "quant/block_kernels.h"

namespace qforge::blocks {
namespace {

constexpr std::size_t kQK = 32;
constexpr std::size_t kQK_K = 256;
constexpr int kTries = 7;

inline int nearest_level(float v) {
  if (v <= kIq4Values[0]) return 0;
  if (v >= kIq4Values[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    (v < kIq4Values[mid] ? hi : lo) = mid;
  }
  return v - kIq4Values[lo] < kIq4Values[hi] - v ? lo : hi;
}

void make_weights(const float* x, const float* importance, std::size_t n, float sigma2, float* w) {
  for (std::size_t j = 0; j < n; ++j)
    w[j] = importance ? importance[j] * std::sqrt(sigma2 + x[j] * x[j]) : x[j] * x[j];
}

// Best scale for 32 values on the non-linear grid; returns 0 for an all-zero block.
float best_scale(const float* x, const float* w) {
  float amax = 0.0f, max = 0.0f;
  for (std::size_t j = 0; j < kQK; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  if (amax < 1e-30f) return 0.0f;
  float best_d = 0.0f, best = -1.0f;
  for (int t = -kTries; t <= kTries; ++t) {
    const float id = (static_cast<float>(t) + kIq4Values[0]) / max;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) {
      const float q = kIq4Values[nearest_level(id * x[j])];
      sumqx += w[j] * q * x[j];
      sumq2 += w[j] * q * q;
    }
    // The least-squares scale for these levels reduces the error by sumqx^2 / sumq2.
    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
      best_d = sumqx / sumq2;
      best = best_d * sumqx;
    }
  }
  return best_d;
}

void encode_levels(const float* x, float d, std::byte* qs) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  int q[kQK];
  for (std::size_t j = 0; j < kQK; ++j) q[j] = d != 0.0f ? nearest_level(x[j] * id) : 8;
  for (std::size_t j = 0; j < 16; ++j) qs[j] = static_cast<std::byte>(q[j] | (q[j + 16] << 4));
}

inline float sigma2_of(const float* x, std::size_t n) {
  float s = 0.0f;
  for (std::size_t j = 0; j < n; ++j) s += x[j] * x[j];
  return 2.0f * s / static_cast<float>(n);
}

// sum_j kv[code j] * x[j] for one 32-element group of codes.
inline float level_dot(const std::byte* qs, const float* x) {
  float s = 0.0f;
  for (std::size_t j = 0; j < 16; ++j) {
    s += static_cast<float>(kIq4Values[u8(qs, j) & 0x0f]) * x[j];
    s += static_cast<float>(kIq4Values[u8(qs, j) >> 4]) * x[j + 16];
  }
  return s;
}

inline int xs_scale(const std::byte* block, std::size_t ib) {
  const int lo = (u8(block + 4, ib / 2) >> (4 * (ib % 2))) & 0x0f;
  const int hi = (load_u16(block + 2) >> (2 * ib)) & 3;
  return (lo | (hi << 4)) - 32;
}

}  // namespace

void dequantize_iq4_nl(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK; ++b, src += 18, dst += kQK) {
    const float d = load_f16(src);
    for (std::size_t j = 0; j < 16; ++j) {
      dst[j] = d * static_cast<float>(kIq4Values[u8(src + 2, j) & 0x0f]);
      dst[j + 16] = d * static_cast<float>(kIq4Values[u8(src + 2, j) >> 4]);
    }
  }
}

void quantize_iq4_nl(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  float w[kQK];
  for (std::size_t b = 0; b < n / kQK; ++b, src += kQK, dst += 18) {
    make_weights(src, importance ? importance + b * kQK : nullptr, kQK, sigma2_of(src, kQK), w);
    const float d = best_scale(src, w);
    store_f16(dst, d);
    encode_levels(src, load_f16(dst), dst + 2);  // codes for the scale as stored
  }
}

float dot_iq4_nl(const std::byte* row, const float* x, std::size_t n) {
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / kQK; ++b, row += 18, x += kQK)
    sum += load_f16(row) * level_dot(row + 2, x);
  return sum;
}

void dequantize_iq4_xs(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += 136) {
    const float d = load_f16(src);
    for (std::size_t ib = 0; ib < 8; ++ib, dst += kQK) {
      const float dl = d * static_cast<float>(xs_scale(src, ib));
      const std::byte* qs = src + 8 + 16 * ib;
      for (std::size_t j = 0; j < 16; ++j) {
        dst[j] = dl * static_cast<float>(kIq4Values[u8(qs, j) & 0x0f]);
        dst[j + 16] = dl * static_cast<float>(kIq4Values[u8(qs, j) >> 4]);
      }
    }
  }
}

void quantize_iq4_xs(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  float w[kQK_K];
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 136) {
    make_weights(src, importance ? importance + b * kQK_K : nullptr, kQK_K, sigma2_of(src, kQK_K),
                 w);
    float scales[8];
    float max_scale = 0.0f, amax_scale = 0.0f;
    for (std::size_t ib = 0; ib < 8; ++ib) {
      scales[ib] = best_scale(src + kQK * ib, w + kQK * ib);
      if (std::fabs(scales[ib]) > amax_scale) {
        amax_scale = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    // 6-bit signed sub-scales in [-32, 31]; the largest maps to -32 (its sign flips the grid).
    store_f16(dst, -max_scale / 32.0f);
    const float d = load_f16(dst);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    std::uint16_t scales_h = 0;
    std::byte scales_l[4] = {};
    for (std::size_t ib = 0; ib < 8; ++ib) {
      int l = std::clamp(round_away(id * scales[ib]), -32, 31);
      // Refit the codes to the rounded scale; fall back to zero for an empty sub-block.
      const float dl = d * static_cast<float>(l);
      if (dl == 0.0f) l = 0;
      encode_levels(src + kQK * ib, dl, dst + 8 + 16 * ib);
      const int u = l + 32;
      scales_l[ib / 2] |= static_cast<std::byte>((u & 0x0f) << (4 * (ib % 2)));
      scales_h |= static_cast<std::uint16_t>((u >> 4) << (2 * ib));
    }
    store_u16(dst + 2, scales_h);
    std::memcpy(dst + 4, scales_l, 4);
  }
}

float dot_iq4_xs(const std::byte* row, const float* x, std::size_t n) {
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / kQK_K; ++b, row += 136) {
    const float d = load_f16(row);
    for (std::size_t ib = 0; ib < 8; ++ib, x += kQK)
      sum += d * static_cast<float>(xs_scale(row, ib)) * level_dot(row + 8 + 16 * ib, x);
  }
  return sum;
}

}  // namespace qforge::blocks
