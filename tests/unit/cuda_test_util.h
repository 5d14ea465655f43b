// Helpers shared by the CUDA kernel tests (test_cuda_*.cpp): random inputs, quantized random
// weights with what they decode to on the CPU, and the BF16 rounding the tensor-core paths apply.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "core/half.h"
#include "quant/blocks.h"
#include "runtime/cuda_device.h"

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

namespace qforge {

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// The decode GEMVs' x representation (cuda_device.h, DecodeX) set for a scope, back to the choice
// before it however the scope ends.
struct ForcedDecodeX {
  cuda::DecodeX before = cuda::decode_x();
  explicit ForcedDecodeX(cuda::DecodeX x) { cuda::set_decode_x(x); }
  ~ForcedDecodeX() { cuda::set_decode_x(before); }
  ForcedDecodeX(const ForcedDecodeX&) = delete;
  ForcedDecodeX& operator=(const ForcedDecodeX&) = delete;
};

struct Quantized {
  std::vector<std::byte> bytes;
  std::vector<float> dequantized;  // the exact weights the bytes encode, per the CPU decoder
};

// rows x cols random weights (sd 0.05) quantized to `type`.
inline Quantized make_weights(GgmlType type, std::size_t rows, std::size_t cols,
                              std::uint32_t seed) {
  const std::vector<float> w = random_floats(rows * cols, seed, 0.05f);
  Quantized q;
  q.bytes.resize(rows * row_bytes(type, cols));
  quantize_rows(type, w, cols, q.bytes);
  q.dequantized.resize(rows * cols);
  dequantize_rows(type, q.bytes, cols, q.dequantized);
  return q;
}

// The float64 dot of one row of weights w with x, and sum |w_k x_k|: the scale of the F32 rounding
// error that the GEMV tests measure against (a plain relative error is meaningless when the dot
// cancels to near zero).
struct ExactDot {
  double value = 0.0;
  double magnitude = 0.0;
};

inline ExactDot exact_dot(const float* w, std::span<const float> x) {
  ExactDot d;
  for (std::size_t k = 0; k < x.size(); ++k) {
    const double p = static_cast<double>(w[k]) * x[k];
    d.value += p;
    d.magnitude += std::fabs(p);
  }
  return d;
}

inline float round_bf16(float f) {
  return bf16_to_f32(f32_to_bf16(f));
}

// One BF16 step of |w| when w lies within one F32 ulp of a BF16 rounding boundary, else 0.
inline double boundary_slack(float w) {
  const float r = round_bf16(w);
  const float up = std::nextafter(w, std::numeric_limits<float>::infinity());
  const float down = std::nextafter(w, -std::numeric_limits<float>::infinity());
  if (round_bf16(up) == r && round_bf16(down) == r) return 0.0;
  return std::ldexp(std::fabs(static_cast<double>(w)), -7);
}

}  // namespace qforge
