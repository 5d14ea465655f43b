// Per-type kernels behind the dispatch in blocks.cpp. Every function takes n = number of
// elements (a multiple of the type's block size, checked by the caller) and raw pointers to
// buffers the caller has sized. importance is null or n floats.
#pragma once

#include <cstddef>

namespace qforge::blocks {

using DequantizeFn = void (*)(const std::byte* src, float* dst, std::size_t n);
using QuantizeFn = void (*)(const float* src, std::byte* dst, std::size_t n,
                            const float* importance);
using DotFn = float (*)(const std::byte* row, const float* x, std::size_t n);

#define QFORGE_DECLARE_BLOCK_KERNELS(T)                                                        \
  void dequantize_##T(const std::byte* src, float* dst, std::size_t n);                        \
  void quantize_##T(const float* src, std::byte* dst, std::size_t n, const float* importance); \
  float dot_##T(const std::byte* row, const float* x, std::size_t n);

// block_float.cpp
QFORGE_DECLARE_BLOCK_KERNELS(f32)
QFORGE_DECLARE_BLOCK_KERNELS(f16)
QFORGE_DECLARE_BLOCK_KERNELS(bf16)
// block_q4_q5_q8.cpp
QFORGE_DECLARE_BLOCK_KERNELS(q4_0)
QFORGE_DECLARE_BLOCK_KERNELS(q4_1)
QFORGE_DECLARE_BLOCK_KERNELS(q5_0)
QFORGE_DECLARE_BLOCK_KERNELS(q5_1)
QFORGE_DECLARE_BLOCK_KERNELS(q8_0)
// block_k.cpp (dequantize, dot) and block_k_quantize.cpp (quantize)
QFORGE_DECLARE_BLOCK_KERNELS(q2_k)
QFORGE_DECLARE_BLOCK_KERNELS(q3_k)
QFORGE_DECLARE_BLOCK_KERNELS(q4_k)
QFORGE_DECLARE_BLOCK_KERNELS(q5_k)
QFORGE_DECLARE_BLOCK_KERNELS(q6_k)
QFORGE_DECLARE_BLOCK_KERNELS(q8_k)
// block_iq4.cpp
QFORGE_DECLARE_BLOCK_KERNELS(iq4_nl)
QFORGE_DECLARE_BLOCK_KERNELS(iq4_xs)

#undef QFORGE_DECLARE_BLOCK_KERNELS

}  // namespace qforge::blocks
