// Programmatic dependent launch (sm_90 and newer): a kernel launched with launch_pdl may start
// while the kernel before it on the stream is still finishing, so its launch and CTA setup
// overlap that kernel's last wave instead of following it. A decode step is hundreds of short
// kernels, where those gaps add up to a sizeable part of the step.
//
// The contract, for every kernel launched with launch_pdl:
//   1. call pdl_wait() before touching any memory the preceding kernel writes (it returns once
//      that grid has completed and its writes are visible), and
//   2. call pdl_trigger() after pdl_wait(), which lets the next kernel's CTAs start launching.
//      Triggering only after the wait keeps at most one kernel waiting behind a running one.
// Because of 2, a kernel that starts early finds every kernel but the one just before it
// complete: what those wrote, and what no kernel writes (weights, norm weights), may be read
// before pdl_wait(). The norm kernels load their weights there, so the HBM latency of those
// loads overlaps the previous kernel's tail (a token streams far more than L2 holds, so the
// weights of a layer are never in L2 when it comes back).
// Exception: kernels whose successor is a weight-streaming GEMV trigger at their start instead
// (pdl_trigger_early: the one-CTA residual / norm kernels, qk_prepare and batch attention).
// Those are short chains of dependent loads on few SMs; triggering early lets the next GEMV's
// CTAs take the SMs they leave free and start their weight stream (cp.async stages) while the
// chain runs, instead of after it (H100 tg128, with the GEMV's own L2 prefetch dropped as it no
// longer paid: Llama-3-8B +4.7%, Gemma 4 31B +2.5%). The price is a
// weaker rule: a kernel may now start while kernels before its predecessor still run, back to
// the last one that triggered after its wait (a GEMV), so before its wait a kernel reads only
// what no kernel of the step writes: weights, norm weights, the KV rows of earlier steps, and
// the rotary tables (written first thing in the step; qk_prepare, which reads them early,
// follows a GEMV, so they are complete). Flash decode triggers late: early, the output GEMV's
// stream took bandwidth from its cache reads (31B tg @ d4096 -1%).
// Kernels launched the ordinary way may follow or precede them: ordinary launches wait for full
// completion as always. On older GPUs, or with QFORGE_PDL=0 in the environment, launch_pdl is an
// ordinary launch and the two calls compile to nothing / are no-ops.
#pragma once

#include "runtime/cuda/check.cuh"

#include <cstddef>
#include <utility>

#include "runtime/cuda/stream.h"

namespace qforge::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// pdl_trigger() at a kernel's start, before its wait: see the exception above.
__device__ __forceinline__ void pdl_trigger_early() {
  pdl_trigger();
}

// True when the current device supports it (compute capability 9.0+) and QFORGE_PDL is not "0".
bool pdl_enabled();

// launch_pdl with CTAs grouped in clusters of cluster_size along x (sm_90 and newer; grid.x a
// multiple of it); 1: no cluster dimension, as launch_pdl.
template <typename... KernelArgs, typename... Args>
void launch_pdl_clustered(const char* name, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                          std::size_t shared_bytes, StreamHandle stream, unsigned cluster_size,
                          Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  unsigned n = 0;
  if (pdl_enabled()) {
    attributes[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_size > 1) {
    attributes[n].id = cudaLaunchAttributeClusterDimension;
    attributes[n].val.clusterDim.x = cluster_size;
    attributes[n].val.clusterDim.y = 1;
    attributes[n].val.clusterDim.z = 1;
    ++n;
  }
  config.attrs = attributes;
  config.numAttrs = n;
  check_status(cudaLaunchKernelEx(&config, kernel, static_cast<KernelArgs>(args)...), name,
               __FILE__, __LINE__);
}

template <typename... KernelArgs, typename... Args>
void launch_pdl(const char* name, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                std::size_t shared_bytes, StreamHandle stream, Args&&... args) {
  launch_pdl_clustered(name, kernel, grid, block, shared_bytes, stream, 1u,
                       std::forward<Args>(args)...);
}

}  // namespace qforge::cuda
