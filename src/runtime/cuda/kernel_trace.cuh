// A timeline of one kernel's CTAs inside a running decode graph, for finding where a token's
// time goes between and inside the GEMVs (ncu serializes kernels, and this machine has no nsys).
// Thread 0 of each CTA writes one record with %globaltimer stamps (ns, one clock for all SMs) of
// four moments: entry, release from the PDL wait, inputs ready, and the end of the CTA's last
// warp. Only in builds configured with -DQFORGE_KERNEL_TRACE=ON (CMake), and there only once a
// host call gave the translation unit a buffer; other builds compile the stamps to nothing.
//
// The buffer and its counter are static, so each .cu file that includes this header has its own
// (the backend is built without relocatable device code); the file exposes start/read functions
// that call trace_start_here / trace_read_here.
#pragma once

#include "runtime/cuda/check.cuh"

#include <cstdint>
#include <vector>

#include "runtime/cuda_trace.h"

namespace qforge::cuda {

#if defined(QFORGE_KERNEL_TRACE)
static __device__ TraceRecord* g_trace_records = nullptr;
static __device__ unsigned g_trace_capacity = 0;
static __device__ unsigned g_trace_count = 0;

__device__ __forceinline__ std::uint64_t global_ns() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One CTA's stamps, kept in shared memory (not registers, which the traced kernels need);
// thread 0 takes them and commits the record.
struct TraceStamps {
  bool on = false;
  std::uint64_t* t = nullptr;

  __device__ void begin() {
    __shared__ std::uint64_t stamps[3];
    t = stamps;
    on = g_trace_records != nullptr;
    if (on && threadIdx.x == 0) t[0] = global_ns();
  }
  __device__ void mark(int k) {
    if (on && threadIdx.x == 0) t[k] = global_ns();
  }
  // Called by every thread of the CTA (it synchronizes them when tracing).
  __device__ void commit(const void* tag, int rows, int cols) {
    if (!on) return;
    __syncthreads();
    if (threadIdx.x != 0) return;
    const unsigned i = atomicAdd(&g_trace_count, 1u);
    if (i >= g_trace_capacity) return;
    TraceRecord r;
    for (int k = 0; k < 3; ++k) r.t[k] = t[k];
    r.t[3] = global_ns();
    r.tag = reinterpret_cast<std::uint64_t>(tag);
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    r.smid = smid;
    r.block = blockIdx.x;
    r.rows = static_cast<unsigned>(rows);
    r.cols = static_cast<unsigned>(cols);
    g_trace_records[i] = r;
  }
};

constexpr bool kTraceBuilt = true;

// Host side, for the including file's buffer. A null buffer turns tracing off.
static inline void trace_start_here(TraceRecord* device_buffer, unsigned capacity) {
  const unsigned zero = 0;
  QFORGE_CUDA_CHECK(cudaMemcpyToSymbol(g_trace_records, &device_buffer, sizeof device_buffer));
  QFORGE_CUDA_CHECK(cudaMemcpyToSymbol(g_trace_capacity, &capacity, sizeof capacity));
  QFORGE_CUDA_CHECK(cudaMemcpyToSymbol(g_trace_count, &zero, sizeof zero));
}

static inline unsigned trace_count_here() {
  unsigned n = 0;
  QFORGE_CUDA_CHECK(cudaMemcpyFromSymbol(&n, g_trace_count, sizeof n));
  return n;
}
#else
constexpr bool kTraceBuilt = false;

// Not a trace build: the stamps compile to nothing (measured: even a null check per CTA and the
// shared stamps cost the Q4_0x8 GEMV 1-2.5% of tg128).
struct TraceStamps {
  __device__ void begin() {}
  __device__ void mark(int) {}
  __device__ void commit(const void*, int, int) {}
};

static inline void trace_start_here(TraceRecord*, unsigned) {}

static inline unsigned trace_count_here() {
  return 0;
}
#endif

}  // namespace qforge::cuda
