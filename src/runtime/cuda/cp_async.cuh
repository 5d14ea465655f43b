// Asynchronous global -> shared copies (sm_80 and newer): 16 bytes per thread, bypassing L1,
// committed and waited for in per-thread groups.
#pragma once

namespace qforge::cuda {

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* src) {
  const auto dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
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
