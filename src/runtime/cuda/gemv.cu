// GEMV kernels: one warp per output row, lanes walk the row's units (block_decode.cuh) in order
// so that a warp's loads cover consecutive bytes, x is read through the read-only cache (all the
// warps of the device read the same x, which stays in L1/L2), and the warp's partial sums meet in
// a shuffle reduction.
#include <cuda_bf16.h>
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/gemv_mma.h"
#include "runtime/cuda/gemv_q6_k.h"
#include "runtime/cuda/gemv_tiled.h"
#include "runtime/cuda/reduce.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace qforge::cuda {
namespace {

constexpr int kWarpsPerCta = 4;

__device__ __forceinline__ float4 load_x4(const float* x, std::size_t i) {
  return __ldg(reinterpret_cast<const float4*>(x + i));
}
__device__ __forceinline__ float4 load_x4(const std::uint16_t* x, std::size_t i) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(x + i));
  return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                     __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
}

template <typename Fmt, int kTokens, typename X>
__global__ void __launch_bounds__(kWarpsPerCta * 32)
    gemv_kernel(const std::uint8_t* __restrict__ w, std::size_t n_rows, std::size_t n_cols,
                const X* __restrict__ x, float* __restrict__ y, std::size_t ldy) {
  pdl_wait();
  pdl_trigger();
  __shared__ float table[16];
  if constexpr (blocks::UsesTable<Fmt>) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
    __syncthreads();
  }
  const std::size_t row = static_cast<std::size_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= n_rows) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::size_t n_blocks = n_cols / Fmt::kBlockElems;
  const std::uint8_t* row_ptr = w + row * n_blocks * Fmt::kBlockBytes;
  const int n_units = static_cast<int>(n_blocks) * Fmt::kUnitsPerBlock;

  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;

#pragma unroll 2
  for (int u = lane; u < n_units; u += 32) {
    const int b = u / Fmt::kUnitsPerBlock;
    const int unit = u % Fmt::kUnitsPerBlock;
    float wv[4 * Fmt::kRuns];
    int start[Fmt::kRuns];
    Fmt::decode(row_ptr + static_cast<std::size_t>(b) * Fmt::kBlockBytes, unit, wv, start, table);
    const std::size_t base = static_cast<std::size_t>(b) * Fmt::kBlockElems;
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const X* xt = x + static_cast<std::size_t>(t) * n_cols + base;
#pragma unroll
      for (int r = 0; r < Fmt::kRuns; ++r) {
        const float4 xv = load_x4(xt, static_cast<std::size_t>(start[r]));
        acc[t] = fmaf(wv[4 * r], xv.x, acc[t]);
        acc[t] = fmaf(wv[4 * r + 1], xv.y, acc[t]);
        acc[t] = fmaf(wv[4 * r + 2], xv.z, acc[t]);
        acc[t] = fmaf(wv[4 * r + 3], xv.w, acc[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float sum = warp_sum(acc[t]);
    if (lane == 0) y[static_cast<std::size_t>(t) * ldy + row] = sum;
  }
}

template <typename Fmt, int kTokens, typename X>
void launch(const void* w, std::size_t n_rows, std::size_t n_cols, const X* x, float* y,
            std::size_t ldy, StreamHandle stream) {
  const auto grid = static_cast<unsigned>((n_rows + kWarpsPerCta - 1) / kWarpsPerCta);
  launch_pdl("gemv_kernel", gemv_kernel<Fmt, kTokens, X>, grid, kWarpsPerCta * 32, 0, stream,
             static_cast<const std::uint8_t*>(w), n_rows, n_cols, x, y, ldy);
  QFORGE_CUDA_CHECK_LAUNCH("gemv_kernel");
}

template <typename Fmt, typename X>
void check_shape(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const X* x,
                 const float* y) {
  if (n_cols == 0 || n_cols % Fmt::kBlockElems != 0) {
    cuda_fail("CUDA gemv: ", type_name(type), " rows need a column count that is a positive ",
              "multiple of ", Fmt::kBlockElems, ", got ", n_cols);
  }
  if (n_cols / Fmt::kBlockElems * Fmt::kUnitsPerBlock > 0x7fffffffu) {
    cuda_fail("CUDA gemv: ", n_cols, " columns are too many for one row");
  }
  if (reinterpret_cast<std::uintptr_t>(w) % Fmt::kAlign != 0) {
    cuda_fail("CUDA gemv: ", type_name(type), " weights at ", w, " must be ", Fmt::kAlign,
              "-byte aligned");
  }
  if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || x == nullptr || y == nullptr ||
      n_rows == 0) {
    cuda_fail("CUDA gemv: x must be a 16-byte aligned device array, y non-null, rows > 0 (rows ",
              n_rows, ")");
  }
}

GemvKernel initial_kernel() {
  const char* env = std::getenv("QFORGE_GEMV");
  return env != nullptr && std::strcmp(env, "legacy") == 0 ? GemvKernel::kLegacy
                                                           : GemvKernel::kTiled;
}

std::atomic<GemvKernel>& kernel_choice() {
  static std::atomic<GemvKernel> choice{initial_kernel()};
  return choice;
}

// One-token Q6_K products take gemv_q6_k.cu's kernel unless QFORGE_Q6K_GEMV=0 (for comparisons:
// the first kernel then takes them, as it does with QFORGE_GEMV=legacy).
bool q6_k_kernel_enabled() {
  static const bool enabled = switch_on("QFORGE_Q6K_GEMV");
  return enabled;
}

// Splits n_tokens into launches of 8, 4, 2 and 1 tokens (the instantiated batch sizes).
template <typename Fmt>
void run_tokens(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                const float* x, float* y, std::size_t ldy, int n_tokens, StreamHandle stream) {
  check_shape<Fmt>(type, w, n_rows, n_cols, x, y);
  if (ldy < n_rows) cuda_fail("CUDA gemv: output stride ", ldy, " < rows ", n_rows);
  const bool tiled =
      kernel_choice().load() == GemvKernel::kTiled && detail::gemv_tiled_supported(type);
  const bool q6_k = type == GgmlType::Q6_K && kernel_choice().load() == GemvKernel::kTiled &&
                    q6_k_kernel_enabled() && n_rows <= detail::kGemvQ6KMaxRows &&
                    detail::gemv_q6_k_applies(n_cols);
  int t = 0;
  while (t < n_tokens) {
    const int left = n_tokens - t;
    const int batch = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const float* xt = x + static_cast<std::size_t>(t) * n_cols;
    float* yt = y + static_cast<std::size_t>(t) * ldy;
    if (q6_k && batch == 1) {
      detail::gemv_q6_k(w, n_rows, n_cols, xt, yt, stream);
    } else if (tiled && detail::gemv_mma_applies(type, w, n_cols, batch) &&
               detail::gemv_mma_preferred(n_rows, batch)) {
      detail::gemv_mma(w, n_rows, n_cols, xt, yt, ldy, batch, stream);
    } else if (tiled) {
      detail::gemv_tiled(type, w, n_rows, n_cols, xt, yt, ldy, batch, stream);
    } else if (batch == 8) {
      launch<Fmt, 8>(w, n_rows, n_cols, xt, yt, ldy, stream);
    } else if (batch == 4) {
      launch<Fmt, 4>(w, n_rows, n_cols, xt, yt, ldy, stream);
    } else if (batch == 2) {
      launch<Fmt, 2>(w, n_rows, n_cols, xt, yt, ldy, stream);
    } else {
      launch<Fmt, 1>(w, n_rows, n_cols, xt, yt, ldy, stream);
    }
    t += batch;
  }
}

// Calls fn with the traits struct of `type`; fails for a type without a kernel.
template <typename Fn>
void dispatch(GgmlType type, Fn&& fn) {
  if (!blocks::with_format(type, fn)) {
    cuda_fail("CUDA gemv: no kernel for weight type ", type_name(type));
  }
}

}  // namespace

