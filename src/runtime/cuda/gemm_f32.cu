// F32 matrix product on CUDA cores for prompt chunks (gemm_f32.h): 64 x 64 output tiles, 256
// threads of 4 x 4 outputs each, K in steps of 16 staged through shared memory. Every product is
// an F32 FMA in column order within a thread, so the result matches the F32 GEMV to rounding.
#include "runtime/cuda/check.cuh"

#include "runtime/cuda/gemm_f32.h"

namespace qforge::cuda {
namespace {

constexpr int kTile = 64, kStep = 16, kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    gemm_f32_kernel(const float* __restrict__ w, int n_rows, int n_cols,
                    const float* __restrict__ x, int n_tokens, float* __restrict__ y,
                    std::size_t ldy) {
  // Transposed tiles: ws[k][r], xs[k][t], so a thread reads 4 consecutive rows / tokens.
  __shared__ float ws[kStep][kTile + 4];
  __shared__ float xs[kStep][kTile + 4];
  const int r0 = static_cast<int>(blockIdx.x) * kTile, t0 = static_cast<int>(blockIdx.y) * kTile;
  const int tr = static_cast<int>(threadIdx.x % 16) * 4,
            tt = static_cast<int>(threadIdx.x / 16) * 4;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < n_cols; k0 += kStep) {
    // 64 x 16 values of each operand: 4 per thread.
    for (int i = static_cast<int>(threadIdx.x); i < kTile * kStep; i += kThreads) {
      const int row = i / kStep, k = i % kStep;
      const bool k_ok = k0 + k < n_cols;
      ws[k][row] = k_ok && r0 + row < n_rows
                       ? w[static_cast<std::size_t>(r0 + row) * n_cols + k0 + k]
                       : 0.0f;
      xs[k][row] = k_ok && t0 + row < n_tokens
                       ? x[static_cast<std::size_t>(t0 + row) * n_cols + k0 + k]
                       : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&ws[k][tr]);
      const float4 b = *reinterpret_cast<const float4*>(&xs[k][tt]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int t = t0 + tt + j;
    if (t >= n_tokens) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = r0 + tr + i;
      if (r < n_rows) y[static_cast<std::size_t>(t) * ldy + r] = acc[i][j];
    }
  }
}

}  // namespace

void gemm_f32(const float* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
              std::size_t ldy, int n_tokens, StreamHandle stream) {
  if (n_tokens <= 0) return;
  if (n_rows == 0 || n_cols == 0 || n_rows > 0x7fffffffu || n_cols > 0x7fffffffu || ldy < n_rows ||
      w == nullptr || x == nullptr || y == nullptr) {
    cuda_fail("CUDA F32 GEMM: bad shape (", n_rows, " x ", n_cols, ", ldy ", ldy, ", ", n_tokens,
              " tokens)");
  }
  const dim3 grid(static_cast<unsigned>((n_rows + kTile - 1) / kTile),
                  static_cast<unsigned>((n_tokens + kTile - 1) / kTile));
  gemm_f32_kernel<<<grid, kThreads, 0, stream>>>(w, static_cast<int>(n_rows),
                                                 static_cast<int>(n_cols), x, n_tokens, y, ldy);
  QFORGE_CUDA_CHECK_LAUNCH("gemm_f32_kernel");
}

}  // namespace qforge::cuda
