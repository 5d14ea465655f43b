// Asynchronous global -> shared copies (sm_80 and newer): 16 bytes per thread, bypassing L1,
// committed and waited for in per-thread groups.
#pragma once

#include <cstdint>

namespace qforge::cuda {

// A shared-memory pointer as the 32-bit shared-window address the copy instructions take.
__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(smem_dst)), "l"(src)
               : "memory");
}
// An L2 cache policy for the weight stream of a decode GEMV, which is read once per step: with
// evict_first its lines go before anything else, so that the stream (tens of MB per launch, more
// than L2) does not push out what the small kernels between the GEMVs read (activations, norm
// weights, recent KV rows); otherwise evict_normal, the default behaviour.
__device__ __forceinline__ unsigned long long l2_stream_policy(bool evict_first) {
  unsigned long long policy;
  if (evict_first) {
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  } else {
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
  }
  return policy;
}
// cp_async16 with an L2 cache policy from l2_stream_policy.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* src,
                                           unsigned long long policy) {
  asm volatile(
      "cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(smem_addr(smem_dst)),
      "l"(src), "l"(policy)
      : "memory");
}
// 16 bytes global -> shared, of which the first src_bytes (0 or 16) are read and the rest are
// zeros: 0 fills a row beyond the data without reading.
__device__ __forceinline__ void cp_async16_zfill(void* smem_dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem_dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Returns once at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

}  // namespace qforge::cuda
