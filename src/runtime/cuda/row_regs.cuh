// Row-wise kernels (residual add + RMSNorm and relatives) with the row held in registers.
//
// A decode step runs these on a single row, i.e. a single CTA: written as strided loops they
// issued one dependent L2 load at a time and took ~15 us for a 4096-wide row (a quarter of a
// Llama-3-8B token's time went to them). Here thread i holds elements i, i + blockDim.x, ... of
// the row in a fixed-size register array, so all its loads are in flight at once, and every
// pass after the first works on registers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {

template <int kPer>
struct RowRegs {
  float v[kPer];

  __device__ __forceinline__ static std::size_t index(int j) {
    return threadIdx.x + static_cast<std::size_t>(j) * blockDim.x;
  }
  __device__ __forceinline__ void load(const float* __restrict__ row, std::size_t n) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) v[j] = index(j) < n ? row[index(j)] : 0.0f;
  }
  __device__ __forceinline__ void store(float* __restrict__ row, std::size_t n) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (index(j) < n) row[index(j)] = v[j];
    }
  }
  // 1 / sqrt(mean(v^2) + eps) over the whole row (every thread of the CTA must call it).
  __device__ __forceinline__ float inv_rms(std::size_t n, float eps, float* scratch) const {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; ++j) ss = fmaf(v[j], v[j], ss);
    ss = block_reduce<false>(ss, scratch);
    return 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  }
  // The weights w (or ones for a null w), loaded up front so that their latency overlaps the row's
  // loads instead of following the norm's reduction.
  __device__ __forceinline__ void load_weights(const float* __restrict__ w, std::size_t n) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) v[j] = w != nullptr && index(j) < n ? w[index(j)] : 1.0f;
  }
  // v[j] *= s * w.v[j], with w from load_weights.
  __device__ __forceinline__ void scale(float s, const RowRegs& w) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) v[j] = v[j] * s * w.v[j];
  }
};

// Calls fn(std::integral_constant<int, kPer>{}, threads) with the smallest kPer in {1, 2, 4, 8,
// 16, 32} such that 1024 * kPer >= n, and threads = n / kPer rounded up to a multiple of 32.
template <typename Fn>
void with_row_regs(std::size_t n, Fn&& fn) {
  const auto threads_for = [n](std::size_t per) {
    const std::size_t t = (n + per - 1) / per;
    return static_cast<unsigned>((t + 31) / 32 * 32);
  };
  if (n <= 1024) return fn(std::integral_constant<int, 1>{}, threads_for(1));
  if (n <= 2048) return fn(std::integral_constant<int, 2>{}, threads_for(2));
  if (n <= 4096) return fn(std::integral_constant<int, 4>{}, threads_for(4));
  if (n <= 8192) return fn(std::integral_constant<int, 8>{}, threads_for(8));
  if (n <= 16384) return fn(std::integral_constant<int, 16>{}, threads_for(16));
  if (n <= 32768) return fn(std::integral_constant<int, 32>{}, threads_for(32));
  cuda_fail("CUDA row kernels: rows of ", n, " floats are wider than the supported 32768");
}

}  // namespace qforge::cuda
