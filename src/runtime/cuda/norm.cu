// RMSNorm: one CTA per row.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

__global__ void rms_norm_kernel(const float* x, const float* __restrict__ weight, float* out,
                                std::size_t n, float eps) {
  __shared__ float scratch[32];
  const float* row = x + blockIdx.x * n;
  float* dst = out + blockIdx.x * n;
  float sum_sq = 0.0f;
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) sum_sq = fmaf(row[i], row[i], sum_sq);
  sum_sq = block_reduce<false>(sum_sq, scratch);
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * inv * weight[i];
}

}  // namespace

void rms_norm(const float* x, const float* weight, float* out, std::size_t n_rows, std::size_t n,
              float eps, StreamHandle stream) {
  if (n_rows == 0 || n == 0) return;
  if (n_rows > 0x7fffffffu) cuda_fail("CUDA rms_norm: too many rows (", n_rows, ")");
  rms_norm_kernel<<<static_cast<unsigned>(n_rows), 256, 0, stream>>>(x, weight, out, n, eps);
  QFORGE_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

}  // namespace qforge::cuda
