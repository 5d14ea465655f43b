// Bulk global -> shared copies by the tensor memory accelerator (sm_90: cp.async.bulk), whose
// completion a shared-memory barrier (mbarrier) counts in bytes. One thread issues a copy of up
// to a few KiB where cp.async needs a 16-byte copy per thread: fewer instructions through the
// load/store pipeline for the same bytes. Compiled for older architectures, the functions trap
// (callers choose them only on compute capability 9.0 and newer).
#pragma once

#include <cstdint>

#include "runtime/cuda/cp_async.cuh"  // smem_addr, l2_stream_policy

namespace qforge::cuda {

// A barrier that one arrival (with the expected bytes) and the copies' bytes complete.
__device__ __forceinline__ void mbar_init(std::uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)) : "memory");
#else
  __trap();
#endif
}

// Makes initialized barriers visible to the copy engine.
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#else
  __trap();
#endif
}

// The arrival for one phase: the phase completes once `bytes` more have landed.
__device__ __forceinline__ void mbar_expect(std::uint64_t* bar, std::uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

// Returns once the barrier's phase of the given parity (0, 1, 0, ... per completion) is complete.
__device__ __forceinline__ void mbar_wait(std::uint64_t* bar, std::uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  std::uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  }
#else
  __trap();
#endif
}

// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory, with
// an L2 cache policy (cp_async.cuh's l2_stream_policy); completion is counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* smem_dst, const void* src, std::uint32_t bytes,
                                          std::uint64_t* bar, unsigned long long policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1], %2, [%3], %4;" ::"r"(smem_addr(smem_dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
#else
  __trap();
#endif
}

}  // namespace qforge::cuda