bool gemv_supported(GgmlType type) {
  return blocks::with_format(type, [](auto) {});
}

void gemv(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
          float* y, int n_tokens, StreamHandle stream) {
  gemv_ld(type, w, n_rows, n_cols, x, y, n_rows, n_tokens, stream);
}

void gemv_ld(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
             float* y, std::size_t ldy, int n_tokens, StreamHandle stream) {
  if (n_tokens < 1 || n_tokens > 64) {
    cuda_fail("CUDA gemv: n_tokens must be in [1, 64], got ", n_tokens);
  }
  if (type == GgmlType::F32 && n_cols % 8 != 0 && kernel_choice().load() == GemvKernel::kTiled) {
    // The row-tiled F32 kernel needs only a multiple of 4 columns (16-byte rows).
    check_shape<blocks::F32>(type, w, n_rows, 8, x, y);
    if (n_cols % 4 != 0)
      cuda_fail("CUDA gemv: F32 rows need a multiple of 4 columns, got ", n_cols);
    if (ldy < n_rows) cuda_fail("CUDA gemv: output stride ", ldy, " < rows ", n_rows);
    for (int t = 0; t < n_tokens;) {
      const int left = n_tokens - t;
      const int batch = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
      detail::gemv_tiled(type, w, n_rows, n_cols, x + static_cast<std::size_t>(t) * n_cols,
                         y + static_cast<std::size_t>(t) * ldy, ldy, batch, stream);
      t += batch;
    }
    return;
  }
  dispatch(type, [&]<typename Fmt>(Fmt) {
    run_tokens<Fmt>(type, w, n_rows, n_cols, x, y, ldy, n_tokens, stream);
  });
}

void set_gemv_kernel(GemvKernel kernel) {
  kernel_choice().store(kernel);
}
GemvKernel gemv_kernel() {
  return kernel_choice().load();
}

void gemv_bf16_x(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                 const std::uint16_t* x, float* y, StreamHandle stream) {
  dispatch(type, [&]<typename Fmt>(Fmt) {
    check_shape<Fmt>(type, w, n_rows, n_cols, x, y);
    launch<Fmt, 1>(w, n_rows, n_cols, x, y, n_rows, stream);
  });
}

}  // namespace qforge::cuda
