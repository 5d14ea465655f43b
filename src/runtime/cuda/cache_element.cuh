// The KV cache's element types (BF16 as its 16 bits, or F32): conversion from the F32 values the
// kernels compute (BF16 rounds to nearest even) and back.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace qforge::cuda {

template <typename T>
__device__ __forceinline__ T to_cache(float v);
template <>
__device__ __forceinline__ std::uint16_t to_cache<std::uint16_t>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
__device__ __forceinline__ float to_cache<float>(float v) {
  return v;
}

__device__ __forceinline__ float from_cache(std::uint16_t v) {
  return __uint_as_float(static_cast<std::uint32_t>(v) << 16);
}
__device__ __forceinline__ float from_cache(float v) {
  return v;
}

}  // namespace qforge::cuda
