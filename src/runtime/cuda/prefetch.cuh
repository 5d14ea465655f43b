// L2 prefetch hints, for reads a kernel can start before pdl_wait (pdl.cuh): weights, and the KV
// cache rows of earlier steps. A hint only: nothing is read into registers or L1.
#pragma once

#include <cstddef>

namespace qforge::cuda {

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// The K and V rows of one KV head at positions [first, end) (cache layout [position][head][dim],
// dk / dv elements of T per row), 128-byte line by line, spread over the CTA's threads. The
// attention kernels call it for positions before the step's first one, which the previous
// kernel does not write.
template <typename T>
__device__ void prefetch_kv_rows_l2(const T* k_cache, const T* v_cache, int first, int end,
                                    int n_head_kv, int kv_head, int dk, int dv) {
  constexpr int kLine = 128;
  const int k_lines = (dk * static_cast<int>(sizeof(T)) + kLine - 1) / kLine;
  const int v_lines = (dv * static_cast<int>(sizeof(T)) + kLine - 1) / kLine;
  const int lines = k_lines + v_lines, n_rows = end - first;
  for (int i = static_cast<int>(threadIdx.x); i < n_rows * lines;
       i += static_cast<int>(blockDim.x)) {
    const auto row = static_cast<std::size_t>(first + i / lines) * n_head_kv + kv_head;
    const int line = i % lines;
    prefetch_l2(line < k_lines
                    ? reinterpret_cast<const char*>(k_cache + row * dk) + kLine * line
                    : reinterpret_cast<const char*>(v_cache + row * dv) + kLine * (line - k_lines));
  }
}

}  // namespace qforge::cuda
