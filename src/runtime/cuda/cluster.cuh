// Thread block clusters (sm_90 and newer): a CTA's rank and count in its cluster, the cluster
// barrier, and the address of a shared variable in another CTA of the cluster (distributed shared
// memory). On older devices, and in launches without a cluster dimension, every CTA is a cluster
// of one: rank 0 of 1.
#pragma once

#include <cstdint>

namespace qforge::cuda::cluster {

__device__ __forceinline__ int rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  std::uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
#else
  return 0;
#endif
}

__device__ __forceinline__ int size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  std::uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return static_cast<int>(n);
#else
  return 1;
#endif
}

// Every thread of the cluster's CTAs arrives, then waits for the others. arrive_relaxed orders
// no memory (for "every CTA has started"); arrive releases this thread's writes, shared memory
// of other CTAs included, and wait acquires the others'.
__device__ __forceinline__ void arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}

// The shared::cluster address (32 bits) of the shared-memory address `addr` (smem_addr) in CTA
// `r` of the cluster, and stores to such an address.
__device__ __forceinline__ std::uint32_t peer_addr(std::uint32_t addr, int r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  std::uint32_t out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(out)
               : "r"(addr), "r"(static_cast<std::uint32_t>(r)));
  return out;
#else
  (void)r;
  return addr;
#endif
}
__device__ __forceinline__ void store(std::uint32_t addr, uint2 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.shared::cluster.v2.u32 [%0], {%1, %2};" ::"r"(addr), "r"(v.x), "r"(v.y)
               : "memory");
#else  // a cluster of one: this CTA's own shared memory
  asm volatile("st.shared.v2.u32 [%0], {%1, %2};" ::"r"(addr), "r"(v.x), "r"(v.y) : "memory");
#endif
}

}  // namespace qforge::cuda::cluster
