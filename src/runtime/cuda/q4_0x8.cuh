// Byte offsets inside a Q4_0x8 row (q4_0x8.h): block b's f16 scale and its 16 code bytes.
#pragma once

#include <cstddef>

namespace qforge::cuda::q4_0x8 {

constexpr int kGroupBlocks = 8, kGroupBytes = 144;

__host__ __device__ constexpr std::size_t scale_offset(int b) {
  return static_cast<std::size_t>(b / kGroupBlocks) * kGroupBytes + 2 * (b % kGroupBlocks);
}
__host__ __device__ constexpr std::size_t codes_offset(int b) {
  return static_cast<std::size_t>(b / kGroupBlocks) * kGroupBytes + 16 + 16 * (b % kGroupBlocks);
}

}  // namespace qforge::cuda::q4_0x8
